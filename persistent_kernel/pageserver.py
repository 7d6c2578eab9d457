"""The page server: a process that fills a kernel's lazily restored buffers.

The kernel (:mod:`.lazypages`) maps each large restored buffer as empty
memory registered with a userfaultfd, and hands that file descriptor and the
buffer's chunk files to this process. When a thread of the kernel (or of a
process it forked: the fork event hands this process the child's
descriptor) first touches a page of such a buffer, the kernel stops that
thread and tells this process, which reads the chunk holding the page,
checks it against its BLAKE3 name, and copies it into place
(``UFFDIO_COPY``), write-protected so the write tracker sees later writes.
The thread then goes on. A chunk is filled whole, so a touched chunk is
always entirely present; the chunk after it is read and checked ahead, so a
scan through an array overlaps the disk with the computation.

Why another process: the thread that touches the page may hold Python's
GIL, and a handler in the same interpreter would need it to run. This
process has its own interpreter, does nothing but read files and copy
pages, and imports only the standard library and the hash.

A chunk whose bytes do not match its name, or whose file is missing, of
the wrong size or not private, is never copied: its pages are filled with
zeros, left writable (so the next checkpoint hashes them anew rather than
reusing the damaged name) and the kernel is told, which tells the user. A
chunk that cannot be read now (EIO, EACCES, a folder in its file's place:
no proof of damage) keeps the thread that touched it waiting, and is tried
again every :data:`RETRY` seconds. The chunk files are opened here as soon
as a buffer arrives (not by the kernel: thousands of opens, each reading an
inode from a cold disk, would make the first cell wait) and held open, so
pruning or replacing a file afterwards changes nothing this process reads.

It ends when the kernel's end of its socket closes and no forked child it
serves is still alive (a kernel's standby may outlive the kernel, and must
still read its pages).

A second process, the spare (started with a third argument: the pidfd of the
server it stands in for), gets the same messages, opens the same files and
serves nothing until that server ends; then it serves (see
:meth:`Server.take_over`). The kernel cannot start a new server at that
moment: a fork of the kernel waits, holding Python's GIL, until a server
reads its fork event, and a thread that touched a page waits for the page.

Protocol (one datagram a message, ``SOCK_SEQPACKET``): the kernel sends
``{"op": "map", "id", "address", "hash", "chunks"}``, then
``{"op": "chunks", "id", "sizes", "names", "paths"}`` messages until all the
chunks are there. The kernel does not wait for the server (which may still
be starting): a fault in a buffer whose messages have not arrived yet is
served once they have. The server sends ``{"op": "damaged" | "unreadable",
"id", "chunk", "name", "reason", "quarantine"}`` once per chunk and kind,
and a spare ``{"op": "serving"}`` when it takes over.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import json
import mmap
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import uffd

PAGE = mmap.PAGESIZE
#: Verified chunks kept for other processes' faults and read-ahead.
_CACHED = 4
#: Seconds before a chunk that could not be read (EIO, EACCES) is tried again.
RETRY = 1.0
#: Chunks after the one read ahead that the disk is asked to read into its cache.
_ADVISED = 2
#: How often forked children are checked for having ended (seconds).
_PROBE = 2.0
#: Threads reading and checking chunks.
THREADS = 2


def hasher(name: str) -> Any:
    """A new hash of the kind that names the blobs (see ``store.sessions.HASHES``)."""
    if name == "blake3":
        import blake3

        return blake3.blake3()
    if name == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    raise ValueError(f"unknown hash {name!r}")


def private(st: os.stat_result) -> bool:
    """Whether a file is this user's and nobody else may write it: the store's rule
    for a blob (``store.trust.check_private``, not imported: this process loads
    nothing of the store's)."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def rounded(size: int) -> int:
    """*size* rounded up to whole pages."""
    return -(-size // PAGE) * PAGE


@dataclass
class Buffer:
    """One lazily restored buffer: where it is, and its chunks."""

    id: int
    address: int
    sizes: list[int]
    names: list[str]
    hash: str
    paths: list[str] = field(default_factory=list)
    #: each chunk's open file, once opened (None: not yet, or it failed: see problems)
    fds: list[int | None] = field(default_factory=list)
    #: chunk -> why its file is no good (missing, wrong size, not yours)
    problems: dict[int, str] = field(default_factory=dict)
    #: chunks whose file is there but holds other bytes (to be quarantined)
    spoiled: set[int] = field(default_factory=set)
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fds = [None] * len(self.sizes)
        at, self.offsets = 0, []
        for size in self.sizes:
            self.offsets.append(at)
            at += size

    @property
    def end(self) -> int:
        return self.address + rounded(sum(self.sizes))

    def chunk_at(self, address: int) -> int:
        return bisect.bisect_right(self.offsets, address - self.address) - 1

    def span(self, index: int) -> tuple[int, int]:
        """The page-aligned address range that chunk *index* fills."""
        start = self.address + self.offsets[index]
        last = index == len(self.sizes) - 1
        end = self.end if last else start + self.sizes[index]
        return start, end


class Ioctl:
    """The userfaultfd calls, through libc."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        self.libc.ioctl.restype = ctypes.c_int

    def call(self, fd: int, request: int, arg: Any) -> int:
        """0, or the errno of a failed call."""
        if self.libc.ioctl(fd, request, ctypes.addressof(arg)) == 0:
            return 0
        return ctypes.get_errno() or errno.EIO

    def copy(self, fd: int, dst: int, src: int, length: int, protect: bool) -> int:
        """Copy *length* bytes to *dst* in the served process, skipping pages already
        there; 0, or the errno that stopped it (ESRCH: the process is gone)."""
        done = 0
        while done < length:
            arg = (ctypes.c_uint64 * 5)(
                dst + done, src + done, length - done, uffd.COPY_MODE_WP if protect else 0, 0
            )
            error = self.call(fd, uffd.UFFDIO_COPY, arg)
            copied = ctypes.c_int64(arg[4]).value
            if error == 0:
                return 0
            if copied > 0:
                done += copied
            if error == errno.EEXIST:
                done = (done // PAGE + 1) * PAGE  # a page already there: keep it
            elif error == errno.EAGAIN:
                time.sleep(0.001)  # the process's memory is changing (a fork): again
            else:
                return error
        self.wake(fd, dst, length)
        return 0

    def wake(self, fd: int, start: int, length: int) -> int:
        return self.call(fd, uffd.UFFDIO_WAKE, (ctypes.c_uint64 * 2)(start, length))

    def alive(self, fd: int, page: int) -> bool:
        """Whether the process served through *fd* still exists: a no-op write-protect
        change of one page fails with ESRCH once its memory is gone."""
        arg = (ctypes.c_uint64 * 3)(page, PAGE, 0)
        return self.call(fd, uffd.UFFDIO_WRITEPROTECT, arg) != errno.ESRCH


class Server:
    """Serves page faults on the kernel's userfaultfd and its children's."""

    def __init__(
        self,
        kernel_fd: int,
        sock: socket.socket,
        ioctl: Ioctl | None = None,
        primary: int | None = None,
    ) -> None:
        self.sock = sock
        self.ioctl = ioctl or Ioctl()
        self.kernel_fd = kernel_fd
        #: a spare's: the pidfd of the server it stands in for (None: serving)
        self.primary = primary
        # the kernel's and each forked child's (a spare reads none until it serves)
        self.fds: set[int] = {kernel_fd} if primary is None else set()
        self.took_over = False
        self.buffers: list[Buffer] = []  # sorted by address
        self.filled: set[tuple[int, int, int]] = set()  # (fd, buffer id, chunk)
        self.busy: dict[tuple[int, int], list[int]] = {}  # (buffer, chunk) -> fds waiting
        self.cache: OrderedDict[tuple[int, int], mmap.mmap | None] = OrderedDict()
        self.loading: dict[tuple[int, int], threading.Event] = {}
        self.told: set[tuple[int, int, str]] = set()  # (buffer, chunk, what) told
        self._zeros: mmap.mmap | None = None
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="pages")
        self.pending: dict[str, Any] | None = None  # a map whose descriptors are arriving
        self.deferred: list[tuple[int, int]] = []  # faults in buffers not known yet
        self.open = True  # the kernel's socket

    # -- the kernel's messages ----------------------------------------------------------

    def receive(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 256)
        except OSError:
            data, fds = b"", []
        if not data:
            self.open = False
            return
        message = json.loads(data)
        for fd in fds:  # none are sent: the files are opened here
            os.close(fd)
        if message["op"] == "map":
            self.pending = {**message, "sizes": [], "names": [], "paths": []}
        elif message["op"] == "chunks" and self.pending is not None:
            self.pending["sizes"].extend(message["sizes"])
            self.pending["names"].extend(message["names"])
            self.pending["paths"].extend(message["paths"])
        pending = self.pending
        if pending is not None and len(pending["paths"]) >= pending["chunks"]:
            self.pending = None
            buffer = Buffer(
                pending["id"], pending["address"], pending["sizes"], pending["names"],
                pending["hash"], pending["paths"],
            )  # fmt: skip
            bisect.insort(self.buffers, buffer, key=lambda b: b.address)
            self.pool.submit(self.job, self.open_all, buffer)
            if self.took_over:  # the server before may have read a fault in it: again
                self.ioctl.wake(self.kernel_fd, buffer.address, buffer.end - buffer.address)
            deferred, self.deferred = self.deferred, []
            for fd, address in deferred:
                self.fault(fd, address)

    def tell(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps(message).encode())

    # -- faults -------------------------------------------------------------------------

    def events(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, uffd.MSG_SIZE * 16)
            except BlockingIOError:
                return
            except OSError:
                self.drop(fd)
                return
            if not data:
                return
            for at in range(0, len(data) - uffd.MSG_SIZE + 1, uffd.MSG_SIZE):
                event = data[at]
                if event == uffd.EVENT_FORK:
                    (child,) = struct.unpack_from("I", data, at + 8)
                    os.set_blocking(child, False)
                    self.fds.add(child)
                elif event == uffd.EVENT_PAGEFAULT:
                    _flags, address = struct.unpack_from("QQ", data, at + 8)
                    self.fault(fd, address)

    def find(self, address: int) -> Buffer | None:
        index = bisect.bisect_right([b.address for b in self.buffers], address) - 1
        if index >= 0 and address < self.buffers[index].end:
            return self.buffers[index]
        return None

    def fault(self, fd: int, address: int) -> None:
        buffer = self.find(address)
        if buffer is None:  # its map message is still on its way: served once it is here
            self.deferred.append((fd, address))
            return
        index = buffer.chunk_at(address)
        with self.lock:
            if (fd, buffer.id, index) in self.filled:
                self.pool.submit(self.job, self.refill, fd, buffer, index, address)
                return
            waiting = self.busy.setdefault((buffer.id, index), [])
            first = not waiting
            if fd not in waiting:
                waiting.append(fd)
        if first:
            self.pool.submit(self.job, self.fill, buffer, index)
            if index + 1 < len(buffer.sizes):  # read ahead: the next chunk, checked
                self.pool.submit(self.job, self.verified, buffer, index + 1)
            for ahead in range(index + 2, min(index + 2 + _ADVISED, len(buffer.sizes))):
                file = buffer.fds[ahead]  # not opened yet: the read ahead will
                if file is not None:
                    with contextlib.suppress(OSError):  # and the disk reads the ones after
                        os.posix_fadvise(file, 0, 0, os.POSIX_FADV_WILLNEED)

    def job(self, work: Callable[..., object], *args: Any) -> None:
        """Run *work* on a pool thread: a failure is printed (to the kernel's log) and
        every thread waiting on that buffer is woken, to fault again and be served by
        a new attempt, never left stopped."""
        try:
            work(*args)
        except Exception:
            traceback.print_exc()
            buffer = next(a for a in args if isinstance(a, Buffer))
            with self.lock:
                fds = list(self.fds)
            for fd in fds:
                self.ioctl.wake(fd, buffer.address, buffer.end - buffer.address)

    def verified(self, buffer: Buffer, index: int) -> mmap.mmap | None:
        """Chunk *index*'s bytes in a page-aligned buffer, checked; None if damaged.
        A chunk being read by another thread (read ahead) is waited for, not read twice."""
        key = (buffer.id, index)
        while True:
            with self.lock:
                if key in self.cache:
                    self.cache.move_to_end(key)
                    return self.cache[key]
                loading = self.loading.get(key)
                if loading is None:
                    self.loading[key] = threading.Event()
                    break
            loading.wait()  # then taken from the cache (or read again if already evicted)
        try:
            result = self._read(buffer, index)
        except BaseException:
            with self.lock:
                self.loading.pop(key).set()
            raise
        with self.lock:
            self.cache[key] = result
            while len(self.cache) > _CACHED:
                self.cache.popitem(last=False)  # freed once no copy uses it
            self.loading.pop(key).set()
        return result

    def open_all(self, buffer: Buffer) -> None:
        """Open every chunk file of a new buffer at once, so that a file pruned or
        replaced later still gives the bytes it had; past this process's limit of
        open files the rest are opened when read (see :meth:`_read`)."""
        for index in range(len(buffer.paths)):
            try:
                self.file(buffer, index)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return
                # EIO, EACCES: told when the chunk is touched, tried again then

    def file(self, buffer: Buffer, index: int) -> int | None:
        """Chunk *index*'s file, opened once and checked as the store checks a blob:
        never through a symbolic link, owned by this user, writable by nobody else,
        of the size the manifest says. None (and the reason in ``problems``) if not."""
        if buffer.fds[index] is not None or index in buffer.problems:
            return buffer.fds[index]
        try:
            fd = os.open(buffer.paths[index], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            problem: str | None = "its file is missing"
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise  # EACCES, EIO: not proof of damage (see place)
            problem = "its file is a symbolic link"
        else:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # a folder in its place: no proof of damage
                os.close(fd)
                raise IsADirectoryError(errno.EISDIR, "it is not a file", buffer.paths[index])
            problem = None
            if not private(st):
                problem = "its file is not private to you"
            elif st.st_size != buffer.sizes[index]:
                problem = f"its file is {st.st_size} bytes, not {buffer.sizes[index]}"
                buffer.spoiled.add(index)
            if problem is None:
                with self.lock:
                    if buffer.fds[index] is None:
                        buffer.fds[index] = fd
                        return fd
            os.close(fd)
        with self.lock:
            if problem is not None:
                buffer.problems[index] = problem
            return buffer.fds[index]

    def _read(self, buffer: Buffer, index: int) -> mmap.mmap | None:
        """The chunk's bytes if they match its name; None if damaged. OSError (EIO,
        EACCES) where it cannot be read now."""
        try:
            fd = self.file(buffer, index)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            return self._read_once(buffer, index)  # too many open: open it for this read
        if fd is None:
            return None
        return self._read_from(fd, buffer, index)

    def _read_once(self, buffer: Buffer, index: int) -> mmap.mmap | None:
        fd = os.open(buffer.paths[index], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not private(os.fstat(fd)):
                with self.lock:
                    buffer.problems.setdefault(index, "its file is not private to you")
                return None
            return self._read_from(fd, buffer, index)
        finally:
            os.close(fd)

    def _read_from(self, fd: int, buffer: Buffer, index: int) -> mmap.mmap | None:
        size = buffer.sizes[index]
        data = mmap.mmap(-1, rounded(size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        view = memoryview(data)
        try:
            done = 0
            while done < size:
                n = os.preadv(fd, [view[done:size]], done)
                if n <= 0:
                    break
                done += n
            digest = hasher(buffer.hash)
            digest.update(view[:size])
            good = done == size and digest.hexdigest() == buffer.names[index]
        finally:
            view.release()
        if not good:
            with self.lock:
                buffer.problems.setdefault(index, "its bytes do not match their hash")
                buffer.spoiled.add(index)
        return data if good else None

    def fill(self, buffer: Buffer, index: int) -> None:
        """Copy chunk *index* into every process waiting for it."""
        start, end = buffer.span(index)
        with self.lock:
            fds = self.busy.pop((buffer.id, index), [])
        for fd in fds:
            if self.place(fd, buffer, index, start, end):
                with self.lock:
                    self.filled.add((fd, buffer.id, index))

    def refill(self, fd: int, buffer: Buffer, index: int, address: int) -> None:
        """A fault in a chunk already placed: a late event of the first touch (the page
        is there), or a page the process discarded since (``MADV_DONTNEED``), which
        gets its chunk's bytes again, writable: the write tracker counts it as
        written, since what the chunk held last may be other bytes."""
        page = address // PAGE * PAGE
        self.place(fd, buffer, index, page, page + PAGE, protect=False)

    def place(
        self, fd: int, buffer: Buffer, index: int, start: int, end: int, protect: bool = True
    ) -> bool:
        """Copy ``[start, end)`` of chunk *index* into the process of *fd*, pages already
        there kept; a damaged chunk's pages are zeros, left writable (so the next
        checkpoint hashes them anew). Whether it was placed."""
        try:
            data = self.verified(buffer, index)
        except OSError as exc:  # EIO, EACCES: no proof of damage; the thread waits
            self.tell_once(buffer, index, "unreadable", exc.strerror or str(exc))
            time.sleep(RETRY)
            self.ioctl.wake(fd, start, end - start)  # to fault again: a new attempt
            return False
        except Exception as exc:  # a stopped thread must go on: treat as damaged
            traceback.print_exc()
            with self.lock:
                buffer.problems.setdefault(index, f"it could not be read ({exc})")
            data = None
        damaged = data is None
        if data is None:
            self.tell_once(buffer, index, "damaged", buffer.problems.get(index, "damaged"))
            data = self.zeros(end - start)
            offset = 0
        else:
            offset = start - (buffer.address + buffer.offsets[index])
        anchor = ctypes.c_char.from_buffer(data, offset)  # keeps *data* mapped while copied
        protect = protect and not damaged
        error = self.ioctl.copy(fd, start, ctypes.addressof(anchor), end - start, protect)
        del anchor
        if error == errno.ESRCH:
            self.drop(fd)
            return False
        if error:  # let the thread touch it again: a new fault, a new attempt
            self.ioctl.wake(fd, start, end - start)
            return False
        return True

    def tell_once(self, buffer: Buffer, index: int, op: str, reason: str) -> None:
        """Tell the kernel, once per chunk and kind, that a chunk is damaged (its pages
        read as zeros) or cannot be read now (a thread waits for it)."""
        key = (buffer.id, index, op)
        with self.lock:
            if key in self.told:
                return
            self.told.add(key)
        name, spoiled = buffer.names[index], index in buffer.spoiled
        self.tell({"op": op, "id": buffer.id, "chunk": index, "name": name, "reason": reason,
                   "quarantine": spoiled})  # fmt: skip

    def zeros(self, size: int) -> mmap.mmap:
        """A zero-filled source of at least *size* bytes (page-aligned)."""
        with self.lock:
            if self._zeros is None or len(self._zeros) < size:
                self._zeros = mmap.mmap(-1, rounded(size))
            return self._zeros

    def drop(self, fd: int) -> None:
        """A forked child ended: forget its descriptor."""
        if fd == self.kernel_fd:
            return
        with self.lock:
            self.fds.discard(fd)
            self.filled = {k for k in self.filled if k[0] != fd}
        with contextlib.suppress(OSError):
            os.close(fd)

    def probe(self) -> None:
        if not self.buffers:
            return
        page = self.buffers[0].address
        for fd in list(self.fds - {self.kernel_fd}):
            if not self.ioctl.alive(fd, page):
                self.drop(fd)

    def take_over(self) -> None:
        """The server this spare stood in for ended: serve the kernel from now on. A
        fault it had read but not served left a thread stopped; waking every buffer
        makes each such thread touch its page again, a fault read here. Forked
        children it served are not served again: their descriptors ended with it."""
        if self.primary is not None:
            with contextlib.suppress(OSError):
                os.close(self.primary)
        self.primary = None
        self.took_over = True
        self.fds.add(self.kernel_fd)
        for buffer in self.buffers:
            self.ioctl.wake(self.kernel_fd, buffer.address, buffer.end - buffer.address)
        self.tell({"op": "serving"})

    # -- the loop -----------------------------------------------------------------------

    def run(self, clock: Callable[[], float] = time.monotonic) -> None:
        poller = select.poll()
        polled: set[int] = set()
        last_probe = clock()
        while self.open or self.fds:
            wanted = set(self.fds) | ({self.sock.fileno()} if self.open else set())
            if self.primary is not None:
                wanted.add(self.primary)
            for fd in wanted - polled:
                poller.register(fd, select.POLLIN)
            for fd in polled - wanted:
                with contextlib.suppress(KeyError):
                    poller.unregister(fd)
            polled = wanted
            for fd, _mask in poller.poll(_PROBE * 1000):
                try:
                    if fd == self.sock.fileno():
                        self.receive()
                    elif fd == self.primary:  # a pidfd reads as ready once its process ends
                        self.take_over()
                    elif fd in self.fds:
                        self.events(fd)
                except Exception:  # the kernel's threads depend on this loop going on
                    traceback.print_exc()
            if clock() - last_probe >= _PROBE:
                last_probe = clock()
                self.probe()
                if not self.open and self.kernel_fd in self.fds and not self.kernel_alive():
                    self.fds.discard(self.kernel_fd)
        self.close()

    def close(self) -> None:
        """Stop the threads and close what this process holds."""
        self.pool.shutdown(wait=True)
        for buffer in self.buffers:
            for fd in buffer.fds:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        self.buffers = []
        self.sock.close()

    def kernel_alive(self) -> bool:
        page = self.buffers[0].address if self.buffers else 0
        return bool(page) and self.ioctl.alive(self.kernel_fd, page)


def more_files() -> None:
    """Allow as many open files as the system lets this user (a chunk file is held
    open for each 8 MiB of arrays; this process waits in poll, not select)."""
    with contextlib.suppress(OSError, ValueError):  # not allowed: opened when read
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def steady() -> None:
    """Keep serving through what would end a process of the kernel's: the terminal's
    signals (the kernel's own end is seen on the socket), and the OOM killer, which
    would otherwise leave threads of the kernel waiting for pages (this process holds
    a few chunks; root may spare it, others keep the default)."""
    for name in ("SIGINT", "SIGHUP", "SIGTERM", "SIGQUIT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    with contextlib.suppress(OSError):  # not allowed: the default score stays
        os.write(fd := os.open("/proc/self/oom_score_adj", os.O_WRONLY), b"-1000")
        os.close(fd)


def main(argv: list[str]) -> int:
    steady()
    more_files()
    kernel_fd, sock_fd = int(argv[0]), int(argv[1])
    primary = int(argv[2]) if len(argv) > 2 else None
    sock = socket.socket(fileno=sock_fd)
    os.set_blocking(kernel_fd, False)
    Server(kernel_fd, sock, primary=primary).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
