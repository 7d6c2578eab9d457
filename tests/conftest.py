"""Fixtures shared by the test tiers.

Every test gets its own Jupyter world: data, runtime, config and IPython
directories and HOME in a temp folder, so nothing a test writes leaks into
the machine's real Jupyter setup or into another test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from persistent_kernel.store import SessionStore, Store

from .harness import KernelHarness
from .helpers import KEY
from .s3server import bucket_url, s3server  # noqa: F401 (fixtures of the bucket tests)

_ISOLATED = {
    "JUPYTER_DATA_DIR": "data",
    "JUPYTER_RUNTIME_DIR": "runtime",
    "JUPYTER_CONFIG_DIR": "config",
    "IPYTHONDIR": "ipython",
    "HOME": "home",
}


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every Jupyter directory at a fresh temp folder; return them."""
    dirs = {}
    for var, name in _ISOLATED.items():
        path = tmp_path / name
        path.mkdir()
        monkeypatch.setenv(var, str(path))
        dirs[var] = path
    for var in ("JPY_SESSION_NAME", "PERSISTENT_KERNEL_SESSION", "JUPYTER_PATH"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    dirs["work"] = work
    dirs["checkpoints"] = tmp_path / "data" / "persistent_kernel"
    return dirs


@pytest.fixture
def kernels(jupyter_env: dict[str, Path]) -> Iterator[KernelHarness]:
    """Start real persistent kernels; all are shut down after the test."""
    harness = KernelHarness(cwd=jupyter_env["work"], root=jupyter_env["checkpoints"])
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def session(tmp_path: Path) -> SessionStore:
    """The store of one notebook's checkpoints (key :data:`.helpers.KEY`), in a temp root."""
    s = Store(tmp_path / "store").session(KEY)
    s.ensure()
    return s
