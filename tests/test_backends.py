"""One conformance suite, every backend: the local disk, S3 (moto) and memory.

Each test runs once per backend (the ``kind`` parameter), as restic's
``internal/backend/test`` suite does: first the :class:`Backend` contract
(manifests, blobs, files, listing, deletion, quarantine, clear, existence,
usage, renames, locks), then the format on top of it (a :class:`SessionStore`
commits, reads, walks to the newest readable generation and prunes the same
way whatever holds the bytes), then damage: every kind of damage that can
happen to a backend's bytes is detected, and a prune fails closed around it.

Damage is done through the backend's own methods (a blob or manifest
replaced by other bytes, or deleted), which every backend has; damage only
the local disk can suffer (permissions, symlinks, stray files in a
directory) is tested in ``test_store.py``.

On S3, blobs younger than :data:`.objects.SETTLE` are never listed (so that a
prune never deletes a blob another kernel has just uploaded); the suite sets
it below zero so that its prunes see every blob, as they would an hour later.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import xxhash

from persistent_kernel.errors import (
    CorruptCheckpoint,
    NewerFormat,
    NoCheckpoint,
    RenameUnsupported,
    StoreBusy,
    UnreadableSettings,
)
from persistent_kernel.store import (
    HASH,
    PLAIN_FORMAT,
    BlobRef,
    Manifest,
    SessionStore,
    Store,
    blob_hash,
    rename,
)
from persistent_kernel.store.local import LocalBackend
from persistent_kernel.store.sessions import hasher
from persistent_kernel.store.trust import Signer
from persistent_kernel.store.where import find_session, open_store

from .helpers import KEY, commit_blobs, future_generation, ref_of

KINDS = ["local", "s3", "memory"]
#: Backends that set a damaged blob aside (object storage cannot rename; see
#: ObjectBackend.quarantine_blob).
SETS_ASIDE = {"local", "memory"}
#: Backends that can move a session to a new key at once.
RENAMES = {"local", "memory"}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """An empty store of *kind*."""
    if kind == "local":
        yield open_store(tmp_path / "store")
    elif kind == "s3":
        from persistent_kernel.store import objects
        from persistent_kernel.store.tiers import BucketStore

        url = request.getfixturevalue("bucket_url")
        monkeypatch.setattr(objects, "SETTLE", -3600.0)  # see the module docstring
        yield BucketStore(url, cache_root=tmp_path / "cache")
    else:
        from persistent_kernel.store import memory

        name = f"suite-{secrets.token_hex(4)}"
        yield open_store(f"memory://{name}")
        memory.forget(name)


@pytest.fixture
def fresh(store: Store) -> SessionStore:
    """A session with nothing stored, not even made (nothing ensured)."""
    return store.session(KEY)


@pytest.fixture
def session(fresh: SessionStore) -> SessionStore:
    fresh.ensure()
    return fresh


def commit(session: SessionStore, *blobs: list[bytes], tag: str = "") -> Manifest:
    """:func:`.helpers.commit_blobs` under the session's lock, as a writer commits."""
    with session.locks.locked(10):
        return commit_blobs(session, *blobs, tag=tag)


def replace_manifest(session: SessionStore, generation: int, data: bytes) -> None:
    """Put *data* where manifest *generation* is (a bucket creates manifests only if
    absent: the old one goes first)."""
    session.backend.delete_manifest(generation)
    session.backend.write_manifest(generation, data)


# -- finding a backend by scheme ----------------------------------------------------------


def test_a_location_opens_the_store_its_scheme_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persistent_kernel.store import memory, where

    assert type(open_store(tmp_path)) is Store and where.registered_scheme(tmp_path) is None
    assert where.registered_scheme("S3://bucket/p") == "s3"  # schemes are case-insensitive
    assert isinstance(open_store("memory://registry-test"), memory.MemoryStore)
    with pytest.raises(ValueError, match="names no store"):
        open_store("memory://")
    opened: list[str] = []

    def factory(location: str) -> Store:
        opened.append(location)
        return open_store("memory://registry-test")

    monkeypatch.setattr(where, "_FACTORIES", dict(where._FACTORIES))  # undone after the test
    where.register_scheme(["Test-A", "test-b"], factory)
    assert isinstance(open_store("test-a://x/y"), memory.MemoryStore)
    assert isinstance(open_store("TEST-B://z"), memory.MemoryStore)
    assert opened == ["test-a://x/y", "TEST-B://z"]
    memory.forget("registry-test")


