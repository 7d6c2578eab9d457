"""Who may write a session, and who is writing it now.

* The **session lock** (``<session>/lock``, an ``flock``): one writer at a
  time commits, prunes or clears a session. Waiting is bounded: a holder
  that keeps it past the deadline raises :class:`StoreBusy`.
* The **writer registry** (``<session>/writers/<pid>-<token>``): each
  background writer holds an ``flock`` on its own file for as long as it
  lives, so a starting kernel can wait for writers a previous kernel forked
  before it reads their result. A file whose lock nobody holds belongs to a
  writer that is gone, and is removed by whoever finds it.

:class:`Locks` is what a session holds (``session.locks``), apart from the
format: :class:`FileLocks` keeps both in the session's directory on the local
disk, for a local session and for a bucket's (whose lock and writers are this
machine's); the in-memory backend has its own (:mod:`.memory`).

Limits: ``flock`` locks are advisory and local to one machine (NFS may not
honour them); a store shared between machines needs another kind of lock.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from ..errors import StoreBusy
from .fs import TMP, private_dir

#: How often a waiter looks again.
_POLL = 0.05


@contextmanager
def session_lock(directory: Path, timeout: float) -> Iterator[None]:
    """Hold ``directory/lock``; raise :class:`StoreBusy` after *timeout* seconds."""
    private_dir(directory)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        f"another process has been writing {directory} "
                        f"for more than {timeout:.0f} s"
                    ) from None
                time.sleep(_POLL)
        yield
    finally:
        os.close(fd)


#: The name of a standby's announcement starts so (see :func:`register_writer`).
STANDBY = "standby-"


def register_writer(writers_dir: Path, standby: bool = False) -> tuple[int, Path]:
    """Announce a writer: a file it holds an flock on for as long as it lives.

    Call before forking the writer, so the announcement exists before the
    kernel that forked it can exit; the forked writer inherits the lock.
    Returns the descriptor and the path, for :func:`release_writer`.

    A *standby* (see :class:`.snapshot.Standby`) writes only once its kernel
    has ended: while the kernel (this process) lives, it is not counted as
    running, so nobody waits for a copy that may sit idle for hours.
    """
    private_dir(writers_dir)
    name = f"{STANDBY if standby else ''}{os.getpid()}-{secrets.token_hex(4)}"
    tmp, path = writers_dir / f"{TMP}{name}", writers_dir / name
    # Locked before it gets its real name: a scan must never see it unlocked.
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, path)
    return fd, path


def release_writer(fd: int, path: Path) -> None:
    """Withdraw an announcement made by :func:`register_writer`."""
    with suppress(OSError):
        path.unlink()
    with suppress(OSError):
        os.close(fd)


def running_writers(writers_dir: Path) -> list[Path]:
    """Announced writers that are still alive (their flock is held)."""
    alive = []
    with suppress(FileNotFoundError):
        for entry in writers_dir.iterdir():
            if entry.name.startswith(TMP) or _idle_standby(entry.name):
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


def _idle_standby(name: str) -> bool:
    """Whether *name* announces a standby whose kernel is alive (so it waits, idle)."""
    if not name.startswith(STANDBY):
        return False
    try:
        pid = int(name.removeprefix(STANDBY).split("-")[0])
    except ValueError:
        return False
    return process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: alive, as kill() said


def wait_for_writers(writers_dir: Path, timeout: float) -> tuple[float, int]:
    """Wait until no announced writer is alive, at most *timeout* seconds.

    Returns ``(seconds waited, writers still alive)``.
    """
    start = time.monotonic()
    while True:
        alive = running_writers(writers_dir)
        waited = time.monotonic() - start
        if not alive or waited >= timeout:
            return waited, len(alive)
        time.sleep(_POLL)


#: What :meth:`Locks.register_writer` returns and :meth:`Locks.release_writer` takes.
Registration = tuple[int, Path]


class Locks(ABC):
    """The session lock and the registry of live writers of one session."""

    @abstractmethod
    def locked(self, timeout: float) -> AbstractContextManager[None]:
        """Hold the session's writer lock; :class:`StoreBusy` after *timeout* seconds."""

    @abstractmethod
    def register_writer(self, standby: bool = False) -> Registration:
        """Announce a writer, alive until :meth:`release_writer` (or its death); a
        *standby* counts only once the process announcing it has ended."""

    @abstractmethod
    def release_writer(self, fd: int, path: Path) -> None:
        """Withdraw an announcement made by :meth:`register_writer`."""

    @abstractmethod
    def running_writers(self) -> list[Path]:
        """Announced writers that are still alive."""

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
            time.sleep(_POLL)


class FileLocks(Locks):
    """The lock and writers of a session directory on the local disk (the functions above).

    *prepare* runs before the lock is taken or a writer announced: the
    session's :meth:`~.sessions.SessionStore.ensure`, so that a storage root
    of a newer format is refused before anything is written to it.
    """

    def __init__(self, directory: Path, prepare: Callable[[], None] | None = None) -> None:
        self.directory = directory
        self.writers_dir = directory / "writers"
        self._prepare = prepare

    def __repr__(self) -> str:
        return f"FileLocks({str(self.directory)!r})"

    def _ready(self) -> None:
        if self._prepare is not None:
            self._prepare()

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        self._ready()
        with session_lock(self.directory, timeout):
            yield

    def register_writer(self, standby: bool = False) -> Registration:
        self._ready()
        return register_writer(self.writers_dir, standby)

    def release_writer(self, fd: int, path: Path) -> None:
        release_writer(fd, path)

    def running_writers(self) -> list[Path]:
        return running_writers(self.writers_dir)

    def wait_for_writers(self, timeout: float) -> tuple[float, int]:
        return wait_for_writers(self.writers_dir, timeout)
