"""What the user reads: the restore report, ``%persist`` status and history, made by
:mod:`persistent_kernel.render` from real checkpoints, in process.

Each test is a promise one of these made and did not keep: the cell of a variable
not restored, its type and size, one readable reason, a group's size counted once,
variables pending after an interrupted restore counted, a status that never
contradicts itself, an exclusion not called a removal.
"""

from __future__ import annotations

from persistent_kernel import render
from persistent_kernel.checkpoint import CheckpointResult, write_checkpoint
from persistent_kernel.restore import history
from persistent_kernel.store import SessionStore

from .helpers import INFO


def test_status_never_contradicts_itself() -> None:
    nothing = render.checkpoint_status(None, pending=False, running=False)
    assert "No checkpoint written" in nothing and "Nothing changed since" not in nothing
    assert "Nothing to save yet." in nothing
    waiting = render.checkpoint_status(None, pending=True, running=False, due=25.2)
    assert "Changes will be checkpointed when the kernel is idle, in 25 s." in waiting
    now = render.checkpoint_status(None, pending=True, running=False, due=0.0)
    assert "when the kernel is idle, right after this cell" in now
    off = render.checkpoint_status(None, pending=True, running=False, due=None)
    assert "when the kernel is idle" not in off and "%persist save saves them" in off
    empty = CheckpointResult(ok=True, unchanged=True)  # nothing to save (after a clear)
    text = render.checkpoint_status(empty, pending=False, running=False, cleared=["x"])
    assert "generation None" not in text and "Nothing changed since" not in text
    assert "Not saved since %persist clear, until assigned again: x" in text


def test_status_shows_what_the_generation_wrote_and_what_is_excluded_now() -> None:
    result = CheckpointResult(
        ok=True, generation=3, created=0.0, size=3 << 20, written=0, unchanged=True,
        saved=["a", "b", "token"], skipped={"g": "not saved: cannot pickle a generator's frame"},
    )  # fmt: skip
    text = render.checkpoint_status(
        result, pending=False, running=False, written=1 << 20, excluded=["token"]
    )
    assert "generation 3" in text and "3.0 MiB (1.0 MiB written)" in text
    assert "Saved (2): a, b\n" in text
    assert "Excluded since (left out of the next checkpoint): token" in text
    assert "  g: cannot pickle a generator's frame" in text
    assert "Nothing changed since the last checkpoint." in text
    restored = render.checkpoint_status(result, pending=False, running=False, carried=["b"])
    assert "(restored at start)" in restored and "Saved (2): a, token\n" in restored


def test_history_says_excluded_not_removed(session: SessionStore) -> None:
    write_checkpoint(session, {"a": 1, "token": "s"}, {}, INFO, keep=5)
    write_checkpoint(session, {"a": 1}, {"token": "excluded by %persist exclude"}, INFO, keep=5)
    write_checkpoint(session, {}, {"token": "excluded by %persist exclude"}, INFO, keep=5)
    rows = history(session)
    assert (rows[1]["removed"], rows[1]["excluded"]) == ([], ["token"])
    assert (rows[2]["removed"], rows[2]["excluded"]) == (["a"], [])
    assert "excluded token" in render.history_table(rows)
