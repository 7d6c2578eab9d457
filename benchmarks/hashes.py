#!/usr/bin/env python
"""How fast each candidate content address hashes: 1 GiB in one blob, and many small blobs.

    .venv/bin/python benchmarks/hashes.py

Blobs are hashed as the store hashes them: a large one streamed in 4 MiB
chunks (as :mod:`persistent_kernel.blobio` reads it), a small one in one
call, with a new hash object per blob. Best of 3; one core (BLAKE3 is also
timed with two threads, its own parallel mode). The data is random, so no
hash gets an easy input.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import blake3
import xxhash

GIB = 1 << 30
CHUNK = 1 << 22
SMALL = [200] * 50_000 + [4096] * 10_000  # pickle streams of small groups

CANDIDATES: dict[str, Callable[[], Any]] = {
    "xxh3-128 (format 1)": xxhash.xxh3_128,
    "SHA-256 (hashlib)": hashlib.sha256,
    "BLAKE3 (format 2)": blake3.blake3,
}


def best(run: Callable[[], None], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    big = memoryview(os.urandom(1 << 26) * (GIB >> 26))
    small = [os.urandom(n) for n in SMALL]
    total = sum(SMALL)
    print(f"| hash | 1 GiB, one blob | {len(SMALL):,} small blobs ({total / 2**20:.0f} MiB) |")
    print("|---|---:|---:|")
    rows = [*CANDIDATES.items(), ("BLAKE3, 2 threads", lambda: blake3.blake3(max_threads=2))]
    for name, make in rows:

        def large(make: Callable[[], Any] = make) -> None:
            digest = make()
            for start in range(0, GIB, CHUNK):
                digest.update(big[start : start + CHUNK])
            digest.hexdigest()

        def many(make: Callable[[], Any] = make) -> None:
            for blob in small:
                digest = make()
                digest.update(blob)
                digest.hexdigest()

        t_large = best(large)
        t_small = best(many) if "threads" not in name else float("nan")
        per_blob = f"{t_small * 1e3:.0f} ms ({t_small / len(SMALL) * 1e6:.1f} µs/blob)"
        print(
            f"| {name} | {t_large * 1e3:.0f} ms ({GIB / t_large / 1e9:.1f} GB/s) | "
            + (per_blob if t_small == t_small else "-")
            + " |"
        )


if __name__ == "__main__":
    main()
