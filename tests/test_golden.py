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

from persistent_kernel.restore import history, restore_checkpoint
from persistent_kernel.store import SessionStore, Store

GOLDEN = Path(__file__).resolve().parent / "golden"
KEY = "/golden/notebook.ipynb"


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
