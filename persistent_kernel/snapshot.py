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

import contextlib
import faulthandler
import gc
import json
import math
import mmap
import os
import select
import signal
import struct
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from . import quickexit

Job = Callable[[], dict[str, Any]]

DEADLINE_GRACE = 2.0  # seconds a writer lives past its deadline when nobody kills it


class Beacon:
    """A page of memory shared with a forked writer, naming what it is doing.

    The writer sets it before pickling each variable; if the writer dies
    (a crash in an extension's ``__reduce__``, the OOM killer), the kernel
    reads the name of the variable it died on. Anonymous MAP_SHARED memory:
    no file, no system call per update.
    """

    SIZE = 4096
    #: The last 16 bytes: bytes stored so far and in all, for the progress shown.
    _TEXT = SIZE - 16

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, self.SIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)

    def set(self, text: str) -> None:
        data = text.encode("utf-8", "replace")[: self._TEXT - 1]
        self._mem[: len(data) + 1] = data + b"\0"

    def get(self) -> str:
        raw = self._mem[: self._TEXT]
        return raw[: raw.index(b"\0")].decode("utf-8", "replace") if b"\0" in raw else ""

    def progress(self, done: int, total: int) -> None:
        """The writer has stored *done* of the *total* bytes of its parts (hashed
        or written: an unchanged chunk counts as it is named)."""
        self._mem[self._TEXT :] = struct.pack("<QQ", done, total)

    def read_progress(self) -> tuple[int, int]:
        """``(done, total)`` as the writer last set them; ``(0, 0)`` before it has."""
        done, total = struct.unpack("<QQ", self._mem[self._TEXT :])
        return int(done), int(total)


def fork_supported() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


def failure(exc: BaseException) -> dict[str, Any]:
    """A failed job's result for *exc*."""
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
        return failure(exc)


class Writer:
    """A running (or finished) checkpoint job, seen from the kernel."""

    def __init__(self, fd: int | None, pid: int | None, result: dict[str, Any] | None) -> None:
        self.fd = fd  # read end of the result pipe; None once closed
        self._pid = pid
        # A forked writer's parent, which exits as soon as it has forked the writer
        # and sent its pid: (its pid, the read end of that pipe); reaped on first need.
        self._intermediate: tuple[int, int] | None = None
        self.result = result
        self.started = time.monotonic()
        self.pause = 0.0  # seconds the kernel stopped to start this writer
        self.died = False  # the writer exited without reporting (killed, crashed)
        self.crashed = False  # ... and it was a crash (a fatal signal), not a kill
        self.beacon: Beacon | None = None  # what the writer was saving, if it says
        self.tracked_fork = 0  # its fork's number for pagewrites.Tracker, if tracked
        self.timed_out = False  # ... because it passed its deadline and was killed
        self._buffer = b""

    @property
    def pid(self) -> int | None:
        """The detached writer's pid, when forked.

        The first use reads it from the intermediate child and reaps that
        child; :func:`start_forked` does not wait for it, so that the kernel's
        pause is one ``fork()``, not two plus an exit.
        """
        if self._intermediate is not None:
            child, pid_r = self._intermediate
            self._intermediate = None
            try:
                data = os.read(pid_r, 8)  # sent right after the second fork
            finally:
                os.close(pid_r)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)  # exits right after sending it
            self._pid = struct.unpack("q", data)[0] if len(data) == 8 else None
        return self._pid

    @pid.setter
    def pid(self, value: int | None) -> None:
        self._pid = value

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

    def kill(self, grace: float = 5.0) -> None:
        """Stop a writer that passed its deadline: SIGKILL, then read to EOF.

        Only while its pipe is open: the writer holds the write end until it
        exits, so the pid is still its own. Waits at most *grace* seconds for
        the pipe to close (a killed process closes it at once).
        """
        if self.fd is None or self.pid is None:
            return
        if not self.poll():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.timed_out = True
            deadline = time.monotonic() + grace
            while not self.poll() and time.monotonic() < deadline:
                select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        self.finish()

    def finish(self) -> None:
        """Close the pipe and decode the result (after :meth:`poll` said EOF)."""
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        _ = self.pid  # reap the intermediate child, if not yet
        try:
            result = json.loads(self._buffer.decode()) if self._buffer else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            self.died = True
            # faulthandler wrote this into the pipe: a crash, not a kill
            self.crashed = b"Fatal Python error" in self._buffer
            how = (
                "crashed"
                if self.crashed
                else "was stopped at its deadline"
                if self.timed_out
                else "was killed"
            )
            result = {"ok": False, "error": f"the background writer {how} before reporting"}
        self.result = result


def run_inline(job: Job) -> Writer:
    """Run *job* in this process and return a finished :class:`Writer`."""
    return Writer(None, None, run_job(job))


