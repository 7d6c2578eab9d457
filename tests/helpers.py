"""Helpers shared by the test modules: one definition of each."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from persistent_kernel.store import SessionStore

KEY = "/home/user/analysis.ipynb"
INFO = {"session": KEY, "notebook": KEY}


def wait_until(predicate: Callable[[], object], timeout: float = 60, what: str = "it") -> None:
    """Poll *predicate* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stream_blob_of(session: SessionStore, name: str, generation: int | None = None) -> Path:
    """The blob holding the pickle stream of variable *name*'s group (default: newest)."""
    return _parts_of(session, name, generation)[0][1]


def largest_blob_of(session: SessionStore, name: str, generation: int | None = None) -> Path:
    """The largest blob of variable *name*'s group (its biggest out-of-band buffer, if any)."""
    return max(_parts_of(session, name, generation))[1]


def _parts_of(session: SessionStore, name: str, generation: int | None) -> list[tuple[int, Path]]:
    manifest = session.read_manifest(generation or session.generations()[-1])
    (group,) = [g for g in manifest.content["groups"] if name in g["names"]]
    return [(int(size), session.objects_dir / str(digest)) for digest, size in group["parts"]]


def flip_a_bit(path: Path) -> None:
    """Damage *path* the way a failing disk does: one bit, in the middle, size unchanged."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
