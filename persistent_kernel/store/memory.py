"""The in-memory backend: a whole store in this process's memory, named ``memory://<name>``.

For tests (the backend conformance suite, ``tests/test_backends.py``, runs
every check against it at memory speed) and for sessions that need not
outlive the process. Each name is one store, shared by everything in this
process that opens it (a process-wide dict), until :func:`forget`.

Nothing touches the disk: the secret that signs its manifests is made in
memory with the store, its session locks are threading locks and its writer
registry a dict (:class:`MemoryLocks`). It keeps every promise of
:class:`.backend.Backend`: a write is whole or absent (a dict assignment
under a lock), a missing manifest is :class:`NoCheckpoint`, a missing or
short blob :class:`CorruptCheckpoint`, and a session can be renamed.

Limits: this process only. A forked writer writes into its own copy of the
store, which its parent never sees; nothing survives the process; there is
no other user to keep out, so ownership is not checked (signatures are).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptCheckpoint, NoCheckpoint, StoreBusy
from ..session import session_dirname
from .backend import Backend, Digest
from .locks import Locks, Registration
from .sessions import SessionStore, Store
from .trust import Signer

SCHEME = "memory"
_SECRET_BYTES = 32
#: Session files removed by :meth:`MemoryBackend.clear` (settings outlive a clear).
_MARKERS = ("loading", "poisoned")


@dataclass
class _Session:
    """The bytes of one session."""

    manifests: dict[int, bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    set_aside: dict[str, bytes] = field(default_factory=dict)  # quarantined blobs
    modified: float = field(default_factory=time.time)


class _Root:
    """One named store: its sessions, its secret, the locks of its sessions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.secret = os.urandom(_SECRET_BYTES)
        self.sessions: dict[str, _Session] = {}
        self.locks: dict[str, MemoryLocks] = {}
        self.mutex = threading.RLock()

    def locks_of(self, dirname: str) -> MemoryLocks:
        with self.mutex:
            return self.locks.setdefault(dirname, MemoryLocks(f"{SCHEME}://{self.name}/{dirname}"))


_ROOTS: dict[str, _Root] = {}
_ROOTS_MUTEX = threading.Lock()


def _root(name: str) -> _Root:
    with _ROOTS_MUTEX:
        root = _ROOTS.get(name)
        if root is None:
            root = _ROOTS[name] = _Root(name)
        return root


def forget(name: str) -> None:
    """Drop the store *name* and everything in it (a later open starts empty)."""
    with _ROOTS_MUTEX:
        _ROOTS.pop(name, None)


class MemoryLocks(Locks):
    """The session lock (a threading lock) and writer registry of an in-memory session.

    A writer is alive from :meth:`register_writer` to :meth:`release_writer`:
    there is no process whose death could end it sooner.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self._writers: dict[Path, int] = {}
        self._mutex = threading.Lock()
        self._count = itertools.count(1)

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        got = self._lock.acquire(timeout=timeout) if timeout > 0 else self._lock.acquire(False)
        if not got:
            raise StoreBusy(f"another writer has held {self.where} for more than {timeout:.0f} s")
        try:
            yield
        finally:
            self._lock.release()

    def register_writer(self, standby: bool = False) -> Registration:
        # No process of the store's ends before this one: a standby is never counted.
        if standby:
            return -1, Path(f"{self.where}/standbys/{os.getpid()}-{next(self._count)}")
        with self._mutex:
            path = Path(f"{self.where}/writers/{os.getpid()}-{next(self._count)}")
            self._writers[path] = os.getpid()
        return -1, path

    def release_writer(self, fd: int, path: Path) -> None:
        with self._mutex:
            self._writers.pop(path, None)

    def running_writers(self) -> list[Path]:
        with self._mutex:
            return list(self._writers)


class _MemorySigner(Signer):
    """Signs with the store's secret, made in memory with it (never on disk)."""

    def __init__(self, root: _Root) -> None:
        super().__init__(Path(f"{SCHEME}://{root.name}"))
        self._secret = root.secret


