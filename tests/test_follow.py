"""The store follows what the Jupyter server saw: renames, copies, deletes (in process).

Real sessions on disk, written by the real checkpoint code; the server's part
is tested with a real jupyter_server in test_serverext.py.
"""

from __future__ import annotations

from pathlib import Path

from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.store import Store, follow
from persistent_kernel.store.rename import adopted_key

from .test_checkpointer import Rig

A = "/home/u/work/a.ipynb"
B = "/home/u/work/b.ipynb"


def saved(store: Store, key: str, **values: object) -> None:
    session = store.session(key)
    session.ensure()
    write_checkpoint(session, dict(values), {}, {"session": key, "notebook": key}, keep=5)


def variables(store: Store, key: str) -> list[str]:
    manifest, _ = store.session(key).latest()
    return sorted(manifest.content["variables"])


def test_a_rename_with_no_kernel_moves_the_session(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, A, x=1)
    store.session(A).write_settings({"exclude": ["secret"]})
    assert follow.renamed(store, A, B) == [follow.Move(A, B)]
    assert not store.session(A).backend.exists()
    assert variables(store, B) == ["x"]
    assert store.session(B).read_settings()["exclude"] == ["secret"]
    assert follow.key_of(store, store.session(B)) == B


def test_a_rename_while_a_kernel_serves_it_is_forwarded_and_the_kernel_moves_it(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    # before its first checkpoint: a notebook named at its first save
    assert follow.renamed(store, A, B, busy={A}) == [follow.Move(A, B, forwarded=True)]
    assert follow.forwarded(store.session(A)) == B
    saved(store, A, x=1)  # the kernel wrote before it looked
    assert follow.follow(store, A) == B
    assert variables(store, B) == ["x"]
    assert follow.forwarded(store.session(B)) is None
    assert follow.follow(store, B) == B


def test_a_rename_of_a_rename_is_followed_to_the_end(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, A, x=1)
    c = "/home/u/work/c.ipynb"
    follow.renamed(store, A, B, busy={A})
    follow.renamed(store, B, c, busy={B})  # B has no session yet: a record of its own
    assert follow.follow(store, A) == c
    assert variables(store, c) == ["x"]


def test_a_start_settles_the_forwards_of_a_kernel_that_is_gone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, A, x=1)
    follow.renamed(store, A, B, busy={A})
    assert follow.settle(store) == [follow.Move(A, B)]
    assert variables(store, B) == ["x"]
    assert follow.settle(store) == []


def test_a_folder_rename_moves_every_session_under_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, "/w/old/one.ipynb", x=1)
    saved(store, "/w/old/sub/two.ipynb", y=2)
    saved(store, "/w/older.ipynb", z=3)  # a sibling whose name starts the same
    moves = follow.renamed(store, "/w/old", "/w/new", folder=True)
    assert sorted(m.new for m in moves) == ["/w/new/one.ipynb", "/w/new/sub/two.ipynb"]
    assert variables(store, "/w/new/sub/two.ipynb") == ["y"]
    assert variables(store, "/w/older.ipynb") == ["z"]


def test_a_rename_onto_a_notebook_with_state_sets_that_state_aside(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, A, x=1)
    saved(store, B, old=1)
    follow.renamed(store, A, B)
    assert variables(store, B) == ["x"]
    aside = [k for s in store.sessions() if (k := follow.key_of(store, s)) and "replaced" in k]
    assert len(aside) == 1 and variables(store, aside[0]) == ["old"]


def test_a_deleted_notebooks_state_is_set_aside_under_a_name_of_its_own(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, A, x=1)
    moved = follow.set_aside(store, A)
    assert moved is not None and moved.new.startswith(f"{A} (deleted ")
    assert not store.session(A).backend.exists()
    assert variables(store, moved.new) == ["x"]
    assert adopted_key(store.session(moved.new)) == moved.new
    assert follow.set_aside(store, A) is None  # nothing left there


def test_a_copy_starts_clean_with_the_originals_excludes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, A, x=1)
    store.session(A).write_settings({"exclude": ["password"]})
    follow.copied(store, B, A)
    assert follow.copy_of(store, B) == A
    assert follow.copy_of(store, A) is None
    assert store.session(B).generations() == []
    assert store.session(B).read_settings()["exclude"] == ["password"]
    assert variables(store, A) == ["x"]


def test_a_damaged_forward_record_moves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved(store, A, x=1)
    store.session(A).backend.write_file(follow.FORWARD, b"{not json")
    assert follow.forwarded(store.session(A)) is None
    assert follow.follow(store, A) == A
    assert follow.settle(store) == []
    assert variables(store, A) == ["x"]


def test_the_checkpointer_moves_its_session_before_it_writes(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "store", checkpoint_interval=0.0)
    key = rig.session.key
    assert key is not None
    rig.cell(x=1)
    new = str(tmp_path / "renamed.ipynb")
    follow.renamed(rig.store, key, new, busy={key})
    rig.cell(y=2)
    target = rig.checkpointer.target
    assert target is not None and target.key == new
    assert not rig.store.session(key).backend.exists()
    assert variables(rig.store, new) == ["x", "y"]
    assert rig.store.session(new).generations() == [1, 2]