# -- the Backend contract ----------------------------------------------------------------


def test_manifests_are_numbered_listed_read_and_deleted(session: SessionStore) -> None:
    backend = session.backend
    assert backend.generations() == []
    backend.write_manifest(3, b'{"three": 3}')
    backend.write_manifest(1, b'{"one": 1}')
    assert backend.generations() == [1, 3]
    assert backend.read_manifest(3) == b'{"three": 3}'
    backend.delete_manifest(3)
    backend.delete_manifest(3)  # already gone: no error
    assert backend.generations() == [1]
    with pytest.raises(NoCheckpoint):
        backend.read_manifest(3)


def test_blobs_are_stored_whole_and_read_by_parts(session: SessionStore) -> None:
    backend = session.backend
    name = blob_hash([b"abcdef"])
    backend.write_blob(name, [b"ab", memoryview(b"cd"), bytearray(b"ef")])
    assert backend.blob_size(name) == 6
    assert bytes(backend.read_blob_bytes(name)) == b"abcdef"
    digest, seen = hasher(), []
    parts = backend.read_blob(name, [1, 0, 5], digest, seen.append)
    assert [bytes(p) for p in parts] == [b"a", b"", b"bcdef"]
    assert digest.hexdigest() == name and sum(seen) == 6
    assert not memoryview(parts[2]).readonly  # restored arrays are writable
    into = bytearray(6)
    digest = hasher()
    backend.read_blob_into(name, memoryview(into), digest)
    assert into == b"abcdef" and digest.hexdigest() == name


def test_a_blob_hashed_as_it_is_written_is_named_by_its_bytes(session: SessionStore) -> None:
    backend = session.backend
    data = bytes(range(256)) * 4096  # 1 MiB: several pieces where the disk hashes as it writes
    asked: list[str] = []

    def stored(name: str) -> bool:
        asked.append(name)
        return False

    parts = [data[:1000], memoryview(data)[1000:]]
    name, known = backend.write_blob_hashing(parts, hasher(), stored)
    assert (name, known) == (blob_hash([data]), False) and asked == [name]
    assert bytes(backend.read_blob_bytes(name)) == data
    # Already stored: what was written for nothing is dropped, temp file and all.
    assert backend.write_blob_hashing([data], hasher(), lambda n: True) == (name, True)
    assert backend.blobs() == [name]
    if isinstance(backend, LocalBackend):
        assert os.listdir(backend.objects_dir) == [name]


def test_a_missing_blob_is_none_then_corrupt(session: SessionStore) -> None:
    backend = session.backend
    assert backend.blob_size("0" * 64) is None
    with pytest.raises(CorruptCheckpoint, match="0" * 64):
        backend.read_blob("0" * 64, [3], hasher())
    with pytest.raises(OSError):
        backend.read_blob_bytes("0" * 64)


def test_blobs_are_listed_and_deleted(session: SessionStore) -> None:
    backend = session.backend
    names = {blob_hash([data]): data for data in (b"one", b"two", b"three")}
    for name, data in names.items():
        backend.write_blob(name, [data])
    assert sorted(backend.blobs()) == sorted(names)
    first = next(iter(names))
    backend.delete_blob(first)
    backend.delete_blob(first)  # already gone: no error
    assert sorted(backend.blobs()) == sorted(set(names) - {first})
    assert backend.blob_size(first) is None


def test_a_quarantined_blob_is_written_afresh(kind: str, session: SessionStore) -> None:
    backend = session.backend
    name = blob_hash([b"right"])
    backend.write_blob(name, [b"wrong"])
    backend.quarantine_blob(name)
    if kind in SETS_ASIDE:
        assert backend.blob_size(name) is None and name not in backend.blobs()
    backend.write_blob(name, [b"right"])
    assert bytes(backend.read_blob_bytes(name)) == b"right"
    backend.sweep_temporaries()
    assert bytes(backend.read_blob_bytes(name)) == b"right"


