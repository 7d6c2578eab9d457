"""Who may write a session, and who is writing it now.

* The **session lock** (``<session>/lock``, an ``flock``): one writer at a
  time commits, prunes or clears a session. Waiting is bounded: a holder
  that keeps it past the deadline raises :class:`StoreBusy`.
* The **writer registry** (``<session>/writers/<pid>-<token>``): each
  background writer holds an ``flock`` on its own file for as long as it
  lives, so a starting kernel can wait for writers a previous kernel forked
  before it reads their result. A file whose lock nobody holds belongs to a
  writer that is gone, and is removed by whoever finds it.

Limits: ``flock`` locks are advisory and local to one machine (NFS may not
honour them); a store shared between machines needs another kind of lock.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


def register_writer(writers_dir: Path) -> tuple[int, Path]:
    """Announce a writer: a file it holds an flock on for as long as it lives.

    Call before forking the writer, so the announcement exists before the
    kernel that forked it can exit; the forked writer inherits the lock.
    Returns the descriptor and the path, for :func:`release_writer`.
    """
    private_dir(writers_dir)
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
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
            if entry.name.startswith(TMP):
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
