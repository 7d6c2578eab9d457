"""The local-disk backend: a session is a directory (layout in :mod:`persistent_kernel.store`).

Every directory is created 0700 and every file 0600; every read checks that
the current user owns what it reads and that nobody else may write it, and
never follows a symlink (:mod:`.trust`).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

from .. import blobio
from ..errors import CorruptCheckpoint, NoCheckpoint, ShortRead, UntrustedCheckpoint
from .backend import Backend, Digest
from .fs import TMP, fsync_dir, private_dir, write_atomic, write_hashing
from .trust import check_private, check_private_path, read_private

#: Session files removed by :meth:`LocalBackend.clear` (settings outlive a clear).
_MARKERS = ("loading", "poisoned")


class LocalBackend(Backend):
    """One session's directory on the local disk."""

    renames = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generations_dir = path / "generations"
        self.objects_dir = path / "objects"
        self.writers_dir = path / "writers"

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.path)!r})"

    def ensure(self) -> None:
        for directory in (self.path, self.generations_dir, self.objects_dir, self.writers_dir):
            private_dir(directory)

    # -- manifests ------------------------------------------------------------------

    def manifest_path(self, generation: int) -> Path:
        return self.generations_dir / f"{generation:08d}.json"

    def generations(self) -> list[int]:
        try:
            names = os.listdir(self.generations_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def read_manifest(self, generation: int) -> bytes:
        path = self.manifest_path(generation)
        try:
            check_private_path(self.path, f"the checkpoint directory {self.path}")
            check_private_path(self.generations_dir, f"the directory {self.generations_dir}")
            return read_private(path, f"manifest {path.name}")
        except FileNotFoundError:
            raise NoCheckpoint(f"generation {generation} does not exist") from None

    def write_manifest(self, generation: int, data: bytes) -> None:
        fsync_dir(self.objects_dir)
        write_atomic(self.generations_dir, self.manifest_path(generation).name, [data])
        fsync_dir(self.generations_dir)

    def delete_manifest(self, generation: int) -> None:
        with suppress(FileNotFoundError):
            self.manifest_path(generation).unlink()

    # -- blobs ----------------------------------------------------------------------

    def blob_size(self, name: str) -> int | None:
        try:
            return (self.objects_dir / name).stat().st_size
        except OSError:
            return None

    def read_blob_bytes(self, name: str) -> bytes:
        return read_private(self.objects_dir / name, f"blob {name}")

    def _open_blob(self, name: str, size: int) -> BinaryIO:
        """The blob *name*, opened safely and checked to be *size* bytes."""
        path = self.objects_dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CorruptCheckpoint(f"blob {name} is missing") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise  # EACCES, EIO: no proof of damage (the restore carries its group)
            raise UntrustedCheckpoint(f"blob {name} is a symbolic link; it is not opened") from exc
        f = open(fd, "rb", buffering=0)  # noqa: SIM115 - returned open
        try:
            st = os.fstat(f.fileno())
            check_private(st, f"blob {name}")
            if st.st_size != size:
                self.quarantine_blob(name)
                raise CorruptCheckpoint(
                    f"blob {name} is {st.st_size} bytes, the manifest says {size}"
                )
        except BaseException:
            f.close()
            raise
        return f

    def blob_path(self, name: str) -> str | None:
        return str(self.objects_dir / name)

    def read_blob_into(self, name: str, view: memoryview, digest: Digest) -> None:
        # Read and hash a piece at a time: the hash reads each piece while it
        # is still in the CPU cache.
        step = 1 << 20
        with self._open_blob(name, len(view)) as f:
            for start in range(0, len(view), step):
                piece = view[start : start + step]
                try:
                    blobio.read_into(f.fileno(), piece, start)
                except ShortRead:
                    raise CorruptCheckpoint(f"blob {name} ended early") from None
                digest.update(piece)

    def read_blob(
        self,
        name: str,
        sizes: Sequence[int],
        digest: Digest,
        on_read: Callable[[int], None] | None = None,
    ) -> list[Any]:
        with self._open_blob(name, sum(sizes)) as f:
            fd = f.fileno()
            parts: list[Any] = []
            offset = 0
            for size in sizes:
                try:
                    parts.append(blobio.read_part(fd, size, offset, digest, on_read))
                except ShortRead:
                    raise CorruptCheckpoint(f"blob {name} ended early") from None
                offset += size
        return parts

    def write_blob(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        write_atomic(self.objects_dir, name, parts)

    def write_blob_hashing(
        self,
        parts: Sequence[bytes | memoryview],
        digest: Digest,
        stored: Callable[[str], bool],
    ) -> tuple[str, bool]:
        return write_hashing(self.objects_dir, parts, digest, stored)

    def blobs(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.objects_dir) if not n.startswith(TMP)]
        except FileNotFoundError:
            return []

    def delete_blob(self, name: str) -> None:
        with suppress(FileNotFoundError):
            (self.objects_dir / name).unlink()

    def quarantine_blob(self, name: str) -> None:
        """Move a damaged blob aside (a temp name: the next sweep removes it).

        Large blobs are trusted by name and size when a checkpoint reuses
        them (reading them back would cost as much as writing them); one
        found damaged must not be reused by every later generation.
        """
        path = self.objects_dir / name
        with suppress(OSError):
            os.replace(path, path.with_name(f"{TMP}corrupt-{name}"))

    # -- small files ------------------------------------------------------------------

    def read_file(self, name: str) -> bytes:
        return read_private(self.path / name)

    def write_file(self, name: str, data: bytes, sync: bool = True) -> None:
        private_dir(self.path)
        write_atomic(self.path, name, [data], sync=sync)

    def delete_file(self, name: str) -> None:
        with suppress(FileNotFoundError):
            (self.path / name).unlink()

    # -- housekeeping -----------------------------------------------------------------

    def sweep_temporaries(self) -> None:
        for directory in (self.objects_dir, self.generations_dir):
            with suppress(FileNotFoundError):
                for entry in directory.iterdir():
                    if entry.name.startswith(TMP):
                        with suppress(FileNotFoundError):
                            entry.unlink()

    def exists(self) -> bool:
        return self.path.is_dir()

    def remove(self) -> None:
        shutil.rmtree(self.path)

    def clear(self) -> None:
        for directory in (self.generations_dir, self.objects_dir):
            with suppress(FileNotFoundError):
                shutil.rmtree(directory)
        for name in _MARKERS:
            self.delete_file(name)

    def disk_usage(self) -> int:
        total = 0
        for directory in (self.objects_dir, self.generations_dir):
            with suppress(FileNotFoundError):
                total += sum(e.stat().st_size for e in directory.iterdir() if e.is_file())
        return total

    def modified(self) -> float:
        """The newest modification time of the directory, its manifests and blobs
        (temp files and damaged ones set aside included: any sign of a writer)."""
        times = [self.path.stat().st_mtime]
        for directory in (self.generations_dir, self.objects_dir):
            try:
                times.extend(e.stat().st_mtime for e in directory.iterdir())
            except OSError:
                continue
        return max(times)

    def rename_to(self, target: Backend) -> None:
        """Rename the session's directory to *target*'s (which must not exist)."""
        if not isinstance(target, LocalBackend):
            super().rename_to(target)
            return
        os.rename(self.path, target.path)