def test_session_files_are_replaced_whole_and_deleted(session: SessionStore) -> None:
    backend = session.backend
    with pytest.raises(FileNotFoundError):
        backend.read_file("settings.json")
    backend.write_file("settings.json", b"{}")
    backend.write_file("settings.json", b'{"exclude": ["x"]}', sync=False)
    assert backend.read_file("settings.json") == b'{"exclude": ["x"]}'
    backend.delete_file("settings.json")
    backend.delete_file("settings.json")  # already gone: no error
    with pytest.raises(FileNotFoundError):
        backend.read_file("settings.json")


def test_a_session_exists_once_written_and_not_after_removal(fresh: SessionStore) -> None:
    assert not fresh.backend.exists()
    fresh.ensure()
    fresh.backend.write_file("settings.json", b"{}")
    assert fresh.backend.exists()
    fresh.backend.remove()
    assert not fresh.backend.exists()


def test_clear_keeps_settings_and_drops_the_rest(session: SessionStore) -> None:
    commit(session, [b"x" * 1000])
    session.write_settings({"exclude": ["secret"]})
    session.begin_loading("f" * 64)
    session.backend.write_file("poisoned", b"[]")
    session.clear()
    assert session.generations() == [] and session.backend.blobs() == []
    assert session.read_settings() == {"exclude": ["secret"]}
    for marker in ("loading", "poisoned"):
        with pytest.raises(FileNotFoundError):
            session.backend.read_file(marker)


def test_clear_and_disk_usage(session: SessionStore) -> None:
    """Blobs count once, manifests count, and a cleared session takes nothing."""
    commit(session, [b"x" * 1000])
    commit(session, [b"x" * 1000])  # same blob: counted once
    manifests = sum(len(session.backend.read_manifest(g)) for g in session.generations())
    assert session.disk_usage() == 1000 + manifests
    session.clear()
    assert session.generations() == []
    assert session.disk_usage() == 0
    with pytest.raises(NoCheckpoint):
        session.latest()


def test_sweeping_keeps_what_is_stored(session: SessionStore) -> None:
    manifest = commit(session, [b"kept"])
    session.backend.sweep_temporaries()
    assert session.generations() == [1] and session.read_blob(ref_of(manifest)) == [b"kept"]


def test_a_session_is_adopted_under_a_new_key_where_it_can_be(
    kind: str, store: Store, session: SessionStore
) -> None:
    commit(session, [b"state of the old name"])
    session.write_settings({"exclude": ["token"]})
    new_key = "/home/user/renamed.ipynb"
    store.session(new_key).write_settings({"exclude": ["password"]})
    if kind not in RENAMES:
        with pytest.raises(RenameUnsupported, match="local disk only"):
            store.adopt(KEY, new_key)
        assert session.generations() == [1]  # nothing touched, on either side
        assert store.session(new_key).read_settings() == {"exclude": ["password"]}
        return
    moved = store.adopt(KEY, new_key)
    assert not store.session(KEY).backend.exists()
    assert moved.latest()[0].session == KEY  # signed as written
    assert moved.backend.read_file(rename.KEY_FILE) == new_key.encode()
    assert rename.adopted_key(moved) == new_key
    assert set(moved.read_settings()["exclude"]) == {"token", "password"}
    commit(store.session("/other.ipynb"), [b"x"])
    with pytest.raises(FileExistsError):  # the new key has checkpoints now
        store.adopt("/other.ipynb", new_key)
    assert store.session("/other.ipynb").generations() == [1]


def test_the_lock_excludes_a_second_holder(session: SessionStore) -> None:
    with session.locks.locked(timeout=1), pytest.raises(StoreBusy), session.locks.locked(0.1):
        pass
    with session.locks.locked(timeout=1):  # released: free again
        pass


def test_writers_are_registered_until_released(session: SessionStore) -> None:
    locks = session.locks
    assert locks.running_writers() == []
    fd, path = locks.register_writer()
    try:
        assert locks.running_writers() == [path]
        waited, alive = locks.wait_for_writers(timeout=0.2)
        assert alive == 1 and waited >= 0.2
    finally:
        locks.release_writer(fd, path)
    assert locks.running_writers() == []
    assert locks.wait_for_writers(timeout=10)[1] == 0


# -- the format on top of each backend ----------------------------------------------------


