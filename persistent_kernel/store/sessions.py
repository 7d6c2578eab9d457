"""The store proper: blobs, manifests and generations of each session.

:class:`SessionStore` holds the format (what a manifest records, how blobs
are named and checked, what a commit and a prune do); the bytes live in a
:class:`~.backend.Backend`. :class:`Store` is the storage root, one
:class:`SessionStore` per session key.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from ..errors import CorruptCheckpoint, NoCheckpoint, UntrustedCheckpoint
from ..session import session_dirname
from . import locks
from .fs import private_dir
from .local import LocalBackend
from .trust import Signer

#: Version of the manifest format this code writes. Readers refuse newer ones.
FORMAT = 1
HASH = "xxh3_128"
_REVERIFY_MAX = 1 << 20  # stored blobs up to this size are re-hashed before reuse


@dataclass(frozen=True)
class BlobRef:
    """Where a blob is and how it splits into parts."""

    hash: str
    size: int
    parts: tuple[int, ...]
    written: int = 0  # bytes this commit had to write (0: already stored)


@dataclass
class Manifest:
    """One committed generation, validated, nothing unpickled."""

    generation: int
    created: float
    session: str
    notebook: str | None
    blobs: dict[str, int]
    content: dict[str, Any]
    raw: dict[str, Any]

    @property
    def size(self) -> int:
        """Bytes of state this generation holds (its blobs, shared or not)."""
        return sum(self.blobs.values())


def blob_hash(parts: Sequence[bytes | memoryview]) -> str:
    """The content address of a blob: xxh3-128 of its bytes, in hex."""
    digest = xxhash.xxh3_128()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


class SessionStore:
    """The checkpoints of one session key."""

    def __init__(
        self,
        path: Path,
        key: str | None = None,
        signer: Signer | None = None,
        backend: LocalBackend | None = None,
    ) -> None:
        self.path = path
        self.key = key
        self.signer = signer or Signer(path.parent.parent)
        self.backend = backend or LocalBackend(path)
        self.generations_dir = self.backend.generations_dir
        self.objects_dir = self.backend.objects_dir
        self.writers_dir = self.backend.writers_dir

    def __repr__(self) -> str:
        return f"SessionStore({str(self.path)!r})"

    def ensure(self) -> None:
        """Create the session's directories (0700) if missing."""
        self.backend.ensure()

    # -- locking ------------------------------------------------------------------

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the session's writer lock; raise :class:`StoreBusy` after *timeout*."""
        self.ensure()
        with locks.session_lock(self.path, timeout):
            yield

    def register_writer(self) -> tuple[int, Path]:
        """Announce a writer (see :func:`.locks.register_writer`)."""
        self.ensure()
        return locks.register_writer(self.writers_dir)

    @staticmethod
    def release_writer(fd: int, path: Path) -> None:
        """Withdraw an announcement made by :meth:`register_writer`."""
        locks.release_writer(fd, path)

    def running_writers(self) -> list[Path]:
        """Announced writers that are still alive (their flock is held)."""
        return locks.running_writers(self.writers_dir)

    def wait_for_writers(self, timeout: float) -> tuple[float, int]:
        """Wait until no announced writer is alive, at most *timeout* seconds.

        Returns ``(seconds waited, writers still alive)``.
        """
        return locks.wait_for_writers(self.writers_dir, timeout)

    # -- settings -----------------------------------------------------------------

    def read_settings(self) -> dict[str, Any]:
        """Per-session preferences (``%persist exclude``/``include``); {} if none."""
        try:
            data = json.loads(self.backend.read_file("settings.json"))
        except (OSError, ValueError, UntrustedCheckpoint):
            return {}
        return data if isinstance(data, dict) else {}

    def write_settings(self, settings: dict[str, Any]) -> None:
        self.ensure()
        data = json.dumps(settings, indent=1, sort_keys=True).encode()
        self.backend.write_file("settings.json", data)

    # -- crash markers --------------------------------------------------------------

    def begin_loading(self, digest: str) -> None:
        """Leave a marker naming the blob about to be unpickled.

        If the process dies while unpickling it (a segfault in an extension,
        the OOM killer), the marker outlives it and the next start knows
        which blob to leave alone. Not fsynced: it must survive the process,
        not the machine.
        """
        with suppress(OSError):  # best effort: a read-only disk must not stop a restore
            self.backend.write_file("loading", digest.encode(), sync=False)

    def end_loading(self) -> None:
        with suppress(OSError):
            self.backend.delete_file("loading")

    def poisoned(self) -> set[str]:
        """Blobs whose unpickling killed a kernel; a marker left behind is added first."""
        try:
            poison = set(json.loads(self.backend.read_file("poisoned")))
        except (FileNotFoundError, ValueError, TypeError):
            poison = set()
        try:
            crashed = self.backend.read_file("loading").decode("ascii", "replace").strip()
        except FileNotFoundError:
            return poison
        if crashed:
            poison.add(crashed)
            with suppress(OSError):
                data = json.dumps(sorted(poison)).encode()
                self.backend.write_file("poisoned", data, sync=False)
        with suppress(OSError):
            self.backend.delete_file("loading")
        return poison

    # -- reading ------------------------------------------------------------------

    def generations(self) -> list[int]:
        """Numbers of the generations on disk, oldest first (valid or not)."""
        return self.backend.generations()

    def manifest_path(self, generation: int) -> Path:
        return self.backend.manifest_path(generation)

    def read_manifest(self, generation: int) -> Manifest:
        """Read and check one manifest; :class:`CorruptCheckpoint` if it is bad."""
        name = f"{generation:08d}.json"
        data = self.backend.read_manifest(generation)
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"manifest {name} is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise CorruptCheckpoint(f"manifest {name} is not a JSON object")
        self.signer.verify(raw, name)
        return parse_manifest(raw, generation, name)

    def latest(self) -> tuple[Manifest, list[str]]:
        """The newest readable generation and what was wrong with newer ones."""
        problems: list[str] = []
        for generation in reversed(self.generations()):
            try:
                return self.read_manifest(generation), problems
            except (CorruptCheckpoint, UntrustedCheckpoint) as exc:
                problems.append(f"generation {generation}: {exc}")
            except NoCheckpoint:
                continue
        raise NoCheckpoint("no checkpoint" + (f" ({'; '.join(problems)})" if problems else ""))

    def has_blob(self, digest: str, size: int) -> bool:
        return self.backend.blob_size(digest) == size

    def read_blob(self, ref: BlobRef, on_read: Callable[[int], None] | None = None) -> list[Any]:
        """Read a blob into one buffer per part, checking size and hash first.

        Nothing is unpickled here. Parts after the first are writable
        (bytearray, or an anonymous mmap for large ones) so that arrays
        restored from them are writable and need no further copy.
        *on_read* is called with the byte count of each chunk read; an
        exception it raises stops the read.
        """
        if sum(ref.parts) != ref.size:
            raise CorruptCheckpoint(f"blob {ref.hash}: parts do not add up to its size")
        digest = xxhash.xxh3_128()
        parts = self.backend.read_blob(ref.hash, ref.parts, digest, on_read)
        if digest.hexdigest() != ref.hash:
            self.backend.quarantine_blob(ref.hash)
            raise CorruptCheckpoint(f"blob {ref.hash} does not match its hash")
        return parts

    # -- writing (hold :meth:`locked`) -------------------------------------------

    def _intact(self, digest: str, size: int) -> bool:
        """Whether a stored blob can be reused for *digest*.

        Small blobs are read back and hashed (cheap); large ones are trusted by
        name and size, since reading them back would cost as much as writing
        them. A large blob found damaged at restore is quarantined, so the
        next checkpoint writes it afresh.
        """
        if not self.has_blob(digest, size):
            return False
        if size > _REVERIFY_MAX:
            return True
        try:
            return blob_hash([self.backend.read_blob_bytes(digest)]) == digest
        except OSError:
            return False

    def write_blob(self, parts: Sequence[bytes | memoryview]) -> BlobRef:
        """Store a blob unless an identical one is already stored."""
        digest = blob_hash(parts)
        sizes = tuple(memoryview(p).nbytes for p in parts)
        size = sum(sizes)
        if self._intact(digest, size):
            return BlobRef(digest, size, sizes, written=0)
        self.backend.write_blob(digest, parts)
        return BlobRef(digest, size, sizes, written=size)

    def commit(
        self, content: dict[str, Any], blobs: Sequence[BlobRef], info: dict[str, Any]
    ) -> Manifest:
        """Make a new generation naming *blobs*; atomic. Returns its manifest."""
        existing = self.generations()
        generation = (existing[-1] if existing else 0) + 1
        raw = {
            "format": FORMAT,
            "hash": HASH,
            "generation": generation,
            "created": time.time(),
            **info,
            "blobs": {ref.hash: ref.size for ref in blobs},
            "content": content,
        }
        raw["signature"] = self.signer.sign(raw)
        data = json.dumps(raw, indent=1, sort_keys=True).encode()
        self.backend.write_manifest(generation, data)
        return parse_manifest(raw, generation, f"{generation:08d}.json")

    def prune(self, keep: int) -> list[int]:
        """Keep the newest *keep* generations; drop blobs no kept one names.

        Also removes temp files left by writers that died. Returns the
        generations removed.
        """
        generations = self.generations()
        removed = generations[: max(0, len(generations) - max(1, keep))]
        for generation in removed:
            self.backend.delete_manifest(generation)
        referenced: set[str] = set()
        for generation in generations[len(removed) :]:
            with suppress(CorruptCheckpoint, NoCheckpoint, UntrustedCheckpoint):
                referenced.update(self.read_manifest(generation).blobs)
        self.backend.sweep_temporaries()
        for name in self.backend.blobs():
            if name not in referenced:
                self.backend.delete_blob(name)
        return removed

    def clear(self) -> None:
        """Forget every checkpoint of this session."""
        self.backend.clear()

    def disk_usage(self) -> int:
        """Bytes this session takes on disk (blobs counted once)."""
        return self.backend.disk_usage()


