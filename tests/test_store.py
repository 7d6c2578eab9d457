"""The store on the local disk: files, directories, permissions, flock locks, writers.

What every backend promises (the format, and damage to stored bytes) is
tested once for all of them in ``test_backends.py``; what is here holds for
the local disk only (modes, inodes, temp files, symlinks, other processes).
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
import pytest

from persistent_kernel.errors import NewerFormat, StoreBusy
from persistent_kernel.session import session_dirname
from persistent_kernel.store import (
    HASH,
    PLAIN_FORMAT,
    BlobRef,
    SessionStore,
    Store,
    blob_hash,
    write_atomic,
)

from .helpers import KEY, ref_of
from .helpers import commit_blobs as commit

BIG = 2 * (1 << 20)  # a part this large is read into an mmap


def blob_path(session: SessionStore, ref: BlobRef) -> Path:
    return session.objects_dir / ref.hash


def close_parts(parts: list[Any]) -> None:
    for part in parts:
        if isinstance(part, mmap.mmap):
            part.close()


# -- writing and reading back ---------------------------------------------------------


def test_commit_then_read_back(session: SessionStore) -> None:
    parts = [b"pickle stream", b"x" * 100, os.urandom(BIG)]
    before = time.time()
    committed = commit(session, parts, tag="first")
    assert committed.generation == 1
    assert session.generations() == [1]

    manifest = session.read_manifest(1)
    assert manifest.generation == 1
    assert manifest.session == KEY
    assert manifest.notebook == KEY
    assert before <= manifest.created <= time.time()
    assert manifest.content == committed.content
    assert manifest.content["tag"] == "first"
    assert manifest.raw["format"] == PLAIN_FORMAT  # no chunked buffer: what older releases read
    assert manifest.raw["hash"] == HASH
    size = sum(map(len, parts))
    assert manifest.blobs == {blob_hash(parts): size}
    assert manifest.size == size

    ref = ref_of(manifest)
    assert ref.parts == tuple(map(len, parts))
    read = session.read_blob(ref)
    try:
        assert [bytes(p) for p in read] == parts
        for part in read[1:]:
            assert not memoryview(part).readonly
        assert isinstance(read[2], mmap.mmap)
    finally:
        close_parts(read)


def test_blob_is_named_by_the_hash_of_its_bytes(session: SessionStore) -> None:
    ref = session.write_blob([b"ab", b"", b"cde"])
    assert ref.hash == blake3.blake3(b"abcde").hexdigest()
    assert ref.hash == blob_hash([b"abcde"])
    assert (ref.size, ref.parts, ref.written) == (5, (2, 0, 3), 5)
    assert blob_path(session, ref).read_bytes() == b"abcde"
    assert [bytes(p) for p in session.read_blob(ref)] == [b"ab", b"", b"cde"]


def test_identical_blob_is_written_once(session: SessionStore) -> None:
    parts = [b"stream", b"buffer" * 1000]
    first = session.write_blob(parts)
    inode = blob_path(session, first).stat().st_ino
    second = session.write_blob([memoryview(b"stream"), bytearray(b"buffer" * 1000)])
    assert first.written == first.size > 0
    assert second.written == 0
    assert second.hash == first.hash
    assert blob_path(session, first).stat().st_ino == inode
    assert os.listdir(session.objects_dir) == [first.hash]


def test_generations_share_blobs(session: SessionStore) -> None:
    shared, other = [b"shared" * 100], [b"other"]
    one = commit(session, shared)
    two = commit(session, shared, other)
    assert set(one.blobs) < set(two.blobs)
    assert len(os.listdir(session.objects_dir)) == 2
    assert session.read_manifest(1).blobs.keys() <= session.read_manifest(2).blobs.keys()


def test_write_atomic_leaves_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_atomic(tmp_path, "target", [b"some bytes", object()])  # type: ignore[list-item]
    assert os.listdir(tmp_path) == []


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    write_atomic(tmp_path, "f", [b"old contents that are long"])
    write_atomic(tmp_path, "f", [b"new", memoryview(b" bytes")])
    assert (tmp_path / "f").read_bytes() == b"new bytes"
    assert os.listdir(tmp_path) == ["f"]


# -- pruning ---------------------------------------------------------------------------


def test_prune_keeps_newest_and_drops_unreferenced_blobs(session: SessionStore) -> None:
    shared = [b"shared by all"]
    manifests = [commit(session, shared, [f"own {i}".encode()]) for i in range(5)]
    own = [ref_of(m, 1) for m in manifests]
    stale = [session.objects_dir / ".tmp-123-deadbeef", session.generations_dir / ".tmp-9-aa"]
    for path in stale:
        path.write_bytes(b"half written")

    removed = session.prune(keep=2).removed

    assert removed == [1, 2, 3]
    assert session.generations() == [4, 5]
    remaining = set(os.listdir(session.objects_dir))
    assert remaining == {blob_hash(shared), own[3].hash, own[4].hash}
    for path in stale:
        assert not path.exists()
    for generation in (4, 5):  # what is kept is still whole
        manifest = session.read_manifest(generation)
        for index in range(2):
            assert session.read_blob(ref_of(manifest, index))


def unreadable_for_now(path: Path) -> Callable[[], None]:
    """Make *path* unreadable to this process; return how to undo it."""
    if os.getuid() == 0:  # root reads any mode: take the file away from us instead
        os.chown(path, 4321, -1)
        return lambda: os.chown(path, 0, -1)
    os.chmod(path, 0)
    return lambda: os.chmod(path, 0o600)


def test_prune_keeps_what_a_temporarily_unreadable_generation_names(
    session: SessionStore,
) -> None:
    commit(session, [b"first"])
    second = commit(session, [b"second"])
    undo = unreadable_for_now(session.manifest_path(2))
    commit(session, [b"third"])
    result = session.prune(keep=1)
    assert 2 in result.kept
    undo()
    assert session.read_blob(ref_of(session.read_manifest(2))) == [b"second"]
    assert second.generation == 2


def test_a_storage_root_of_a_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    store.ensure()
    marker = store.root / "format"
    assert json.loads(marker.read_bytes()) == {"format": 1}
    marker.write_text('{"format": 7}')
    session = store.session(KEY)
    with pytest.raises(NewerFormat, match="upgrade to read it"):
        session.ensure()
    with pytest.raises(NewerFormat, match="upgrade to read it"):
        store.sessions()
    assert marker.read_text() == '{"format": 7}'
    assert not session.path.exists()


# -- permissions ---------------------------------------------------------------------------


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most users have (022), so permissions come from the code, not luck."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_directories_are_0700_and_files_0600(tmp_path: Path, usual_umask: None) -> None:
    """Everything under the storage root is private, created the way the kernel does.

    The kernel goes straight to ``Store(root).session(key)`` and writes;
    nothing calls ``Store.ensure()`` first.
    """
    root = tmp_path / "root"
    session = Store(root).session(KEY)
    with session.locks.locked(timeout=5):
        commit(session, [b"data", b"more"])
    fd, _ = session.locks.register_writer()
    try:
        modes = {
            path.relative_to(tmp_path): stat.S_IMODE(path.stat().st_mode)
            for path in root.rglob("*")
        }
    finally:
        os.close(fd)
    assert any(p.parent.name == "objects" for p in modes)
    assert any(p.parent.name == "writers" for p in modes)
    wrong = {
        str(p): oct(mode)
        for p, mode in modes.items()
        if mode != (0o700 if (tmp_path / p).is_dir() else 0o600)
    }
    assert wrong == {}


def test_store_ensure_makes_root_private(tmp_path: Path, usual_umask: None) -> None:
    store = Store(tmp_path / "a" / "root")
    store.ensure()
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.sessions_dir.stat().st_mode) == 0o700


def test_store_lists_its_sessions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.sessions() == []
    for key in ("/a/x.ipynb", "/b/x.ipynb"):
        s = store.session(key)
        assert s.path.name == session_dirname(key)
        assert s.key == key
        s.ensure()
    assert sorted(s.path for s in store.sessions()) == sorted(
        store.session(k).path for k in ("/a/x.ipynb", "/b/x.ipynb")
    )


# -- what only a directory can hold ------------------------------------------------------


def test_stray_files_are_not_generations(session: SessionStore) -> None:
    commit(session, [b"a"])
    for name in ("notes.json", "0002.json.bak", ".tmp-1-ab", "x0003.json"):
        (session.generations_dir / name).write_text("{}")
    assert session.generations() == [1]


# -- locking -----------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
if sys.argv[2] == "stdin":
    sys.stdin.read()
else:
    time.sleep(float(sys.argv[2]))
"""

