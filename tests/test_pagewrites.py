"""pagewrites: the operating system's record of written pages, on real memory.

The watcher runs on this process's own memory (userfaultfd and
PAGEMAP_SCAN are real); the tracker's bookkeeping is driven by hand here,
forks included, and wired into real kernels in test_pagewrites_kernel.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from persistent_kernel import pagewrites, serializer
from persistent_kernel.pagewrites import PAGE, Tracker, Watcher
from persistent_kernel.store import chunks
from persistent_kernel.store.sessions import blob_hash

CHUNK = 16 * PAGE  # small chunks: a few pages each, so that tests stay small


def fixed(size: int) -> int:
    """Every buffer cut in :data:`CHUNK` bytes."""
    return CHUNK


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
_libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    found = Watcher.open()
    assert found is not None, "userfaultfd write tracking is not available on this machine"
    try:
        yield found
    finally:
        found.close()


def region(pages: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping of *pages* pages, every page written once."""
    memory = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.write(b"\x01" * (pages * PAGE))
    return memory, pagewrites.address_of(memory)


def remap(address: int, pages: int) -> None:
    """Map fresh memory over ``pages`` pages at *address* (MAP_FIXED), as an allocator may."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x10  # MAP_FIXED
    got = _libc.mmap(address, pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    assert got == address


def test_a_write_is_reported_by_the_next_scan_only(watcher: Watcher) -> None:
    memory, start = region(32)
    assert watcher.watch(start, start + 32 * PAGE)
    assert watcher.written(start, start + 32 * PAGE) == []
    memory[5 * PAGE + 3] = 9
    memory[6 * PAGE] = 9
    memory[20 * PAGE + 100] = 9
    assert watcher.written(start, start + 32 * PAGE) == [
        (start + 5 * PAGE, start + 7 * PAGE),
        (start + 20 * PAGE, start + 21 * PAGE),
    ]
    assert watcher.written(start, start + 32 * PAGE) == []


def test_a_page_the_kernel_discards_counts_as_written(watcher: Watcher) -> None:
    memory, start = region(8)
    assert watcher.watch(start, start + 8 * PAGE)
    memory.madvise(mmap.MADV_DONTNEED, 3 * PAGE, PAGE)  # it reads as zeros from now on
    assert watcher.written(start, start + 8 * PAGE) == [(start + 3 * PAGE, start + 4 * PAGE)]


def test_memory_mapped_anew_is_no_longer_watched(watcher: Watcher) -> None:
    _memory, start = region(8)  # kept open: the mapping lives as long as it
    assert watcher.watch(start, start + 8 * PAGE)
    remap(start + 2 * PAGE, 2)
    assert watcher.written(start, start + 8 * PAGE) is None


def test_a_write_after_a_fork_is_reported_in_the_parent(watcher: Watcher) -> None:
    memory, start = region(8)
    assert watcher.watch(start, start + 8 * PAGE)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child holds the pages, as a writer does, until told to go
        os.read(read, 1)
        os._exit(0)
    try:
        memory[4 * PAGE] = 3  # a copy-on-write fault: the parent gets a new page
        assert watcher.written(start, start + 8 * PAGE) == [(start + 4 * PAGE, start + 5 * PAGE)]
    finally:
        os.write(write, b"x")
        os.waitpid(pid, 0)
        os.close(read)
        os.close(write)


def test_shared_memory_cannot_be_watched(watcher: Watcher) -> None:
    memory = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    start = pagewrites.address_of(memory)
    assert not watcher.watch(start, start + 4 * PAGE)  # another process may write it


def test_address_of_a_read_only_buffer() -> None:
    array = np.arange(10, dtype=np.int64)
    array.flags.writeable = False
    assert pagewrites.address_of(memoryview(array)[2:]) == array.ctypes.data + 16


# -- the tracker ---------------------------------------------------------------------


def array(chunks: int) -> np.ndarray:
    """An array of *chunks* chunks of random bytes, on pages of its own (a write to
    one of its chunks then dirties no other)."""
    memory, _ = region(chunks * CHUNK // PAGE)
    found = np.frombuffer(memory, dtype=np.uint8)
    found[:] = np.random.default_rng(chunks).integers(0, 255, found.size, dtype=np.uint8)
    return found


def buffers_of(
    *arrays: np.ndarray, written: int = 0, chunk: Callable[[int], int] = fixed
) -> list[list[object]]:
    """What a writer reports for *arrays*: names stand for the chunks' hashes."""
    found: list[list[object]] = []
    for a in arrays:
        names = [f"{a.ctypes.data}-{i}" for i in range(-(-a.nbytes // chunk(a.nbytes)))]
        found.append([a.ctypes.data, a.nbytes, names, written, a.nbytes])
    return found


def reuse(tracker: Tracker, message: bytes, a: np.ndarray) -> list[str | None] | None:
    return tracker.reusable(message).get((a.ctypes.data, a.nbytes))


def test_chunks_no_write_touched_are_named_without_hashing(watcher: Watcher) -> None:
    tracker, a = Tracker(watcher, fixed), array(4)
    tracker.watch_new([(a.ctypes.data, a.nbytes)])  # before the fork: a top-level array
    tracker.forked()
    tracker.committed(1, buffers_of(a))
    a[2 * CHUNK + 5] += 1
    names = reuse(tracker, tracker.forked(), a)
    assert names == [f"{a.ctypes.data}-0", f"{a.ctypes.data}-1", None, f"{a.ctypes.data}-3"]


def test_buffers_cut_in_sizes_of_their_own_are_dirtied_chunk_by_chunk(watcher: Watcher) -> None:
    """Each buffer's chunks are as large as its size makes them: a write marks the
    chunk of that buffer's size it falls in."""

    def grows(size: int) -> int:
        return CHUNK if size < 4 * CHUNK else 2 * CHUNK

    tracker, a, b = Tracker(watcher, grows), array(2), array(8)
    tracker.watch_new([(a.ctypes.data, a.nbytes), (b.ctypes.data, b.nbytes)])
    tracker.forked()
    tracker.committed(1, buffers_of(a, b, chunk=grows))
    a[CHUNK + 1] += 1
    b[5 * CHUNK + 1] += 1  # the third of b's four chunks
    message = tracker.forked()
    assert reuse(tracker, message, a) == [f"{a.ctypes.data}-0", None]
    kept = [f"{b.ctypes.data}-{i}" for i in range(4)]
    assert reuse(tracker, message, b) == [*kept[:2], None, kept[3]]


def test_memory_watched_only_after_a_writers_fork_is_not_trusted_for_it(
    watcher: Watcher,
) -> None:
    """Writes between that fork and the watch went unseen: the names wait a checkpoint."""
    tracker, a = Tracker(watcher, fixed), array(2)
    tracker.forked()
    tracker.committed(1, buffers_of(a))  # first seen in a writer's result: watched now
    assert reuse(tracker, tracker.forked(), a) is None
    tracker.committed(2, buffers_of(a))
    assert reuse(tracker, tracker.forked(), a) == [f"{a.ctypes.data}-0", f"{a.ctypes.data}-1"]


def test_writes_before_a_failed_checkpoint_still_count(watcher: Watcher) -> None:
    tracker, a = Tracker(watcher, fixed), array(4)
    tracker.watch_new([(a.ctypes.data, a.nbytes)])
    tracker.forked()
    tracker.committed(1, buffers_of(a))
    a[0] += 1
    tracker.forked()  # its writer fails: nothing is committed
    a[3 * CHUNK] += 1
    names = reuse(tracker, tracker.forked(), a)
    assert names is not None and [n is None for n in names] == [True, False, False, True]


def test_a_write_just_after_the_fork_counts_for_the_next_checkpoint(watcher: Watcher) -> None:
    """The writer's bytes are the fork's; the scan after it also covers a write made
    between the fork and the scan, which the next checkpoint must hash again."""
    tracker, a = Tracker(watcher, fixed), array(2)
    tracker.watch_new([(a.ctypes.data, a.nbytes)])
    tracker.forked()
    tracker.committed(1, buffers_of(a))
    a[CHUNK] += 1  # (as if made after the second fork, before its scan)
    assert reuse(tracker, tracker.forked(), a) == [f"{a.ctypes.data}-0", None]
    tracker.committed(2, buffers_of(a))
    assert reuse(tracker, tracker.forked(), a) == [f"{a.ctypes.data}-0", None]
    tracker.committed(3, buffers_of(a))
    assert reuse(tracker, tracker.forked(), a) == [f"{a.ctypes.data}-0", f"{a.ctypes.data}-1"]


def test_a_mostly_rewritten_array_is_watched_again_once_found_unchanged(
    watcher: Watcher,
) -> None:
    tracker, a = Tracker(watcher, fixed), array(4)
    span = pagewrites.page_span(a.ctypes.data, a.nbytes)
    tracker.watch_new([(a.ctypes.data, a.nbytes)])
    tracker.forked()
    tracker.committed(1, buffers_of(a))
    a += 1
    assert reuse(tracker, tracker.forked(), a) is None
    assert span not in tracker.spans
    tracker.watch_new([(a.ctypes.data, a.nbytes)])  # not while it keeps changing
    tracker.committed(2, buffers_of(a, written=a.nbytes))
    assert span not in tracker.spans
    tracker.forked()
    tracker.committed(3, buffers_of(a, written=0))
    assert span in tracker.spans


def test_an_array_whose_memory_was_mapped_anew_is_hashed(watcher: Watcher) -> None:
    tracker, a = Tracker(watcher, fixed), array(2)
    tracker.watch_new([(a.ctypes.data, a.nbytes)])
    tracker.forked()
    tracker.committed(1, buffers_of(a))
    remap(a.ctypes.data // PAGE * PAGE + PAGE, 1)  # freed and reallocated, say
    assert reuse(tracker, tracker.forked(), a) is None


def test_a_result_older_than_the_table_is_ignored(watcher: Watcher) -> None:
    tracker, a, b = Tracker(watcher, fixed), array(1), array(2)
    tracker.watch_new([(a.ctypes.data, a.nbytes), (b.ctypes.data, b.nbytes)])
    tracker.forked()
    tracker.forked()
    tracker.committed(2, buffers_of(b))
    tracker.committed(1, buffers_of(a))
    assert tracker.table_fork == 2 and list(tracker.table) == [(b.ctypes.data, b.nbytes)]


def test_a_message_cut_short_names_nothing(watcher: Watcher) -> None:
    tracker, a = Tracker(watcher, fixed), array(2)
    tracker.watch_new([(a.ctypes.data, a.nbytes)])
    tracker.forked()
    tracker.committed(1, buffers_of(a))
    message = tracker.forked()
    assert json.loads(message)["buffers"]
    assert tracker.reusable(message[: len(message) // 2]) == {}


def test_writes_from_another_thread_during_scans_are_never_lost(watcher: Watcher) -> None:
    """A thread keeps writing while checkpoints are taken. A copy of the array
    stands for each fork's snapshot, and each chunk is named by its bytes' hash:
    every name the tracker offers must be the hash of that chunk in the newest
    snapshot."""
    tracker, a = Tracker(watcher, fixed), array(8)
    tracker.watch_new([(a.ctypes.data, a.nbytes)])
    stop = threading.Event()

    def scribble() -> None:
        value = 0
        while not stop.wait(0.0002):  # a few pages between two scans, not most
            value += 1
            a[(value * 40009) % a.nbytes] = value % 251

    def named(snapshot: np.ndarray) -> list[list[object]]:
        names = [blob_hash([snapshot[i : i + CHUNK]]) for i in range(0, a.nbytes, CHUNK)]
        return [[a.ctypes.data, a.nbytes, names, 0, a.nbytes]]

    thread = threading.Thread(target=scribble)
    thread.start()
    offered = 0
    try:
        snapshot = a.copy()
        tracker.forked()
        for fork in range(1, 60):
            tracker.committed(fork, named(snapshot))
            snapshot = a.copy()  # the next fork
            names = reuse(tracker, tracker.forked(), a)
            assert names is not None
            truth = named(snapshot)[0][2]
            for index, name in enumerate(names):
                if name is not None:
                    offered += 1
                    assert name == truth[index], f"chunk {index} changed unseen at fork {fork}"
    finally:
        stop.set()
        thread.join()
    assert offered  # some chunks were left alone between two forks


def test_top_level_buffers_are_large_contiguous_numpy_arrays() -> None:
    big, small = np.zeros(1 << 20), np.zeros(10)
    strided = np.zeros(1 << 21)[::2]
    found = pagewrites.top_level_buffers(
        {"big": big, "small": small, "strided": strided, "text": "x" * (1 << 20)}, 1 << 20
    )
    assert found == [(big.ctypes.data, big.nbytes)]


def test_a_restored_buffer_is_offered_to_the_first_checkpoint(watcher: Watcher) -> None:
    tracker, a = Tracker(watcher, fixed), array(3)
    named = [(f"n{i}", CHUNK) for i in range(3)]
    tracker.seed(a.ctypes.data, a.nbytes, named)  # just read and checked
    a[CHUNK + 1] += 1  # a cell, before the first checkpoint
    assert reuse(tracker, tracker.forked(), a) == ["n0", None, "n2"]


def test_a_buffer_cut_otherwise_or_seen_late_is_not_offered(watcher: Watcher) -> None:
    tracker, a, b = Tracker(watcher, fixed), array(2), array(3)
    tracker.seed(a.ctypes.data, a.nbytes, [("n0", CHUNK // 2), ("n1", CHUNK // 2), ("n2", CHUNK)])
    tracker.forked()
    tracker.seed(b.ctypes.data, b.nbytes, [(f"n{i}", CHUNK) for i in range(3)])  # too late
    assert tracker.reusable(tracker.forked()) == {}


# -- which buffers are the namespace's -----------------------------------------------

THRESHOLD = chunks.THRESHOLD


class Halves:
    """Pickled as a copy of every other element: a buffer made while pickling."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __reduce__(self) -> tuple[object, ...]:
        return Halves, (self.a[::2].copy(),)


def large_buffers(values: dict[str, object]) -> tuple[object, set[tuple[int, int]]]:
    """Pickle *values* as a writer does; its large out-of-band buffers (address, size),
    and what keeps them alive."""
    pickled = serializer.serialize(values)
    found = {
        (pagewrites.address_of(part), part.nbytes)
        for payload in pickled.payloads
        for part in payload.parts()[1:]
        if part.nbytes >= THRESHOLD
    }
    return pickled, found


def test_only_buffers_of_the_namespaces_objects_are_held() -> None:
    import pandas as pd

    n = THRESHOLD // 8 + 1000
    owner = np.random.default_rng(1).random(2 * n)
    top, row = np.random.default_rng(2).random(n), np.random.default_rng(3).random(n)
    frame = pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.ones(n)})
    fortran = np.asfortranarray(np.random.default_rng(4).random((n // 4, 4)))
    values: dict[str, object] = {
        "top": top,
        "nested": {"rows": [row]},
        "frame": frame,
        "view": owner[5:],  # pickled as the array owning its memory
        "fortran": fortran,
        "halves": Halves(np.ones(2 * n)),
    }
    alive, buffers = large_buffers(values)
    block = frame._mgr.blocks[0].values
    ours = {a.ctypes.data for a in (top, row, block, owner, fortran)}
    assert {address for address, _ in buffers} >= ours and len(buffers) == len(ours) + 1
    (made,) = [b for b in buffers if b[0] not in ours]  # the copy Halves made
    holdings = pagewrites.Holdings(values, THRESHOLD)
    reported = [[a, s, ["name"], 0, s] for a, s in sorted(buffers)]
    assert {(b[0], b[1]) for b in holdings.reported(reported)} == buffers - {made}
    offered: dict[tuple[int, int], list[str | None]] = {b: ["n"] for b in buffers}
    assert set(pagewrites.Holdings(values, THRESHOLD).names(offered)) == buffers - {made}
    assert holdings.failure is None
    del alive


def test_a_walk_past_its_budget_holds_nothing_more() -> None:
    """Buffers not found in time are hashed and not watched, as if the walk had failed."""
    deep = np.zeros(THRESHOLD // 8)
    values = {"many": [[i] for i in range(20_000)], "box": [[deep]]}
    target = {(deep.ctypes.data, deep.nbytes)}
    assert pagewrites.Holdings(values, THRESHOLD, budget=0.0).held(target) == set()
    assert pagewrites.Holdings(values, THRESHOLD).held(target) == target


def test_variables_are_walked_in_turn() -> None:
    """An array two levels down is found long before a large list beside it is
    walked through: within a budget that list alone would take many times over."""
    import pandas as pd

    frame = pd.DataFrame({"x": np.zeros(THRESHOLD // 8 + 10), "y": np.ones(THRESHOLD // 8 + 10)})
    block = frame._mgr.blocks[0].values
    rows = [{"id": i, "pair": (i, [i])} for i in range(300_000)]
    values = {"rows": rows, "frames": {"f": frame}}
    target = {(block.ctypes.data, block.nbytes)}
    holdings = pagewrites.Holdings(values, THRESHOLD)
    started = time.monotonic()
    assert holdings.held(target) == target
    found_in = time.monotonic() - started
    started = time.monotonic()
    assert holdings.held({(1, THRESHOLD)}) == set()  # never found: the rest is walked
    assert found_in * 5 < time.monotonic() - started
