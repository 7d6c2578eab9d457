"""Which notebook a kernel serves, and where its checkpoints live.

Pure functions of the environment and the working directory, so the CLI and
the tests can compute a session key exactly as the kernel does.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

#: Overrides every other way of choosing the session key.
SESSION_ENV = "PERSISTENT_KERNEL_SESSION"
#: Set by Jupyter servers (jupyter_server, JupyterLab, Notebook 7, VS Code) to the
#: path of the notebook the kernel serves, absolute or relative to the kernel's cwd.
JUPYTER_SESSION_ENV = "JPY_SESSION_NAME"


def notebook_path(environ: Mapping[str, str], cwd: str) -> str | None:
    """The absolute path of the notebook named by ``$JPY_SESSION_NAME`` (None if unset).

    jupyter_server passes an absolute path when the session was created with
    a ``name`` (as JupyterLab does), but the session's *path*, relative to the
    server's root, when not; and it starts the kernel in the notebook's own
    folder. So a relative ``sub/nb.ipynb`` seen from ``<root>/sub`` is
    ``<root>/sub/nb.ipynb``, not ``<root>/sub/sub/nb.ipynb``: when *cwd* ends
    with the path's folder, the notebook is the file of that name in *cwd*.
    Any other relative path is taken relative to *cwd*.
    """
    name = environ.get(JUPYTER_SESSION_ENV) or None
    if name is None:
        return None
    name = os.path.expanduser(name)
    if os.path.isabs(name):
        return os.path.normpath(name)
    relative = os.path.normpath(name)
    folder, base = os.path.split(relative)
    here = os.path.normpath(cwd)
    if (
        folder
        and not folder.startswith(os.pardir)
        and (here == folder or here.endswith(os.sep + folder))
    ):
        return os.path.join(here, base)
    return os.path.normpath(os.path.join(here, relative))


def session_key(environ: Mapping[str, str], cwd: str) -> tuple[str, str | None]:
    """Return ``(key, notebook_path)`` for a kernel started with *environ* in *cwd*.

    The key is ``$PERSISTENT_KERNEL_SESSION`` if set; else the notebook path
    from ``$JPY_SESSION_NAME`` made absolute (see :func:`notebook_path`); else
    *cwd* itself. ``notebook_path`` is the absolute notebook path when the
    server told us one, else ``None``. This is where a kernel *starts*
    looking: :mod:`identity` decides which checkpoints it continues.
    """
    notebook = notebook_path(environ, cwd)
    explicit = environ.get(SESSION_ENV)
    if explicit:
        return explicit, notebook
    if notebook is not None:
        return notebook, notebook
    return os.path.normpath(cwd), None


def session_dirname(key: str) -> str:
    """A directory name for *key*: readable, unique, safe on every filesystem.

    The readable part is the key's last path component squeezed to
    ``[A-Za-z0-9._-]``; uniqueness comes from a hash of the whole key, so two
    notebooks with the same file name in different folders never collide.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem = Path(key.rstrip("/\\")).name or "root"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:48] or "session"
    return f"{slug}-{digest}"


def resolve_session_arg(arg: str, cwd: str) -> str:
    """Turn what a user typed (a key, or a notebook path) into a session key.

    A path to an existing file or directory is made absolute, since that is
    how the kernel keys notebooks; anything else is taken as a key verbatim.
    """
    candidate = os.path.join(cwd, os.path.expanduser(arg))
    if os.path.exists(candidate):
        return os.path.normpath(candidate)
    return arg
