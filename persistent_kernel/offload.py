"""Jobs shared with a helper process, on a spare core.

Pickling runs at the speed of one core: the C pickler holds the GIL, so
threads cannot share it. A writer with several large variables to pickle and
a second core forks a helper (:func:`start`) before it looks at them: a fork
after that look would make every page the look touched (reference counts)
shared again, to be copied a second time when the writer pickles. Once the
writer knows the jobs it shares them (:meth:`Helper.share`); both then take
jobs from one queue
(a pipe holding job numbers: each read takes one, atomically), so a helper
that gets little CPU (the kernel is busy, the container has one core after
all) simply takes fewer. The helper hands its results back through an
anonymous in-memory file (``memfd``). When the queue is empty, the writer
does itself any job the helper has not finished (:meth:`Helper.unfinished`)
rather than wait for it: nothing waits on the helper. (What it costs when
it gets no CPU is its fork and the CPU it does get.)

Safety: the helper only computes bytes; the writer decides what is stored.
It holds no descriptor of the writer's (the lock, the result pipe), dies with
the thread that started it (``PR_SET_PDEATHSIG``), and runs at a lower
priority than the kernel (``nice``), unless told otherwise (the final
checkpoint of a kernel that is ending, which the next kernel waits for).
Whatever happens to it (killed, crashed, a job that raised), its unfinished
jobs are the writer's.

Limits: Linux only (``memfd_create``, ``prctl``); elsewhere :func:`start`
returns ``None``. At most :data:`MAX_JOBS` jobs (the queue is one pipe's
buffer). The pages the helper touches are copied on write, as in the writer:
what it pickles costs the same memory in either process, not twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import gc
import mmap
import os
import select
import signal
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import snapshot

#: A job number in the queue.
_NUMBER = struct.Struct("<q")
#: Each result in the helper's file: job number, then byte length, then the bytes.
_HEADER = struct.Struct("<qQ")
#: Jobs one queue holds: a pipe's buffer is at least 64 KiB on Linux.
MAX_JOBS = 4096
_PR_SET_PDEATHSIG = 1
#: The helper yields its core to a kernel running cells when both want it.
NICENESS = 10


class Helper:
    """A forked helper taking jobs from a queue it shares with this process."""

    def __init__(self, pid: int, queue: tuple[int, int], go: int, results: int) -> None:
        self.pid = pid
        self._queue, self._fill = queue
        self._go = go
        self._results = results
        self._jobs: list[int] = []
        self._mine: list[int] = []
        self._stopped = False

    def share(self, jobs: Sequence[int]) -> list[int]:
        """Queue *jobs* (job numbers, taken in this order) and let the helper start.

        Returns the jobs queued: all of them, unless the pipe is smaller than
        usual (a user over ``pipe-user-pages-soft`` gets one page), in which
        case the first that fit; the others are not the helper's to do.
        """
        if len(jobs) > MAX_JOBS:
            raise ValueError(f"at most {MAX_JOBS} jobs")
        os.set_blocking(self._fill, False)
        queued = 0
        per_write = select.PIPE_BUF // _NUMBER.size  # a write this small is never split
        while queued < len(jobs):
            batch = jobs[queued : queued + per_write]
            try:
                os.write(self._fill, b"".join(map(_NUMBER.pack, batch)))
            except BlockingIOError:
                break
            queued += len(batch)
        self._jobs = list(jobs[:queued])
        os.close(self._fill)
        self._fill = -1
        os.set_blocking(self._queue, False)  # for both: an empty queue reads EAGAIN
        os.write(self._go, b"g")
        return self._jobs

    def claim(self) -> int | None:
        """Take the next job from the queue for this process; ``None`` once it is empty."""
        try:
            data = os.read(self._queue, _NUMBER.size)
        except BlockingIOError:
            return None
        if len(data) != _NUMBER.size:
            return None
        number: int = _NUMBER.unpack(data)[0]
        self._mine.append(number)
        return number

    def finished(self) -> dict[int, memoryview]:
        """The bytes of each job the helper has finished so far, by job number.

        The views point into one read-only mapping of the helper's file, which
        lives as long as any of them does.
        """
        size = os.fstat(self._results).st_size
        if size == 0:
            return {}
        whole = memoryview(mmap.mmap(self._results, size, prot=mmap.PROT_READ))
        found: dict[int, memoryview] = {}
        at = 0
        while at + _HEADER.size <= size:
            number, length = _HEADER.unpack_from(whole, at)
            if at + _HEADER.size + length > size:
                break  # being written
            at += _HEADER.size
            found[number] = whole[at : at + length]
            at += length
        return found

    def unfinished(self, finished: Mapping[int, Any]) -> list[int]:
        """Jobs neither this process claimed nor the helper finished (call once
        :meth:`claim` has returned ``None``): the one it is on, those it
        declined, and all it had left if it died."""
        return [n for n in self._jobs if n not in finished and n not in self._mine]

    def stop(self) -> None:
        """End the helper (if still running) and free its queue and file."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        for fd in (self._queue, self._fill, self._go, self._results):
            if fd >= 0:
                os.close(fd)


def start(run: Callable[[int], Any], nice: int = NICENESS) -> Helper | None:
    """Fork a helper now; once given jobs (:meth:`Helper.share`) it calls *run*
    with the number of each job it takes, which returns the job's bytes, or
    ``None`` to decline the job (it is then :meth:`Helper.unfinished`). The
    helper lowers its priority by *nice* (0: the caller's own priority).
    ``None`` if no helper can be started here. The helper is killed when the
    thread that started it ends: stop it from that thread."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        results = os.memfd_create("persistent-kernel-helper", os.MFD_CLOEXEC)
    except OSError:
        return None
    parent = os.getpid()
    queue, fill = os.pipe()
    wait, go = os.pipe()
    try:
        pid = snapshot.fork()  # the helper takes no lock another thread could hold
    except OSError:
        for fd in (results, queue, fill, wait, go):
            os.close(fd)
        return None
    if pid == 0:  # pragma: no cover - runs in the helper
        _helper_main(Helper(parent, (queue, fill), wait, results), parent, run, nice)
    os.close(wait)
    return Helper(pid, (queue, fill), go, results)


def _helper_main(helper: Helper, parent: int, run: Callable[[int], Any], nice: int) -> None:
    """Body of the helper (*helper* describes its side). Never returns."""
    code = 1
    try:
        _die_with_parent(parent)
        faulthandler.disable()  # its report would go to the writer's result pipe
        snapshot.close_fds_except([helper._queue, helper._go, helper._results])
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        gc.disable()  # a collection would touch, and so copy, every tracked object
        os.nice(nice)
        if os.read(helper._go, 1) != b"g":  # closed unshared: nothing to do
            os._exit(0)
        while (number := helper.claim()) is not None:
            result = run(number)
            if result is None:  # declined: left to the writer
                continue
            data = memoryview(result).cast("B")
            snapshot.write_all(helper._results, _HEADER.pack(number, data.nbytes))
            snapshot.write_all(helper._results, data)
        code = 0
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the line above
        raise ProcessLookupError(parent)
