"""The autosave policy and the writer watch, in process: a fake clock, a fake
loop and a fake writer; no processes, no sleeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from persistent_kernel.autosave import Autosaver, Cleared, Failure, ends_cell, only_command
from persistent_kernel.checkpoint import CarriedGroup
from persistent_kernel.snapshot import Writer
from persistent_kernel.writerwatch import GiB, WriterWatch, deadline_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def saver(clock: Clock, interval: float = 30.0) -> Autosaver:
    return Autosaver(clock, interval=interval)


def run_cell(a: Autosaver) -> None:
    a.cell_started()
    a.cell_finished()


# -- changes are counted, not flagged ------------------------------------------------


def test_a_finished_cell_is_a_change_and_a_checkpoint_saves_it(clock: Clock) -> None:
    a = saver(clock, interval=0)
    assert not a.dirty and a.due() is None
    run_cell(a)
    assert a.dirty and a.due() == 0
    ticket = a.begin()
    assert a.due() is None  # one writer at a time
    a.succeeded(ticket)
    assert not a.dirty and a.due() is None


def test_save_in_the_middle_of_a_cell_leaves_the_rest_of_the_cell_unsaved(clock: Clock) -> None:
    """`%persist save` then `x = 2` in the same cell: the cell's end is still a change."""
    a = saver(clock)
    run_cell(a)
    a.cell_started()
    ticket = a.begin(covers_running_cell=False)  # the magic is not the last line
    a.succeeded(ticket)
    a.cell_finished()
    assert a.dirty


def test_save_as_the_last_line_covers_its_cell(clock: Clock) -> None:
    a = saver(clock)
    run_cell(a)
    a.cell_started()
    a.succeeded(a.begin(covers_running_cell=True))
    a.cell_finished()
    assert not a.dirty


def test_a_failed_or_interrupted_save_claims_nothing(clock: Clock) -> None:
    a = saver(clock)
    a.cell_started()
    ticket = a.begin(covers_running_cell=True)
    a.failed(ticket, Failure("error", "it failed"), {})
    a.cell_finished()
    assert a.dirty


def test_a_save_covers_its_cell_only_when_no_other_cell_runs(clock: Clock) -> None:
    a = saver(clock)
    a.cell_started()  # a subshell cell
    a.cell_started()  # the cell with %persist save as its last line
    a.succeeded(a.begin(covers_running_cell=True))
    a.cell_finished()
    a.cell_finished()
    assert a.dirty


def test_clear_then_more_code_in_the_same_cell_is_saved(clock: Clock) -> None:
    a = saver(clock)
    run_cell(a)
    a.cell_started()
    a.cleared(covers_running_cell=False)
    a.cell_finished()
    assert a.dirty and not a.has_checkpoint
    b = saver(clock)
    run_cell(b)
    b.cell_started()
    b.cleared(covers_running_cell=True)
    b.cell_finished()
    assert not b.dirty  # the next start is clean


def test_a_cell_needs_a_standby_only_on_changes_no_checkpoint_has_seen(clock: Clock) -> None:
    a = saver(clock)
    assert a.cell_started() is False  # nothing changed yet
    a.cell_finished()
    assert a.cell_started() is True
    assert a.cell_started() is False  # a second cell (a subshell): the first one's holds
    a.cell_finished()
    a.cell_finished()
    ticket = a.begin()
    assert a.cell_started() is False  # the writer at work has seen everything
    a.cell_finished()
    a.succeeded(ticket)
    assert a.cell_started() is True


def test_an_interrupted_cell_counts_only_once_the_user_goes_on(clock: Clock) -> None:
    """A restart interrupts the running cell, then shuts down: until the user
    goes on (or a grace period passes), its half-done state is not a change."""
    a = saver(clock, interval=0)
    a.cell_started()
    a.cell_finished(interrupted=True)
    assert a.interrupted and not a.dirty and a.due() is None
    assert a.cell_started() is True  # the next cell accepts it; it starts on a change
    a.cell_finished()
    assert not a.interrupted and a.dirty
    b = saver(clock, interval=0)
    b.cell_started()
    b.cell_finished(interrupted=True)
    b.accept_interrupted()
    assert b.dirty and b.due() == 0


