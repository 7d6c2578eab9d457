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
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import blake3
import xxhash

from ..errors import (
    CorruptCheckpoint,
    NewerFormat,
    NoCheckpoint,
    UnreadableCheckpoint,
    UnreadableSettings,
    UntrustedCheckpoint,
)
from ..session import session_dirname
from .backend import Backend, Digest
from .fs import private_dir, write_new
from .local import LocalBackend
from .locks import FileLocks, Locks
from .trust import Signer, read_private

if TYPE_CHECKING:
    from .tiers import Mirror

#: Newest version of the manifest format this code reads and writes. Newer ones are
#: left alone. Format 3 is format 2 plus chunked buffers (:mod:`.chunks`); a manifest
#: without any is still written as :data:`PLAIN_FORMAT`, which older releases read.
FORMAT = 3
PLAIN_FORMAT = 2
#: The hash that names blobs in the format written: BLAKE3, 256 bits, in hex.
HASH = "blake3"
#: The formats this release reads, and the hash that names blobs in each.
#: Format 1 named blobs by xxh3-128, which is fast but not collision resistant:
#: whoever can write a blob could craft another with the same name.
HASHES = {1: "xxh3_128", 2: "blake3", 3: "blake3"}
_HASHERS: dict[str, Callable[[], Digest]] = {"xxh3_128": xxhash.xxh3_128, "blake3": blake3.blake3}
#: Version of the storage root's layout, recorded in its :data:`MARKER` file.
STORE_FORMAT = 1
MARKER = "format"

T = TypeVar("T")
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
    hash: str = HASH  # what names its blobs

    @property
    def size(self) -> int:
        """Bytes of state this generation holds (its blobs, shared or not)."""
        return sum(self.blobs.values())


def host_name() -> str:
    """The name of the machine a checkpoint is written on, as a user knows it.

    ``$HOSTNAME`` first (Kubernetes sets it to the pod's name in every
    container), else the system's host name.
    """
    return os.environ.get("HOSTNAME") or socket.gethostname()


def hasher(name: str = HASH) -> Digest:
    """A new streaming hash of the kind *name* (a value of :data:`HASHES`)."""
    try:
        return _HASHERS[name]()
    except KeyError:
        raise CorruptCheckpoint(f"unknown hash {name!r}") from None


def blob_hash(parts: Sequence[bytes | memoryview], name: str = HASH) -> str:
    """The content address of a blob: the hash *name* of its bytes, in hex."""
    digest = hasher(name)
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def newer(what: str, found: object, readable: int) -> NewerFormat:
    """The error for something a newer release wrote: never damage, never deleted."""
    return NewerFormat(
        f"{what} was written by a newer persistent-kernel (format {found}; this release "
        f"reads up to format {readable}); upgrade to read it"
    )


def check_root(root: Path) -> None:
    """Refuse a storage root whose format marker names a newer layout.

    A root without a marker predates the marker (or is new) and is read
    as format 1. A marker that cannot be read is refused too: guessing its
    format could mean writing over a newer release's data.
    """
    path = root / MARKER
    try:
        data = read_private(path, f"the storage format marker {path}")
    except FileNotFoundError:
        return
    try:
        found = json.loads(data)["format"]
        if not isinstance(found, int):
            raise TypeError(found)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(
            f"the storage format marker {path} cannot be read; nothing is written "
            "to this storage root until it says which format the root holds"
        ) from exc
    if found > STORE_FORMAT:
        raise newer(f"the storage root {root}", found, STORE_FORMAT)


def mark_root(root: Path) -> None:
    """Check the root's format marker, writing it first if there is none."""
    check_root(root)
    if not (root / MARKER).exists():
        private_dir(root)
        write_new(root, MARKER, json.dumps({"format": STORE_FORMAT}).encode() + b"\n")


