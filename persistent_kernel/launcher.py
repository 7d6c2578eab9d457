"""Entry point of the kernelspec: ``python -m persistent_kernel.launcher -f CONNECTION``."""

import sys

if __name__ == "__main__":
    # As ipykernel_launcher does: keep the working directory out of sys.path
    # while the kernel's own modules load; IPython puts it back for the user.
    if sys.path and sys.path[0] == "":
        del sys.path[0]

    # Before any other module registers an exit handler, so that this one
    # runs last (see quickexit).
    from persistent_kernel import quickexit

    quickexit.install()

    from persistent_kernel.kernelapp import main

    main()
