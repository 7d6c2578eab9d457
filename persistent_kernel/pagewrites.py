"""Which parts of large buffers were written since the last checkpoint.

A checkpoint names each chunk of a large buffer by its BLAKE3 hash
(:mod:`.store.chunks`), and hashing is what a one-element change of a large
array costs: every chunk is read and hashed again to find the one that
changed (about 0.3 s a GiB on two cores). This module lets the writer skip
the chunks no write has touched, by asking the operating system.

How: the kernel registers the memory of each large buffer with a userfaultfd
in *asynchronous write-protect* mode (Linux 6.7 and newer) and scans it with
the ``PAGEMAP_SCAN`` ioctl, which reports the pages written since the last
scan and write-protects them again, atomically. A write to a protected page
costs the writing thread one page fault, handled by the kernel without any
thread of ours.

Why a checkpoint can trust it. The writer is forked (:mod:`.snapshot`), and
the kernel scans right *after* each fork, then sends the result to the
writer through a pipe. A scan reports writes made since the scan before it,
which was made after the previous fork; so the scans made after the fork of
checkpoint *m* and up to this one's together cover every write between those
two forks, including writes that raced with a scan (a page being written
while it is re-protected is reported by that scan). A chunk is reused by
name only when its buffer is at the same address with the same size as in
checkpoint *m*, its memory was registered before checkpoint *m*'s fork and
stayed so, no reported page touches it, and its memory belongs to an object
of the namespace as the kernel held it at the fork (:class:`Holdings`). The
last because the scans see the kernel's writes only: a buffer a writer made
while pickling (a reduction returning a copy) lies, in the kernel, in free
memory nobody writes, so the next writer's copy at the same address would
look unchanged whatever it holds. Such buffers are never watched either. Memory that is unmapped or
mapped anew loses its registration, and its scan fails: its chunks are hashed.
A page the kernel discards (``MADV_DONTNEED``) is reported as written. The
chunk's blob must still be in the store, as for any reused blob.

Limits:

* Linux 6.7 or newer, on x86-64 or arm64, where ``userfaultfd`` is allowed
  (Docker's default seccomp profile forbids it). Elsewhere every chunk is
  hashed, as before.
* Only buffers the kernel knows of are watched: arrays bound directly to a
  name are watched before the checkpoint that first saves them, restored
  arrays as soon as the restore has read them, others (an array inside a
  DataFrame or a dict) once a checkpoint has saved them, so their chunks are
  reused from the third checkpoint on. Buffers a reduction makes while
  pickling, and buffers the writer's walk of the namespace does not find
  (see :class:`Holdings` for where it does not look), are hashed every time.
* A write to a watched page splits its transparent huge page: the first
  write to each 4 KiB page after a checkpoint costs a page fault (about a
  microsecond). A buffer found mostly rewritten is therefore no longer
  watched (its chunks all change anyway), until a checkpoint finds it
  unchanged again.
* A device writing into memory pinned for DMA (RDMA, ``cudaHostRegister``)
  after the cell that started it has ended writes without a page fault.
  Such writes are not seen.
* ``PersistentKernel.track_writes = False`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import itertools
import json
import mmap
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from . import uffd

PAGE = mmap.PAGESIZE
_SCAN_WP_MATCHING = 1 << 0
_SCAN_CHECK_WPASYNC = 1 << 1
_PAGE_IS_WRITTEN = 1 << 1
#: Regions one PAGEMAP_SCAN call returns at most; the scan resumes after them.
_REGIONS = 256
#: Scans kept while no writer commits; past this the chunk names are forgotten.
_MAX_REPORTS = 64


def page_span(address: int, size: int) -> tuple[int, int]:
    """The whole pages ``[start, end)`` that hold ``size`` bytes from *address*."""
    return address // PAGE * PAGE, -(-(address + size) // PAGE) * PAGE


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def address_of(buffer: Any) -> int:
    """The address of the first byte of *buffer* (anything with the buffer protocol,
    read-only or not)."""
    view = _PyBuffer()
    api = ctypes.pythonapi
    if api.PyObject_GetBuffer(ctypes.py_object(buffer), ctypes.byref(view), 0) != 0:
        raise BufferError("no buffer")
    try:
        return int(view.buf or 0)
    finally:
        api.PyBuffer_Release(ctypes.byref(view))


def memory_map() -> list[str]:
    """The lines of ``/proc/self/maps`` (none if it cannot be read)."""
    try:
        with open("/proc/self/maps") as maps:
            return maps.readlines()
    except OSError:
        return []


def private_anonymous(start: int, end: int, lines: Sequence[str] | None = None) -> bool:
    """Whether ``[start, end)`` is wholly private anonymous memory of this process
    (*lines* of ``/proc/self/maps``, read now if not given: private, writable, no
    file, or the heap)."""
    at = start
    for line in memory_map() if lines is None else lines:
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if high <= at or low >= end:
            continue
        path = fields[5].strip() if len(fields) > 5 else ""
        if low > at or fields[1][1:] != "w-p" or path not in ("", "[heap]"):
            return False
        at = high
        if at >= end:
            return True
    return False


class Watcher:
    """Write tracking of this process's memory: a userfaultfd in asynchronous
    write-protect mode, and ``PAGEMAP_SCAN`` over ``/proc/self/pagemap``.

    Thin: each method is one or two system calls. :meth:`open` returns None
    where the kernel lacks either, or forbids them.
    """

    def __init__(self, fd: int, pagemap: int, libc: ctypes.CDLL) -> None:
        self._uffd, self._pagemap, self._libc = fd, pagemap, libc

    @classmethod
    def open(cls) -> Watcher | None:
        found = uffd.libc()
        if found is None:
            return None
        libc, number = found
        fd = int(libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK | uffd.USER_MODE_ONLY))
        if fd < 0:
            return None
        api = (ctypes.c_uint64 * 3)(uffd.API, uffd.FEATURE_WP_ASYNC, 0)
        if libc.ioctl(fd, uffd.UFFDIO_API, ctypes.addressof(api)) != 0:
            os.close(fd)
            return None
        try:
            pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            return None
        watcher = cls(fd, pagemap, libc)
        if not watcher._works():
            watcher.close()
            return None
        return watcher

    def _works(self) -> bool:
        """Check on a scratch mapping that a write is reported once, and only it."""
        scratch = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            scratch.write(b"x" * (4 * PAGE))
            start = address_of(scratch)
            if not self.watch(start, start + 4 * PAGE):
                return False
            scratch[PAGE + 1] = 7
            first = self.written(start, start + 4 * PAGE)
            second = self.written(start, start + 4 * PAGE)
            self.unwatch(start, start + 4 * PAGE)
            return first == [(start + PAGE, start + 2 * PAGE)] and second == []
        finally:
            scratch.close()

    def watch(self, start: int, end: int, lines: Sequence[str] | None = None) -> bool:
        """Register ``[start, end)`` (whole pages) and write-protect it; False if refused:
        memory that is not private and anonymous (shared memory or a file's pages change
        without a write of this process), or watched by another userfaultfd (unless in
        asynchronous write-protect mode: the page server's, see lazypages). *lines*:
        ``/proc/self/maps`` as just read (see :func:`memory_map`)."""
        if not private_anonymous(start, end, lines):
            return False
        register = (ctypes.c_uint64 * 4)(start, end - start, uffd.MODE_WP, 0)
        if self._libc.ioctl(self._uffd, uffd.UFFDIO_REGISTER, ctypes.addressof(register)) != 0:
            # Registered already by the page server (a lazily restored buffer, see
            # lazypages), in asynchronous write-protect mode too: the scan works on it.
            return ctypes.get_errno() == errno.EBUSY and self.written(start, end) is not None
        if self.written(start, end) is None:
            self.unwatch(start, end)
            return False
        return True

    def unwatch(self, start: int, end: int) -> None:
        span = (ctypes.c_uint64 * 2)(start, end - start)
        self._libc.ioctl(self._uffd, uffd.UFFDIO_UNREGISTER, ctypes.addressof(span))

    def written(self, start: int, end: int) -> list[tuple[int, int]] | None:
        """``[start, end)`` ranges of pages written since the last call, which are
        write-protected again; None when part of the span is no longer watched
        (unmapped and mapped anew, moved)."""
        found: list[tuple[int, int]] = []
        regions = (ctypes.c_uint64 * (3 * _REGIONS))()
        at = start
        while at < end:
            arg = (ctypes.c_uint64 * 12)(
                96, _SCAN_WP_MATCHING | _SCAN_CHECK_WPASYNC, at, end, 0,
                ctypes.addressof(regions), _REGIONS, 0, 0, _PAGE_IS_WRITTEN, 0, _PAGE_IS_WRITTEN,
            )  # fmt: skip
            count = self._libc.ioctl(self._pagemap, uffd.PAGEMAP_SCAN, ctypes.addressof(arg))
            if count < 0:
                if ctypes.get_errno() == errno.EINTR:
                    continue
                return None
            for i in range(count):
                region = (int(regions[3 * i]), int(regions[3 * i + 1]))
                if found and found[-1][1] == region[0]:
                    found[-1] = (found[-1][0], region[1])
                else:
                    found.append(region)
            if int(arg[4]) <= at:
                return None  # no progress: do not trust the rest
            at = int(arg[4])
        return found

    def close(self) -> None:
        for fd in (self._uffd, self._pagemap):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class Tracker:
    """Which chunks of which buffers a writer may name without hashing them.

    Plain bookkeeping around a :class:`Watcher` (or anything with its
    ``watch``/``unwatch``/``written``); the kernel calls :meth:`watch_new`
    before a checkpoint's fork, :meth:`forked` right after it (its return
    goes to the writer), and :meth:`committed` with the writer's result.
    The module's docstring says why this is sound.
    """

    watcher: Any
    #: The bytes per chunk of a buffer of a given size (:func:`.store.chunks.chunk_size`).
    chunk: Callable[[int], int]
    #: Tracked forks so far.
    forks: int = 0
    #: Watched page spans -> the number of forks made before they were watched.
    spans: dict[tuple[int, int], int] = field(default_factory=dict)
    #: Spans found mostly rewritten, not watched until their buffer is found unchanged.
    dense: set[tuple[int, int]] = field(default_factory=set)
    #: (address, size) of each buffer the last committed writer saved -> its chunks' names.
    table: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    #: The fork whose writer made :attr:`table`.
    table_fork: int = 0
    #: Each scan since that fork: (fork, {span: written ranges}).
    reports: list[tuple[int, dict[tuple[int, int], list[tuple[int, int]]]]] = field(
        default_factory=list
    )

    def watch_new(self, buffers: Iterable[tuple[int, int]]) -> None:
        """Watch the memory of *buffers* (address, size) not watched yet; before a fork."""
        new = [
            page_span(address, size)
            for address, size in buffers
            if self._within(address, size) is None
        ]
        self._watch([span for span in new if span not in self.dense])

    def _watch(self, spans: Sequence[tuple[int, int]]) -> None:
        lines = memory_map() if spans else []
        for span in spans:
            if any(s < span[1] and span[0] < e for s, e in self.spans):
                continue  # overlaps a watched span: registering it again would fail
            if self.watcher.watch(*span, lines):
                self.spans[span] = self.forks

    def _within(self, address: int, size: int) -> tuple[int, int] | None:
        for span in self.spans:
            if span[0] <= address and address + size <= span[1]:
                return span
        return None

    def forked(self) -> bytes:
        """Right after a checkpoint's fork: scan, and say which chunks of the
        last committed buffers no write has touched since (for the writer)."""
        self.forks += 1
        report: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for span in list(self.spans):
            written = self.watcher.written(*span)
            if written is None:
                self._drop(span)
                continue
            report[span] = written
            if sum(e - s for s, e in written) * 2 > span[1] - span[0]:
                self._drop(span)  # mostly rewritten: see the module's limits
                self.dense.add(span)
        self.reports.append((self.forks, report))
        if len(self.reports) > _MAX_REPORTS:  # no writer has committed for long
            self.table, self.reports = {}, self.reports[-1:]
        clean = []
        for address, size in self.table:
            within = self._within(address, size)
            if within is None or self.spans[within] >= self.table_fork:
                continue  # not watched since before that writer's fork
            clean.append([address, size, sorted(self._dirty(within, address, size))])
        return json.dumps({"fork": self.forks, "buffers": clean}).encode()

    def _dirty(self, span: tuple[int, int], address: int, size: int) -> set[int]:
        dirty: set[int] = set()
        step = self.chunk(size)
        for _fork, report in self.reports:
            for start, end in report.get(span, ()):
                lo, hi = max(start, address), min(end, address + size)
                if lo < hi:
                    first, last = (lo - address) // step, (hi - 1 - address) // step
                    dirty.update(range(first, last + 1))
        return dirty

    def _drop(self, span: tuple[int, int]) -> None:
        self.spans.pop(span, None)
        self.watcher.unwatch(*span)

    def committed(self, fork: int, buffers: Sequence[Sequence[Any]]) -> None:
        """The writer of *fork* committed *buffers*: ``[address, size, names, written, ...]``
        (:attr:`.checkpoint.CheckpointResult.buffers`)."""
        if fork < self.table_fork:
            return
        self.table = {(int(b[0]), int(b[1])): list(b[2]) for b in buffers}
        self.table_fork = fork
        self.reports = [(f, r) for f, r in self.reports if f >= fork]
        used, new = set(), []
        for address, size, _names, written, *_ in buffers:
            span = self._within(address, size)
            if span is None:
                span = page_span(address, size)
                if span in self.dense and written:
                    continue
                self.dense.discard(span)
                new.append(span)
            used.add(span)
        self._watch(new)
        for span, since in list(self.spans.items()):
            if since < fork and span not in used:
                self._drop(span)  # its buffer is gone
        self.dense &= {page_span(int(b[0]), int(b[1])) for b in buffers}

    def close(self) -> None:
        """Stop watching anything (and close the watcher)."""
        for span in list(self.spans):
            self._drop(span)
        self.table, self.reports = {}, []
        self.watcher.close()

    def seed(self, address: int, size: int, chunks: Sequence[tuple[str, int]]) -> None:
        """A restore has just read and checked a chunked buffer: watch its memory from
        now on, and offer its *chunks* (name, size) to the first checkpoint. At start
        only, and only if they were cut as this release cuts them."""
        step = self.chunk(size)
        cuts = [min(step, size - at) for at in range(0, size, step)]
        if self.forks or [n for _, n in chunks] != cuts:
            return
        span = page_span(address, size)
        self._watch([span])
        if span in self.spans:
            self.table[(address, size)] = [name for name, _ in chunks]
            self.table_fork = 1  # the first fork's scan covers every write since now

    def reusable(self, message: bytes) -> dict[tuple[int, int], list[str | None]]:
        """In the writer: the name of each chunk it may reuse, from :meth:`forked`'s
        *message* and the table inherited with the fork; None where it must hash."""
        try:
            data = json.loads(message)
            buffers = data["buffers"]
            found: dict[tuple[int, int], list[str | None]] = {}
            for address, size, dirty in buffers:
                names: list[str | None] = list(self.table[(address, size)])
                for index in dirty:
                    names[index] = None
                found[(address, size)] = names
        except (ValueError, KeyError, TypeError, IndexError):
            return {}
        return found


def send(fd: int, message: bytes) -> None:
    """Write *message* to the writer's pipe without blocking (the caller closes *fd*).
    A message the pipe cannot take whole is cut short, which the writer reads as none."""
    with contextlib.suppress(OSError):
        os.set_blocking(fd, False)
        os.write(fd, message)


def receive(fd: int, timeout: float) -> bytes:
    """In the writer: what :func:`send` wrote, or nothing after *timeout* seconds."""
    data = bytearray()
    try:
        while select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
        else:
            return b""
    except OSError:
        return b""
    finally:
        os.close(fd)
    return bytes(data)


#: Seconds a writer spends at most, per checkpoint, finding which buffers the
#: namespace owns (:class:`Holdings`); past it the rest are hashed and not watched.
HOLDINGS_BUDGET = 0.5
#: Objects a :class:`Holdings` walk looks into with one :func:`gc.get_referents` call.
_BATCH = 1 << 12
#: Not looked into: the namespace owns no array through a class or a module.
_OPAQUE = (type, ModuleType)
#: Containers whose items a walk takes a batch at a time when they are many.
_LARGE = frozenset({list, tuple, dict})
#: Values that hold no other object: not looked into.
_ATOMIC = frozenset({int, float, complex, bool, str, bytes, type(None)})


def array_extent(array: Any) -> tuple[int, int] | None:
    """``[low, high)``: the bytes a numpy array's elements lie in (None if it has none)."""
    if array.size == 0:
        return None
    low = high = int(array.__array_interface__["data"][0])
    for count, stride in zip(array.shape, array.strides, strict=True):
        if stride < 0:
            low += (count - 1) * stride
        else:
            high += (count - 1) * stride
    return low, high + array.itemsize