def parse_manifest(raw: Any, generation: int, name: str) -> Manifest:
    """Check a decoded manifest's shape; :class:`CorruptCheckpoint` if it is off."""
    if not isinstance(raw, dict):
        raise CorruptCheckpoint(f"manifest {name} is not a JSON object")
    fmt = raw.get("format")
    if fmt != FORMAT:
        raise CorruptCheckpoint(
            f"manifest {name} has format {fmt!r}; this version reads format {FORMAT}"
        )
    if raw.get("hash") != HASH:
        raise CorruptCheckpoint(f"manifest {name} uses unknown hash {raw.get('hash')!r}")
    blobs, content = raw.get("blobs"), raw.get("content")
    valid = (
        raw.get("generation") == generation
        and isinstance(raw.get("created"), (int, float))
        and isinstance(raw.get("session"), str)
        and isinstance(blobs, dict)
        and all(isinstance(k, str) and isinstance(v, int) for k, v in blobs.items())
        and isinstance(content, dict)
    )
    if not valid or not isinstance(blobs, dict) or not isinstance(content, dict):
        raise CorruptCheckpoint(f"manifest {name} is incomplete or inconsistent")
    return Manifest(
        generation=generation,
        created=float(raw["created"]),
        session=raw["session"],
        notebook=raw.get("notebook"),
        blobs=dict(blobs),
        content=content,
        raw=raw,
    )


class Store:
    """The storage root: one :class:`SessionStore` per session key."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.sessions_dir = self.root / "sessions"
        self.signer = Signer(self.root)

    def session(self, key: str) -> SessionStore:
        return SessionStore(self.sessions_dir / session_dirname(key), key, self.signer)

    def sessions(self) -> list[SessionStore]:
        """Every session directory under the root (keys read lazily)."""
        try:
            entries = sorted(self.sessions_dir.iterdir())
        except FileNotFoundError:
            return []
        return [SessionStore(e, None, self.signer) for e in entries if e.is_dir()]

    def ensure(self) -> None:
        private_dir(self.root)
        private_dir(self.sessions_dir)


def is_disk_error(exc: BaseException) -> bool:
    """True for the errors a full, read-only or vanished disk raises."""
    return isinstance(exc, OSError) and exc.errno in {
        errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO,
    }  # fmt: skip
