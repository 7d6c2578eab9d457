"""persistent-kernel: a Jupyter kernel whose namespace survives restarts."""

from ._version import __version__

__all__ = ["__version__"]
