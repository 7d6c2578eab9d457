"""``python -m persistent_kernel``: the same as the ``persistent-kernel`` command."""

from .cli import main

if __name__ == "__main__":
    main()
