"""Large buffers stored as content-addressed chunks.

A large out-of-band buffer (a numpy array's memory, pickle protocol 5) is
cut into fixed-size chunks, each a blob named by its hash. A cell that
changes one element of a 3 GiB array changes one chunk: the next
checkpoint writes that chunk alone, and the generations kept share every
other chunk, so ``keep`` generations of the array cost about the array plus
what changed.

Why fixed-size chunks rather than content-defined ones (a rolling hash
picking the cut points): an in-place change to an array never moves its
bytes, so fixed cuts already isolate it, at no cost per byte; content-defined
cuts only help when bytes are inserted or removed, which for an array means a
new array of another size, rewritten anyway. Why :data:`CHUNK` is 8 MiB: a
one-element change then writes at most 1% of any buffer of 800 MiB or more,
and a chunk is large enough that a file and a hash per chunk cost little next
to its bytes (a 1 GiB array is 128 files).

Chunking also lets the hash run on two cores: the writer hashes chunks on
:data:`THREADS` threads (created in the writer itself: a pool made before a
fork would hang in the child) while :data:`WRITERS` threads write the chunks
already hashed, so that waiting for one chunk's fsync does not stop the
others; a restore reads and hashes chunks on two threads, each straight into
its slice of one destination buffer, so the array comes back
in one piece with no copy. BLAKE3 releases the GIL while it hashes.

Limits: only buffers of at least :data:`THRESHOLD` bytes are chunked (below
it one blob is cheaper than several); the pickle stream is never chunked.
A manifest holding a chunked buffer is written as format 3, which older
releases refuse as newer rather than misread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import blobio
from ..errors import CorruptCheckpoint
from .sessions import HASH, BlobRef, SessionStore, blob_hash, hasher

#: Bytes per chunk (see the module docstring for why 8 MiB).
CHUNK = 8 << 20
#: Buffers of at least this many bytes are chunked.
THRESHOLD = 16 << 20
#: Threads hashing (writer) or reading and hashing (restore) chunks.
THREADS = 2
#: Threads writing chunks. Each chunk's file is written, fsynced and renamed;
#: with one thread every fsync stops the writing, with several the disk confirms
#: some chunks while others are written (1 GiB: 1.4-2.0x a single file written
#: and fsynced with one thread, 1.0-1.1x with four, on this project's VM).
WRITERS = 4


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


def spans(size: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk of a buffer of *size* bytes."""
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def write_part(
    session: SessionStore,
    part: Any,
    chunk: bool = True,
    known: Sequence[str | None] = (),
) -> BlobRef | Chunked:
    """Store one part: one blob if small (or *chunk* is false), else chunks.

    Only chunks not already stored are written. Hold the session's lock.
    Chunks are hashed on :data:`THREADS` threads and written, each as soon as
    it is hashed, on :data:`WRITERS` threads; the result lists them in order.
    *known*: the name of each chunk where the caller knows it already (the
    bytes are those an earlier checkpoint hashed; see :mod:`..pagewrites`),
    None where it must be hashed. A known chunk missing from the store is
    written under that name.
    """
    view = memoryview(part).cast("B")
    if not chunk or view.nbytes < THRESHOLD:
        return session.write_blob([view])
    cuts = spans(view.nbytes)
    if len(known) != len(cuts):
        known = [None] * len(cuts)
    names = dict(zip(cuts, known, strict=True))
    hashed = sum(end - start for (start, end), name in names.items() if name is None)

    def digest(span: tuple[int, int]) -> str:
        return names[span] or blob_hash([view[span[0] : span[1]]])

    def store(span: tuple[int, int], name: str) -> BlobRef:
        return session.write_blob([view[span[0] : span[1]]], digest=name)

    with (
        ThreadPoolExecutor(THREADS, thread_name_prefix="persistent-kernel-hash") as hashing,
        ThreadPoolExecutor(WRITERS, thread_name_prefix="persistent-kernel-write") as writing,
    ):
        stored = [
            writing.submit(store, span, name)
            for span, name in zip(cuts, hashing.map(digest, cuts), strict=True)
        ]
        return Chunked(tuple(future.result() for future in stored), hashed)


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