def test_a_change_during_a_checkpoint_is_not_lost(clock: Clock) -> None:
    a = saver(clock, interval=0)
    run_cell(a)
    ticket = a.begin()
    run_cell(a)  # finishes while the writer works
    a.succeeded(ticket)
    assert a.dirty and a.due() == 0


# -- when ----------------------------------------------------------------------------


def test_interval_and_no_checkpoint_while_a_cell_runs(clock: Clock) -> None:
    a = saver(clock, interval=30)
    a.succeeded(a.begin())
    run_cell(a)
    assert a.due() == 30
    clock.now += 31
    a.cell_started()
    assert a.due() is None  # never half a cell
    a.cell_finished()
    assert a.due() == 0
    a.enabled = False
    assert a.due() is None


def test_back_off_and_one_notice(clock: Clock) -> None:
    a = saver(clock, interval=0)
    run_cell(a)
    first = a.failed(a.begin(), Failure("error", "the disk is full"), {})
    assert first is not None and "the disk is full" in first
    assert "Nothing of this notebook is saved yet" in first
    assert "previous checkpoint is kept" not in first
    assert a.due() == 5
    clock.now += 5
    assert a.failed(a.begin(), Failure("error", "the disk is full"), {}) is None
    assert a.due() == 10
    clock.now += 10
    assert a.succeeded(a.begin()) == "checkpoints are being saved again."
    run_cell(a)
    notice = a.failed(a.begin(), Failure("error", "x"), {})
    assert notice is not None and "Your previous checkpoint is kept" in notice


@pytest.mark.parametrize("kind", ["crash", "timeout"])
def test_a_crash_or_hang_leaves_the_culprit_out_and_retries_at_once(
    clock: Clock, kind: str
) -> None:
    a = saver(clock, interval=0)
    run_cell(a)
    value = object()
    notice = a.failed(a.begin(), Failure(kind, "s", "hang"), {"hang": id(value)}, deadline=7)
    assert notice is not None and "saving hang" in notice and "left out" in notice
    if kind == "timeout":
        assert "did not finish within 7 s" in notice
    assert a.due() == 0 and a.failures == 0
    values: dict[str, Any] = {"hang": value, "ok": 1}
    skipped: dict[str, str] = {}
    a.culprits.apply(values, skipped)
    assert values == {"ok": 1} and "hang" in skipped
    values = {"hang": object()}  # bound again: tried again
    a.culprits.apply(values, skipped := {})
    assert "hang" in values and not skipped and "hang" not in a.culprits


def test_repeated_kills_blame_the_variable_and_never_go_inline(clock: Clock) -> None:
    """The OOM killer picks the writer each time it saves `big`: after two
    kills on it, `big` is left out; no switch to pickling in the kernel."""
    a = saver(clock, interval=0)
    run_cell(a)
    ids = {"big": 1}
    first = a.failed(a.begin(), Failure("kill", "the writer was killed", "big"), ids)
    assert first is not None and "left out" not in first and a.due() == 5
    clock.now += 5
    second = a.failed(a.begin(), Failure("kill", "the writer was killed", "big"), ids)
    assert second is not None and "saving big" in second and "killed" in second
    assert "big" in a.culprits and a.due() == 0
    assert not hasattr(a, "inline") and not hasattr(a, "fork_broken")


def test_kills_on_different_variables_only_back_off(clock: Clock) -> None:
    a = saver(clock, interval=0)
    run_cell(a)
    a.failed(a.begin(), Failure("kill", "k", "a"), {"a": 1, "b": 2})
    clock.now += 5
    a.failed(a.begin(), Failure("kill", "k", "b"), {"a": 1, "b": 2})
    assert len(a.culprits) == 0 and a.due() == 10


def test_user_threads_keep_the_namespace_dirty_after_a_snapshot(clock: Clock) -> None:
    a = saver(clock, interval=0)
    run_cell(a)
    ticket = a.begin(threads=True)
    a.succeeded(ticket)
    assert a.dirty  # the thread may have changed it after the snapshot
    assert a.due() == 1.0  # but not a fork per loop turn
    clock.now += 1
    a.succeeded(a.begin(threads=False))  # the thread ended: this one saw its last change
    assert not a.dirty


