"""Reading parts into memory: the parallel path, the serial one, and their failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from persistent_kernel import blobio

BIG = blobio.PARALLEL_MIN + 3 * blobio.CHUNK + 12345  # parallel, with a ragged last chunk


def _file(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(100) + os.urandom(BIG) + os.urandom(5000)


@pytest.mark.parametrize("preadv", [True, False])
def test_parts_come_back_whole_and_hashed_in_order(
    tmp_path: Path, data: bytes, preadv: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not preadv:  # as on macOS, which has no os.preadv
        monkeypatch.setattr(blobio, "_PREADV", False)
    fd = _file(tmp_path, data)
    digest = xxhash.xxh3_128()
    seen: list[int] = []
    try:
        sizes = [100, BIG, 5000]
        parts, offset = [], 0
        for size in sizes:
            parts.append(blobio.read_part(fd, size, offset, digest, seen.append))
            offset += size
    finally:
        os.close(fd)
    assert b"".join(bytes(p) for p in parts) == data
    assert digest.hexdigest() == xxhash.xxh3_128(data).hexdigest()
    assert sum(seen) == len(data)
    assert max(seen) == blobio.CHUNK  # progress comes chunk by chunk
    assert not memoryview(parts[1]).readonly


def test_a_file_that_ends_early_is_a_short_read(tmp_path: Path, data: bytes) -> None:
    fd = _file(tmp_path, data[: blobio.PARALLEL_MIN + blobio.CHUNK // 2])
    try:
        with pytest.raises(blobio.ShortRead):
            blobio.read_part(fd, BIG, 0, xxhash.xxh3_128())
    finally:
        os.close(fd)


def test_an_exception_from_on_read_stops_the_read(tmp_path: Path, data: bytes) -> None:
    fd = _file(tmp_path, data)
    calls = 0

    def stop_after_two(n: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            blobio.read_part(fd, BIG, 100, xxhash.xxh3_128(), stop_after_two)
    finally:
        os.close(fd)
    assert calls == 2