REGISTER_WRITER = """
import sys, time
from pathlib import Path
from persistent_kernel.store import SessionStore
fd, path = SessionStore(Path(sys.argv[1])).locks.register_writer()
print(path, flush=True)
if sys.argv[2] == "stdin":
    sys.stdin.read()
else:
    time.sleep(float(sys.argv[2]))
"""


@contextmanager
def child(script: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run *script*; yield it and its first line of output once it has printed it.

    A child told to wait on ``stdin`` exits when the block ends (stdin is closed).
    """
    with subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            yield proc, proc.stdout.readline().strip()
        finally:
            if proc.poll() is None and "stdin" not in args:
                proc.kill()


def test_lock_held_by_another_process_raises_store_busy(session: SessionStore) -> None:
    with child(HOLD_LOCK, str(session.path / "lock"), "stdin") as (proc, line):
        assert line == "held"
        start = time.monotonic()
        with pytest.raises(StoreBusy), session.locks.locked(timeout=0.3):
            pytest.fail("got the lock while another process holds it")
        assert time.monotonic() - start >= 0.3
        assert proc.poll() is None
    with session.locks.locked(timeout=5):  # the child is gone: free again
        pass


def test_lock_is_acquired_once_the_holder_exits(session: SessionStore) -> None:
    with child(HOLD_LOCK, str(session.path / "lock"), "0.5") as (proc, line):
        assert line == "held"
        start = time.monotonic()
        with session.locks.locked(timeout=30):
            waited = time.monotonic() - start
            assert proc.wait(timeout=5) == 0
        assert 0.2 < waited < 30


def test_lock_excludes_a_second_holder_in_this_process(session: SessionStore) -> None:
    with (
        session.locks.locked(timeout=1),
        pytest.raises(StoreBusy),
        session.locks.locked(timeout=0.1),
    ):
        pass


# -- the writer registry ----------------------------------------------------------------


def test_running_writers_sees_a_live_writer(session: SessionStore) -> None:
    with child(REGISTER_WRITER, str(session.path), "stdin") as (_, line):
        path = Path(line)
        assert path.parent == session.writers_dir
        assert path.name.split("-")[0].isdigit()
        assert session.locks.running_writers() == [path]
        waited, alive = session.locks.wait_for_writers(timeout=0.2)
        assert alive == 1
        assert waited >= 0.2
        assert path.exists()


def test_wait_for_writers_returns_when_the_writer_exits(session: SessionStore) -> None:
    """The child exits without withdrawing its announcement; its file is tidied."""
    with child(REGISTER_WRITER, str(session.path), "1.0") as (proc, line):
        path = Path(line)
        assert session.locks.running_writers() == [path]
        waited, alive = session.locks.wait_for_writers(timeout=60)
        assert alive == 0
        assert 0.5 < waited < 60
        assert proc.wait(timeout=5) == 0
    assert not path.exists()
    assert os.listdir(session.writers_dir) == []


def test_dead_writers_registry_file_is_cleaned_up(session: SessionStore) -> None:
    with child(REGISTER_WRITER, str(session.path), "60") as (proc, line):
        path = Path(line)
        proc.kill()
        proc.wait(timeout=5)
        assert path.exists()
        assert session.locks.running_writers() == []
        assert not path.exists()
        assert session.locks.wait_for_writers(timeout=10)[1] == 0


def test_register_and_release_in_process(session: SessionStore) -> None:
    fd, path = session.locks.register_writer()
    assert session.locks.running_writers() == [path]
    session.locks.release_writer(fd, path)
    assert not path.exists()
    assert session.locks.running_writers() == []


def test_registration_survives_a_concurrent_scan(
    session: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starting kernel may scan the registry while a writer registers.

    ``register_writer`` creates its file and only then locks it. A scan in
    that instant (simulated here by running one just before the lock is
    taken) must not mistake the new writer for a dead one and delete it,
    or ``wait_for_writers`` would not wait for that writer.
    """
    real_flock = fcntl.flock
    scans: list[list[Path]] = []

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX and not scans:
            scans.append(session.locks.running_writers())
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    fd, path = session.locks.register_writer()
    try:
        assert scans, "register_writer took no exclusive lock"
        assert path.exists()
        assert session.locks.running_writers() == [path]
    finally:
        session.locks.release_writer(fd, path)
