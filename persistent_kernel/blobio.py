"""Reading a blob's parts into memory: private buffers, parallel reads, hashing on the fly.

A restore of a large session is a copy from the page cache into fresh memory
plus a hash over the same bytes. Done one after the other on one core that is
two passes over a GiB; here two threads read 4 MiB chunks with ``preadv``
(which releases the GIL and needs no shared file position) while the calling
thread hashes each chunk, in order, right after it lands, while it is still
in the CPU cache. The hash is the same streaming hash of the whole blob
(whichever the store names blobs by), so the format does not change.

Limits: without ``os.preadv`` (macOS) parts are read by one thread, hashed as
they come. Small parts are always read that way: threads cost more than they
save below a few MiB.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from .errors import ShortRead

#: Bytes per read: big enough to amortise a call, small enough to stay in cache.
CHUNK = 1 << 22
#: Parts at least this large are read by several threads.
PARALLEL_MIN = 1 << 25
#: Reader threads; chunks in flight ahead of the hash.
READERS = 2
AHEAD = 4
#: Parts at least this large go into anonymous mmaps rather than bytearrays.
MMAP_MIN = 1 << 20


def private_buffer(size: int) -> Any:
    """Writable memory for a part: an anonymous private mmap, or a bytearray if small.

    ``mmap.mmap(-1, n)`` alone is MAP_SHARED: a forked writer would see the
    kernel's later changes to a restored array and could save a mix of two
    cells. MAP_PRIVATE keeps the snapshot a snapshot; huge pages, where the
    kernel offers them, make filling it faster. Unlike bytearray, nothing is
    zero-filled first.
    """
    if size < MMAP_MIN:
        return bytearray(size)
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with suppress(OSError):
            buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


#: preadv reads at an offset without the shared file position, so threads can share the fd.
_PREADV = hasattr(os, "preadv")


def read_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill *view* with the bytes of *fd* from *offset*; :class:`ShortRead` at EOF."""
    if not _PREADV:
        os.lseek(fd, offset, os.SEEK_SET)
    got = 0
    while got < len(view):
        rest = [view[got:]]
        n = os.preadv(fd, rest, offset + got) if _PREADV else os.readv(fd, rest)
        if n == 0:
            raise ShortRead
        got += n


def read_part(
    fd: int,
    size: int,
    offset: int,
    digest: Any,
    on_read: Callable[[int], None] | None = None,
) -> Any:
    """Read *size* bytes of *fd* from *offset* into a new buffer and hash them.

    *digest* (a streaming hash) is updated with the bytes in file order.
    *on_read* is called with each chunk's size once it is read and hashed;
    an exception it raises stops the read (reads already started finish
    first, so nothing writes into the buffer after this returns).
    Raises :class:`ShortRead` if the file ends early.
    """
    buf = private_buffer(size)
    view = memoryview(buf)
    try:
        spans = [(start, min(start + CHUNK, size)) for start in range(0, size, CHUNK)]
        if size >= PARALLEL_MIN and _PREADV:
            _read_parallel(fd, view, offset, spans, digest, on_read)
        else:
            for start, end in spans:
                read_into(fd, view[start:end], offset + start)
                digest.update(view[start:end])
                if on_read is not None:
                    on_read(end - start)
    finally:
        view.release()
    return buf


def _read_parallel(
    fd: int,
    view: memoryview,
    offset: int,
    spans: list[tuple[int, int]],
    digest: Any,
    on_read: Callable[[int], None] | None,
) -> None:
    pending: deque[tuple[int, int, Future[None]]] = deque()
    queued = iter(spans)
    with ThreadPoolExecutor(READERS, thread_name_prefix="persistent-kernel-read") as pool:
        try:

            def submit() -> None:
                span = next(queued, None)
                if span is not None:
                    start, end = span
                    future = pool.submit(read_into, fd, view[start:end], offset + start)
                    pending.append((start, end, future))

            for _ in range(AHEAD):
                submit()
            while pending:
                start, end, future = pending.popleft()
                future.result()
                submit()
                digest.update(view[start:end])
                if on_read is not None:
                    on_read(end - start)
        finally:
            # Leaving the pool waits for reads in flight; drop those not started.
            for _, _, future in pending:
                future.cancel()
