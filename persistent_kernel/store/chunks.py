"""Large buffers stored as content-addressed chunks.

A large out-of-band buffer (a numpy array's memory, pickle protocol 5) is
cut into chunks of one size (:func:`chunk_size`, which grows with the
buffer), each a blob named by its hash. A cell that changes one element of
a 3 GiB array changes one chunk: the next checkpoint writes that chunk
alone, and the generations kept share every other chunk, so ``keep``
generations of the array cost about the array plus what changed.

Why fixed-size chunks rather than content-defined ones (a rolling hash
picking the cut points): an in-place change to an array never moves its
bytes, so fixed cuts already isolate it, at no cost per byte; content-defined
cuts only help when bytes are inserted or removed, which for an array means a
new array of another size, rewritten anyway.

Why the size grows with the buffer (a power of two, at most 1/:data:`SHARE`
of it, between :data:`MIN_CHUNK` and :data:`CHUNK`): a one-element change
rewrites one chunk, so a fixed 8 MiB would be 16% of a 50 MiB array; a
thirty-second of the buffer keeps it at or below 3.2% (an element across two
chunks, 6.3%) for any buffer of 32 MiB or more, and the cap keeps it at or
below 0.8% from 1 GiB. The floor and the cap keep a file and a hash per chunk
cheap next to its bytes (a 16 MiB buffer is 16 files, a 1 GiB one 128). Every
size is a multiple of the page, so that a chunk starts where a page does when
its buffer does (the write tracker works in pages).

Each chunk's size is in the manifest, so a reader never computes cuts: a
generation written with other sizes (8 MiB throughout, before sizes grew
with the buffer) reads as it always did. Cuts of another size do not share
chunks with this release's, so the first checkpoint after such a restore
writes the buffer once more in full.

Chunking also lets the hash run on two cores: the writer stores chunks on
:data:`WRITERS` threads (created in the writer itself: a pool made before a
fork would hang in the child), each hashing and writing its chunk, so that
while one thread waits for its chunk's fsync the others hash and write. A
chunk whose name is unknown is hashed first and written only if no blob has
that name, except after :data:`NEW_RUN` new chunks in a row (fresh data):
then it is written to a temp file and hashed piece by piece in the same pass
(:meth:`.SessionStore.write_new_blob`), its bytes read from memory once, not
twice, and named once written; a chunk found already stored sends the next
ones back to hashing first, so an unchanged buffer is never rewritten and a
changed region costs at most one needless write. A restore reads and hashes
chunks on two threads, each straight into its slice of one destination
buffer, so the array comes back in one piece with no copy. BLAKE3 releases
the GIL while it hashes.

Limits: only buffers of at least :data:`THRESHOLD` bytes are chunked (below
it one blob is cheaper than several); the pickle stream is never chunked.
A manifest holding a chunked buffer is written as format 3, which older
releases refuse as newer rather than misread.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from .. import blobio
from ..errors import CorruptCheckpoint
from .sessions import HASH, BlobRef, SessionStore, hasher

PAGE = mmap.PAGESIZE
#: The largest chunk, for buffers of 256 MiB or more (see the module docstring).
CHUNK = 8 << 20
#: The smallest chunk (a buffer of :data:`THRESHOLD` bytes is 16 of them).
MIN_CHUNK = 1 << 20
#: A chunk is at most this fraction of its buffer, between the two bounds.
SHARE = 32
#: Buffers of at least this many bytes are chunked.
THRESHOLD = 16 << 20
#: Threads reading and hashing chunks (restore).
THREADS = 2
#: Threads hashing and writing chunks. Each chunk's file is written, fsynced and
#: renamed; with one thread every fsync stops the writing, with several the disk
#: confirms some chunks while others are hashed and written (1 GiB: 1.4-2.0x a
#: single file written and fsynced with one thread, 1.0-1.1x with four, on this
#: project's VM).
WRITERS = 4
#: New chunks in a row after which the next is written and hashed in one pass.
NEW_RUN = 2


@dataclass(frozen=True)
class Chunked:
    """A buffer stored as chunks, in order."""

    chunks: tuple[BlobRef, ...]
    hashed: int = 0  # bytes hashed to name them (the rest were named by the caller)

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)

    @property
    def written(self) -> int:
        return sum(c.written for c in self.chunks)

    def record(self) -> dict[str, Any]:
        """The manifest's entry for this part."""
        return {"size": self.size, "chunks": [[c.hash, c.size] for c in self.chunks]}


def chunk_size(size: int) -> int:
    """The bytes per chunk of a buffer of *size* bytes: the largest power of two
    no more than ``size / SHARE``, within ``[MIN_CHUNK, CHUNK]`` (a multiple of
    the page: both bounds are)."""
    chunk = MIN_CHUNK
    while chunk < CHUNK and chunk * 2 * SHARE <= size:
        chunk *= 2
    return chunk


