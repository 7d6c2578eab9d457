"""The kernelspec: shipped with the wheel, and installable elsewhere with every flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from persistent_kernel import kernelspec
from persistent_kernel.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_shipped_spec_is_the_built_one() -> None:
    shipped = json.loads((REPO / "kernelspec" / "python-persistent" / "kernel.json").read_text())
    assert shipped == kernelspec.make_spec()
    assert shipped["display_name"] == "Python (persistent)"
    assert shipped["language"] == "python"


def test_pip_install_brings_the_kernelspec(jupyter_env: dict[str, Path]) -> None:
    """No command after pip install: the spec sits in this environment's share/jupyter."""
    spec = KernelSpecManager().get_kernel_spec("python-persistent")
    assert spec.display_name == "Python (persistent)"
    assert Path(spec.resource_dir).is_relative_to(
        Path(sys.prefix) / "share" / "jupyter" / "kernels"
    )
    assert spec.argv[0] == "python"  # jupyter_client substitutes its own interpreter
    # the Launcher's card shows the logo, not a letter
    for logo in kernelspec.LOGOS:
        assert (Path(spec.resource_dir) / logo).read_bytes() == (
            REPO / "persistent_kernel" / "logos" / logo
        ).read_bytes()
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "python-persistent" in json.loads(listed.stdout)["kernelspecs"]


def _installed(directory: Path, name: str) -> dict:
    return json.loads((directory / name / "kernel.json").read_text())


def test_install_prefix_name_display_name(jupyter_env: dict[str, Path], tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    main(["install", "--prefix", str(prefix), "--name", "pk-test", "--display-name", "PK Test"])
    spec = _installed(prefix / "share" / "jupyter" / "kernels", "pk-test")
    assert spec["display_name"] == "PK Test"
    assert spec["argv"][0] == sys.executable  # pinned to this interpreter
    assert spec["argv"][1:3] == ["-m", "persistent_kernel.launcher"]
    installed = prefix / "share" / "jupyter" / "kernels" / "pk-test"
    assert sorted(p.name for p in installed.glob("logo-*")) == sorted(kernelspec.LOGOS)


def test_install_user(jupyter_env: dict[str, Path]) -> None:
    main(["install", "--user", "--name", "pk-user"])
    spec = _installed(jupyter_env["JUPYTER_DATA_DIR"] / "kernels", "pk-user")
    assert spec["display_name"] == kernelspec.DISPLAY_NAME


def test_install_sys_prefix(
    jupyter_env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--sys-prefix installs under sys.prefix: here a throwaway one, not this environment."""
    throwaway = tmp_path / "env"
    monkeypatch.setattr(sys, "prefix", str(throwaway))
    main(["install", "--sys-prefix", "--name", "pk-sys-prefix-test"])
    spec = _installed(throwaway / "share" / "jupyter" / "kernels", "pk-sys-prefix-test")
    assert spec["argv"][0] == sys.executable


def test_python_dash_m_install(jupyter_env: dict[str, Path], tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "persistent_kernel", "install", "--prefix", str(tmp_path)],
        check=True,
        capture_output=True,
        env=os.environ,
    )
    spec = _installed(tmp_path / "share" / "jupyter" / "kernels", "python-persistent")
    assert spec["display_name"] == "Python (persistent)"


def test_install_flags_are_exclusive(jupyter_env: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["install", "--user", "--prefix", str(tmp_path)])
    assert exc.value.code == 2
    with pytest.raises(ValueError):
        kernelspec.install(user=True, sys_prefix=True)