class Holdings:
    """Which large buffers belong to objects of the namespace, as the kernel holds it.

    In a forked writer only. A buffer pickled out of band is either memory of
    an object the namespace holds (an array, a DataFrame's block), the same
    memory at the same address in the kernel, or memory the writer made while
    pickling (a reduction returning ``self.a[::2].copy()``). The second lies, in
    the kernel, where nothing lives: free memory nobody writes, so its address
    and the tracker's silence say nothing of what the next writer's copy there
    holds. Only buffers of the first kind are named by address
    (:meth:`names`) or reported for watching (:meth:`reported`).

    How: the values' objects are walked breadth first through
    :func:`gc.get_referents` (and each numpy array's ``base``), noting the bytes
    every numpy array of at least *threshold* bytes spans; a buffer inside
    such bytes belongs to the namespace (the array is alive in the writer, and
    kept so by the walk, so nothing the writer made can lie there). The walk stops once every buffer
    asked about is found, and resumes if asked about more.

    Limits: classes, modules and modules' globals are not walked into, nor
    numpy arrays of objects, nor the keys of a dict of more than
    :data:`_BATCH` items, and buffers other than numpy arrays' are not
    recognised: such a buffer is hashed every time, as when tracking is off.
    The walk stops after :data:`HOLDINGS_BUDGET` seconds in all (a namespace of
    millions of objects: about a second a million on a busy two-core machine),
    with the same effect on the buffers not found yet. A buffer that is not
    the namespace's is never found, so a writer that made one walks the whole
    namespace, or until that time is up, after it has committed.
    A walk resumed after pickling sees what pickling changed in the objects;
    that can only add memory the writer made to :meth:`reported`, and such
    memory is then watched in vain, never named: :meth:`names` walks before
    pickling, as the kernel had the objects.
    """

    def __init__(
        self, values: Mapping[str, Any], threshold: int, budget: float = HOLDINGS_BUDGET
    ) -> None:
        self._threshold = threshold
        self._budget = budget
        #: Per variable, objects met and not looked into yet, in batches, in the order met.
        self._pending: deque[deque[list[Any] | Iterator[Any]]] = deque(
            deque([[v]]) for v in values.values()
        )
        self._seen: set[int] = set()
        self._skip = {id(getattr(m, "__dict__", None)) for m in list(sys.modules.values())}
        self._extents: list[tuple[int, int]] = []
        self._arrays: list[Any] = []
        #: Why the walk failed, if it did (see :meth:`_safely`).
        self.failure: str | None = None

    def _covered(self, buffer: tuple[int, int]) -> bool:
        address, size = buffer
        return any(low <= address and address + size <= high for low, high in self._extents)

    def held(self, buffers: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
        """Those of *buffers* (address, size) that lie in memory of the namespace's arrays.

        Each variable is walked breadth first, the variables in turn, at most
        :data:`_BATCH` objects at a time, a large list, tuple or dict's items a
        batch at a time too: a list of a million objects does not keep a
        DataFrame's blocks waiting. Each batch's referents come from one
        :func:`gc.get_referents` call."""
        wanted = set(buffers)
        numpy = sys.modules.get("numpy")
        if numpy is None:
            return set()
        ndarray = numpy.ndarray
        found = {b for b in wanted if self._covered(b)}
        start = time.monotonic()
        while self._pending and len(found) < len(wanted):
            if time.monotonic() - start >= self._budget:
                break
            pending = self._pending.popleft()
            noted = len(self._extents)
            self._step(pending, ndarray)
            if pending:
                self._pending.append(pending)  # its next turn after the other variables'
            if len(self._extents) > noted:
                found.update(b for b in wanted if self._covered(b))
        self._budget -= time.monotonic() - start
        if self._budget <= 0:
            self._pending.clear()
        return found

    def _step(self, pending: deque[list[Any] | Iterator[Any]], ndarray: Any) -> None:
        """Look at one batch of objects met in one variable, and queue what they hold."""
        source = pending.popleft()
        if isinstance(source, list):
            met = source
        else:  # the items of a large container, a batch at a time
            met = list(itertools.islice(source, _BATCH))
            if met:
                pending.appendleft(source)
        seen, skip = self._seen, self._skip
        fresh = [o for o in met if type(o) not in _ATOMIC and id(o) not in seen]
        seen.update(map(id, fresh))
        arrays = [o for o in fresh if isinstance(o, ndarray)]
        for array in arrays:
            self._note(array, ndarray, pending)
        inside: list[Any] = []
        for obj in fresh:
            if id(obj) in skip or isinstance(obj, _OPAQUE):
                continue
            if type(obj) in _LARGE and len(obj) > _BATCH:
                pending.append(iter(obj.values() if isinstance(obj, dict) else obj))
            else:
                inside.append(obj)
        if inside:
            held = gc.get_referents(*inside)
            for at in range(0, len(held), _BATCH):
                pending.append(held[at : at + _BATCH])

    def _note(self, array: Any, ndarray: Any, pending: deque[list[Any] | Iterator[Any]]) -> None:
        """Note the bytes a large numpy array spans, and go on to the arrays it views
        (``base``, which :func:`gc.get_referents` does not give)."""
        while True:
            extent = array_extent(array)
            if extent is not None and extent[1] - extent[0] >= self._threshold:
                self._extents.append(extent)
                # kept alive: a reduction dropping it cannot free its memory for a copy
                self._arrays.append(array)
            base = array.base
            if base is None or id(base) in self._seen:
                return
            self._seen.add(id(base))
            if not isinstance(base, ndarray):
                pending.append([base])
                return
            array = base

    def _safely(self, buffers: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
        """:meth:`held`; none should the walk fail (an object whose traversal raises):
        every chunk is then hashed and nothing watched, and :attr:`failure` says why."""
        if self.failure is not None:
            return set()
        try:
            return self.held(buffers)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            return set()

    def names(
        self, offered: Mapping[tuple[int, int], list[str | None]]
    ) -> dict[tuple[int, int], list[str | None]]:
        """The chunk names :meth:`Tracker.reusable` offers, for the namespace's buffers only."""
        held = self._safely(offered) if offered else set()
        return {buffer: names for buffer, names in offered.items() if buffer in held}

    def reported(self, buffers: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """A writer's chunked *buffers* (``[address, size, ...]``), the namespace's only."""
        held = self._safely([(int(b[0]), int(b[1])) for b in buffers]) if buffers else set()
        return [list(b) for b in buffers if (int(b[0]), int(b[1])) in held]


def top_level_buffers(values: Mapping[str, Any], threshold: int) -> list[tuple[int, int]]:
    """(address, size) of the contiguous numpy arrays of at least *threshold* bytes
    bound to a name: watched before the checkpoint that first saves them."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return []
    found = []
    for value in values.values():
        if type(value) is numpy.ndarray and value.nbytes >= threshold:
            flags = value.flags
            if flags.c_contiguous or flags.f_contiguous:
                found.append((int(value.__array_interface__["data"][0]), int(value.nbytes)))
    return found
