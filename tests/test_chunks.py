"""Large buffers stored as chunks: exact reassembly, small rewrites, shared generations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from persistent_kernel.checkpoint import CheckpointResult, write_checkpoint
from persistent_kernel.content import parse
from persistent_kernel.restore import restore_checkpoint
from persistent_kernel.store import SessionStore, chunks

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
    assert len(chunked[0].chunks) == -(-array.nbytes // CHUNK)

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
    first = write(session, {"a": array})
    assert first.written >= array.nbytes
    for step in range(3):
        array[(step * 3 + 1) * CHUNK // 8] += 1.0
        before = stored_bytes(session)
        result = write(session, {"a": array}, keep=10)
        assert result.written <= CHUNK + MB
        assert stored_bytes(session) - before <= CHUNK + MB
    # four generations of a 64 MiB array: the array plus three changed chunks
    assert session.generations() == [1, 2, 3, 4]
    assert stored_bytes(session) <= array.nbytes + 3 * CHUNK + MB
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
    assert CHUNK <= result.written <= CHUNK + MB  # the damaged chunk alone, written again
    np.testing.assert_array_equal(restore(session)["a"], array)


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
    assert stored_bytes(session) - before <= CHUNK + MB
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
