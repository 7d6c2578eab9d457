"""offload: jobs shared with a forked helper process, and every way it can fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from persistent_kernel import offload

from .helpers import wait_until


def gone(pid: int) -> bool:
    """True once *pid* has exited (reaped, or a zombie nobody reaps)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def sleeper() -> bytes:
    time.sleep(60)
    return b"late"


def started(marker: Path, then: Callable[[], bytes] = sleeper) -> Callable[[], bytes]:
    """A job that leaves *marker* when it starts, then runs *then*."""

    def job() -> bytes:
        marker.touch()
        return then()

    return job


Job = Callable[[], "bytes | None"]


def start(jobs: dict[int, Job]) -> offload.Helper:
    """A helper given *jobs* by number, in this order."""
    helper = offload.start(lambda number: jobs[number]())
    assert helper is not None
    helper.share(list(jobs))
    return helper


def ended(helper: offload.Helper) -> tuple[list[int], list[int], list[int]]:
    """Once the helper has exited: the jobs still queued (now claimed here), the
    jobs it finished, and those it left unfinished."""
    wait_until(lambda: gone(helper.pid), timeout=60, what="the helper to end")
    left = list(iter(helper.claim, None))
    finished = helper.finished()
    return left, sorted(finished), helper.unfinished(finished)


def test_the_queue_is_shared_and_each_job_done_once() -> None:
    def job(n: int) -> Callable[[], bytes]:
        def run() -> bytes:
            time.sleep(0.05)
            return bytes([n]) * (n * 100_000)  # up to 2 MiB: more than a pipe holds

        return run

    helper = start({n: job(n) for n in range(20)})
    try:
        mine = []
        while (n := helper.claim()) is not None:
            mine.append(n)
            job(n)()
        wait_until(lambda: gone(helper.pid), timeout=60, what="the helper to see the queue empty")
        finished = helper.finished()
        assert helper.unfinished(finished) == []
        assert sorted([*mine, *finished]) == list(range(20))  # each once, by one side
        assert finished and mine  # both took some
        assert all(bytes(data) == bytes([n]) * (n * 100_000) for n, data in finished.items())
    finally:
        helper.stop()


def test_a_helper_killed_midway_leaves_its_job_to_this_process(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    helper = start({0: lambda: b"done", 1: started(marker)})
    try:
        wait_until(marker.exists, timeout=60, what="the helper to start job 1")
        os.kill(helper.pid, signal.SIGKILL)
        assert helper.claim() is None
        finished = helper.finished()
        assert {n: bytes(d) for n, d in finished.items()} == {0: b"done"}
        assert helper.unfinished(finished) == [1]
    finally:
        helper.stop()


def test_a_failing_job_leaves_it_and_the_rest_to_this_process() -> None:
    def fails() -> bytes:
        raise ValueError("no")

    helper = start({0: lambda: b"a", 1: fails, 2: lambda: b"c"})
    try:
        # 2 was never taken by the helper; 1 failed in it
        assert ended(helper) == ([2], [0], [1])
    finally:
        helper.stop()


def test_the_job_still_running_is_unfinished_and_stop_ends_it(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    helper = start({0: started(marker)})
    wait_until(marker.exists, timeout=60, what="the helper to start")
    assert helper.claim() is None
    assert helper.unfinished(helper.finished()) == [0]
    helper.stop()
    assert gone(helper.pid)
    with pytest.raises(ChildProcessError):  # reaped: no zombie is left behind
        os.waitpid(helper.pid, os.WNOHANG)
    helper.stop()  # twice is harmless


def test_a_helper_given_nothing_to_do_is_stopped() -> None:
    helper = offload.start(lambda number: b"")
    assert helper is not None
    with pytest.raises(ValueError):
        helper.share(list(range(offload.MAX_JOBS + 1)))
    helper.stop()
    assert gone(helper.pid)


def test_a_declined_job_is_left_to_this_process() -> None:
    helper = start({0: lambda: None, 1: lambda: b"b"})
    try:
        assert ended(helper) == ([], [1], [0])
    finally:
        helper.stop()


def test_the_helper_holds_none_of_its_parents_descriptors(tmp_path: Path) -> None:
    """The writer's lock and result pipe must close when the writer does."""
    marker = tmp_path / "started"
    with tempfile.TemporaryFile() as held:
        helper = start({0: started(marker)})
        try:
            wait_until(marker.exists, timeout=60, what="the helper to start")
            fds = {
                int(fd): os.readlink(f"/proc/{helper.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{helper.pid}/fd")
            }
            assert held.fileno() not in fds
            kept = sorted(target.split(":")[0] for fd, target in fds.items() if fd > 2)
            assert kept == ["/memfd", "pipe", "pipe"], fds  # its results, the queue, the start
        finally:
            helper.stop()


def test_the_helper_dies_with_the_process_that_started_it() -> None:
    """A writer killed (deadline, OOM, a user) takes its helper with it."""
    code = textwrap.dedent(
        """
        import time
        from persistent_kernel import offload
        def sleeper(number):
            time.sleep(60)
            return b""
        helper = offload.start(sleeper)
        helper.share([0])
        print(helper.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not gone(pid)
        parent.kill()
        parent.wait(timeout=30)
        wait_until(lambda: gone(pid), timeout=30, what="the helper to end with its parent")
    finally:
        parent.kill()
        parent.wait(timeout=30)
        if parent.stdout is not None:
            parent.stdout.close()


def test_a_small_pipe_queues_what_fits_and_leaves_the_rest_here() -> None:
    """A user over ``pipe-user-pages-soft`` gets pipes of one page: the queue
    takes the first 512 jobs and never blocks the writer."""
    import fcntl

    helper = offload.start(lambda number: bytes([number % 256]))
    assert helper is not None
    try:
        fcntl.fcntl(helper._fill, fcntl.F_SETPIPE_SZ, 4096)  # as such a user's pipe
        queued = helper.share(list(range(offload.MAX_JOBS)))
        assert queued == list(range(512))
        wait_until(lambda: gone(helper.pid), timeout=60, what="the helper to finish")
        finished = helper.finished()
        assert sorted(finished) == queued and helper.unfinished(finished) == []
    finally:
        helper.stop()


def test_the_helper_yields_unless_told_not_to(tmp_path: Path) -> None:
    """Below the kernel's priority while cells may run; at the writer's own for
    a final checkpoint, which the next kernel waits for."""
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    for nice, expected in ((offload.NICENESS, min(19, mine + offload.NICENESS)), (0, mine)):
        marker = tmp_path / f"started-{nice}"
        helper = offload.start(lambda number, marker=marker: started(marker)(), nice)
        assert helper is not None
        try:
            helper.share([0])
            wait_until(marker.exists, timeout=60, what="the helper to start")
            assert os.getpriority(os.PRIO_PROCESS, helper.pid) == expected
        finally:
            helper.stop()
