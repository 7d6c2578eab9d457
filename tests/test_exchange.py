"""export_generation / import_file: a checkpoint as one file that plain dill loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path
from typing import Any

import dill
import pytest

from persistent_kernel import checkpoint, restore
from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.errors import (
    CorruptCheckpoint,
    ExportFailed,
    NoCheckpoint,
    NoSuchVariable,
)
from persistent_kernel.exchange import ExportResult, export_generation, import_file
from persistent_kernel.restore import load_generation
from persistent_kernel.store import SessionStore, Store

from .helpers import stream_blob_of

KEY = "/home/user/notebook.ipynb"

#: A notebook's namespace: run as ``__main__`` (as in a kernel), it checkpoints
#: itself into the store at argv[1] with SCALE = argv[2].
NOTEBOOK = """
import os.path as osp
import sys

import numpy as np
import pandas as pd

from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.store import Store

SCALE = int(sys.argv[2])

def times_scale(x):
    return x * SCALE

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return times_scale(self.x * self.x + self.y * self.y)

p = Point(1, 2)
square = lambda v: v * v
arr = np.arange(6, dtype=np.float64).reshape(2, 3)
df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
l1 = [1, 2]
l2 = l1
holder = {"k": l1}
gen = (i for i in range(3))

NAMES = ["SCALE", "times_scale", "Point", "p", "square", "arr", "df", "l1", "l2", "holder",
         "gen", "np", "osp"]
result = write_checkpoint(
    Store(sys.argv[1]).session(KEY),
    {name: globals()[name] for name in NAMES},
    {"secret_token": "excluded by configuration"},
    {"session": KEY, "notebook": KEY},
    keep=10,
)
assert result.ok and not result.unchanged, result
"""

SAVED = ["Point", "SCALE", "arr", "df", "holder", "l1", "l2", "np", "osp", "p", "square",
         "times_scale"]  # fmt: skip

#: Loads an exported file with plain dill, in a Python that cannot import this package.
LOADER = """
import sys
sys.path.append(sys.argv[1])  # site-packages only: not the repository, no .pth files
# Where the package is installed (not editable) it sits in site-packages too:
# make it unimportable, so anything in the file that needs it fails to load.
sys.modules["persistent_kernel"] = None
try:
    import persistent_kernel  # noqa: F401
    importable = True
except ImportError:
    importable = False