def _quiet_child() -> None:
    """Cut a forked child off the kernel's standard streams and its cyclic collector.

    The streams are the kernel's (zmq-backed in a kernel): a child that wrote
    to them would interleave with the parent's messages. The collector is off
    because a collection would touch, and so copy, every tracked object's page.
    """
    gc.disable()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    sys.stdout = sys.stderr = open(devnull, "w", closefd=False)  # noqa: SIM115


def close_fds_except(keep: Sequence[int]) -> None:
    """Close every descriptor from 3 up but *keep*.

    A forked child must not hold the kernel's sockets: a restarted kernel binds
    the same ports again, and would fail while a writer kept them open.
    """
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096)


def _writer_main(job: Job, wfd: int, keep: Sequence[int], deadline: float | None) -> None:
    """Body of the detached writer. Never returns."""
    code = 0
    try:
        close_fds_except([wfd, *keep])
        _arm_deadline(deadline)
        # A fatal signal (SIGSEGV in an extension, abort()) leaves its mark in
        # the pipe; SIGKILL (the OOM killer, a user) leaves nothing.
        faulthandler.enable(file=wfd, all_threads=False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _quiet_child()
        result = run_job(job)
        result["pid"] = os.getpid()
        result["writer_private_bytes"] = private_bytes()
        write_all(wfd, json.dumps(result, default=str).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _arm_deadline(seconds: float | None) -> None:
    """End this process (SIGALRM, default action) *seconds* from now.

    The backstop for a writer nobody watches any more (the final checkpoint
    of a kernel that has exited): no writer outlives its deadline, so the
    next kernel never waits for a stuck one longer than that.
    """
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    if seconds is not None:
        # A little later than the kernel's own kill, which names the culprit.
        signal.alarm(max(1, math.ceil(seconds + DEADLINE_GRACE)))


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of *data* to the descriptor *fd* (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fork() -> int:
    """``os.fork()``, without Python 3.12's warning about threads (see below)."""
    with warnings.catch_warnings():
        # Python 3.12+ warns on fork() in a threaded process. The child only
        # pickles memory it owns, writes files and exits; it takes no lock
        # another thread could hold (logging, zmq, output streams).
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def start_forked(job: Job, inherit: Sequence[int] = (), deadline: float | None = None) -> Writer:
    """Fork a detached writer that runs *job*; return at once.

    *inherit* are descriptors the writer keeps (flocks it must hold); the
    caller closes its own copies afterwards. The writer ends itself
    *deadline* seconds from now, whoever watches it. The kernel's pause is
    one ``fork()``: a few milliseconds per GiB of resident memory. The writer
    is detached by a second fork in an intermediate child (so that it is not
    the kernel's child, which ipykernel ends at shutdown); that child is
    reaped when the writer's pid is first needed (:attr:`Writer.pid`).
    """
    rfd, wfd = os.pipe()
    pid_r, pid_w = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - runs in the intermediate child
        try:
            os.close(rfd)
            os.close(pid_r)
            os.setsid()
            child = os.fork()
            if child == 0:
                os.close(pid_w)
                _writer_main(job, wfd, inherit, deadline)
            os.write(pid_w, struct.pack("q", child))
        finally:
            os._exit(0)
    os.close(wfd)
    os.close(pid_w)
    os.set_blocking(rfd, False)
    writer = Writer(rfd, None, None)
    # Not waited for here: its second fork and its exit run beside the kernel.
    writer._intermediate = (pid, pid_r)
    return writer


def resident_bytes() -> int:
    """This process's resident memory in bytes (0 where it cannot be read).

    What a writer may have to pickle at most: its deadline scales with it.
    """
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return 0


class Standby:
    """A forked copy of the namespace, written if the kernel ends before it is saved.

    Kept while the namespace holds changes no checkpoint has seen: forked
    when a cell that changed the namespace has finished (after its reply),
    or when a cell starts on such changes and none is kept. If the kernel is
    stopped (restart, shutdown, SIGTERM) or dies (SIGKILL, the OOM killer)
    before a checkpoint saves that state, the standby writes it: the state
    after the last finished cell, never half of a running one. Once a
    checkpoint has saved it, :meth:`drop` lets it go without writing.

    The standby is the kernel's child in a session of its own (so
    ipykernel's and jupyter_client's signals to the kernel's process group
    miss it). It reads orders from a pipe: ``c`` and a cell's first line
    (a cell starts), ``e`` (it ended and changed nothing), ``d`` (exit
    without writing), ``w`` (write: the kernel stops mid-cell), and end of
    file (the kernel died: write, noting when, and which cell was running). It costs one ``fork()``
    per cell that changes the namespace, off the reply's path, and the pages
    the kernel changes are copied once while it lives. :func:`prefer_oom_kill`
    makes the kernel, not its standby, the OOM killer's choice.
    """

    def __init__(self, pid: int, control: int, epoch: int = 0) -> None:
        self.pid = pid
        self.epoch = epoch  # the state it holds: the kernel's count of changes at the fork
        self._control: int | None = control

    def _send(self, order: bytes, payload: bytes = b"", last: bool = True) -> None:
        if self._control is None:
            return
        try:
            os.write(self._control, order + len(payload).to_bytes(4, "big") + payload)
        except OSError:
            last = True  # it is gone: nothing more to tell it
        if last:
            with contextlib.suppress(OSError):
                os.close(self._control)
            self._control = None

    def cell(self, source: str) -> None:
        """A cell starts: if the kernel dies now, the state held is from before it."""
        self._send(b"c", source[:CELL_NOTE].encode("utf-8", "replace"), last=False)

    def cell_ended(self) -> None:
        """The running cell ended without a change: the state held is still the newest."""
        self._send(b"e", last=False)

    def drop(self) -> None:
        """Exit without writing."""
        self._send(b"d")

    def write(self) -> None:
        """The kernel is ending mid-cell: write the snapshot (detached; do not wait)."""
        self._send(b"w")

    def reap(self) -> bool:
        """Collect the exited standby (no zombie left); True once it has exited."""
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True
        return pid != 0


#: How much of a running cell's source a standby keeps, to name the cell a kill cut.
CELL_NOTE = 400


def read_orders(fd: int, clock: Callable[[], float] = time.time) -> dict[str, Any] | None:
    """In the standby: read orders until one ends the wait (see :class:`Standby`).

    Returns None to exit without writing, else what to record of the end in
    the generation written:
    ``{"how": "killed" | "stopped", "at": time, "cell": first line or None}``.
    """
    running: str | None = None
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as pipe:

        def exactly(n: int) -> bytes | None:
            data = b""
            while len(data) < n:
                piece = pipe.read(n - len(data))
                if not piece:
                    return None
                data += piece
            return data

        while True:
            head = exactly(5)
            if head is None:  # end of file: the kernel died without a word
                return {"how": "killed", "at": clock(), "cell": running}
            order, size = head[:1], int.from_bytes(head[1:], "big")
            payload = exactly(size) if size else b""
            if payload is None:
                return {"how": "killed", "at": clock(), "cell": running}
            if order == b"c":
                running = payload.decode("utf-8", "replace")
            elif order == b"e":
                running = None
            elif order == b"d":
                return None
            else:  # "w": stopped while a cell ran
                return {"how": "stopped", "at": clock(), "cell": running}


def start_standby(
    job: Job,
    inherit: Sequence[int] = (),
    deadline: float | None = None,
    epoch: int = 0,
    note: Callable[[dict[str, Any]], None] | None = None,
) -> Standby:
    """Fork a :class:`Standby` that runs *job* only if told to (or if the kernel dies).

    *note* is called in the standby, before *job*, with what :func:`read_orders`
    recorded of the kernel's end (for the generation it writes).
    """
    rfd, wfd = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - runs in the standby
        code = 0
        try:
            os.setsid()
            os.close(wfd)
            close_fds_except([rfd, *inherit])
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _quiet_child()
            _undo_oom_preference()
            ended = read_orders(rfd)
            if ended is not None:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _arm_deadline(deadline)
                if note is not None:
                    note(ended)
                run_job(job)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(rfd)
    quickexit.own_descriptor(wfd)  # a raw pipe: the exit has nothing to flush there
    return Standby(pid, wfd, epoch)


#: The kernel's ``oom_score_adj`` before :func:`prefer_oom_kill` raised it (None: untouched).
_OOM_BEFORE: int | None = None
_OOM_TRIED = False


def prefer_oom_kill() -> str | None:
    """Make this process (the kernel) the OOM killer's choice over its standbys.

    A standby maps the same pages as the kernel, so the OOM killer scores
    them alike; were it to kill the standby first, the kernel would die next
    with nothing left to write its state. The kernel raises its own
    ``oom_score_adj`` by one (any process may raise its own) and each standby
    sets its own back (any process may lower it to where it was). Linux
    only. Returns why it could not, or None.
    """
    global _OOM_BEFORE, _OOM_TRIED
    if _OOM_TRIED or not sys.platform.startswith("linux"):
        return None
    _OOM_TRIED = True  # once: a failure is reported once
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            before = int(f.read().strip() or 0)
            if before >= 1000:
                return None  # already the first choice
            f.seek(0)
            f.write(str(before + 1))
    except (OSError, ValueError) as exc:
        return f"the kernel's OOM score could not be raised over its standby's ({exc})"
    _OOM_BEFORE = before
    return None


def _undo_oom_preference() -> None:
    """In a standby: take back the kernel's raise (see :func:`prefer_oom_kill`)."""
    if _OOM_BEFORE is None:
        return
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(_OOM_BEFORE))