def test_a_checkpoint_that_wrote_nothing_does_not_put_off_the_next(clock: Clock) -> None:
    a = saver(clock, interval=30)
    a.succeeded(a.begin())  # wrote a generation at 1000
    clock.now += 40
    run_cell(a)
    a.succeeded(a.begin(), wrote=False)  # found nothing changed
    clock.now += 4
    run_cell(a)
    assert a.due() == 0  # 44 s after the last write: now, not 26 s from now
    a.succeeded(a.begin())
    run_cell(a)
    assert a.due() == 30


def test_after_a_restore_the_interval_counts_from_the_restored_generation(
    clock: Clock,
) -> None:
    a = saver(clock, interval=30)
    a.restored([], has_checkpoint=True, written_ago=10)  # a restart: written 10 s ago
    run_cell(a)
    assert a.due() == 20
    old = saver(clock, interval=30)  # written an hour ago, or when is not known
    for ago in (3600.0, None):
        old.restored([], has_checkpoint=True, written_ago=ago)
        run_cell(old)
        assert old.due() == 0
    fresh = saver(clock, interval=30)  # nothing on disk: the interval counts from the start
    fresh.restored([], has_checkpoint=False)
    run_cell(fresh)
    assert fresh.due() == 30


def test_next_in_tells_the_wait_while_a_cell_runs(clock: Clock) -> None:
    a = saver(clock, interval=30)
    assert a.next_in() is None  # nothing changed
    a.succeeded(a.begin())
    run_cell(a)
    clock.now += 10
    a.cell_started()  # `%persist` runs in a cell
    assert a.due() is None and a.next_in() == 20
    a.enabled = False
    assert a.next_in() is None


def test_cleared_values_stay_out_until_assigned_again() -> None:
    cleared = Cleared()
    big, gen, mod = [1], (i for i in []), ends_cell  # any objects
    ns: dict[str, Any] = {"big": big, "gen": gen, "mod": mod, "gone": 1}
    cleared.clear(ns, cells=2)
    del ns["gone"]
    ns["new"] = [2]
    values = {"big": big, "mod": mod, "new": ns["new"]}
    skipped = {"gen": "cannot pickle a generator's frame"}
    cleared.apply(ns, values, skipped, inputs=["", "big = [1]"])
    assert values == {"new": [2]} and skipped == {}  # left out silently
    assert cleared.names(ns) == ["big", "gen", "mod"]
    ns["big"] = [1]  # another object
    values, skipped = {"big": ns["big"], "mod": mod}, {"gen": "..."}
    cleared.apply(ns, values, skipped, inputs=["", "big = [1]", "mod = mod"])  # a cell since
    assert values == {"big": [1], "mod": mod} and skipped == {}
    assert cleared.names(ns) == ["gen"]


def test_a_cell_that_only_looks_is_no_change(clock: Clock) -> None:
    a = saver(clock, interval=0)
    a.cell_started()
    a.read_only()  # `%persist` alone in its cell
    a.cell_finished()
    assert not a.dirty
    a.cell_started()
    a.read_only()
    a.cell_started()  # a subshell cell starts beside it: its end may change things
    a.cell_finished()
    a.cell_finished()
    assert a.dirty


@pytest.mark.parametrize(
    ("code", "command", "expected"),
    [
        ("%persist", "status", True),
        ("%persist status  # check\n\n", "status", True),
        ("%persist history", "history", True),
        ("%persist history", "status", False),
        ("x = 1\n%persist", "status", False),
        ("%persist\nx = 1", "status", False),
        ("%persist save", "status", False),
    ],
)
def test_only_command(code: str, command: str, expected: bool) -> None:
    assert only_command(code, command) is expected


# -- pending groups ----------------------------------------------------------------------


def group(*names: str) -> CarriedGroup:
    return CarriedGroup({"names": list(names), "parts": [["h" + names[0], 1]]}, {})


def test_pending_groups_are_carried_until_bound_again(clock: Clock) -> None:
    a = saver(clock)
    a.restored([group("big"), group("df", "view")], has_checkpoint=True)
    assert not a.dirty and a.has_checkpoint
    assert a.pending_names() == ["big", "df", "view"]
    assert [g.record["names"] for g in a.carry(["x"])] == [["big"], ["df", "view"]]
    assert [g.record["names"] for g in a.carry(["x"])] == [["big"], ["df", "view"]]
    assert [g.record["names"] for g in a.carry(["view"])] == [["big"]]
    a.cleared()
    assert a.pending_names() == [] and not a.has_checkpoint


