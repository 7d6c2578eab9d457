"""The restore's pending names, and the order it binds groups in: in process."""

from __future__ import annotations

import threading
from typing import Any

from persistent_kernel import render
from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.restore import Pending, RestoreProgress, restore_checkpoint
from persistent_kernel.store import SessionStore

from .helpers import INFO, wait_until

NAMES = {"small", "mid", "big"}


def save(session: SessionStore) -> None:
    values = {"big": b"b" * 300_000, "mid": "m" * 20_000, "small": 1}
    assert write_checkpoint(session, values, {}, INFO, keep=5).ok
    manifest, _ = session.latest()
    assert len(manifest.content["groups"]) == 3  # one group each


class Namespace(dict[str, Any]):
    """A user namespace that records what is bound, in order, and what was pending then."""

    def __init__(self, progress: RestoreProgress, on_bind: Any = None) -> None:
        super().__init__()
        self.progress = progress
        self.bound: list[tuple[str, set[str]]] = []
        self.on_bind = on_bind

    def update(self, *args: Any, **kwargs: Any) -> None:
        values = dict(*args, **kwargs)
        super().update(values)
        for name in values:
            self.bound.append((name, self.progress.names.pending(NAMES)))
        if self.on_bind is not None:
            self.on_bind(self)


def test_nothing_is_known_before_the_choice_and_all_is_released_at_the_end() -> None:
    pending = Pending()
    assert not pending.chosen and not pending.done
    assert pending.wait_for(set(), timeout=0) is False  # not chosen: every name counts
    pending.choose(["a", "b"], nbytes=30)
    assert pending.chosen and pending.pending(["a", "c"]) == {"a"} and pending.bytes_left == 30
    assert pending.wait_for(["c"], timeout=0) is True
    assert pending.wait_for(["a"], timeout=0) is False
    pending.settled(["a"], nbytes=10)
    assert pending.wait_for(["a"], timeout=0) is True and pending.bytes_left == 20
    assert pending.wait_for(None, timeout=0) is False  # None: the whole restore
    pending.finish()
    assert pending.done and pending.pending(["b"]) == set() and pending.bytes_left == 0
    assert pending.wait_for(None, timeout=0) is True
    pending.choose(["late"])  # after the end nothing becomes pending again
    assert pending.pending(["late"]) == set()


def test_small_groups_are_bound_first_and_stop_being_pending_one_by_one(
    session: SessionStore,
) -> None:
    save(session)
    progress = RestoreProgress()
    into = Namespace(progress)
    report = restore_checkpoint(session, into, progress)
    assert sorted(report.restored) == sorted(NAMES) and not report.carried
    # a name is in the namespace before it stops being pending, never after
    assert into.bound == [("small", NAMES), ("mid", {"mid", "big"}), ("big", {"big"})]
    assert progress.names.done and progress.names.pending(NAMES) == set()


def test_a_group_a_cell_waits_for_is_loaded_next(session: SessionStore) -> None:
    save(session)
    progress = RestoreProgress()
    waited: list[bool] = []
    waiter = threading.Thread(
        target=lambda: waited.append(progress.names.wait_for(["big"], timeout=60))
    )
    waiter.start()
    wait_until(lambda: progress.names._waiting, timeout=10, what="the cell to wait")
    into = Namespace(progress)
    restore_checkpoint(session, into, progress)
    waiter.join(timeout=10)
    assert waited == [True]
    assert [name for name, _ in into.bound] == ["big", "small", "mid"]


def test_an_interrupt_carries_exactly_the_groups_not_bound(session: SessionStore) -> None:
    save(session)
    progress = RestoreProgress()
    into = Namespace(progress, on_bind=lambda ns: progress.stop.set())
    report = restore_checkpoint(session, into, progress)
    assert report.interrupted and list(into) == ["small"]
    carried = sorted(n for g in report.carried for n in g.record["names"])
    assert carried == ["big", "mid"]
    assert progress.names.done and progress.names.pending(NAMES) == set()


def test_the_progress_line_names_what_the_cell_waits_for() -> None:
    progress = RestoreProgress()
    progress.generation, progress.total, progress.done = 3, 2048, 1024
    line = render.progress_text(progress, None, {"big", "df"})
    assert "restoring checkpoint 3: 1.0 KiB of 2.0 KiB (50%); this cell waits for big, df;" in line
    assert "waits for" not in render.progress_text(progress, None)
    many = render.progress_text(progress, None, {f"v{i}" for i in range(8)})
    assert "v0, v1, v2, v3, v4 and 3 more;" in many