@dataclass
class PruneResult:
    """What a prune removed, and what it kept that it was not asked to keep."""

    removed: list[int] = field(default_factory=list)  # generations deleted
    kept: dict[int, str] = field(default_factory=dict)  # unverified generation -> why kept
    blobs_kept: str | None = None  # why no blob was deleted, if none was
    dropped: int = 0  # manifests deleted as provably not the user's (see SessionStore.prune)

    def notes(self) -> list[str]:
        """One sentence per reason something was kept (the first few; the rest counted)."""
        notes = [
            f"generation {g} was kept although it cannot be verified: {why}"
            for g, why in list(self.kept.items())[:3]
        ]
        if len(self.kept) > 3:
            notes.append(f"{len(self.kept) - 3} more generations were kept for such reasons")
        if self.dropped:
            notes.append(f"{self.dropped} manifests that are provably not yours were deleted")
        if self.blobs_kept:
            notes.append(self.blobs_kept)
        return notes


class SessionStore:
    """The checkpoints of one session key: the format, over a :class:`Backend`.

    *path* is the session's directory on this machine's disk (for a bucket's
    session: its local tier's), where :attr:`locks` live; *on_disk* false
    (the in-memory backend) means there is none: the root's format marker is
    then neither checked nor written, and *locks* must be given.
    """

    def __init__(
        self,
        path: Path,
        key: str | None = None,
        signer: Signer | None = None,
        backend: Backend | None = None,
        root: Path | None = None,
        locks: Locks | None = None,
        on_disk: bool = True,
    ) -> None:
        self.path = path
        self.key = key
        self.root = root or path.parent.parent
        self.signer = signer or Signer(self.root)
        self.backend = backend or LocalBackend(path)
        self.on_disk = on_disk
        if not on_disk and locks is None:
            raise ValueError("a session with no directory on this disk needs locks of its own")
        #: The session lock and the registry of live writers (see :mod:`.locks`).
        self.locks: Locks = locks if locks is not None else FileLocks(path, self.ensure)
        # On the local disk (locks live here whatever the backend).
        self.generations_dir = path / "generations"
        self.objects_dir = path / "objects"
        self.writers_dir = path / "writers"

    def __repr__(self) -> str:
        return f"SessionStore({str(self.path)!r})"

    def ensure(self) -> None:
        """Create the session's directories (0700) if missing.

        Every write comes through here first, so a storage root of a newer
        format (:class:`NewerFormat`) is never written to.
        """
        if self.on_disk:
            mark_root(self.root)
        self.backend.ensure()

    # -- settings -----------------------------------------------------------------

    def read_settings(self) -> dict[str, Any]:
        """Per-session preferences (``%persist exclude``/``include``); {} if there are none.

        Settings that exist but cannot be read, parsed or trusted raise
        :class:`UnreadableSettings`: read as empty, they would silently drop
        the user's excludes.
        """
        path = self.path / "settings.json"
        try:
            data = json.loads(self.backend.read_file("settings.json"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UntrustedCheckpoint) as exc:
            raise UnreadableSettings(
                f"the settings of this notebook ({path}) cannot be read ({exc}); nothing is "
                "saved until they can, since they may exclude variables from checkpoints"
            ) from exc
        if not isinstance(data, dict):
            raise UnreadableSettings(
                f"the settings of this notebook ({path}) are not a JSON object; nothing is "
                "saved until they are fixed or removed, since they may exclude variables"
            )
        return data

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

    def end_loading(self) -> bool:
        """Remove the marker; False if it could not be (the caller tries again later:
        a marker left behind makes the next start leave that blob alone)."""
        try:
            self.backend.delete_file("loading")
        except OSError:
            return False
        return True

    def poisoned(self) -> set[str]:
        """Blobs whose unpickling killed a kernel; a marker left behind is added first.

        A list or marker that cannot be read (EIO) counts as none: the restore
        goes on, and a blob that kills the kernel again leaves a new marker.
        """
        try:
            poison = set(json.loads(self.backend.read_file("poisoned")))
        except (OSError, ValueError, TypeError):
            poison = set()
        try:
            crashed = self.backend.read_file("loading").decode("ascii", "replace").strip()
        except OSError:
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
        """Where generation *generation*'s manifest is on the local disk."""
        return self.generations_dir / f"{generation:08d}.json"

    def read_manifest(self, generation: int) -> Manifest:
        """Read and check one manifest; :class:`CorruptCheckpoint` if it is bad."""
        return self.manifest_from(self.backend.read_manifest(generation), generation)

    def manifest_from(self, data: bytes, generation: int) -> Manifest:
        """Check manifest *generation*'s bytes, already read (see :meth:`read_manifest`)."""
        name = f"{generation:08d}.json"
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"manifest {name} is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise CorruptCheckpoint(f"manifest {name} is not a JSON object")
        # Before the signature: a newer release may sign differently.
        check_format(raw, name)
        self.signer.verify(raw, name)
        return parse_manifest(raw, generation, name)

    def newest(
        self, attempt: Callable[[Manifest], T], problems: list[str] | None = None
    ) -> tuple[Manifest, T]:
        """The newest generation whose manifest reads and for which *attempt* succeeds.

        The one walk every reader takes (restore, export, the CLI): newest
        first, a generation whose manifest or data cannot be read
        (:class:`UnreadableCheckpoint`, raised by the read or by *attempt*)
        is passed over and the reason appended to *problems*, worded once
        here. Returns the manifest and what *attempt* returned. Raises
        :class:`NoCheckpoint` (naming the reasons) when no generation serves.
        """
        problems = [] if problems is None else problems
        for generation in reversed(self.generations()):
            try:
                manifest = self.read_manifest(generation)
                return manifest, attempt(manifest)
            except NoCheckpoint:  # pruned meanwhile
                continue
            except UnreadableCheckpoint as exc:
                problems.append(f"generation {generation} was passed over: {exc}")
        raise NoCheckpoint("no checkpoint" + (f" ({'; '.join(problems)})" if problems else ""))

    def latest(self) -> tuple[Manifest, list[str]]:
        """The newest readable generation and what was wrong with newer ones."""
        problems: list[str] = []
        manifest, _ = self.newest(lambda m: None, problems)
        return manifest, problems

    def has_blob(self, digest: str, size: int) -> bool:
        return self.backend.blob_size(digest) == size

    def read_blob(
        self, ref: BlobRef, on_read: Callable[[int], None] | None = None, hash: str = HASH
    ) -> list[Any]:
        """Read a blob into one buffer per part, checking size and hash first.

        *hash* is what names the blob: the :attr:`Manifest.hash` of the
        manifest that lists it (the one written, unless it is older).

        Nothing is unpickled here. Parts after the first are writable
        (bytearray, or an anonymous mmap for large ones) so that arrays
        restored from them are writable and need no further copy.
        *on_read* is called with the byte count of each chunk read; an
        exception it raises stops the read.
        """
        if sum(ref.parts) != ref.size:
            raise CorruptCheckpoint(f"blob {ref.hash}: parts do not add up to its size")
        digest = hasher(hash)
        parts = self.backend.read_blob(ref.hash, ref.parts, digest, on_read)
        if digest.hexdigest() != ref.hash:
            self.backend.quarantine_blob(ref.hash)
            raise CorruptCheckpoint(f"blob {ref.hash} does not match its hash")
        return parts

    # -- writing (hold ``locks.locked``) ------------------------------------------

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

    def write_blob(self, parts: Sequence[bytes | memoryview], digest: str | None = None) -> BlobRef:
        """Store a blob unless an identical one is already stored.

        *digest* is the blob's :func:`blob_hash` if the caller has it already.
        """
        digest = digest or blob_hash(parts)
        sizes = tuple(memoryview(p).nbytes for p in parts)
        size = sum(sizes)
        if self._intact(digest, size):
            return BlobRef(digest, size, sizes, written=0)
        self.backend.write_blob(digest, parts)
        return BlobRef(digest, size, sizes, written=size)

    def write_new_blob(self, parts: Sequence[bytes | memoryview]) -> BlobRef:
        """Store a blob that is probably not stored yet, hashed as it is written.

        The same blob as :meth:`write_blob` would store, named by its
        :func:`blob_hash`; the bytes are read once, for the write and the hash
        together (see :meth:`.Backend.write_blob_hashing`). If a blob of that
        name is stored already, what was written is dropped and ``written``
        is 0: guessing wrong costs a write, never a second copy.
        """
        sizes = tuple(memoryview(p).nbytes for p in parts)
        size = sum(sizes)
        digest, known = self.backend.write_blob_hashing(
            parts, hasher(), lambda name: self._intact(name, size)
        )
        return BlobRef(digest, size, sizes, written=0 if known else size)

    def migrate_blob(self, ref: BlobRef, hash: str) -> BlobRef:
        """Store again, named by :data:`HASH`, a blob named by the older *hash*.

        For data an older generation holds that a new one keeps without
        loading it (a group carried over). The blob is checked against its
        old name first; :class:`CorruptCheckpoint` if it does not match.
        """
        if hash == HASH:
            return ref
        parts = self.read_blob(ref, hash=hash)
        return self.write_blob(parts)

    def commit(
        self,
        content: dict[str, Any],
        blobs: Sequence[BlobRef],
        info: dict[str, Any],
        chunked: bool = False,
    ) -> Manifest:
        """Make a new generation naming *blobs*; atomic. Returns its manifest.

        *chunked*: the content holds chunked buffers, so the manifest is
        format 3 (older releases refuse it as newer instead of misreading it).
        """
        existing = self.generations()
        generation = (existing[-1] if existing else 0) + 1
        raw = {
            "format": FORMAT if chunked else PLAIN_FORMAT,
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

    def prune(self, keep: int, drop: Callable[[bytes], bool] | None = None) -> PruneResult:
        """Keep the newest *keep* verified generations; drop blobs no kept one names.

        Fails closed. Only generations whose manifests verify count toward
        *keep* and are ever deleted; one that cannot be read (damaged, not
        signed by us, written by a newer release, or unreadable for now) is
        kept, and so is every blob it may name: what its ``blobs`` field lists
        when that can be read, and every blob at all when it cannot. The
        result says what was kept and why. Also removes temp files left by
        writers that died.

        *drop*: deletes, of the manifests that fail, those whose bytes it is
        true of (in a bucket: the unsigned ones, provably not the user's, see
        :meth:`.tiers.Mirror.push`); counted in :attr:`PruneResult.dropped`.
        """
        result = PruneResult()
        verified: list[Manifest] = []
        may_reference: set[str] = set()
        keep_every_blob = False
        for generation in self.generations():
            try:
                verified.append(self.read_manifest(generation))
            except NoCheckpoint:
                continue
            except (UnreadableCheckpoint, OSError) as exc:
                if drop is not None and self._drops(generation, drop):
                    result.dropped += 1
                    continue
                result.kept[generation] = str(exc)
                named = self._named_blobs(generation)
                if named is None:
                    keep_every_blob = True
                else:
                    may_reference |= named
        doomed = verified[: max(0, len(verified) - max(1, keep))]
        for manifest in doomed:
            self.backend.delete_manifest(manifest.generation)
            result.removed.append(manifest.generation)
        referenced = set(may_reference)
        for manifest in verified[len(doomed) :]:
            referenced.update(manifest.blobs)
        self.backend.sweep_temporaries()
        if keep_every_blob:
            result.blobs_kept = (
                "no stored data was deleted: a manifest that cannot be read may name any of it"
            )
            return result
        for name in self.backend.blobs():
            if name not in referenced:
                self.backend.delete_blob(name)
        return result

    def _drops(self, generation: int, drop: Callable[[bytes], bool]) -> bool:
        """Delete manifest *generation* if *drop* is true of its bytes; whether it did."""
        try:
            if not drop(self.backend.read_manifest(generation)):
                return False
        except (OSError, NoCheckpoint):
            return False
        self.backend.delete_manifest(generation)
        return True

    def _named_blobs(self, generation: int) -> set[str] | None:
        """The blobs an unverified manifest of a format we know lists; ``None`` if unknown.

        Not trusted for reading: only to keep more, never to delete.
        """
        try:
            raw = json.loads(self.backend.read_manifest(generation))
        except (OSError, ValueError, UnreadableCheckpoint, NoCheckpoint):
            return None
        if not isinstance(raw, dict) or raw.get("format") not in HASHES:
            return None
        blobs = raw.get("blobs")
        if not isinstance(blobs, dict) or not all(isinstance(k, str) for k in blobs):
            return None
        return set(blobs)

    def clear(self) -> None:
        """Forget every checkpoint of this session."""
        self.backend.clear()

    def remove(self) -> None:
        """Remove everything of this session: its checkpoints, settings and markers, and
        its directory on this machine's disk (for a bucket's session: the local copy)."""
        self.backend.remove()
        if self.on_disk and self.path.is_dir():
            shutil.rmtree(self.path)

    def disk_usage(self) -> int:
        """Bytes this session takes on disk (blobs counted once)."""
        return self.backend.disk_usage()


def check_format(raw: dict[str, Any], name: str) -> None:
    """Refuse a manifest of a format this release cannot read.

    A newer format is :class:`NewerFormat` (left alone, never deleted);
    anything else that is not a format we know is damage.
    """
    fmt = raw.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
        raise newer(f"manifest {name}", fmt, FORMAT)
    if fmt not in HASHES:
        raise CorruptCheckpoint(f"manifest {name} has no format this release knows ({fmt!r})")
    if raw.get("hash") != HASHES[fmt]:
        raise CorruptCheckpoint(f"manifest {name} uses unknown hash {raw.get('hash')!r}")


def parse_manifest(raw: Any, generation: int, name: str) -> Manifest:
    """Check a decoded manifest's shape; :class:`CorruptCheckpoint` if it is off."""
    if not isinstance(raw, dict):
        raise CorruptCheckpoint(f"manifest {name} is not a JSON object")
    check_format(raw, name)
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
        hash=HASHES[raw["format"]],
    )


class Store:
    """The storage root: one :class:`SessionStore` per session key.

    This class is the local disk; :func:`.where.open_store` gives the store a
    ``checkpoint_dir`` names, which may be another kind (a bucket, memory)
    with the same methods.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.sessions_dir = self.root / "sessions"
        self.signer = Signer(self.root)
        #: The store as a user names it (a path, a URL without its options).
        self.display = str(self.root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display!r})"

    def local(self) -> Store:
        """The store on this machine's disk that a kernel writes to: this one (a
        bucket's is its cache tier, see :meth:`.tiers.BucketStore.local`)."""
        return self

    def mirror(self, key: str) -> Mirror | None:
        """The bucket session *key* of :meth:`local` is mirrored to; None here (no bucket)."""
        return None

    def in_use(self, session: SessionStore, now: float) -> str | None:
        """Why a kernel on another machine may be using *session* now, or None.

        None here: on one machine's disk a running kernel's writers hold the
        session's locks (see :mod:`.locks`), which a removal takes. A bucket's
        store reads the leases running kernels leave there (see
        :meth:`.tiers.BucketStore.in_use`).
        """
        return None

    def adopt(self, old_key: str, new_key: str) -> SessionStore:
        """Move the checkpoints of *old_key* to *new_key* (a renamed notebook); returns the
        new session. See :func:`.rename.adopt`: :class:`RenameUnsupported` where the
        backend cannot rename (a bucket), before anything is touched."""
        from .rename import adopt

        new = self.session(new_key)
        adopt(self.session(old_key), new)
        return new

    def session(self, key: str) -> SessionStore:
        return SessionStore(
            self.sessions_dir / session_dirname(key), key, self.signer, root=self.root
        )

    def session_at(self, path: Path) -> SessionStore:
        """The session stored in directory *path* under :attr:`sessions_dir`."""
        return SessionStore(path, None, self.signer, root=self.root)

    def check(self) -> None:
        """Refuse a root of a newer format (:class:`NewerFormat`); see :func:`check_root`."""
        check_root(self.root)

    def sessions(self) -> list[SessionStore]:
        """Every session directory under the root (keys read lazily).

        Raises :class:`NewerFormat` for a root a newer release laid out.
        """
        self.check()
        try:
            entries = sorted(self.sessions_dir.iterdir())
        except FileNotFoundError:
            return []
        return [self.session_at(e) for e in entries if e.is_dir()]

    def ensure(self) -> None:
        private_dir(self.root)
        mark_root(self.root)
        private_dir(self.sessions_dir)


def is_disk_error(exc: BaseException) -> bool:
    """True for the errors a full, read-only or vanished disk raises."""
    return isinstance(exc, OSError) and exc.errno in {
        errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO,
    }  # fmt: skip
