"""The kernel's traitlets configuration, read without starting a kernel.

The kernel app (:mod:`.kernelapp`) reads :data:`CONFIG_FILES` (after
IPython's ``ipython_config.py``) from the IPython profile directory, then
``sys.prefix/etc/ipython`` and the system configuration directories, as
every IPython application does. The command line reads the same files from
the same places with :func:`load_config`, so ``c.PersistentKernel.checkpoint_dir``
set for the kernel is where ``persistent-kernel list`` looks too (the way
jupyter_client's ``KernelSpecManager`` serves both the server and the
``jupyter kernelspec`` commands).

Limits: only configuration files are read, not a kernel's command-line
arguments (``--PersistentKernel.checkpoint_dir=...`` in a kernelspec's
argv), which differ per kernelspec; and a relative ``checkpoint_dir`` is
relative to the kernel's working directory, which the command line cannot
know, so it is taken relative to the current one. Nothing is created: a
missing profile simply contributes no file.
"""

from __future__ import annotations

import os
from contextlib import suppress

from IPython.core.application import ENV_CONFIG_DIRS, SYSTEM_CONFIG_DIRS
from IPython.core.profiledir import ProfileDir, ProfileDirError
from IPython.paths import get_ipython_dir
from jupyter_core.paths import jupyter_data_dir
from traitlets.config import Application, Config
from traitlets.config.loader import ConfigFileNotFound

#: The files the kernel app reads, in order (later ones win).
CONFIG_FILES = ["ipython_kernel_config.py", "persistent_kernel_config.py"]
#: Read first by every IPython application, the kernel app among them.
BASE_CONFIG = "ipython_config.py"


def config_paths(profile: str = "default") -> list[str]:
    """Where the kernel app looks for configuration files, highest priority first."""
    paths: list[str] = []
    with suppress(ProfileDirError):
        found = ProfileDir.find_profile_dir_by_name(  # type: ignore[no-untyped-call]
            get_ipython_dir(), profile
        )
        paths.append(str(found.location))
    return [*paths, *ENV_CONFIG_DIRS, *SYSTEM_CONFIG_DIRS]


def load_config(profile: str = "default") -> Config:
    """The configuration the kernel app would load from files; errors in a file raise."""
    app = Application()
    app.raise_config_file_errors = True
    paths = config_paths(profile)
    for name in [BASE_CONFIG, *CONFIG_FILES]:
        try:
            app.load_config_file(name, path=paths)
        except ConfigFileNotFound:
            continue
    return app.config


def default_checkpoint_dir() -> str:
    """Where checkpoints go when nothing is configured: ``<jupyter data dir>/persistent_kernel``."""
    return os.path.join(jupyter_data_dir(), "persistent_kernel")


def checkpoint_dir(config: Config | None = None) -> str:
    """``PersistentKernel.checkpoint_dir`` as configured, else the default."""
    config = load_config() if config is None else config
    value = config.PersistentKernel.get("checkpoint_dir") if "PersistentKernel" in config else None
    return str(value) if value else default_checkpoint_dir()
