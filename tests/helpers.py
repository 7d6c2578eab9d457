"""Helpers shared by the test modules: one definition of each."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persistent_kernel.checkpoint import group_refs
from persistent_kernel.store import BlobRef, Manifest, SessionStore

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
    return [(ref.size, session.objects_dir / ref.hash) for ref in group_refs(group)]


def flip_a_bit(path: Path) -> None:
    """Damage *path* the way a failing disk does: one bit, in the middle, size unchanged."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def future_generation(session: SessionStore, blob: bytes, fmt: int = 99) -> tuple[int, str]:
    """A generation a newer release wrote: validly signed, format *fmt*, naming *blob*.

    Its blob is stored under a name this release would not compute (a newer
    release may hash differently), through the session's backend, whatever it
    is. Returns its number and the blob's name.
    """
    name = "f" * 64
    session.backend.write_blob(name, [blob])
    generation = (session.generations() or [0])[-1] + 1
    raw: dict[str, Any] = {
        "format": fmt,
        "hash": "some-newer-hash",
        "generation": generation,
        "created": time.time(),
        **INFO,
        "blobs": {name: len(blob)},
        "content": {"whatever": "a newer release records"},
    }
    raw["signature"] = session.signer.sign(raw)
    session.backend.write_manifest(generation, json.dumps(raw).encode())
    return generation, name


def commit_blobs(session: SessionStore, *blobs: list[bytes], tag: str = "") -> Manifest:
    """Write *blobs* and commit a generation naming them (the caller holds the lock, if
    it wants one)."""
    refs = [session.write_blob(parts) for parts in blobs]
    content = {"tag": tag, "groups": [{"hash": r.hash, "parts": list(r.parts)} for r in refs]}
    return session.commit(content, refs, INFO)


def ref_of(manifest: Manifest, index: int = 0) -> BlobRef:
    """The blob of group *index* of *manifest*, as the commit above names it."""
    group = manifest.content["groups"][index]
    return BlobRef(group["hash"], manifest.blobs[group["hash"]], tuple(group["parts"]))