def test_commit_then_read_back(session: SessionStore) -> None:
    parts = [b"pickle stream", b"x" * 100, secrets.token_bytes(1 << 20)]
    committed = commit(session, parts, tag="first")
    assert (committed.generation, session.generations()) == (1, [1])
    manifest = session.read_manifest(1)
    assert (manifest.session, manifest.notebook) == (KEY, KEY)
    assert manifest.content == committed.content and manifest.content["tag"] == "first"
    assert (manifest.raw["format"], manifest.raw["hash"]) == (PLAIN_FORMAT, HASH)
    assert manifest.blobs == {blob_hash(parts): sum(map(len, parts))}
    read = session.read_blob(ref_of(manifest))
    assert [bytes(p) for p in read] == parts
    assert all(not memoryview(p).readonly for p in read[1:])


def test_generations_are_numbered_in_order(session: SessionStore) -> None:
    for i in range(3):
        assert commit(session, [f"g{i}".encode()]).generation == i + 1
    assert session.generations() == [1, 2, 3]
    manifest, problems = session.latest()
    assert (manifest.generation, problems) == (3, [])


def test_an_identical_blob_is_written_once(session: SessionStore) -> None:
    first = session.write_blob([b"stream", b"buffer" * 1000])
    second = session.write_blob([memoryview(b"stream"), bytearray(b"buffer" * 1000)])
    assert first.written == first.size > 0 and second.written == 0
    assert second.hash == first.hash and session.backend.blobs() == [first.hash]


def test_newest_passes_over_what_cannot_be_loaded(session: SessionStore) -> None:
    commit(session, [b"old"], tag="good")
    commit(session, [b"new"], tag="bad")

    def attempt(manifest: Manifest) -> str:
        if manifest.content["tag"] == "bad":
            raise CorruptCheckpoint("its data cannot be read")
        return str(manifest.content["tag"])

    problems: list[str] = []
    manifest, tag = session.newest(attempt, problems)
    assert (manifest.generation, tag) == (1, "good")
    assert problems == ["generation 2 was passed over: its data cannot be read"]


def test_settings_and_crash_markers(session: SessionStore) -> None:
    assert session.read_settings() == {}
    session.write_settings({"exclude": ["a"]})
    assert session.read_settings() == {"exclude": ["a"]}
    session.backend.write_file("settings.json", b"[not an object")
    with pytest.raises(UnreadableSettings):
        session.read_settings()
    session.begin_loading("b" * 64)  # the kernel dies while unpickling it...
    assert session.poisoned() == {"b" * 64}  # ...and the next start leaves it alone
    assert session.poisoned() == {"b" * 64}
    session.begin_loading("c" * 64)
    session.end_loading()
    assert session.poisoned() == {"b" * 64}


def test_prune_keeps_newest_and_drops_unreferenced_blobs(session: SessionStore) -> None:
    shared = [b"shared by all"]
    manifests = [commit(session, shared, [f"own {i}".encode()]) for i in range(5)]
    own = [ref_of(m, 1) for m in manifests]
    assert session.prune(keep=2).removed == [1, 2, 3]
    assert session.generations() == [4, 5]
    assert set(session.backend.blobs()) == {blob_hash(shared), own[3].hash, own[4].hash}
    for generation in (4, 5):  # what is kept is still whole
        manifest = session.read_manifest(generation)
        for index in range(2):
            assert session.read_blob(ref_of(manifest, index))


def test_prune_always_keeps_the_newest(session: SessionStore) -> None:
    for i in range(3):
        commit(session, [str(i).encode()])
    assert session.prune(keep=0).removed == [1, 2]
    assert session.generations() == [3]
    assert len(session.backend.blobs()) == 1


def test_prune_with_room_to_spare_removes_nothing(session: SessionStore) -> None:
    commit(session, [b"a"])
    commit(session, [b"b"])
    assert session.prune(keep=5).removed == []
    assert session.generations() == [1, 2]
    assert len(session.backend.blobs()) == 2


