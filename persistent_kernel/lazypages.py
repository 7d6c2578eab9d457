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
and the next checkpoint stores them as changed); if the page server dies,
a thread touching a page not yet placed waits until the kernel is
restarted (the checkpoint on disk is whole), which the kernel tells the
user when it sees the server gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import mmap
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import uffd
from .pageserver import rounded

#: Chunks per message (a message of 8 GiB's 1024 chunks would be 200 KB).
_PER_MESSAGE = 200


#: What the kernel knows of a mapped buffer: its label, its chunks' sizes, and what
#: quarantines a damaged chunk.
_About = tuple[str, list[int], "Callable[[str], None] | None"]


class PageServer:
    """This kernel's lazily restored buffers, and the process that fills them.

    :meth:`open` returns None where lazy restore cannot be had (see the
    module's docstring). The server process starts with the first
    :meth:`map`. *on_damaged* is called (from a thread of ours) with the
    label given to :meth:`map`, the reason and the chunk's size when a chunk is
    damaged or missing (its pages read as zeros); *on_unreadable* with the label
    and the reason when a chunk cannot be read now (EIO, EACCES: the thread
    that touched it waits while the server tries again); *on_lost* once, if the
    server ends while the kernel runs.
    """

    def __init__(self, libc: ctypes.CDLL, number: int) -> None:
        self._libc, self._number = libc, number
        self._uffd: int | None = None  # made at the first map: most kernels never need it
        self._refused: OSError | None = None  # why it could not be made
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._about: dict[int, _About] = {}
        self._next = 0
        self.closing = False
        self.on_damaged: Callable[[str, str, int], None] | None = None
        self.on_unreadable: Callable[[str, str], None] | None = None
        self.on_lost: Callable[[], None] | None = None
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

    def _start(self, fd: int) -> socket.socket:
        if self._sock is not None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "persistent_kernel.pageserver", str(fd),
             str(theirs.fileno())],
            pass_fds=(fd, theirs.fileno()),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # an interrupt of the kernel's group must not reach it
        )  # fmt: skip
        theirs.close()
        self._sock = ours
        threading.Thread(target=self._listen, name="persistent-kernel-pages", daemon=True).start()
        return ours

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
            sock = self._start(fd)
            ident = self._next
            self._next += 1
            self._about[ident] = about
            header = {"op": "map", "id": ident, "address": address, "hash": hash,
                      "chunks": len(sizes)}  # fmt: skip
            sock.send(json.dumps(header).encode())
            for at in range(0, len(sizes), _PER_MESSAGE):
                batch = slice(at, at + _PER_MESSAGE)
                message = {"op": "chunks", "id": ident, "sizes": list(sizes[batch]),
                           "names": list(names[batch]), "paths": list(paths[batch])}  # fmt: skip
                sock.send(json.dumps(message).encode())

    def _listen(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = json.loads(data)
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
        if not self.closing and self.on_lost is not None:
            self.on_lost()

    @property
    def pid(self) -> int | None:
        """The server's process id, once started."""
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        """Stop serving (the kernel ends): the server ends once the kernel and every
        forked child it serves are gone."""
        self.closing = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._uffd is not None:
            with contextlib.suppress(OSError):
                os.close(self._uffd)