class MemoryBackend(Backend):
    """One session of an in-memory store."""

    renames = True

    def __init__(self, root: _Root, dirname: str) -> None:
        self.root = root
        self.dirname = dirname

    def __repr__(self) -> str:
        return f"MemoryBackend({SCHEME}://{self.root.name}/sessions/{self.dirname})"

    def _get(self) -> _Session | None:
        return self.root.sessions.get(self.dirname)

    def _need(self) -> _Session:
        """The session's bytes, made empty on the first write (a directory made by ensure)."""
        with self.root.mutex:
            session = self.root.sessions.setdefault(self.dirname, _Session())
            session.modified = time.time()
            return session

    def ensure(self) -> None:
        self._need()

    # -- manifests ------------------------------------------------------------------

    def generations(self) -> list[int]:
        with self.root.mutex:
            session = self._get()
            return sorted(session.manifests) if session is not None else []

    def read_manifest(self, generation: int) -> bytes:
        with self.root.mutex:
            session = self._get()
            data = session.manifests.get(generation) if session is not None else None
        if data is None:
            raise NoCheckpoint(f"generation {generation} does not exist")
        return data

    def write_manifest(self, generation: int, data: bytes) -> None:
        with self.root.mutex:
            self._need().manifests[generation] = bytes(data)

    def delete_manifest(self, generation: int) -> None:
        with self.root.mutex:
            session = self._get()
            if session is not None:
                session.manifests.pop(generation, None)

    # -- blobs ----------------------------------------------------------------------

    def _blob(self, name: str) -> bytes | None:
        with self.root.mutex:
            session = self._get()
            return session.blobs.get(name) if session is not None else None

    def blob_size(self, name: str) -> int | None:
        blob = self._blob(name)
        return None if blob is None else len(blob)

    def read_blob_bytes(self, name: str) -> bytes:
        blob = self._blob(name)
        if blob is None:
            raise FileNotFoundError(f"blob {name} does not exist")
        return blob

    def read_blob(
        self,
        name: str,
        sizes: Sequence[int],
        digest: Digest,
        on_read: Callable[[int], None] | None = None,
    ) -> list[Any]:
        blob = self._blob(name)
        if blob is None:
            raise CorruptCheckpoint(f"blob {name} is missing")
        if len(blob) != sum(sizes):
            self.quarantine_blob(name)
            raise CorruptCheckpoint(
                f"blob {name} is {len(blob)} bytes, the manifest says {sum(sizes)}"
            )
        view = memoryview(blob)
        parts: list[Any] = []
        offset = 0
        for size in sizes:
            part = bytearray(view[offset : offset + size])  # writable, as restored arrays need
            digest.update(part)
            if on_read is not None:
                on_read(size)
            parts.append(part)
            offset += size
        return parts

    def write_blob(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        data = b"".join(parts)  # whole before it is visible
        with self.root.mutex:
            self._need().blobs[name] = data

    def blobs(self) -> list[str]:
        with self.root.mutex:
            session = self._get()
            return list(session.blobs) if session is not None else []

    def delete_blob(self, name: str) -> None:
        with self.root.mutex:
            session = self._get()
            if session is not None:
                session.blobs.pop(name, None)

    def quarantine_blob(self, name: str) -> None:
        """Set a damaged blob aside (the next sweep drops it), as the local disk does."""
        with self.root.mutex:
            session = self._get()
            if session is not None and name in session.blobs:
                session.set_aside[name] = session.blobs.pop(name)

    # -- small files ------------------------------------------------------------------

    def read_file(self, name: str) -> bytes:
        with self.root.mutex:
            session = self._get()
            data = session.files.get(name) if session is not None else None
        if data is None:
            raise FileNotFoundError(f"{self!r}: no file {name}")
        return data

    def write_file(self, name: str, data: bytes, sync: bool = True) -> None:
        with self.root.mutex:
            self._need().files[name] = bytes(data)

    def delete_file(self, name: str) -> None:
        with self.root.mutex:
            session = self._get()
            if session is not None:
                session.files.pop(name, None)

    # -- housekeeping -----------------------------------------------------------------

    def sweep_temporaries(self) -> None:
        with self.root.mutex:
            session = self._get()
            if session is not None:
                session.set_aside.clear()

    def exists(self) -> bool:
        with self.root.mutex:
            return self.dirname in self.root.sessions

    def remove(self) -> None:
        with self.root.mutex:
            if self.root.sessions.pop(self.dirname, None) is None:
                raise FileNotFoundError(f"{self!r} does not exist")

    def clear(self) -> None:
        with self.root.mutex:
            session = self._get()
            if session is None:
                return
            session.manifests.clear()
            session.blobs.clear()
            session.set_aside.clear()
            for name in _MARKERS:
                session.files.pop(name, None)

    def disk_usage(self) -> int:
        with self.root.mutex:
            session = self._get()
            if session is None:
                return 0
            return sum(map(len, session.blobs.values())) + sum(map(len, session.manifests.values()))

    def modified(self) -> float:
        with self.root.mutex:
            session = self._get()
            if session is None:
                raise FileNotFoundError(f"{self!r} does not exist")
            return session.modified

    def rename_to(self, target: Backend) -> None:
        if not isinstance(target, MemoryBackend) or target.root is not self.root:
            super().rename_to(target)
            return
        with self.root.mutex:
            if target.dirname in self.root.sessions:
                raise FileExistsError(f"{target!r} already exists")
            session = self.root.sessions.pop(self.dirname, None)
            if session is None:
                raise FileNotFoundError(f"{self!r} does not exist")
            self.root.sessions[target.dirname] = session


class MemoryStore(Store):
    """A store in this process's memory (see the module docstring)."""

    def __init__(self, name: str) -> None:
        super().__init__(Path(f"{SCHEME}://{name}"))  # a name for messages: never on disk
        self.name = name
        self._root = _root(name)
        self.signer = _MemorySigner(self._root)
        self.display = f"{SCHEME}://{name}"

    @classmethod
    def at(cls, location: str) -> MemoryStore:
        """The store ``memory://<name>`` names."""
        name = location.split("://", 1)[-1].strip("/")
        if not name:
            raise ValueError(f"{location!r} names no store (expected memory://name)")
        return cls(name)

    def _session(self, dirname: str, key: str | None) -> SessionStore:
        return SessionStore(
            self.sessions_dir / dirname,
            key,
            self.signer,
            backend=MemoryBackend(self._root, dirname),
            root=self.root,
            locks=self._root.locks_of(dirname),
            on_disk=False,
        )

    def session(self, key: str) -> SessionStore:
        return self._session(session_dirname(key), key)

    def session_at(self, path: Path) -> SessionStore:
        return self._session(path.name, None)

    def check(self) -> None:
        """Nothing to check: a store in memory is always of this release's format."""

    def sessions(self) -> list[SessionStore]:
        with self._root.mutex:
            names = sorted(self._root.sessions)
        return [self._session(name, None) for name in names]

    def ensure(self) -> None:
        """Nothing to create: a session appears with its first write."""
