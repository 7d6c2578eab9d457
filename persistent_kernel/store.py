"""The on-disk format: generations of small manifests over content-addressed blobs.

Layout under the storage root (directories 0700, files 0600)::

    sessions/<slug>-<hash>/          one per session key (notebook)
        lock                         flock: one writer at a time
        writers/<pid>-<token>        flock held by each live writer process
        generations/00000042.json    manifest of generation 42
        objects/<xxh3-128 hex>       blob: bytes named by their hash

A blob is a sequence of *parts* (a pickle stream and its out-of-band
buffers) stored back to back; the manifest records each part's size, so a
part can be read straight into its own buffer. Blobs are immutable and
shared between generations: an unchanged group of variables costs nothing
to checkpoint again.

A commit writes blobs first (temp file, fsync, rename), then the manifest
(same), then fsyncs the directories. A crash at any instant leaves the
previous generation whole; a reader only ever sees complete manifests.

This module knows nothing of kernels or pickles: the CLI reads it with no
kernel running, and it never unpickles anything. What a manifest's
``content`` means is the business of :mod:`persistent_kernel.checkpoint`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from . import blobio
from .errors import CorruptCheckpoint, NoCheckpoint, StoreBusy, UntrustedCheckpoint
from .session import session_dirname
from .trust import Signer, check_private, check_private_path, read_private

#: Version of the manifest format this code writes. Readers refuse newer ones.
FORMAT = 1
HASH = "xxh3_128"
_TMP = ".tmp-"
_CHUNK = 1 << 26  # largest single write: bounds one call
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


def _private_dir(path: Path) -> Path:
    """Create *path* and any missing parents, each 0700 (existing ones are left as they are)."""
    if not path.is_dir():
        if not path.parent.is_dir():
            _private_dir(path.parent)
        with suppress(FileExistsError):
            path.mkdir(mode=0o700)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview) -> None:
    view = view.cast("B")
    offset = 0
    while offset < len(view):
        offset += os.write(fd, view[offset : offset + _CHUNK])


def write_atomic(
    directory: Path, name: str, parts: Sequence[bytes | memoryview], sync: bool = True
) -> None:
    """Write *parts* to ``directory/name`` so that it appears whole or not at all.

    A uniquely named temp file is written, fsynced and renamed into place;
    on any error it is removed and the error re-raised. The caller fsyncs
    the directory once for a batch of files.
    """
    tmp = directory / f"{_TMP}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            for part in parts:
                _write_all(fd, memoryview(part))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def blob_hash(parts: Sequence[bytes | memoryview]) -> str:
    """The content address of a blob: xxh3-128 of its bytes, in hex."""
    digest = xxhash.xxh3_128()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


class SessionStore:
    """The checkpoints of one session key."""

    def __init__(self, path: Path, key: str | None = None, signer: Signer | None = None) -> None:
        self.path = path
        self.key = key
        self.signer = signer or Signer(path.parent.parent)
        self.generations_dir = path / "generations"
        self.objects_dir = path / "objects"
        self.writers_dir = path / "writers"

    def __repr__(self) -> str:
        return f"SessionStore({str(self.path)!r})"

    def ensure(self) -> None:
        """Create the session's directories (0700) if missing."""
        for directory in (self.path, self.generations_dir, self.objects_dir, self.writers_dir):
            _private_dir(directory)

    # -- locking ------------------------------------------------------------------

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the session's writer lock; raise :class:`StoreBusy` after *timeout*."""
        self.ensure()
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreBusy(
                            f"another process has been writing {self.path} "
                            f"for more than {timeout:.0f} s"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def register_writer(self) -> tuple[int, Path]:
        """Announce a writer: a file it holds an flock on for as long as it lives.

        Call before forking the writer, so the announcement exists before the
        kernel that forked it can exit; the forked writer inherits the lock.
        A starting kernel waits for every announced writer
        (:meth:`wait_for_writers`) before it restores.
        """
        self.ensure()
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp, path = self.writers_dir / f"{_TMP}{name}", self.writers_dir / name
        # Locked before it gets its real name: a scan must never see it unlocked.
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, path)
        return fd, path

    @staticmethod
    def release_writer(fd: int, path: Path) -> None:
        """Withdraw an announcement made by :meth:`register_writer`."""
        with suppress(OSError):
            path.unlink()
        with suppress(OSError):
            os.close(fd)

    def running_writers(self) -> list[Path]:
        """Announced writers that are still alive (their flock is held)."""
        alive = []
        with suppress(FileNotFoundError):
            for entry in self.writers_dir.iterdir():
                if entry.name.startswith(_TMP):
                    continue
                try:
                    fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    alive.append(entry)
                else:  # its writer is gone: finished, or died before it could tidy up
                    with suppress(OSError):
                        entry.unlink()
                finally:
                    os.close(fd)
        return alive

    def wait_for_writers(self, timeout: float) -> tuple[float, int]:
        """Wait until no announced writer is alive, at most *timeout* seconds.

        Returns ``(seconds waited, writers still alive)``.
        """
        start = time.monotonic()
        while True:
            alive = self.running_writers()
            waited = time.monotonic() - start
            if not alive or waited >= timeout:
                return waited, len(alive)
            time.sleep(0.05)

    # -- settings -----------------------------------------------------------------

    def read_settings(self) -> dict[str, Any]:
        """Per-session preferences (``%persist exclude``/``include``); {} if none."""
        try:
            data = json.loads(read_private(self.path / "settings.json"))
        except (OSError, ValueError, UntrustedCheckpoint):
            return {}
        return data if isinstance(data, dict) else {}

    def write_settings(self, settings: dict[str, Any]) -> None:
        self.ensure()
        data = json.dumps(settings, indent=1, sort_keys=True).encode()
        write_atomic(self.path, "settings.json", [data])

    # -- crash markers --------------------------------------------------------------

    def begin_loading(self, digest: str) -> None:
        """Leave a marker naming the blob about to be unpickled.

        If the process dies while unpickling it (a segfault in an extension,
        the OOM killer), the marker outlives it and the next start knows
        which blob to leave alone. Not fsynced: it must survive the process,
        not the machine.
        """
        with suppress(OSError):  # best effort: a read-only disk must not stop a restore
            write_atomic(self.path, "loading", [digest.encode()], sync=False)

    def end_loading(self) -> None:
        with suppress(OSError):
            (self.path / "loading").unlink()

    def poisoned(self) -> set[str]:
        """Blobs whose unpickling killed a kernel; a marker left behind is added first."""
        marker, poison_file = self.path / "loading", self.path / "poisoned"
        try:
            poison = set(json.loads(read_private(poison_file)))
        except (FileNotFoundError, ValueError, TypeError):
            poison = set()
        try:
            crashed = read_private(marker).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return poison
        if crashed:
            poison.add(crashed)
            with suppress(OSError):
                data = json.dumps(sorted(poison)).encode()
                write_atomic(self.path, "poisoned", [data], sync=False)
        with suppress(OSError):
            marker.unlink()
        return poison

    # -- reading ------------------------------------------------------------------

    def generations(self) -> list[int]:
        """Numbers of the generations on disk, oldest first (valid or not)."""
        try:
            names = os.listdir(self.generations_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def manifest_path(self, generation: int) -> Path:
        return self.generations_dir / f"{generation:08d}.json"

    def read_manifest(self, generation: int) -> Manifest:
        """Read and check one manifest; :class:`CorruptCheckpoint` if it is bad."""
        path = self.manifest_path(generation)
        try:
            check_private_path(self.path, f"the checkpoint directory {self.path}")
            check_private_path(self.generations_dir, f"the directory {self.generations_dir}")
            raw = json.loads(read_private(path, f"manifest {path.name}"))
        except FileNotFoundError:
            raise NoCheckpoint(f"generation {generation} does not exist") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"manifest {path.name} is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise CorruptCheckpoint(f"manifest {path.name} is not a JSON object")
        self.signer.verify(raw, path.name)
        return parse_manifest(raw, generation, path.name)

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
        try:
            return (self.objects_dir / digest).stat().st_size == size
        except OSError:
            return False

    def read_blob(self, ref: BlobRef, on_read: Callable[[int], None] | None = None) -> list[Any]:
        """Read a blob into one buffer per part, checking size and hash first.

        Nothing is unpickled here. Parts after the first are writable
        (bytearray, or an anonymous mmap for large ones) so that arrays
        restored from them are writable and need no further copy.
        *on_read* is called with the byte count of each chunk read; an
        exception it raises stops the read.
        """
        path = self.objects_dir / ref.hash
        if sum(ref.parts) != ref.size:
            raise CorruptCheckpoint(f"blob {ref.hash}: parts do not add up to its size")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CorruptCheckpoint(f"blob {ref.hash} is missing") from None
        except OSError as exc:
            raise UntrustedCheckpoint(f"blob {ref.hash} cannot be opened safely ({exc})") from exc
        with open(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            check_private(st, f"blob {ref.hash}")
            actual = st.st_size
            if actual != ref.size:
                self._quarantine(path)
                raise CorruptCheckpoint(
                    f"blob {ref.hash} is {actual} bytes, the manifest says {ref.size}"
                )
            digest = xxhash.xxh3_128()
            parts: list[Any] = []
            offset = 0
            for size in ref.parts:
                try:
                    parts.append(blobio.read_part(fd, size, offset, digest, on_read))
                except blobio.ShortRead:
                    raise CorruptCheckpoint(f"blob {ref.hash} ended early") from None
                offset += size
        if digest.hexdigest() != ref.hash:
            self._quarantine(path)
            raise CorruptCheckpoint(f"blob {ref.hash} does not match its hash")
        return parts

    def _quarantine(self, path: Path) -> None:
        """Move a damaged blob aside, so the next checkpoint writes it afresh.

        Blobs are trusted by name and size when a checkpoint reuses them (reading
        them back would cost as much as writing them); one found damaged must
        not be reused by every later generation.
        """
        with suppress(OSError):
            os.replace(path, path.with_name(f"{_TMP}corrupt-{path.name}"))

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
            return blob_hash([(self.objects_dir / digest).read_bytes()]) == digest
        except OSError:
            return False

    def write_blob(self, parts: Sequence[bytes | memoryview]) -> BlobRef:
        """Store a blob unless an identical one is already stored."""
        digest = blob_hash(parts)
        sizes = tuple(memoryview(p).nbytes for p in parts)
        size = sum(sizes)
        if self._intact(digest, size):
            return BlobRef(digest, size, sizes, written=0)
        write_atomic(self.objects_dir, digest, parts)
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
        _fsync_dir(self.objects_dir)
        write_atomic(self.generations_dir, f"{generation:08d}.json", [data])
        _fsync_dir(self.generations_dir)
        return parse_manifest(raw, generation, f"{generation:08d}.json")

    def prune(self, keep: int) -> list[int]:
        """Keep the newest *keep* generations; drop blobs no kept one names.

        Also removes temp files left by writers that died. Returns the
        generations removed.
        """
        generations = self.generations()
        removed = generations[: max(0, len(generations) - max(1, keep))]
        for generation in removed:
            with suppress(FileNotFoundError):
                self.manifest_path(generation).unlink()
        referenced: set[str] = set()
        for generation in generations[len(removed) :]:
            with suppress(CorruptCheckpoint, NoCheckpoint, UntrustedCheckpoint):
                referenced.update(self.read_manifest(generation).blobs)
        for directory in (self.objects_dir, self.generations_dir):
            with suppress(FileNotFoundError):
                for entry in directory.iterdir():
                    stale_tmp = entry.name.startswith(_TMP)
                    orphan = directory == self.objects_dir and entry.name not in referenced
                    if stale_tmp or orphan:
                        with suppress(FileNotFoundError):
                            entry.unlink()
        return removed

    def clear(self) -> None:
        """Forget every checkpoint of this session."""
        with suppress(FileNotFoundError):
            shutil.rmtree(self.generations_dir)
        with suppress(FileNotFoundError):
            shutil.rmtree(self.objects_dir)
        for name in ("loading", "poisoned"):
            with suppress(FileNotFoundError):
                (self.path / name).unlink()

    def disk_usage(self) -> int:
        """Bytes this session takes on disk (blobs counted once)."""
        total = 0
        for directory in (self.objects_dir, self.generations_dir):
            with suppress(FileNotFoundError):
                total += sum(e.stat().st_size for e in directory.iterdir() if e.is_file())
        return total


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
        _private_dir(self.root)
        _private_dir(self.sessions_dir)


def is_disk_error(exc: BaseException) -> bool:
    """True for the errors a full, read-only or vanished disk raises."""
    return isinstance(exc, OSError) and exc.errno in {
        errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO,
    }  # fmt: skip
