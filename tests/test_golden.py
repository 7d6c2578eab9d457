"""Checkpoints written by earlier releases still load (files in ``tests/golden``).

Each ``format<N>`` folder is a storage root made by ``make_format<N>.py``
with the release that wrote format N. Git keeps no modes, so each test
copies the root into a temp folder and makes it private, as a user's is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from persistent_kernel.checkpoint import CarriedGroup, write_checkpoint
from persistent_kernel.restore import history, load_generation, restore_checkpoint
from persistent_kernel.store import SessionStore, Store

GOLDEN = Path(__file__).resolve().parent / "golden"
KEY = "/golden/notebook.ipynb"
INFO = {"session": KEY, "notebook": KEY}


def private_copy(source: Path, target: Path) -> Path:
    """Copy a golden storage root to *target*, directories 0700 and files 0600."""
    shutil.copytree(source, target)
    for directory, _, files in os.walk(target):
        os.chmod(directory, 0o700)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o600)
    return target


@pytest.fixture(params=["format1"])
def golden(request: pytest.FixtureRequest, tmp_path: Path) -> SessionStore:
    root = private_copy(GOLDEN / request.param, tmp_path / "root")
    return Store(root).session(KEY)


def test_the_newest_generation_restores_whole(golden: SessionStore) -> None:
    into: dict[str, object] = {}
    report = restore_checkpoint(golden, into)
    assert report.problems == []
    assert report.generation == 2
    assert sorted(report.restored) == ["alias", "array", "codec", "numbers", "table", "text"]
    assert into["numbers"] == list(range(10))
    assert into["text"] == "second"
    assert into["table"] == {"a": [1, 2, 3], "nested": {"b": (1.5, None, True)}}
    assert into["alias"] is into["table"]["a"]  # type: ignore[index]
    assert into["codec"] is json
    array = into["array"]
    assert isinstance(array, np.ndarray)
    assert np.array_equal(array, np.arange(12, dtype=np.float64).reshape(3, 4))
    assert array.flags.writeable
    assert report.skipped == {"password": "not saved: excluded by %persist exclude"}


def test_every_generation_is_listed(golden: SessionStore) -> None:
    rows = history(golden)
    assert [r["generation"] for r in rows] == [1, 2]
    assert rows[1]["changed"] == ["text"]


def test_a_group_carried_from_format_1_is_stored_anew_under_blake3(golden: SessionStore) -> None:
    """A group an old generation holds and a new one keeps unloaded changes its names."""
    old = golden.read_manifest(2)
    (group,) = [g for g in old.content["groups"] if "array" in g["names"]]
    carried = CarriedGroup(group, {"array": old.content["variables"]["array"]}, old.hash)
    result = write_checkpoint(golden, {"new": 1}, {}, INFO, keep=10, carried=[carried])
    assert result.ok and result.generation == 3
    manifest = golden.read_manifest(3)
    assert manifest.raw["format"] == 2 and manifest.hash == "blake3"
    assert all(len(name) == 64 for name in manifest.blobs)
    values, report = load_generation(golden, 3)
    assert report.skipped == {}
    assert np.array_equal(values["array"], np.arange(12, dtype=np.float64).reshape(3, 4))
    assert values["new"] == 1


def test_the_command_line_reads_them(golden: SessionStore) -> None:
    from persistent_kernel import cli

    root = str(golden.root)
    (row,) = cli.list_sessions(root)
    assert row["newest"] == 2 and row["problems"] == []
    shown = cli.show_session(root, KEY)
    saved = {v["name"]: v for v in shown["variables"] if v["status"] == "saved"}
    assert saved["alias"]["shared_with"] == ["table"] and saved["codec"]["size"] == 0
    assert [r["generation"] for r in cli.session_history(root, KEY)["generations"]] == [1, 2]