def test_the_store_lists_finds_and_removes_its_sessions(store: Store) -> None:
    assert store.sessions() == []
    for key in ("/a/x.ipynb", "/b/x.ipynb"):
        commit(store.session(key), [key.encode()])
    assert sorted(s.path.name for s in store.sessions()) == sorted(
        store.session(k).path.name for k in ("/a/x.ipynb", "/b/x.ipynb")
    )
    found = find_session(store, "/a/x.ipynb", cwd="/")
    assert found.path.name == store.session("/a/x.ipynb").path.name
    assert find_session(store, found.path.name).generations() == [1]  # by directory name
    with pytest.raises(NoCheckpoint, match=r"no checkpoints of /c/x\.ipynb"):
        find_session(store, "/c/x.ipynb", cwd="/")
    found.remove()
    assert [s.path.name for s in store.sessions()] == [store.session("/b/x.ipynb").path.name]


def test_no_checkpoint(store: Store, session: SessionStore) -> None:
    with pytest.raises(NoCheckpoint):
        session.latest()
    with pytest.raises(NoCheckpoint):
        session.read_manifest(1)
    assert store.session("nowhere").generations() == []


# -- damage --------------------------------------------------------------------------------

#: What a failing disk, a cut-short copy or a careless hand does to a blob (None: deleted).
BLOB_DAMAGE: dict[str, Callable[[bytes], bytes | None]] = {
    "flipped bit": lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 1]) + b[len(b) // 2 + 1 :],
    "truncated": lambda b: b[:-1],
    "extended": lambda b: b + b"\0",
    "missing": lambda b: None,
}


def damage_blob(session: SessionStore, name: str, how: Callable[[bytes], bytes | None]) -> None:
    data = how(bytes(session.backend.read_blob_bytes(name)))
    session.backend.delete_blob(name)
    if data is not None:
        session.backend.write_blob(name, [data])


@pytest.mark.parametrize("damage", BLOB_DAMAGE.values(), ids=BLOB_DAMAGE.keys())
def test_damaged_blob_is_detected(
    session: SessionStore, damage: Callable[[bytes], bytes | None]
) -> None:
    manifest = commit(session, [b"stream" * 50, b"buffer" * 50])
    ref = ref_of(manifest)
    damage_blob(session, ref.hash, damage)
    with pytest.raises(CorruptCheckpoint, match=ref.hash):
        session.read_blob(ref)


def test_blob_whose_parts_do_not_add_up_is_corrupt(session: SessionStore) -> None:
    ref = session.write_blob([b"abc", b"def"])
    with pytest.raises(CorruptCheckpoint):
        session.read_blob(BlobRef(ref.hash, ref.size, (2, 2)))


def resigned(raw: dict[str, Any], signer: Signer) -> bytes:
    """*raw*, validly signed, as a writer with the user's secret would write it (e.g. a
    newer version of the package)."""
    raw["signature"] = signer.sign(raw)
    return json.dumps(raw).encode()


def set_field(field: str, value: Any) -> Callable[[bytes, Signer], bytes]:
    def rewrite(data: bytes, signer: Signer) -> bytes:
        raw = json.loads(data)
        raw[field] = value
        return resigned(raw, signer)

    return rewrite


def drop_field(field: str) -> Callable[[bytes, Signer], bytes]:
    def rewrite(data: bytes, signer: Signer) -> bytes:
        raw = json.loads(data)
        del raw[field]
        return resigned(raw, signer)

    return rewrite


MANIFEST_DAMAGE: dict[str, Callable[[bytes, Signer], bytes]] = {
    "garbage": lambda d, s: b"\x00\x9f\xff not json \xfe\x01",
    "truncated": lambda d, s: d[: len(d) // 2],
    "empty": lambda d, s: b"",
    "not an object": lambda d, s: b"[1, 2, 3]",
    "unknown format": set_field("format", "one"),
    "format zero": set_field("format", 0),
    "no format": drop_field("format"),
    "unknown hash": set_field("hash", "md5"),
    "wrong generation": set_field("generation", 7),
    "blobs not a dict": set_field("blobs", ["abc"]),
    "blob size not int": set_field("blobs", {"abc": "12"}),
    "no content": drop_field("content"),
    "no session": drop_field("session"),
}


def damage_manifest(
    session: SessionStore, generation: int, how: Callable[[bytes, Signer], bytes]
) -> None:
    data = how(session.backend.read_manifest(generation), session.signer)
    replace_manifest(session, generation, data)


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE.values(), ids=MANIFEST_DAMAGE.keys())
def test_damaged_manifest_is_detected(
    session: SessionStore, damage: Callable[[bytes, Signer], bytes]
) -> None:
    commit(session, [b"x"])
    damage_manifest(session, 1, damage)
    with pytest.raises(CorruptCheckpoint):
        session.read_manifest(1)


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE.values(), ids=MANIFEST_DAMAGE.keys())
def test_latest_falls_back_past_a_damaged_manifest(
    session: SessionStore, damage: Callable[[bytes, Signer], bytes]
) -> None:
    commit(session, [b"old"], tag="good")
    commit(session, [b"new"], tag="bad")
    damage_manifest(session, 2, damage)
    manifest, problems = session.latest()
    assert manifest.generation == 1
    assert manifest.content["tag"] == "good"
    assert len(problems) == 1
    assert problems[0].startswith("generation 2")