# -- which cells a magic ends -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("%persist save", True),
        ("x = 1\n%persist save\n\n# done\n", True),
        ("%persist save\nx = 2", False),
        ("if True:\n    %persist save", False),
        ("get_ipython().run_line_magic('persist', 'save')", False),
        ("%persist clear", False),
        ("", False),
    ],
)
def test_ends_cell(code: str, expected: bool) -> None:
    assert ends_cell(code, "save") is expected


# -- the writer watch ------------------------------------------------------------------


class FakeLoop:
    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        assert fd not in self.readers
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        del self.readers[fd]

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        entry = (delay, callback)
        self.timers.append(entry)
        return entry

    def cancel(self, handle: Any) -> None:
        self.timers.remove(handle)


class FakeWriter(Writer):
    """A writer that reports when told to; its blocking wait moves the fake clock."""

    def __init__(self, clock: Clock, hangs: bool = False) -> None:
        super().__init__(fd=99, pid=None, result=None)
        self.clock = clock
        self.hangs = hangs
        self.at_eof = False
        self.killed = False
        self.interrupt_wait = False

    def report(self) -> None:
        self._buffer = b'{"ok": true, "generation": 1}'
        self.at_eof = True

    def poll(self) -> bool:
        return self.at_eof

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        if self.interrupt_wait:
            raise KeyboardInterrupt
        if not self.hangs:
            self.report()
            self.finish()
            return self.result
        self.clock.now += timeout or 0.0
        return None

    def finish(self) -> None:
        if self.fd is None:
            return
        self.fd = None
        if self.at_eof and not self.killed:
            self.result = {"ok": True, "generation": 1}
        else:
            self.died = True
            self.result = {"ok": False, "error": "stopped"}

    def kill(self, grace: float = 5.0) -> None:
        self.killed = self.timed_out = True
        self.at_eof = True
        self.finish()


def watch(clock: Clock) -> tuple[WriterWatch, FakeLoop, list[Writer]]:
    done: list[Writer] = []
    loop = FakeLoop()
    return WriterWatch(loop, done.append, clock), loop, done


def test_the_loop_hears_the_writer_report(clock: Clock) -> None:
    w, loop, done = watch(clock)
    writer = FakeWriter(clock)
    w.watch(writer, deadline=10)
    assert w.running and 99 in loop.readers and len(loop.timers) == 1
    loop.readers[99]()  # readable, not at EOF yet
    assert w.running
    writer.report()
    loop.readers[99]()
    assert not w.running and done == [writer] and loop.readers == {} and loop.timers == []
    assert writer.result == {"ok": True, "generation": 1}


def test_a_writer_past_its_deadline_is_killed_and_reported_once(clock: Clock) -> None:
    w, loop, done = watch(clock)
    writer = FakeWriter(clock, hangs=True)
    w.watch(writer, deadline=10)
    delay, expire = loop.timers[0]
    assert delay == 10
    clock.now += 10
    expire()
    assert writer.killed and writer.timed_out and done == [writer]
    assert not w.running and loop.readers == {}


def test_a_blocking_wait_kills_at_the_deadline(clock: Clock) -> None:
    w, loop, done = watch(clock)
    writer = FakeWriter(clock, hangs=True)
    w.watch(writer, deadline=10)
    assert w.wait(timeout=3) is False  # not yet: still watched by the loop
    assert w.running and 99 in loop.readers
    assert w.wait() is True
    assert writer.killed and done == [writer] and clock.now == 1010.0


def test_an_interrupted_wait_leaves_the_writer_watched(clock: Clock) -> None:
    """`%persist save` interrupted: the loop still hears the writer, autosave goes on."""
    w, loop, done = watch(clock)
    writer = FakeWriter(clock)
    w.watch(writer, deadline=10)
    writer.interrupt_wait = True
    with pytest.raises(KeyboardInterrupt):
        w.wait()
    assert w.running and 99 in loop.readers
    writer.report()
    loop.readers[99]()
    assert done == [writer] and not w.running


def test_deadline_scales_with_the_state() -> None:
    assert deadline_for(60, 100) == 60
    assert deadline_for(60, 4 * GiB) == 240
