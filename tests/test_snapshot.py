"""Forked writers and standbys as real processes: what they write, when they die."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from persistent_kernel import snapshot

pytestmark = pytest.mark.skipif(not snapshot.fork_supported(), reason="needs fork()")


def wait_for(path: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def writes(path: Path) -> snapshot.Job:
    def job() -> dict[str, Any]:
        path.write_text("written")
        return {"ok": True}

    return job


def test_a_dropped_standby_writes_nothing(tmp_path: Path) -> None:
    standby = snapshot.start_standby(writes(tmp_path / "out"), deadline=10)
    standby.drop()
    deadline = time.monotonic() + 10
    while not standby.reap():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not (tmp_path / "out").exists()


def test_a_standby_told_to_write_writes(tmp_path: Path) -> None:
    standby = snapshot.start_standby(writes(tmp_path / "out"), deadline=10)
    standby.write()
    assert wait_for(tmp_path / "out")


def test_a_standby_writes_when_the_kernel_dies(tmp_path: Path) -> None:
    """End of file on its pipe (the kernel was SIGKILLed) means: write."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the "kernel"
        snapshot.start_standby(writes(tmp_path / "out"), deadline=10)
        os._exit(0)  # dies without a word to its standby
    os.waitpid(pid, 0)
    assert wait_for(tmp_path / "out")


def test_a_forked_writer_past_its_deadline_is_killed(tmp_path: Path) -> None:
    def hangs() -> dict[str, Any]:
        time.sleep(60)
        return {"ok": True}

    writer = snapshot.start_forked(hangs, deadline=30)
    assert writer.pid is not None and writer.pid != os.getpid()
    writer.kill()
    assert writer.timed_out and writer.died and writer.result is not None
    assert "stopped at its deadline" in str(writer.result["error"])
    deadline = time.monotonic() + 5  # its pipe closes a moment before it is gone
    while alive(writer.pid):
        assert time.monotonic() < deadline, "the writer outlived its kill"
        time.sleep(0.01)


def test_a_writer_nobody_watches_ends_itself_at_its_deadline() -> None:
    def hangs() -> dict[str, Any]:
        time.sleep(60)
        return {"ok": True}

    began = time.monotonic()
    writer = snapshot.start_forked(hangs, deadline=0.5)
    result = writer.wait(timeout=30)
    assert result is not None and writer.died and not writer.crashed
    assert time.monotonic() - began < 10  # 0.5 s + the grace the kernel's own kill gets


def test_a_forked_writer_is_detached_and_leaves_no_zombie(tmp_path: Path) -> None:
    """The kernel forks once and goes on; the intermediate child that detaches the
    writer (so ipykernel's end-of-kernel cleanup does not reach it) is reaped by the
    time the writer's result is read, and the writer is no child of the kernel."""
    import psutil

    me = psutil.Process()
    before = {c.pid for c in me.children()}  # other tests' children, if any
    writer = snapshot.start_forked(writes(tmp_path / "out"), deadline=30)
    result = writer.wait(timeout=30)
    assert result is not None and result.get("ok", True) and wait_for(tmp_path / "out")
    assert {c.pid for c in me.children()} <= before  # the intermediate child was reaped
    assert writer.pid is not None and writer.pid not in before


def test_a_standby_notes_how_its_kernel_ended(tmp_path: Path) -> None:
    """The orders on the pipe: the cell that was running when the kernel died, or none."""
    out = tmp_path / "ended.json"

    def note(ended: dict[str, Any]) -> None:
        out.write_text(json.dumps(ended))

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the "kernel"
        standby = snapshot.start_standby(writes(tmp_path / "out"), deadline=10, note=note)
        standby.cell("first = 1\nsecond = 2")
        standby.cell_ended()
        standby.cell("x = 'cut'\ntime.sleep(60)")
        os._exit(0)  # killed mid-cell
    os.waitpid(pid, 0)
    assert wait_for(tmp_path / "out")
    ended = json.loads(out.read_text())
    assert ended["how"] == "killed" and ended["cell"] == "x = 'cut'\ntime.sleep(60)"
    assert abs(ended["at"] - time.time()) < 30


def test_the_beacon_carries_how_far_a_writer_is() -> None:
    beacon = snapshot.Beacon()
    assert beacon.read_progress() == (0, 0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the writer
        beacon.set("df")
        beacon.progress(3 << 30, 4 << 30)
        os._exit(0)
    os.waitpid(pid, 0)
    assert beacon.get() == "df" and beacon.read_progress() == (3 << 30, 4 << 30)