def test_latest_with_every_manifest_damaged(session: SessionStore) -> None:
    commit(session, [b"a"])
    commit(session, [b"b"])
    for generation in (1, 2):
        replace_manifest(session, generation, b"{")
    with pytest.raises(NoCheckpoint, match=r"generation 2.*generation 1"):
        session.latest()


def test_a_newer_format_is_reported_as_such_never_as_damage(session: SessionStore) -> None:
    commit(session, [b"mine"])
    generation, _ = future_generation(session, b"theirs")
    with pytest.raises(NewerFormat, match=r"newer persistent-kernel.*upgrade to read it"):
        session.read_manifest(generation)
    manifest, problems = session.latest()
    assert manifest.generation == 1
    assert "newer persistent-kernel" in problems[0] and "damage" not in problems[0]


@pytest.mark.parametrize("keep", [1, 10])
def test_prune_leaves_a_newer_release_s_generation_and_its_data(
    session: SessionStore, keep: int
) -> None:
    """Two releases share the storage root: an older one must not delete the newer one's data."""
    commit(session, [b"older"])
    generation, theirs = future_generation(session, b"written by a newer release")
    commit(session, [b"this release"], tag="after")
    result = session.prune(keep=keep)
    assert session.backend.blob_size(theirs) is not None
    assert generation in session.generations()
    assert generation not in result.removed
    assert "newer persistent-kernel" in result.kept[generation]
    assert any(f"generation {generation} was kept" in note for note in result.notes())


def test_prune_counts_only_verified_generations_toward_keep(session: SessionStore) -> None:
    commit(session, [b"one"])
    commit(session, [b"two"])
    future_generation(session, b"newer")
    commit(session, [b"four"])
    assert session.prune(keep=2).removed == [1]
    assert session.generations() == [2, 3, 4]


def test_prune_deletes_no_blob_while_a_manifest_cannot_be_parsed(session: SessionStore) -> None:
    commit(session, [b"first"])
    commit(session, [b"second"])
    session.backend.write_manifest(3, b"{not json")
    result = session.prune(keep=1)
    assert result.removed == [1]
    assert len(session.backend.blobs()) == 2  # the first's blob may be named by 3
    assert result.blobs_kept is not None and "cannot be read" in result.blobs_kept


def test_new_blobs_are_named_by_blake3_so_a_signed_manifest_vouches_for_every_byte(
    session: SessionStore,
) -> None:
    manifest = commit(session, [b"some state"])
    assert manifest.raw["format"] == 2 and manifest.raw["hash"] == "blake3"
    (name,) = manifest.blobs
    assert name == blake3.blake3(b"some state").hexdigest() and len(name) == 64


def test_a_format_2_manifest_checks_its_blobs_with_blake3_only(session: SessionStore) -> None:
    """A name of another hash in a format-2 manifest is not checked with that hash."""
    data = b"planted next to a signed manifest"
    weak = xxhash.xxh3_128(data).hexdigest()
    session.backend.write_blob(weak, [data])
    ref = BlobRef(weak, len(data), (len(data),))
    with pytest.raises(CorruptCheckpoint, match="does not match its hash"):
        session.read_blob(ref, hash="blake3")
    session.backend.write_blob(weak, [data])  # set aside as damaged (where it can be): put back
    assert session.read_blob(BlobRef(weak, len(data), (len(data),)), hash="xxh3_128") == [data]
