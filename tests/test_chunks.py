"""Large buffers stored as chunks: exact reassembly, small rewrites, shared generations."""

from __future__ import annotations

import errno
import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persistent_kernel import snapshot
from persistent_kernel.checkpoint import CheckpointResult, write_checkpoint
from persistent_kernel.content import parse
from persistent_kernel.restore import load_generation, restore_checkpoint
from persistent_kernel.store import SessionStore, blob_hash, chunks, fs
from persistent_kernel.store.sessions import hasher

from .harness import KernelHarness
from .helpers import INFO, flip_a_bit

MB = 1 << 20
CHUNK = chunks.CHUNK


def write(session: SessionStore, values: dict[str, Any], keep: int = 10) -> CheckpointResult:
    result = write_checkpoint(session, values, {}, INFO, keep=keep)
    assert result.ok
    return result


def restore(session: SessionStore) -> dict[str, Any]:
    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into)
    assert not report.problems, report.problems
    return into


def stored_bytes(session: SessionStore) -> int:
    return sum(p.stat().st_size for p in session.objects_dir.iterdir())


ARRAYS = {
    "multiple of the chunk": lambda: np.arange(4 * CHUNK // 8, dtype=np.int64),
    "not a multiple": lambda: np.random.default_rng(1).random(3 * CHUNK // 8 + 12345),
    "fortran order": lambda: np.asfortranarray(
        np.random.default_rng(2).random((1500, 2 * CHUNK // 8 // 1500 + 7))
    ),
    "bytes just at the threshold": lambda: np.ones(chunks.THRESHOLD, dtype=np.uint8),
}


@pytest.mark.parametrize("make", ARRAYS.values(), ids=ARRAYS.keys())
def test_chunked_buffers_reassemble_exactly(session: SessionStore, make: Any) -> None:
    array = make()
    write(session, {"a": array, "empty": np.zeros((0, 5)), "small": np.arange(10)})
    manifest = session.read_manifest(session.generations()[-1])
    assert manifest.raw["format"] == 3
    (group,) = [g for g in parse(manifest).groups if "a" in g.names]
    chunked = [p for p in group.parts if p.blob is None]
    assert len(chunked) == 1 and chunked[0].size == array.nbytes
    assert len(chunked[0].chunks) == -(-array.nbytes // chunks.chunk_size(array.nbytes))

    into = restore(session)
    back = into["a"]
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.flags.f_contiguous == array.flags.f_contiguous
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)
    assert into["empty"].shape == (0, 5)
    np.testing.assert_array_equal(into["small"], np.arange(10))


def test_a_one_element_change_writes_one_chunk(session: SessionStore) -> None:
    array = np.random.default_rng(0).random(8 * CHUNK // 8)  # 64 MiB
    chunk = chunks.chunk_size(array.nbytes)
    first = write(session, {"a": array})
    assert first.written >= array.nbytes
    for step in range(3):
        array[(step * 3 + 1) * CHUNK // 8] += 1.0
        before = stored_bytes(session)
        result = write(session, {"a": array}, keep=10)
        assert chunk <= result.written <= chunk + MB
        assert stored_bytes(session) - before <= chunk + MB
    # four generations of a 64 MiB array: the array plus three changed chunks
    assert session.generations() == [1, 2, 3, 4]
    assert stored_bytes(session) <= array.nbytes + 3 * chunk + MB
    np.testing.assert_array_equal(restore(session)["a"], array)


def test_prune_keeps_chunks_still_referenced(session: SessionStore) -> None:
    array = np.zeros(4 * CHUNK // 8)
    write(session, {"a": array})
    array[0] = 1.0
    write(session, {"a": array})
    array[-1] = 2.0
    write(session, {"a": array}, keep=1)
    assert session.generations() == [3]
    # only the newest generation's chunks are left, and they are all there
    manifest = session.read_manifest(3)
    assert {p.name for p in session.objects_dir.iterdir()} == set(manifest.blobs)
    assert stored_bytes(session) <= array.nbytes + MB
    back = restore(session)["a"]
    assert back[0] == 1.0 and back[-1] == 2.0 and not back[1:-1].any()


def test_a_damaged_chunk_is_refused_and_rewritten(session: SessionStore) -> None:
    array = np.arange(3 * CHUNK // 8, dtype=np.int64)
    write(session, {"a": array, "small": 1})
    manifest = session.read_manifest(1)
    (group,) = [g for g in parse(manifest).groups if "a" in g.names]
    (part,) = [p for p in group.parts if p.blob is None]
    flip_a_bit(session.objects_dir / part.chunks[1][0])

    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into)
    assert "does not match its hash" in report.problems[0]
    assert "a" not in into and into.get("small") == 1

    result = write(session, {"a": array, "small": 1})
    chunk = chunks.chunk_size(array.nbytes)
    assert chunk <= result.written <= chunk + MB  # the damaged chunk alone, written again
    np.testing.assert_array_equal(restore(session)["a"], array)


def named_by_their_bytes(session: SessionStore) -> list[str]:
    """The blobs stored (temp files aside), each checked to be named by the hash of its bytes."""
    names = session.backend.blobs()
    for name in names:
        assert blob_hash([(session.objects_dir / name).read_bytes()]) == name
    return names


def temporaries(session: SessionStore) -> list[str]:
    return [p.name for p in session.objects_dir.iterdir() if p.name.startswith(fs.TMP)]


def test_fresh_chunks_are_hashed_as_they_are_written(
    session: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New chunks after the first few are written and hashed in one pass, each named by
    the hash of its bytes; an unchanged buffer is then hashed again, never rewritten."""
    one_pass: list[int] = []
    original = SessionStore.write_new_blob

    def spy(self: SessionStore, parts: Any) -> Any:
        one_pass.append(1)
        return original(self, parts)

    monkeypatch.setattr(SessionStore, "write_new_blob", spy)
    array = np.random.default_rng(5).random(48 * MB // 8)
    cuts = chunks.spans(array.nbytes)
    first = write(session, {"a": array})
    assert first.written >= array.nbytes
    assert len(one_pass) >= len(cuts) // 2
    assert len(named_by_their_bytes(session)) >= len(cuts) and not temporaries(session)

    one_pass.clear()
    second = write(session, {"a": array, "b": 1})
    assert second.written < MB and not one_pass
    np.testing.assert_array_equal(restore(session)["a"], array)


def test_the_disk_starts_writing_a_fresh_chunk_before_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(8).bytes(3 * fs.KICK + 5)
    if sys.platform.startswith("linux"):  # the real call, on a real file: a hint, no error
        assert fs.start_writeback is not None
        fs.write_hashing(tmp_path, [data], hasher())
    kicks: list[tuple[int, int]] = []
    monkeypatch.setattr(fs, "start_writeback", lambda fd, offset, n: kicks.append((offset, n)))
    (tmp_path / "again").mkdir()
    name, known = fs.write_hashing(tmp_path / "again", [data], hasher())
    assert (name, known) == (blob_hash([data]), False)
    assert kicks == [(i * fs.KICK, fs.KICK) for i in range(3)]  # each MiB as it is written
    assert os.listdir(tmp_path / "again") == [name]
    assert (tmp_path / "again" / name).read_bytes() == data


def test_a_write_failing_midway_leaves_no_blob_under_a_name(
    session: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunks, "NEW_RUN", 0)  # every chunk in one pass
    calls, real = itertools.count(1), fs._write_all

    def fill_up(fd: int, view: memoryview) -> None:
        if next(calls) == 41:  # within the chunk of 1 MiB a thread is writing
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, view)

    monkeypatch.setattr(fs, "_write_all", fill_up)
    with pytest.raises(OSError, match="No space"):
        write(session, {"a": np.random.default_rng(6).random(48 * MB // 8)})
    named_by_their_bytes(session)  # the chunks stored before are whole
    assert not temporaries(session) and session.generations() == []


def test_a_writer_killed_midway_leaves_no_blob_under_a_name(session: SessionStore) -> None:
    array = np.random.default_rng(7).random(48 * MB // 8)
    pid = snapshot.fork()
    if pid == 0:  # pragma: no cover - the writer, killed while it writes
        try:
            chunks.NEW_RUN = 0
            calls, real = itertools.count(1), fs._write_all

            def die(fd: int, view: memoryview) -> None:
                if next(calls) == 41:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(fd, view)

            fs._write_all = die  # type: ignore[assignment]
            with session.locks.locked(10):
                chunks.write_part(session, array)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert named_by_their_bytes(session)  # some were stored, each whole
    assert temporaries(session)  # the ones cut short kept their temp names ...
    session.prune(keep=1)
    assert not temporaries(session)  # ... which the next prune sweeps
    assert session.generations() == []


def test_format_2_readers_are_not_given_chunks(session: SessionStore) -> None:
    """Small buffers keep the format older releases read; chunks make it format 3."""
    write(session, {"a": np.arange(100)})
    assert session.read_manifest(1).raw["format"] == 2


def test_a_kernel_restarts_with_a_chunked_array_and_a_small_change_writes_a_chunk(
    kernels: KernelHarness,
) -> None:
    """In a real kernel: a large array comes back exactly after a restart, and
    changing one element of it adds about one chunk to the store."""
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=0"])
    kernel.run(
        "import numpy as np\n"
        f"big = np.random.default_rng(5).random({5 * CHUNK // 8 + 3}).reshape(-1, 1)\n"
        "total = float(big.sum())"
    ).check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    before = stored_bytes(session)
    assert before >= 5 * CHUNK
    kernel.run("big[-1, 0] = 7.0\ntotal = float(big.sum())").check()
    kernels.wait_generations(session, 2)
    assert stored_bytes(session) - before <= chunks.chunk_size(5 * CHUNK + 24) + MB
    kernel.restart()
    out = kernel.value("(big.shape, float(big.sum()) == total, big[-1, 0], big.flags.writeable)")
    assert out == f"(({5 * CHUNK // 8 + 3}, 1), True, np.float64(7.0), True)"


def test_a_large_pickle_stream_stays_one_blob(session: SessionStore) -> None:
    """Bytes are pickled in the stream, not out of band: a group is named by its
    stream, so a large stream is never cut into chunks, and it reads back."""
    big = bytes(range(256)) * (chunks.THRESHOLD // 256 + 3)
    write(session, {"big": big, "small": 1})
    manifest = session.read_manifest(1)
    assert manifest.raw["format"] == 2
    (group,) = [g for g in parse(manifest).groups if "big" in g.names]
    assert group.parts[0].blob is not None and group.parts[0].size > chunks.THRESHOLD
    assert restore(session) == {"big": big, "small": 1}


GIB = 1 << 30


@pytest.mark.parametrize("size", [16 * MB, 32 * MB, 50 * MB, 64 * MB, 200 * MB, GIB, 5 * GIB])
def test_the_chunk_size_is_a_power_of_two_pages_within_bounds(size: int) -> None:
    chunk = chunks.chunk_size(size)
    assert chunk & (chunk - 1) == 0 and chunk % 4096 == 0
    assert chunks.MIN_CHUNK <= chunk <= chunks.CHUNK
    # one chunk (an element, never across two: sizes are powers of two) at most 1% of
    # a buffer of 1 GiB or more; even two at most 10% of one of 32 MiB or more
    if size >= GIB:
        assert chunk <= size * 0.01
    if size >= 32 * MB:
        assert 2 * chunk <= size * 0.10
    assert chunks.spans(size)[-1][1] == size


def newly_written(session: SessionStore, values: dict[str, Any]) -> int:
    """Bytes a checkpoint of *values* adds to the store's objects."""
    before = stored_bytes(session)
    write(session, values)
    return stored_bytes(session) - before


@pytest.mark.parametrize("size", [32 * MB, 50 * MB, GIB])
def test_a_one_element_change_writes_a_small_share_of_the_array(
    session: SessionStore, size: int
) -> None:
    array = np.zeros(size // 8)  # every chunk alike: stored once, cheap even at 1 GiB
    write(session, {"a": array})
    share = 0.01 if size >= GIB else 0.10
    for index in (size // 8 // 3, size // 8 - 1):  # inside, then in the last chunk
        array[index] = 1.0
        assert 0 < newly_written(session, {"a": array}) <= size * share
    back = restore(session)["a"]
    assert back[size // 8 // 3] == 1.0 and back[-1] == 1.0 and back.sum() == 2.0


def test_generations_cut_in_other_sizes_read_back_and_share_nothing_wrongly(
    session: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generation whose chunks are all 8 MiB (as written before sizes grew with the
    buffer) still restores, and later generations cut finer restore beside it."""
    array = np.random.default_rng(7).random(50 * MB // 8)
    with monkeypatch.context() as older:
        older.setattr(chunks, "chunk_size", lambda size: CHUNK)
        write(session, {"a": array})
    old = session.read_manifest(1)
    (group,) = [g for g in parse(old).groups if "a" in g.names]
    (part,) = [p for p in group.parts if p.blob is None]
    assert {size for _, size in part.chunks[:-1]} == {CHUNK}
    first = array.copy()
    array[12345] = -1.0
    write(session, {"a": array})
    (group,) = [g for g in parse(session.read_manifest(2)).groups if "a" in g.names]
    (part,) = [p for p in group.parts if p.blob is None]
    assert {size for _, size in part.chunks} == {chunks.chunk_size(array.nbytes)}
    array[-1] = -2.0
    assert newly_written(session, {"a": array}) <= 0.1 * array.nbytes
    np.testing.assert_array_equal(restore(session)["a"], array)
    older_values, report = load_generation(session, 1)
    assert not report.problems
    np.testing.assert_array_equal(older_values["a"], first)
    middle, report = load_generation(session, 2)
    assert not report.problems
    assert middle["a"][12345] == -1.0 and middle["a"][-1] == first[-1]


def test_in_a_kernel_a_one_element_change_of_50_mib_writes_under_a_tenth(
    kernels: KernelHarness,
) -> None:
    kernel = kernels.start(args=["--PersistentKernel.autosave=False"])
    save = "_r = get_ipython().kernel.checkpointer.save_now(); assert _r.ok, _r"
    kernel.run(f"import numpy as np\nbig = np.random.default_rng(9).random({50 * MB // 8})").check()
    kernel.run(save).check()
    session = kernels.session()
    for index in (0, 3_000_000, 50 * MB // 8 - 1):
        before = stored_bytes(session)
        kernel.run(f"big[{index}] = -1.0\n{save}").check()
        assert 0 < stored_bytes(session) - before <= 0.1 * 50 * MB
    values = restore(session)
    assert float(values["big"].sum()) == float(kernel.value("float(big.sum())"))
