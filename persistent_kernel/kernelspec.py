"""The ``python-persistent`` kernelspec: build it, write it, install it.

The wheel ships ``kernelspec/python-persistent/kernel.json`` (equal to
:func:`make_spec` with ``"python"`` as interpreter, which Jupyter replaces by
its own environment's interpreter) and the logos of :data:`LOGOS` (the Launcher's
card). :func:`install` writes one pinned to the current interpreter, with the same
logos, for use from other environments.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "python-persistent"
DISPLAY_NAME = "Python (persistent)"
#: The kernel's logos, as Jupyter looks for them in a kernelspec's directory.
LOGOS = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")
LOGO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logos")


def make_argv(executable: str = "python") -> list[str]:
    """The command Jupyter runs to start the kernel."""
    return [executable, "-m", "persistent_kernel.launcher", "-f", "{connection_file}"]


def make_spec(executable: str = "python", display_name: str = DISPLAY_NAME) -> dict[str, Any]:
    """The kernel.json content."""
    return {
        "argv": make_argv(executable),
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True},
    }


def write_spec(directory: str, spec: dict[str, Any]) -> str:
    """Write ``kernel.json`` into *directory* (created if missing); its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "kernel.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")
    return path


def install(
    *,
    user: bool = False,
    prefix: str | None = None,
    sys_prefix: bool = False,
    name: str = KERNEL_NAME,
    display_name: str = DISPLAY_NAME,
    executable: str | None = None,
) -> str:
    """Install a kernelspec pinned to *executable* (default: this interpreter).

    Exactly one of *user*, *prefix*, *sys_prefix* may be given; with none,
    the system-wide Jupyter data directory is used. Returns the directory
    the spec was installed to.
    """
    if sum((bool(user), prefix is not None, bool(sys_prefix))) > 1:
        raise ValueError("choose at most one of --user, --prefix and --sys-prefix")
    if sys_prefix:
        prefix = sys.prefix
    spec = make_spec(executable or sys.executable, display_name)
    with tempfile.TemporaryDirectory() as tmp:
        write_spec(tmp, spec)
        for logo in LOGOS:
            shutil.copy(os.path.join(LOGO_DIR, logo), tmp)
        return str(
            KernelSpecManager().install_kernel_spec(tmp, kernel_name=name, user=user, prefix=prefix)
        )
