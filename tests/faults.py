"""A fault injector for the store: the Nth I/O call a backend makes fails.

As SQLite tests its pager (a VFS that fails the Nth call), the injector
stands between a :class:`SessionStore` and its backend, whatever holds the
bytes (local disk, S3, memory). A run first counts the calls an operation
makes, then repeats it once for each call, failing that one. The faults are
what storage does to a reader or a writer: EIO, ENOSPC, EACCES, and a short
read (a read that returns fewer bytes than were stored).

Faults only a fake can give on demand: a real disk cannot be made to fail
exactly its 7th read. The same paths meet real faults in
``test_kernel_safety.py`` (a full tmpfs, a read-only remount) and
``test_failures_small.py`` (a file that cannot be read).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from traitlets import Type

from persistent_kernel.checkpointer import Checkpointer
from persistent_kernel.errors import CorruptCheckpoint
from persistent_kernel.kernel import PersistentKernel
from persistent_kernel.store import SessionStore

#: The backend's methods that touch storage (see :class:`.backend.Backend`).
IO = frozenset({
    "ensure", "generations", "read_manifest", "write_manifest", "delete_manifest",
    "blob_size", "read_blob_bytes", "read_blob", "read_blob_into", "write_blob",
    "write_blob_hashing", "blobs",
    "delete_blob", "quarantine_blob", "read_file", "write_file", "delete_file",
    "sweep_temporaries", "exists", "remove", "clear", "disk_usage", "modified",
})  # fmt: skip
#: Methods that return stored bytes, which a short read cuts.
READS = frozenset({"read_manifest", "read_blob_bytes", "read_file", "read_blob", "read_blob_into"})
FAULTS = ("EIO", "ENOSPC", "EACCES", "short")


@dataclass
class Plan:
    """Fail call number *at* (1-based) with *fault*, and with *lasting* every call after
    it too (a disk that stays full); ``at=None`` only counts."""

    fault: str
    at: int | None = None
    lasting: bool = False
    calls: list[str] = field(default_factory=list)
    fired: str | None = None  # the method that failed, once it has

    def before(self, method: str) -> bool:
        """Count a call; raise its fault if it is the one (True: cut what it reads)."""
        self.calls.append(method)
        if self.at is None or len(self.calls) < self.at:
            return False
        if len(self.calls) > self.at and not self.lasting:
            return False
        if self.fault == "short":
            if method not in READS:
                return False  # nothing to cut: this run has no fault
            self.fired = method
            return True
        self.fired = method
        code = getattr(errno, self.fault)
        raise OSError(code, f"{errno.errorcode[code]} (injected in {method})")


class FaultyBackend:
    """Wraps a backend: every call in :data:`IO` goes through *plan* first."""

    def __init__(self, inner: Any, plan: Plan) -> None:
        self.inner, self.plan = inner, plan

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in IO:
            return attr
        return lambda *args, **kwargs: self._call(name, attr, args, kwargs)

    def _call(self, name: str, method: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if not self.plan.before(name):
            return method(*args, **kwargs)
        if name in ("read_blob", "read_blob_into"):
            # What every backend makes of a blob that ends early (see Backend.read_blob).
            raise CorruptCheckpoint(f"blob {args[0]} ended early (injected)")
        data = method(*args, **kwargs)
        return data[: len(data) // 2]


def inject(session: SessionStore, plan: Plan) -> Callable[[], None]:
    """Put *plan* between *session* and its backend; returns what takes it away."""
    inner = session.backend
    session.backend = FaultyBackend(inner, plan)  # type: ignore[assignment]

    def remove() -> None:
        session.backend = inner

    return remove


class BrokenCheckpointer(Checkpointer):
    """A checkpointer whose every hook on a cell's path raises: a defect of ours that
    no real fault produces on demand (``--PersistentKernel.checkpointer_class``)."""

    def cell_started(self, source: str | None = None) -> None:
        raise RuntimeError("cell_started is broken")

    def cell_finished(self, interrupted: bool) -> None:
        raise RuntimeError("cell_finished is broken")

    def maybe_checkpoint(self) -> None:
        raise RuntimeError("maybe_checkpoint is broken")


class KernelWithBrokenCheckpointer(PersistentKernel):
    """The kernel with :class:`BrokenCheckpointer` (``--IPKernelApp.kernel_class``)."""

    checkpointer_class = Type(BrokenCheckpointer, klass=Checkpointer)
