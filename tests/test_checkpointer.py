"""The checkpointer in process: a fake host, a fake clock and loop, the inline writer.

What these test is policy and wiring (when a checkpoint is written, what the
user is told, what a clear or a batch run's end leaves behind), so they run
without a kernel and without sleeping. The same wiring is tested with real
kernels in test_kernel.py and test_autosave_kernel.py.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from persistent_kernel import snapshot
from persistent_kernel.autosave import Autosaver
from persistent_kernel.checkpointer import Checkpointer, Settings, Target
from persistent_kernel.restore import load_generation
from persistent_kernel.store import SessionStore, Store

from .helpers import KEY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loop:
    """Timers fire when the test moves the clock past them; callbacks run at once."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        raise AssertionError("an inline writer has no pipe to watch")

    def remove_reader(self, fd: int) -> None:
        raise AssertionError("an inline writer has no pipe to watch")

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        entry = (self.clock() + delay, callback)
        self.timers.append(entry)
        return entry

    def cancel(self, handle: Any) -> None:
        self.timers.remove(handle)

    def call_soon(self, callback: Callable[[], None]) -> None:
        callback()

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        for entry in [t for t in self.timers if t[0] <= self.clock.now]:
            self.timers.remove(entry)
            entry[1]()


class Host:
    def __init__(self, loop: Loop) -> None:
        self.log = logging.getLogger("test-checkpointer")
        self.user_ns: dict[str, Any] = {}
        self.hidden: dict[str, Any] = {}
        self.notices: list[str] = []
        self._loop = loop

    def namespace(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.user_ns, self.hidden

    def notice(self, text: str) -> None:
        self.notices.append(text)

    @property
    def loop(self) -> Loop:
        return self._loop

    def stopping(self) -> bool:
        return False


class Rig:
    """A checkpointer attached to a session on the local disk, and what drives it."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.clock = Clock()
        self.loop = Loop(self.clock)
        self.host = Host(self.loop)
        self.store = Store(root)
        self.session: SessionStore = self.store.session(KEY)
        config = Settings(checkpoint_dir=str(root), background="inline", **settings)
        autosaver = Autosaver(
            self.clock, config.checkpoint_interval, config.autosave, threads=lambda: False
        )
        self.checkpointer = Checkpointer(self.host, config, autosaver)
        self.checkpointer.attach(Target(self.store, self.session, KEY, notebook=KEY))

    def cell(self, **bound: Any) -> None:
        """A cell that binds *bound*, then the kernel goes idle."""
        self.checkpointer.cell_started()
        self.host.user_ns.update(bound)
        self.checkpointer.cell_finished(interrupted=False)
        self.checkpointer.maybe_checkpoint()

    def saved(self) -> dict[str, Any]:
        values, _ = load_generation(self.session)
        return values


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield Rig(tmp_path / "store", checkpoint_interval=0.0)


def test_a_cell_is_checkpointed_once_the_interval_has_passed(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "store", checkpoint_interval=30.0)
    rig.cell(x=1)
    rig.loop.advance(29.0)
    assert rig.session.generations() == [], "checkpointed before the interval passed"
    rig.loop.advance(1.0)
    assert rig.session.generations() == [1]
    rig.cell(y=2)
    rig.loop.advance(29.0)
    assert rig.session.generations() == [1]
    rig.loop.advance(1.0)
    assert rig.session.generations() == [1, 2]
    assert rig.saved() == {"x": 1, "y": 2}


def test_nothing_is_written_while_nothing_changed(rig: Rig) -> None:
    rig.cell(x=[1, 2, 3])
    rig.loop.advance(3600.0)
    rig.checkpointer.maybe_checkpoint()  # idle again, many times over: no change, no write
    rig.loop.advance(3600.0)
    assert rig.session.generations() == [1]
    assert rig.loop.timers == []


def test_a_checkpoint_that_fails_tells_the_user_once_and_backs_off(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.cell(x=1)

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    # A fake for a fault this test cannot make for real (root ignores permissions).
    with monkeypatch.context() as patch:
        patch.setattr(SessionStore, "write_blob", full)
        rig.cell(y=[2])
        assert rig.checkpointer.last_result is not None
        assert not rig.checkpointer.last_result.ok
        assert len(rig.host.notices) == 1, rig.host.notices
        assert "Your previous checkpoint is kept" in rig.host.notices[0]
        rig.loop.advance(5.0)  # the first retry, after 5 s: fails again, and says nothing
        assert rig.checkpointer.autosaver.failures == 2
        assert len(rig.host.notices) == 1
    rig.loop.advance(9.0)
    assert rig.session.generations() == [1]  # the second retry comes 10 s later
    rig.loop.advance(1.0)
    assert rig.session.generations() == [1, 2]
    assert rig.host.notices[-1] == "persistent-kernel: checkpoints are being saved again."


def test_a_failed_upload_is_told_once_and_retried_by_its_own_backoff(rig: Rig) -> None:
    rig.cell(x=1)
    autosaver = rig.checkpointer.autosaver
    assert autosaver.uploaded("bucket down") is not None
    assert not autosaver.upload_due()
    assert autosaver.due() == pytest.approx(5.0)  # a checkpoint then carries the retry
    rig.cell(y=2)  # meanwhile local checkpoints keep their rhythm
    assert rig.session.generations() == [1, 2]
    assert autosaver.uploaded("bucket down") is None  # told once
    assert autosaver.due() == pytest.approx(10.0)
    rig.clock.now += 10.0
    assert autosaver.upload_due()
    assert autosaver.uploaded(None) == "checkpoints reach the bucket again."
    assert autosaver.uploaded(None) is None
    assert autosaver.due() is None


def test_a_failure_on_a_buckets_local_disk_names_the_disk_never_the_urls_keys(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persistent_kernel.store.tiers import SECRET_ENV, BucketStore

    monkeypatch.setenv(SECRET_ENV, "ab" * 32)
    url = (
        "s3://bkt/users/ada?endpoint=http://127.0.0.1:1"
        "&access_key_id=AKIAEXAMPLE&secret_access_key=TOPSECRET"
    )
    store = BucketStore(url, cache_root=tmp_path / "tier")
    checkpointer = rig.checkpointer
    checkpointer.settings = dataclasses.replace(checkpointer.settings, checkpoint_dir=url)
    checkpointer.attach(Target(store, store.local().session(KEY), KEY, notebook=KEY))
    ticket = checkpointer.autosaver.begin()
    # A full disk cannot be made here (tests run as root, on a large disk): its report is.
    full = snapshot.failure(OSError(errno.ENOSPC, "No space left on device"))
    checkpointer._settle(ticket, snapshot.Writer(None, None, full))
    told = rig.host.notices[-1]
    assert "TOPSECRET" not in told and f"the disk holding {tmp_path / 'tier'} is full" in told


def test_clear_forgets_the_checkpoints_and_the_next_change_saves_again(rig: Rig) -> None:
    rig.cell(x=1)
    rig.checkpointer.clear()
    assert rig.session.generations() == []
    assert rig.checkpointer.last_result is None
    rig.checkpointer.maybe_checkpoint()
    assert rig.session.generations() == []  # what was there is not wanted
    rig.cell(y=2)
    assert rig.saved() == {"y": 2}  # ... not by the next change either


def test_clear_stays_in_force_until_a_name_is_assigned_again(rig: Rig) -> None:
    """What the namespace held at ``%persist clear`` is not saved by the next cells
    (``%persist`` itself is one), nor listed as skipped, until assigned again."""
    ns = rig.host.user_ns
    ns["In"] = ["", "import json\nx = [1]\nkept = [2]\ng = (i for i in [])", "%persist clear"]
    rig.cell(json=__import__("json"), x=[1], kept=[2], g=(i for i in []))
    rig.checkpointer.clear()
    rig.cell()  # a cell that binds nothing, as `%persist` status
    assert rig.session.generations() == []
    result = rig.checkpointer.last_result
    assert result is not None and result.ok and result.skipped == {} and result.saved == []
    ns["kept"].append(3)  # changed in place: its name was not assigned
    rig.cell(y=2)
    assert rig.saved() == {"y": 2}
    assert rig.checkpointer.last_result is not None
    assert rig.checkpointer.last_result.skipped == {}
    rig.cell(x=[1, 1])  # another object under the name
    ns["In"].append("import json\nkept = kept")  # a cell assigns the same objects again
    rig.cell()
    assert rig.saved() == {"y": 2, "x": [1, 1], "kept": [2, 3], "json": __import__("json")}


def test_excluded_names_are_never_written(rig: Rig) -> None:
    rig.checkpointer.update_notebook_settings({"exclude": ["secret*"]})
    rig.cell(secret_token="s3cr3t", x=1)
    assert rig.saved() == {"x": 1}
    files = [p for p in rig.session.path.rglob("*") if p.is_file()]
    assert b"s3cr3t" not in b"".join(p.read_bytes() for p in files)


def test_settings_changed_at_run_time_reach_the_policy(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "store", checkpoint_interval=30.0)
    rig.cell(x=1)
    assert len(rig.loop.timers) == 1
    now = Settings(checkpoint_dir="", checkpoint_interval=0.0, background="inline")
    rig.checkpointer.configure(now)
    assert rig.session.generations() == [1]  # due at once: written by the change itself
    rig.checkpointer.configure(Settings(checkpoint_dir="", autosave=False, background="inline"))
    rig.cell(z=3)
    rig.loop.advance(3600.0)
    assert rig.session.generations() == [1]


def test_a_batch_run_ending_for_good_removes_its_checkpoints(rig: Rig) -> None:
    assert rig.checkpointer.target is not None
    rig.checkpointer.target.ephemeral = True
    rig.cell(x=1)
    assert rig.session.generations() == [1]
    rig.checkpointer.final(shutdown_restart=True)  # a restart: kept for the next kernel
    assert rig.session.path.exists()
    rig.checkpointer.final(shutdown_restart=False)
    assert not rig.session.path.exists()


def test_the_final_checkpoint_saves_what_changed_and_only_that(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "store", checkpoint_interval=30.0)
    rig.cell(x=1)
    rig.cell(y=2)  # within the interval: not saved yet
    assert rig.session.generations() == []
    rig.checkpointer.final(shutdown_restart=None)
    assert rig.saved() == {"x": 1, "y": 2}
    rig.checkpointer.final(shutdown_restart=None)
    assert rig.session.generations() == [1]


def test_a_cell_running_at_the_end_is_not_saved_halfway(rig: Rig) -> None:
    rig.cell(x=1)
    rig.checkpointer.cell_started()
    rig.host.user_ns["x"] = "half"
    assert rig.checkpointer.write_standby_if_running()
    rig.checkpointer.final(shutdown_restart=None)
    assert rig.session.generations() == [1]
    assert rig.saved() == {"x": 1}


def test_nothing_is_written_before_the_restore_has_ended(tmp_path: Path) -> None:
    clock = Clock()
    host = Host(Loop(clock))
    config = Settings(checkpoint_dir=str(tmp_path), background="inline", checkpoint_interval=0)
    checkpointer = Checkpointer(host, config, Autosaver(clock, 0.0, threads=lambda: False))
    checkpointer.cell_started()
    host.user_ns["x"] = 1
    checkpointer.cell_finished(interrupted=False)
    checkpointer.maybe_checkpoint()
    checkpointer.final(shutdown_restart=None)
    assert not any(tmp_path.iterdir())


def test_write_tracking_off_in_the_settings_is_off_from_the_start(tmp_path: Path) -> None:
    clock = Clock()
    off = Settings(checkpoint_dir=str(tmp_path), track_writes=False)
    assert Checkpointer(Host(Loop(clock)), off).tracking.get(create=True) is None


def test_a_checkpoint_that_found_nothing_changed_does_not_put_off_the_next(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "store", checkpoint_interval=30.0)
    rig.cell(x=1)
    rig.loop.advance(30.0)
    assert rig.session.generations() == [1]
    rig.loop.advance(40.0)
    rig.cell()  # changes nothing: checkpointed at once, and found unchanged
    assert rig.checkpointer.last_result is not None and rig.checkpointer.last_result.unchanged
    rig.loop.advance(4.0)
    rig.cell(x=2)  # 44 s after the last checkpoint that wrote: saved at the next idle
    assert rig.session.generations() == [1, 2]
    rig.loop.advance(10.0)
    rig.cell(x=3)  # within the interval of that one: waits for it
    assert rig.session.generations() == [1, 2]
    rig.loop.advance(20.0)
    assert rig.session.generations() == [1, 2, 3]


def test_after_a_restore_the_first_change_is_saved_at_the_next_idle(tmp_path: Path) -> None:
    first = Rig(tmp_path / "store", checkpoint_interval=30.0)
    first.cell(x=1)
    first.checkpointer.final(shutdown_restart=True)
    assert first.session.generations() == [1]
    # the next kernel restores generation 1 (the restore writes nothing) ...
    clock, host = first.clock, Host(first.loop)
    host.user_ns.update(first.saved())
    config = Settings(checkpoint_dir=str(tmp_path), background="inline", checkpoint_interval=30)
    autosaver = Autosaver(clock, 30.0, threads=lambda: False)
    checkpointer = Checkpointer(host, config, autosaver)
    target = first.checkpointer.target
    assert target is not None
    checkpointer.attach(target, has_checkpoint=True)
    # ... and its first change is saved at once: the interval did not start again
    checkpointer.cell_started()
    host.user_ns["y"] = 2
    checkpointer.cell_finished(interrupted=False)
    checkpointer.maybe_checkpoint()
    assert first.session.generations() == [1, 2]


def test_cells_that_ran_during_the_restore_are_saved_once_it_ended(tmp_path: Path) -> None:
    first = Rig(tmp_path / "store", checkpoint_interval=0.0)
    first.cell(x=1)
    assert first.session.generations() == [1]
    clock, host = first.clock, Host(first.loop)
    config = Settings(checkpoint_dir=str(tmp_path), background="inline", checkpoint_interval=0)
    checkpointer = Checkpointer(host, config, Autosaver(clock, 0.0, threads=lambda: False))
    # the next kernel is still restoring generation 1 when a cell that needs none of
    # its names runs: nothing is written while the restore binds (no target) ...
    checkpointer.cell_started()
    checkpointer.cell_during_restore()
    host.user_ns["y"] = 2
    checkpointer.cell_finished(interrupted=False)
    checkpointer.maybe_checkpoint()
    checkpointer.final(shutdown_restart=None)
    assert first.session.generations() == [1]
    # ... and once it has ended, the cell's change is unsaved, not taken as restored
    host.user_ns.update(first.saved())
    target = first.checkpointer.target
    assert target is not None
    checkpointer.attach(target, has_checkpoint=True, written_at=0.0)
    assert checkpointer.autosaver.dirty
    checkpointer.maybe_checkpoint()
    assert first.session.generations() == [1, 2]
    values, _ = load_generation(first.session)
    assert values == {"x": 1, "y": 2}


def test_a_restore_with_no_cell_beside_it_leaves_nothing_unsaved(tmp_path: Path) -> None:
    clock = Clock()
    host = Host(Loop(clock))
    config = Settings(checkpoint_dir=str(tmp_path), background="inline")
    checkpointer = Checkpointer(host, config, Autosaver(clock, 30.0, threads=lambda: False))
    checkpointer.cell_started()  # the first cell, waiting for the whole restore
    rig = Rig(tmp_path / "store")
    assert rig.checkpointer.target is not None
    checkpointer.attach(rig.checkpointer.target, has_checkpoint=True)
    assert not checkpointer.autosaver.dirty
    checkpointer.cell_finished(interrupted=False)  # it ran after the restore: a change
    assert checkpointer.autosaver.dirty


def test_the_exclusion_is_named_by_who_made_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "store", checkpoint_interval=0.0, exclude=("cfg_*",))
    rig.checkpointer.update_notebook_settings({"exclude": ["token"]})
    rig.cell(token="s", cfg_a=1, x=1)
    result = rig.checkpointer.last_result
    assert result is not None
    assert result.skipped == {
        "token": "excluded by %persist exclude",
        "cfg_a": "excluded by configuration",
    }


def test_committed_is_the_last_checkpoint_that_wrote(rig: Rig) -> None:
    rig.cell(x=list(range(1000)))
    written = rig.checkpointer.committed
    assert written is not None and written.written > 0 and not written.unchanged
    rig.cell()  # nothing changed: the generation is the same, and so is what wrote it
    assert rig.checkpointer.last_result is not None and rig.checkpointer.last_result.unchanged
    assert rig.checkpointer.committed is written
