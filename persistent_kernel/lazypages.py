"""Large buffers restored lazily: each chunk read, checked and placed on first touch.

A restart used to read every byte of the state before the first cell ran:
3 GiB of arrays was 2 s cold, and 3 GiB of memory, before the user touched
anything. Here a large chunked buffer (:mod:`.store.chunks`) is restored as
empty memory of its size, registered with a userfaultfd; the page server
(:mod:`.pageserver`, a process of its own) fills a chunk the first time any
thread touches a page of it, after checking the chunk against its name. So
the restore costs the small objects only, memory grows with what is touched,
and no byte is seen before its chunk is checked.

Why a userfaultfd, not a private mapping of the chunk files: a mapped file's
pages reach the program straight from the page cache, with no point at which
to check them, and a file shortened on disk would kill the kernel with
SIGBUS on touch. Filled pages are private anonymous memory, like those of an
array read in full: writes stay private, and the write tracker
(:mod:`.pagewrites`) sees them (the server places pages write-protected).

Where it is used, and why only there:

* Linux 6.7 or newer, on x86-64 or arm64, with a userfaultfd that serves
  faults taken inside the kernel too (a ``write()`` from the array, say) and
  reports forks: that takes root, ``CAP_SYS_PTRACE`` or
  ``vm.unprivileged_userfaultfd = 1``. A user-mode-only userfaultfd would make
  such a ``write()`` fail with EFAULT, and a process forked without the fork
  event would read zeros where the chunks were not yet placed: elsewhere
  every buffer is read in full at restore, as before.
* Chunks on local disk (the local store, and a bucket's local tier). Chunks
  only in a bucket are read at restore.
* ``PersistentKernel.lazy_restore = False`` reads every buffer at restore.

Limits: the page server holds the chunk files open from the moment it gets
a buffer until the kernel ends (a file descriptor each: 128 for 1 GiB), so a
pruned or replaced file still serves its bytes; a damaged or missing chunk
is found only when touched, and its pages read as zeros (the user is told,
and the next checkpoint stores them as changed).

A server that ends (SIGKILL: it ignores the terminal's signals and, as root,
the OOM killer) is replaced by a spare that waits for that (started
:data:`SPARE_AFTER` seconds after the server): the kernel
cannot start one then, as its next fork waits, holding the GIL, until a
server reads the fork event. Processes forked before lose their server:
the pages it had not placed read as zeros there, so a checkpoint writer
checks :meth:`PageServer.serving` before it commits, and fails (to be written
again) rather than store zeros; a ``multiprocessing`` child has no such
check. With no server left (both ended, or :data:`LAUNCHES` started), a
thread touching a page not yet placed waits until the kernel is restarted
(the checkpoint on disk is whole), and the user is told.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import uffd
from .pageserver import rounded

#: Chunks per message (a message of 8 GiB's 1024 chunks would be 200 KB).
_PER_MESSAGE = 200


#: What the kernel knows of a mapped buffer: its label, its chunks' sizes, and what
#: quarantines a damaged chunk.
_About = tuple[str, list[int], "Callable[[str], None] | None"]


#: Server processes a kernel starts at most (the first two, then one for each that
#: ends): past that, one that keeps failing is not started again and again.
LAUNCHES = 8
#: Seconds after the first buffer arrives before the spare starts (see :meth:`_start`).
SPARE_AFTER = 2.0


@dataclass
class _Process:
    """One server process: the kernel's end of its socket, and its pidfd.

    Messages are sent at once, by the thread that maps the buffer, never queued
    for another thread: once :meth:`PageServer.map` returns, a thread may touch
    the buffer while holding the GIL and wait for its page, and the message that
    lets the server serve it must be in the socket already."""

    popen: subprocess.Popen[bytes]
    sock: socket.socket
    pidfd: int

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # it ended: its listener sees that
            self.sock.send(data)


class PageServer:
    """This kernel's lazily restored buffers, and the process that fills them.

    :meth:`open` returns None where lazy restore cannot be had (see the
    module's docstring). The server process starts with the first
    :meth:`map`. *on_damaged* is called (from a thread of ours) with the
    label given to :meth:`map`, the reason and the chunk's size when a chunk is
    damaged or missing (its pages read as zeros); *on_unreadable* with the label
    and the reason when a chunk cannot be read now (EIO, EACCES: the thread
    that touched it waits while the server tries again); *on_replaced* when
    the spare took over from a server that ended; *on_lost* once, if no server
    is left while the kernel runs.
    """

    def __init__(self, libc: ctypes.CDLL, number: int) -> None:
        self._libc, self._number = libc, number
        self._uffd: int | None = None  # made at the first map: most kernels never need it
        self._refused: OSError | None = None  # why it could not be made
        self._primary: _Process | None = None  # the server that serves
        self._spare: _Process | None = None  # the one that takes over if it ends
        self._launched = 0
        self._sent: list[bytes] = []  # every map message so far, for a new spare
        self._pidfds: list[int] = []
        self._lost = False
        self._closed = threading.Event()
        self._lock = threading.RLock()
        self._about: dict[int, _About] = {}
        self._next = 0
        self.closing = False
        self.on_damaged: Callable[[str, str, int], None] | None = None
        self.on_unreadable: Callable[[str, str], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_replaced: Callable[[], None] | None = None
        #: bytes mapped lazily so far
        self.mapped_bytes = 0

    @classmethod
    def open(cls) -> PageServer | None:
        """A page server where this system may have one (see the module's docstring);
        whether it does is known at the first :meth:`map`, which raises OSError if not."""
        found = uffd.libc()
        if found is None:
            return None
        libc, number = found
        return cls(libc, number)

    def _userfaultfd(self) -> int:
        """This kernel's userfaultfd, made once; OSError where it cannot be had."""
        if self._uffd is not None:
            return self._uffd
        if self._refused is not None:
            raise self._refused
        try:
            self._uffd = self._make_userfaultfd()
        except OSError as exc:
            self._refused = exc  # asked once: every later buffer is read in full
            raise
        return self._uffd

    def _make_userfaultfd(self) -> int:
        fd = int(self._libc.syscall(self._number, os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:  # EPERM: user-mode faults only, or none at all
            error = ctypes.get_errno()
            raise OSError(error, f"no userfaultfd for lazy restore: {os.strerror(error)}")
        wanted = uffd.FEATURE_WP_ASYNC | uffd.FEATURE_EVENT_FORK
        api = (ctypes.c_uint64 * 3)(uffd.API, wanted, 0)
        if self._libc.ioctl(fd, uffd.UFFDIO_API, ctypes.addressof(api)) != 0 or (
            int(api[1]) & wanted != wanted
        ):
            os.close(fd)
            raise OSError("this system's userfaultfd lacks fork events or async write-protect")
        return fd

    def usable(self) -> bool:
        """Whether :meth:`map` can work here (makes the userfaultfd if it can)."""
        try:
            self._userfaultfd()
        except OSError:
            return False
        return True

    def _start(self, fd: int) -> None:
        if self._primary is None and not self._lost:
            self._primary = self._launch(fd, None)
            threading.Thread(
                target=self._first_spare, name="persistent-kernel-pages", daemon=True
            ).start()

    def _first_spare(self) -> None:
        """Start the spare :data:`SPARE_AFTER` seconds after the server: not at once, as a
        restart from a cold disk would share the disk and both cores with it. (A
        thread of this module's, not a ``threading.Timer``: the checkpointer counts
        threads of other modules as the user's, which may change the namespace.)"""
        if self._closed.wait(SPARE_AFTER):
            return
        with self._lock:
            if self._spare is None and not self.closing and not self._lost:
                self._spare = self._launch_spare(self._primary)

    def _launch_spare(self, primary: _Process | None) -> _Process | None:
        """A spare for *primary* (one that takes over at once if it has ended already);
        None if it cannot be started (told in the log: the kernel is served as long as
        *primary* runs)."""
        if primary is None or self._uffd is None:
            return None
        try:
            return self._launch(self._uffd, primary)
        except OSError:
            logging.getLogger(__name__).exception("persistent-kernel: no spare page server")
            return None

    def _launch(self, fd: int, primary: _Process | None) -> _Process | None:
        """A server process (a spare if it stands in for *primary*), sent every
        buffer mapped so far; None once :data:`LAUNCHES` have been started."""
        if self._launched >= LAUNCHES:
            return None
        self._launched += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "persistent_kernel.pageserver", str(fd),
                str(theirs.fileno())]  # fmt: skip
        keep = [fd, theirs.fileno()]
        if primary is not None:
            argv.append(str(primary.pidfd))
            keep.append(primary.pidfd)
        try:
            popen = subprocess.Popen(
                argv, pass_fds=keep, stdin=subprocess.DEVNULL,
                start_new_session=True,  # an interrupt of the kernel's group must not reach it
            )  # fmt: skip
        finally:
            theirs.close()
        process = _Process(popen, ours, os.pidfd_open(popen.pid))
        self._pidfds.append(process.pidfd)  # kept open: see serving()
        for message in self._sent:
            process.send(message)
        threading.Thread(
            target=self._listen, args=(process,), name="persistent-kernel-pages", daemon=True
        ).start()
        return process

    def map(self, paths: Sequence[str], sizes: Sequence[int], names: Sequence[str],
            hash: str, label: str = "",
            quarantine: Callable[[str], None] | None = None) -> Any:  # fmt: skip
        """Memory of ``sum(sizes)`` bytes whose chunk *i* is filled from the file
        *paths[i]* (opened by the server at once, and checked against *names[i]*)
        when first touched. *quarantine* is called with the name of a
        chunk found damaged (before the user is told). Raises OSError if it cannot
        be set up."""
        fd = self._userfaultfd()
        total = sum(sizes)
        buffer = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        modes = uffd.MODE_MISSING | uffd.MODE_WP
        register = (ctypes.c_uint64 * 4)(address, rounded(total), modes, 0)
        if self._libc.ioctl(fd, uffd.UFFDIO_REGISTER, ctypes.addressof(register)) != 0:
            error = ctypes.get_errno()
            buffer.close()
            raise OSError(error, os.strerror(error))
        try:
            about = (label, list(sizes), quarantine)
            self._hand_over(fd, address, paths, sizes, names, hash, about)
        except BaseException:
            span = (ctypes.c_uint64 * 2)(address, rounded(total))
            self._libc.ioctl(fd, uffd.UFFDIO_UNREGISTER, ctypes.addressof(span))
            buffer.close()
            raise
        self.mapped_bytes += total
        return buffer

    def _hand_over(self, fd: int, address: int, paths: Sequence[str], sizes: Sequence[int],
                   names: Sequence[str], hash: str, about: _About) -> None:  # fmt: skip
        with self._lock:
            self._start(fd)
            if self._primary is None or self._primary.popen.poll() is not None:
                raise OSError("no page server runs")
            ident = self._next
            self._next += 1
            self._about[ident] = about
            header = {"op": "map", "id": ident, "address": address, "hash": hash,
                      "chunks": len(sizes)}  # fmt: skip
            messages = [json.dumps(header).encode()]
            for at in range(0, len(sizes), _PER_MESSAGE):
                batch = slice(at, at + _PER_MESSAGE)
                message = {"op": "chunks", "id": ident, "sizes": list(sizes[batch]),
                           "names": list(names[batch]), "paths": list(paths[batch])}  # fmt: skip
                messages.append(json.dumps(message).encode())
            self._sent.extend(messages)  # for a spare started later
            for process in (self._primary, self._spare):
                for data in messages:
                    if process is not None:
                        process.send(data)

    def _listen(self, process: _Process) -> None:
        while True:
            try:
                data = process.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = json.loads(data)
                if message["op"] == "serving":
                    self._promote(process)
                    continue
                op, chunk = message["op"], int(message["chunk"])
                label, sizes, quarantine = self._about[int(message["id"])]
                name, reason = str(message["name"]), str(message["reason"])
                if op == "damaged" and message.get("quarantine") and quarantine is not None:
                    quarantine(name)  # never named again by a later checkpoint
                if op == "damaged" and self.on_damaged is not None:
                    self.on_damaged(label, reason, sizes[chunk])
                elif op == "unreadable" and self.on_unreadable is not None:
                    self.on_unreadable(label, reason)
            except Exception:  # one bad message must not stop the listening
                logging.getLogger(__name__).exception("persistent-kernel: page server message")
        with contextlib.suppress(OSError):
            process.sock.close()
        if not self.closing:
            process.popen.wait()  # its end of the socket closed as it ended
            self._ended(process)

    def _promote(self, process: _Process) -> None:
        """The spare serves: the server before it ended. A new spare stands in for it."""
        with self._lock:
            if process is not self._spare or self.closing:
                return
            self._primary, self._spare = process, self._launch_spare(process)
        if self.on_replaced is not None:
            self.on_replaced()

    def _ended(self, process: _Process) -> None:
        """A server process ended. The spare takes over from a server that ends (its
        message is on its way); a spare that ends is started anew, and so is one for
        a server that had none (it takes over at once, if this thread gets the GIL:
        a thread stopped on a page may hold it). Lost when none can be started
        (:data:`LAUNCHES` have been)."""
        with self._lock:
            if self.closing:
                return
            if process is self._spare:  # (for a server that ended meanwhile, the new
                self._spare = self._launch_spare(self._primary)  # spare takes over at once)
            elif process is self._primary and self._spare is None:
                self._spare = self._launch_spare(process)  # it takes over at once
            lost = process is self._primary and self._spare is None
            if lost:
                self._primary, self._lost = None, True
        if lost and self.on_lost is not None:
            self.on_lost()

    def serving(self, pidfd: int | None) -> bool:
        """Whether the server process of *pidfd* (from :meth:`current`) still runs:
        checked by a forked writer before it commits, since a forked process is
        served by the server that ran when it was forked, and once that server has
        ended, the pages it had not placed read as zeros there. False also for a
        descriptor that is no pidfd (closed and reused in a forked process)."""
        if pidfd is None:
            return True
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except OSError:  # ESRCH: it ended and was reaped; EBADF, EINVAL: not a pidfd
            return False
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return not poller.poll(0)  # a pidfd reads as ready once its process has ended

    @property
    def lost(self) -> bool:
        """No server is left while the kernel runs (see :attr:`on_lost`)."""
        return self._lost

    def current(self) -> int | None:
        """The pidfd of the server that serves now (None: none was started), for
        :meth:`serving` in a process forked next."""
        primary = self._primary
        return None if primary is None else primary.pidfd

    def descriptors(self) -> list[int]:
        """Every pidfd :meth:`current` may have returned: a forked writer keeps them."""
        return list(self._pidfds)

    @property
    def pid(self) -> int | None:
        """The serving process's id, once started."""
        primary = self._primary
        return None if primary is None else primary.popen.pid

    @property
    def spare_pid(self) -> int | None:
        """The spare's process id, while there is one."""
        spare = self._spare
        return None if spare is None else spare.popen.pid

    def close(self) -> None:
        """Stop serving (the kernel ends): the server ends once the kernel and every
        forked child it serves are gone; the spare ends at once."""
        self.closing = True
        self._closed.set()
        with self._lock:
            processes = [p for p in (self._primary, self._spare) if p is not None]
        for process in processes:
            with contextlib.suppress(OSError):
                process.sock.close()
        for pidfd in self._pidfds:  # the kernel ends: no writer is forked after this
            with contextlib.suppress(OSError):
                os.close(pidfd)
        self._pidfds = []
        if self._uffd is not None:
            with contextlib.suppress(OSError):
                os.close(self._uffd)