import json
import dill
dill.load_module(sys.argv[2])
out = {
    "importable": importable,
    "times_scale": times_scale(2),
    "norm2": p.norm2(),
    "same_class": type(p) is Point,
    "square": square(4),
    "arr": arr.tolist(),
    "df": df.to_dict("list"),
    "shared": l2 is l1 and holder["k"] is l1,
    "modules": [np.__name__, osp.__name__],
    "gen": "gen" in globals() or "secret_token" in globals(),
}
SCALE = 10
out["rebound"] = [times_scale(2), p.norm2()]
print(json.dumps(out))
"""


def notebook(root: Path, scale: int) -> None:
    """Checkpoint NOTEBOOK's namespace, written by a Python running it as ``__main__``."""
    script = root.parent / "notebook.py"
    script.write_text(f"KEY = {KEY!r}\n" + textwrap.dedent(NOTEBOOK))
    subprocess.run(
        [sys.executable, str(script), str(root), str(scale)],
        check=True,
        capture_output=True,
        cwd=root.parent,
        timeout=120,
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generations of NOTEBOOK: SCALE = 3, then SCALE = 5 (made once per module)."""
    root = tmp_path_factory.mktemp("template") / "store"
    notebook(root, 3)
    notebook(root, 5)
    return root


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Path:
    """A copy of the template store, for a test to damage at will."""
    root = tmp_path / "store"
    shutil.copytree(template, root)
    return root


@pytest.fixture
def session(store: Path) -> SessionStore:
    return Store(store).session(KEY)


def isolated_python(script: str, *args: str, cwd: Path) -> Any:
    """Run *script* with site-packages but without this package (the script
    blocks its import); its JSON stdout."""
    site_packages = sysconfig.get_paths()["purelib"]
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", textwrap.dedent(script), site_packages, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- export ----------------------------------------------------------------------------


def test_export_loads_with_plain_dill_where_this_package_is_missing(
    session: SessionStore, tmp_path: Path
) -> None:
    path = tmp_path / "state.pkl"
    export_generation(session, path)
    loaded = isolated_python(LOADER, str(path), cwd=tmp_path)
    assert loaded["importable"] is False  # the loader really lacks persistent_kernel
    assert loaded["times_scale"] == 10  # newest generation: SCALE = 5
    assert loaded["norm2"] == 25
    assert loaded["same_class"] is True  # the instance is of the loaded class
    assert loaded["square"] == 16
    assert loaded["arr"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert loaded["df"] == {"a": [1, 2], "b": ["x", "y"]}
    assert loaded["shared"] is True
    assert loaded["modules"] == ["numpy", "posixpath"]  # modules come back as imports
    assert loaded["gen"] is False
    # The notebook's functions read the loader's globals, as they did the notebook's.
    assert loaded["rebound"] == [20, 50]


def test_export_result_and_file(session: SessionStore, tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    result = export_generation(session, str(path))
    assert isinstance(result, ExportResult)
    assert result.path == str(path)
    assert result.generation == 2
    assert result.created == session.read_manifest(2).created
    assert result.written == SAVED
    assert set(result.skipped) == {"gen", "secret_token"}
    assert result.skipped["secret_token"] == "not saved: excluded by configuration"
    assert result.skipped["gen"] == (
        "not saved: cannot pickle a generator's frame (a generator part-way through)"
    )
    assert result.problems == []
    assert result.size == path.stat().st_size > 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state.pkl", "store"]  # no temp file left
    assert json.loads(json.dumps(result.to_dict()))["written"] == SAVED


def test_export_replaces_a_file_atomically(session: SessionStore, tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_text("old")
    path.chmod(0o644)
    export_generation(session, path, names=["SCALE"])
    assert dill.load_module_asdict(str(path))["SCALE"] == 5
    assert path.stat().st_mode & 0o777 == 0o600


def test_export_an_older_generation_and_some_names(session: SessionStore, tmp_path: Path) -> None:
    path = tmp_path / "some.pkl"
    result = export_generation(session, path, generation=1, names=["SCALE", "l1", "gen"])
    assert result.generation == 1
    assert result.written == ["SCALE", "l1"]  # l2 shares l1's group, but was not asked for
    assert list(result.skipped) == ["gen"]
    loaded = dill.load_module_asdict(str(path))
    assert loaded["SCALE"] == 3 and loaded["l1"] == [1, 2]
    assert "l2" not in loaded and "times_scale" not in loaded


def test_export_unknown_name_writes_nothing(session: SessionStore, tmp_path: Path) -> None:
    path = tmp_path / "none.pkl"
    with pytest.raises(NoSuchVariable, match="no variable named nope"):
        export_generation(session, path, names=["SCALE", "nope"])
    assert not path.exists()


def test_export_without_checkpoint(tmp_path: Path) -> None:
    empty = Store(tmp_path / "store").session(KEY)
    with pytest.raises(NoCheckpoint):
        export_generation(empty, tmp_path / "x.pkl")
    assert not (tmp_path / "x.pkl").exists()


def test_export_missing_generation_or_directory(session: SessionStore, tmp_path: Path) -> None:
    with pytest.raises(NoCheckpoint):
        export_generation(session, tmp_path / "x.pkl", generation=7)
    with pytest.raises(FileNotFoundError):
        export_generation(session, tmp_path / "no" / "x.pkl")
    with pytest.raises(IsADirectoryError):
        export_generation(session, tmp_path)


def test_export_passes_over_a_damaged_generation(session: SessionStore, tmp_path: Path) -> None:
    blob = stream_blob_of(session, "SCALE", 2)  # SCALE changed, so generation 2 has its own blob
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        export_generation(session, tmp_path / "two.pkl", generation=2)
    result = export_generation(session, tmp_path / "newest.pkl")
    assert result.generation == 1
    assert len(result.problems) == 1 and "generation 2 was passed over" in result.problems[0]
    assert dill.load_module_asdict(str(tmp_path / "newest.pkl"))["SCALE"] == 3


class Protocol5Only:
    """Pickles at protocol 5, as checkpoints do, but not at dill.dump_module's 4."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        if protocol < 5:
            raise TypeError("needs pickle protocol 5")
        return (Protocol5Only, ())


def test_a_value_dill_cannot_write_is_skipped(tmp_path: Path) -> None:
    session = Store(tmp_path / "store").session(KEY)
    write_checkpoint(session, {"ok": [1], "bad": Protocol5Only()}, {}, {"session": KEY}, keep=2)
    path = tmp_path / "out.pkl"
    result = export_generation(session, path)
    assert result.written == ["ok"]
    assert result.skipped == {"bad": "could not be written (TypeError: needs pickle protocol 5)"}
    assert dill.load_module_asdict(str(path))["ok"] == [1]


def test_a_failed_export_leaves_the_target_alone(
    session: SessionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk on fire")

    path = tmp_path / "state.pkl"
    path.write_text("precious")
    monkeypatch.setattr(dill, "dump_module", broken)
    with pytest.raises(ExportFailed, match="disk on fire"):
        export_generation(session, path)
    assert path.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["state.pkl", "store"]


# -- import ----------------------------------------------------------------------------


def test_import_an_export(session: SessionStore, tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    export_generation(session, path)
    into: dict[str, Any] = {"SCALE": 100, "mine": "kept"}
    result = import_file(path, into)
    assert result.imported == SAVED
    assert result.replaced == ["SCALE"]
    assert "__builtins__" in result.dropped and "__name__" in result.dropped
    assert into["mine"] == "kept" and into["SCALE"] == 5
    assert not any(name.startswith("__") for name in into)
    assert into["times_scale"](2) == 10
    assert type(into["p"]) is into["Point"]
    assert into["l2"] is into["l1"]


FOREIGN = """
import sys
import dill

In = ["", "value = 41"]
Out = {}
_i1 = "value = 41"
_3 = 3
value = 41

def plus_one():
    return value + 1

dill.dump_module(sys.argv[1])
"""


def test_import_a_file_dill_made_elsewhere(tmp_path: Path) -> None:
    script, path = tmp_path / "foreign.py", tmp_path / "foreign.pkl"
    script.write_text(textwrap.dedent(FOREIGN))
    subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=120)
    into: dict[str, Any] = {}
    result = import_file(str(path), into)
    assert {"value", "plus_one"} <= set(result.imported)
    assert {"In", "Out", "_i1", "_3", "__name__", "__file__"} <= set(result.dropped)
    assert not {"In", "Out", "_i1", "_3"} & set(into)
    assert into["plus_one"]() == 42


def test_import_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"not a pickle")
    into = {"a": 1}
    with pytest.raises(Exception):  # noqa: B017 - whatever unpickling raises
        import_file(path, into)
    assert into == {"a": 1}


# -- restore.load_generation, as export uses it ---------------------------------------


def test_load_generation_into_another_main(session: SessionStore) -> None:
    module = types.ModuleType("__main__")
    values, report = load_generation(session, 1, main=module)
    assert report.generation == 1
    assert values["times_scale"].__globals__ is module.__dict__
    module.__dict__.update(values)
    assert values["times_scale"](2) == 6


def test_load_generation_leaves_crash_markers_alone(session: SessionStore) -> None:
    """A kernel restoring at this moment owns the marker; a load outside must not
    consume it (that would make the next start skip that group as poisonous)."""
    marker = session.path / "loading"
    marker.write_text("a-blob-a-kernel-is-loading")
    marker.chmod(0o600)
    values, _ = load_generation(session)
    assert values["SCALE"] == 5
    assert marker.read_text() == "a-blob-a-kernel-is-loading"
    assert not (session.path / "poisoned").exists()


def test_restore_still_uses_crash_markers(session: SessionStore) -> None:
    marker = session.path / "loading"
    marker.write_text(checkpoint.group_id(session.read_manifest(2).content["groups"][0]))
    marker.chmod(0o600)
    into: dict[str, Any] = {}
    report = restore.restore_checkpoint(session, into)
    assert not marker.exists()
    assert any("crashed the kernel" in reason for reason in report.skipped.values())
