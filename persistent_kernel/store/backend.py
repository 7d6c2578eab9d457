"""The interface between the store and where its bytes live.

:class:`SessionStore` (the format: manifests, content addresses, signatures,
pruning) talks to one :class:`Backend` per session. A backend only moves
named bytes; it never parses a manifest, checks a hash or a signature, and
never decides what to delete. :class:`~.local.LocalBackend` keeps them on
the local disk; another backend (object storage) implements the same
methods and the format code does not change.

What every backend promises:

* ``write_blob``, ``write_blob_hashing`` and ``write_manifest`` are atomic: a reader sees the whole
  object or none. ``write_manifest`` makes every blob written before it
  durable first, so a manifest never names a blob a crash can lose.
* ``read_*`` refuse what is not provably the user's own with
  :class:`UntrustedCheckpoint`; a missing manifest is
  :class:`NoCheckpoint`, a missing or short blob :class:`CorruptCheckpoint`.
* Names are what the store gives: blob names are hex digests, generations
  positive integers, session files plain names such as ``settings.json``.

Optional: :meth:`Backend.rename_to` (a backend that can move a whole session
at once says so with :attr:`Backend.renames`) and :meth:`Backend.modified`.
The conformance suite every backend passes is ``tests/test_backends.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import RenameUnsupported


class Digest(Protocol):
    """A streaming hash (hashlib's, blake3's, xxhash's)."""

    def update(self, data: Any, /) -> Any: ...

    def hexdigest(self) -> str: ...


class Backend(ABC):
    """The bytes of one session: manifests, blobs and a few small files."""

    #: Whether :meth:`rename_to` moves the session (else it raises :class:`RenameUnsupported`).
    renames: bool = False

    @abstractmethod
    def ensure(self) -> None:
        """Create whatever must exist before a write."""

    # -- manifests ------------------------------------------------------------------

    @abstractmethod
    def generations(self) -> list[int]:
        """Numbers of the manifests stored, oldest first (readable or not)."""

    @abstractmethod
    def read_manifest(self, generation: int) -> bytes:
        """The stored bytes of one manifest."""

    @abstractmethod
    def write_manifest(self, generation: int, data: bytes) -> None:
        """Store a manifest atomically and durably, after the blobs written before it."""

    @abstractmethod
    def delete_manifest(self, generation: int) -> None:
        """Remove a manifest; no error if it is already gone."""

    # -- blobs ----------------------------------------------------------------------

    @abstractmethod
    def blob_size(self, name: str) -> int | None:
        """The size of a stored blob, or ``None`` if there is none."""

    @abstractmethod
    def read_blob_bytes(self, name: str) -> bytes:
        """A whole (small) blob, to check it before it is reused."""

    @abstractmethod
    def read_blob(
        self,
        name: str,
        sizes: Sequence[int],
        digest: Digest,
        on_read: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """A blob read into one writable buffer per part, *digest* updated in order.

        Checks the stored size against ``sum(sizes)`` first; a blob of the
        wrong size is quarantined (:meth:`quarantine_blob`) and refused.
        """

    def read_blob_into(self, name: str, view: memoryview, digest: Digest) -> None:
        """Fill *view* with a blob of exactly ``len(view)`` bytes, *digest* updated.

        Used for the chunks of a large buffer, each read into its slice of
        one destination. This default reads then copies; a backend that can
        read in place (the local disk) does so without the copy.
        """
        (part,) = self.read_blob(name, [len(view)], digest)
        view[:] = memoryview(part).cast("B")

    def blob_path(self, name: str) -> str | None:
        """Where blob *name* is on local disk, for a reader that opens it itself (and
        checks it as :meth:`read_blob_into` does); None where the backend keeps no
        local file for it. The file may be missing."""
        return None

    @abstractmethod
    def write_blob(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        """Store a blob atomically (durable once the next manifest is written)."""

    def write_blob_hashing(
        self,
        parts: Sequence[bytes | memoryview],
        digest: Digest,
        stored: Callable[[str], bool],
    ) -> tuple[str, bool]:
        """Store a blob named by its hash, *digest* updated with its bytes in order.

        For a blob that is probably new: a backend that can write before it
        knows the name (the local disk) hashes each piece as it writes it, one
        pass over the bytes instead of two. Once the name is known, *stored*
        says whether a blob of that name is stored already: then what was
        written is dropped. Returns the name and that answer. This default
        hashes first and writes only if *stored* is false.
        """
        for part in parts:
            digest.update(part)
        name = digest.hexdigest()
        known = stored(name)
        if not known:
            self.write_blob(name, parts)
        return name, known

    @abstractmethod
    def blobs(self) -> list[str]:
        """Names of the blobs stored."""

    @abstractmethod
    def delete_blob(self, name: str) -> None:
        """Remove a blob; no error if it is already gone."""

    @abstractmethod
    def quarantine_blob(self, name: str) -> None:
        """Set a damaged blob aside so that the next write of its name starts afresh."""

    # -- small files of the session (settings, crash markers) ----------------------

    @abstractmethod
    def read_file(self, name: str) -> bytes:
        """A small session file; :class:`FileNotFoundError` if there is none."""

    @abstractmethod
    def write_file(self, name: str, data: bytes, sync: bool = True) -> None:
        """Replace a small session file atomically."""

    @abstractmethod
    def delete_file(self, name: str) -> None:
        """Remove a small session file; no error if it is already gone."""

    # -- housekeeping -----------------------------------------------------------------

    @abstractmethod
    def sweep_temporaries(self) -> None:
        """Remove what writers that died mid-write left behind."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything of the session is stored."""

    @abstractmethod
    def remove(self) -> None:
        """Remove everything of the session, settings and markers too."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every manifest and blob (session files other than markers stay)."""

    @abstractmethod
    def disk_usage(self) -> int:
        """Bytes the manifests and blobs take (blobs counted once)."""

    def modified(self) -> float | None:
        """When anything of the session was last written (a Unix time); None if unknown.

        Raises :class:`FileNotFoundError` if the session is gone.
        """
        return None

    def rename_to(self, target: Backend) -> None:
        """Move everything of this session to *target*, a session of the same store with
        nothing stored (see :attr:`renames`)."""
        raise RenameUnsupported(
            f"{self!r} cannot be moved to a new name; renames are followed on the local disk only"
        )