def spans(size: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk of a buffer of *size* bytes (chunks of
    :func:`chunk_size` bytes unless *chunk* says)."""
    step = chunk_size(size) if chunk is None else chunk
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def write_part(
    session: SessionStore,
    part: Any,
    chunk: bool = True,
    known: Sequence[str | None] = (),
    on_stored: Callable[[int], None] | None = None,
) -> BlobRef | Chunked:
    """Store one part: one blob if small (or *chunk* is false), else chunks.

    Only chunks not already stored are written. Hold the session's lock.
    Chunks are hashed and written on :data:`WRITERS` threads, fresh ones in
    one pass (see the module docstring); the result lists them in order.
    *known*: the name of each chunk where the caller knows it already (the
    bytes are those an earlier checkpoint hashed; see :mod:`..pagewrites`),
    None where it must be hashed. A known chunk missing from the store is
    written under that name. *on_stored*: called with the bytes of each blob
    once it is stored (from the writing threads), for the progress shown.
    """
    view = memoryview(part).cast("B")
    if not chunk or view.nbytes < THRESHOLD:
        ref = session.write_blob([view])
        if on_stored is not None:
            on_stored(view.nbytes)
        return ref
    cuts = spans(view.nbytes)
    if len(known) != len(cuts):
        known = [None] * len(cuts)
    hashed = sum(
        end - start for (start, end), name in zip(cuts, known, strict=True) if name is None
    )
    guess = _Guess()

    def store(span: tuple[int, int], name: str | None) -> BlobRef:
        piece = [view[span[0] : span[1]]]
        if name is not None:
            ref = session.write_blob(piece, digest=name)
        else:
            ref = session.write_new_blob(piece) if guess.fresh() else session.write_blob(piece)
            guess.saw(new=ref.written > 0)
        if on_stored is not None:
            on_stored(span[1] - span[0])
        return ref

    with ThreadPoolExecutor(WRITERS, thread_name_prefix="persistent-kernel-write") as writing:
        stored = [writing.submit(store, span, name) for span, name in zip(cuts, known, strict=True)]
        return Chunked(tuple(future.result() for future in stored), hashed)


class _Guess:
    """Whether the next chunk to hash is probably new: after :data:`NEW_RUN` new
    ones in a row. Updated from several threads: a stale read costs at most
    one chunk stored the other way, never a wrong name."""

    def __init__(self) -> None:
        self.new_in_a_row = 0

    def fresh(self) -> bool:
        return self.new_in_a_row >= NEW_RUN

    def saw(self, new: bool) -> None:
        self.new_in_a_row = self.new_in_a_row + 1 if new else 0


def read_chunked(
    session: SessionStore,
    chunks: Sequence[BlobRef],
    hash: str = HASH,
    on_read: Callable[[int], None] | None = None,
) -> Any:
    """One writable buffer holding *chunks* in order, each read into its slice and checked.

    A chunk whose bytes do not match its name is quarantined and
    :class:`CorruptCheckpoint` raised. *on_read* is called (in this thread)
    with each chunk's size once it is read and checked; an exception it
    raises stops the read (reads in flight finish first).
    """
    total = sum(c.size for c in chunks)
    buf = blobio.private_buffer(total)
    view = memoryview(buf)
    offsets = [0]
    for c in chunks:
        offsets.append(offsets[-1] + c.size)

    def one(index: int) -> None:
        ref = chunks[index]
        digest = hasher(hash)
        session.backend.read_blob_into(ref.hash, view[offsets[index] : offsets[index + 1]], digest)
        if digest.hexdigest() != ref.hash:
            session.backend.quarantine_blob(ref.hash)
            raise CorruptCheckpoint(f"blob {ref.hash} does not match its hash")

    try:
        with ThreadPoolExecutor(THREADS, thread_name_prefix="persistent-kernel-read") as pool:
            futures: list[Future[None]] = [pool.submit(one, i) for i in range(len(chunks))]
            try:
                for future, ref in zip(futures, chunks, strict=True):
                    future.result()
                    if on_read is not None:
                        on_read(ref.size)
            finally:
                for future in futures:
                    future.cancel()
    finally:
        view.release()
    return buf


class Pages(Protocol):
    """Where lazily restored buffers are mapped (:class:`..lazypages.PageServer`)."""

    def map(
        self,
        paths: Sequence[str],
        sizes: Sequence[int],
        names: Sequence[str],
        hash: str,
        label: str = "",
        quarantine: Callable[[str], None] | None = None,
    ) -> Any: ...


def map_chunked(
    session: SessionStore, chunks: Sequence[BlobRef], pages: Pages, hash: str = HASH,
    label: str = "",
) -> Any | None:  # fmt: skip
    """Like :func:`read_chunked`, but each chunk is read and checked when first
    touched (:mod:`..lazypages`); None where the backend keeps no local file
    for the chunks, or where they cannot be mapped now (read them then).
    Nothing is opened here: a chunk whose file is missing, of the wrong size
    or not private, or whose bytes do not match its name, is found on first
    touch, told, and read as zeros (one that cannot be read now, EIO, is
    waited for)."""
    if any(ref.size % PAGE for ref in chunks[:-1]):
        return None  # chunks that share a page cannot be placed one at a time
    paths = [session.backend.blob_path(c.hash) for c in chunks]
    if any(path is None for path in paths):
        return None  # not on local disk: read it
    try:
        return pages.map([str(p) for p in paths], [c.size for c in chunks],
                         [c.hash for c in chunks], hash, label,
                         session.backend.quarantine_blob)  # fmt: skip
    except OSError:
        return None  # no lazy mapping here or now: read it
