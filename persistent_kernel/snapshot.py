"""Run a checkpoint job in a detached, forked writer, or inline.

``fork()`` gives the writer a copy-on-write image of the namespace as it is
at that instant (as Redis writes its RDB snapshot), so the kernel answers
its next request at once, whatever the size of the state.

The writer is *detached*: it forks twice and calls ``setsid()``, so it is
neither a child of the kernel nor in its process group. jupyter_client
signals the kernel's process group on interrupt and at shutdown, and
ipykernel terminates its children at shutdown; a detached writer survives
both and finishes the final checkpoint after the kernel is gone.

Inside the writer: no zmq socket is touched, nothing is printed into the
notebook (stdout and stderr go to /dev/null: ipykernel's streams would open
a connection back), SIGINT is ignored, the garbage collector is off (it
would touch, and so copy, every page), the result goes back as JSON through
a pipe, and the process leaves with ``os._exit``.

Limits: POSIX only (elsewhere :func:`fork_supported` is false and jobs run
inline). A forked child of a multi-threaded process may only rely on what
it does itself: the job must not take locks other threads may hold.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import mmap
import os
import select
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

Job = Callable[[], dict[str, Any]]


class Beacon:
    """A page of memory shared with a forked writer, naming what it is doing.

    The writer sets it before pickling each variable; if the writer dies
    (a crash in an extension's ``__reduce__``, the OOM killer), the kernel
    reads the name of the variable it died on. Anonymous MAP_SHARED memory:
    no file, no system call per update.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, self.SIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)

    def set(self, text: str) -> None:
        data = text.encode("utf-8", "replace")[: self.SIZE - 1]
        self._mem[: len(data) + 1] = data + b"\0"

    def get(self) -> str:
        raw = self._mem[: self.SIZE]
        return raw[: raw.index(b"\0")].decode("utf-8", "replace") if b"\0" in raw else ""


def fork_supported() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


def _failure(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
        "errno": getattr(exc, "errno", None),
    }


def private_bytes() -> int | None:
    """Memory this process has of its own (not shared with the kernel), in bytes.

    For a forked writer, this is what copy-on-write cost: the pages it
    touched or allocated. Linux only; ``None`` elsewhere.
    """
    try:
        with open("/proc/self/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    kib = sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty") if k in fields)
    return kib * 1024


def run_job(job: Job) -> dict[str, Any]:
    """Run *job*, turning any exception into a failure result."""
    try:
        return job()
    except BaseException as exc:  # the writer must always report
        return _failure(exc)


class Writer:
    """A running (or finished) checkpoint job, seen from the kernel."""

    def __init__(self, fd: int | None, pid: int | None, result: dict[str, Any] | None) -> None:
        self.fd = fd  # read end of the result pipe; None once closed
        self.pid = pid  # the detached writer's pid, when forked
        self.result = result
        self.started = time.monotonic()
        self.pause = 0.0  # seconds the kernel stopped to start this writer
        self.died = False  # the writer exited without reporting (killed, crashed)
        self.crashed = False  # ... and it was a crash (a fatal signal), not a kill
        self.beacon: Beacon | None = None  # what the writer was saving, if it says
        self._buffer = b""

    @property
    def done(self) -> bool:
        return self.result is not None

    def poll(self) -> bool:
        """Read what the pipe holds without blocking; True once it is at EOF."""
        if self.fd is None:
            return True
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            self._buffer += chunk

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the writer reports (or *timeout* passes); its result.

        The caller must have stopped watching :attr:`fd` in its event loop.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                return None
            assert self.fd is not None
            select.select([self.fd], [], [], remaining)
        self.finish()
        return self.result

    def finish(self) -> None:
        """Close the pipe and decode the result (after :meth:`poll` said EOF)."""
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        try:
            result = json.loads(self._buffer.decode()) if self._buffer else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            self.died = True
            # faulthandler wrote this into the pipe: a crash, not a kill
            self.crashed = b"Fatal Python error" in self._buffer
            how = "crashed" if self.crashed else "was killed"
            result = {"ok": False, "error": f"the background writer {how} before reporting"}
        self.result = result


def run_inline(job: Job) -> Writer:
    """Run *job* in this process and return a finished :class:`Writer`."""
    return Writer(None, None, run_job(job))


def _close_fds_except(keep: Sequence[int]) -> None:
    """Close every descriptor from 3 up but *keep*.

    The writer must not hold the kernel's sockets: a restarted kernel binds
    the same ports again, and would fail while a writer kept them open.
    """
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096)


def _writer_main(job: Job, wfd: int, keep: Sequence[int]) -> None:
    """Body of the detached writer. Never returns."""
    code = 0
    try:
        _close_fds_except([wfd, *keep])
        # A fatal signal (SIGSEGV in an extension, abort()) leaves its mark in
        # the pipe; SIGKILL (the OOM killer, a user) leaves nothing.
        faulthandler.enable(file=wfd, all_threads=False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.disable()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        sys.stdout = sys.stderr = open(devnull, "w", closefd=False)  # noqa: SIM115
        result = run_job(job)
        result["pid"] = os.getpid()
        result["writer_private_bytes"] = private_bytes()
        data = json.dumps(result, default=str).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view) :]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def start_forked(job: Job, inherit: Sequence[int] = ()) -> Writer:
    """Fork a detached writer that runs *job*; return at once.

    *inherit* are descriptors the writer keeps (flocks it must hold); the
    caller closes its own copies afterwards. The kernel's pause is the
    ``fork()`` itself: a few milliseconds per GiB of resident memory.
    """
    rfd, wfd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns on fork() in a threaded process. The child only
        # pickles memory it owns, writes files and exits; it takes no lock
        # another thread could hold (logging, zmq, output streams).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the intermediate child
        try:
            os.close(rfd)
            os.setsid()
            if os.fork() == 0:
                _writer_main(job, wfd, inherit)
        finally:
            os._exit(0)
    os.close(wfd)
    os.waitpid(pid, 0)  # the intermediate child exits at once
    os.set_blocking(rfd, False)
    return Writer(rfd, None, None)
