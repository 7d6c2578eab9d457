"""Checkpoints in a bucket: the object backend and the mirror of a local tier, against a
real S3 server.

The server is moto in server mode on 127.0.0.1 (:mod:`.s3server`), one per
module; each test gets its own bucket. Nothing here starts a kernel (see
``test_objects_kernel.py``): these check the store's promises directly.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from pathlib import Path

import pytest

from persistent_kernel.errors import UntrustedCheckpoint
from persistent_kernel.store import SessionStore, Store, blob_hash
from persistent_kernel.store.objects import (
    GenerationTaken,
    Location,
    MissingExtra,
    ObjectBackend,
)
from persistent_kernel.store.tiers import (
    SECRET_ENV,
    BucketStore,
    Mirror,
    NoSecret,
)
from persistent_kernel.store.where import open_store, registered_scheme

from .helpers import INFO, KEY
from .s3server import CREDENTIALS, S3Server


def tiered(url: str, node: Path) -> Mirror:
    """The session KEY as a kernel on a node whose local data lives under *node* sees it."""
    return BucketStore(url, cache_root=node).mirror(KEY)


def commit(session: SessionStore, payload: bytes, name: str = "x") -> int:
    with session.locks.locked(10):
        ref = session.write_blob([payload])
        content = {
            "variables": {name: {"type": "bytes", "group": 0, "module": None}},
            "groups": [{"parts": [[ref.hash, ref.size]], "size": ref.size, "names": [name]}],
            "skipped": {},
        }
        return session.commit(content, [ref], INFO).generation


def test_urls_are_told_from_paths() -> None:
    assert registered_scheme("s3://bucket/prefix") == "s3" and registered_scheme("gs://b") == "gs"
    assert registered_scheme("/home/a/b") is None
    loc = Location.parse("s3://bkt/a/b/?endpoint_url=http://h:1&region=eu")
    assert (loc.url, loc.prefix, loc.display) == ("s3://bkt", "a/b", "s3://bkt/a/b")
    assert loc.options == {"endpoint": "http://h:1", "region": "eu"}
    local = open_store("/tmp/x")
    assert isinstance(local.session(KEY), SessionStore)
    assert local.local() is local and local.mirror(KEY) is None


def test_a_bucket_s_kernel_writes_to_the_local_tier_its_mirror_pushes(
    bucket_url: str, tmp_path: Path
) -> None:
    store = BucketStore(bucket_url, cache_root=tmp_path / "node")
    local = store.local()
    assert type(local) is Store and local.root == tmp_path / "node" and store.local() is local
    mirror = store.mirror(KEY)
    assert mirror.local.path == local.session(KEY).path
    assert isinstance(mirror.remote.backend, ObjectBackend)
    assert mirror.display == store.display == bucket_url.split("?")[0]
    written = commit(local.session(KEY), b"written where the kernel writes")
    assert mirror.pending() and mirror.push().generation == written
    assert mirror.remote.generations() == [written] and not mirror.pending()


def test_manifest_is_created_only_if_absent(bucket_url: str) -> None:
    store = open_store(bucket_url)
    assert isinstance(store, BucketStore)
    backend = store.session(KEY).backend
    assert isinstance(backend, ObjectBackend)
    backend.write_manifest(1, b"first")
    with pytest.raises(GenerationTaken):
        backend.write_manifest(1, b"second")
    assert backend.read_manifest(1) == b"first"


def test_a_new_node_pulls_what_another_pushed(bucket_url: str, tmp_path: Path) -> None:
    a = tiered(bucket_url, tmp_path / "node-a")
    payload = secrets.token_bytes(3 << 20)
    generation = commit(a.local, payload)
    pushed = a.push(keep=5)
    assert (pushed.generation, pushed.uploaded) == (generation, len(payload))
    assert a.push().uploaded == 0  # nothing new: nothing sent

    b = tiered(bucket_url, tmp_path / "node-b")
    assert b.local.generations() == []
    pulled = b.pull()
    assert (pulled.pulled, pulled.downloaded, pulled.problems) == (generation, len(payload), [])
    manifest = b.local.latest()[0]
    (ref,) = [r for r in manifest.content["groups"][0]["parts"]]
    from persistent_kernel.store import BlobRef

    parts = b.local.read_blob(BlobRef(ref[0], ref[1], (ref[1],)), hash=manifest.hash)
    assert bytes(parts[0]) == payload
    assert b.pull().current == generation  # a second start downloads nothing


def test_an_unuploaded_generation_is_kept_and_pushed_later(bucket_url: str, tmp_path: Path) -> None:
    a = tiered(bucket_url, tmp_path / "node-a")
    commit(a.local, b"one")
    a.push()
    newer = commit(a.local, b"two")  # its upload never happened (the bucket was down)
    assert a.pending()
    pulled = a.pull()
    assert pulled.ahead == newer and pulled.pulled is None
    assert a.local.generations()[-1] == newer
    assert a.push().generation == newer and not a.pending()


def test_racing_writers_never_share_a_generation(bucket_url: str, tmp_path: Path) -> None:
    a, b = tiered(bucket_url, tmp_path / "node-a"), tiered(bucket_url, tmp_path / "node-b")
    commit(a.local, b"from a" * 1000)
    commit(b.local, b"from b" * 1000)  # both made generation 1, each on its own node
    results = {}

    def push(name: str, mirror: Mirror) -> None:
        results[name] = mirror.push()

    threads = [threading.Thread(target=push, args=item) for item in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.generation for r in results.values()) == [1, 2]
    assert sum(r.renumbered for r in results.values()) == 1
    remote = a.remote
    for generation in remote.generations():
        manifest = remote.read_manifest(generation)  # signed, whole
        assert all(remote.has_blob(h, n) for h, n in manifest.blobs.items())
    c = tiered(bucket_url, tmp_path / "node-c")
    assert c.pull().pulled == 2


def test_planted_objects_are_passed_over(bucket_url: str, tmp_path: Path) -> None:
    a = tiered(bucket_url, tmp_path / "node-a")
    good = commit(a.local, b"mine")
    a.push()
    remote = a.remote.backend
    assert isinstance(remote, ObjectBackend)
    # Someone who can write the bucket plants a newer generation: unsigned, and
    # one signed with another secret, both naming a blob of their own.
    evil = b"cos\nsystem\n(S'touch /tmp/pwned'\ntR."
    remote.write_blob(blob_hash([evil]), [evil])
    raw = json.loads(remote.read_manifest(good))
    raw["blobs"] = {blob_hash([evil]): len(evil)}
    raw["generation"] = good + 1
    raw.pop("signature")
    remote.write_manifest(good + 1, json.dumps(raw).encode())
    raw["generation"] = good + 2
    raw["signature"] = "hmac-sha256:" + "0" * 64
    remote.write_manifest(good + 2, json.dumps(raw).encode())

    b = tiered(bucket_url, tmp_path / "node-b")
    pulled = b.pull()
    assert pulled.pulled == good
    # One line for both, and the unsigned one, provably not the user's, is gone.
    assert pulled.problems == [
        "passed over 2 manifests that are not this user's (not signed with this user's "
        "checkpoint secret); none was unpickled, and 1 unsigned one deleted"
    ]
    assert a.remote.generations() == [good, good + 2]
    assert b.local.generations() == [good]
    assert not (b.local.objects_dir / blob_hash([evil])).exists()


def test_a_swapped_blob_is_refused_on_download(bucket_url: str, tmp_path: Path) -> None:
    a = tiered(bucket_url, tmp_path / "node-a")
    commit(a.local, b"genuine bytes")
    a.push()
    remote = a.remote.backend
    assert isinstance(remote, ObjectBackend)
    (name,) = a.local.latest()[0].blobs
    remote.write_blob(name, [b"planted bytes"])  # same size, other content
    b = tiered(bucket_url, tmp_path / "node-b")
    pulled = b.pull()
    assert pulled.pulled is None
    assert "does not match its content address" in pulled.problems[0]
    assert b.local.generations() == [] and not (b.local.objects_dir / name).exists()


def test_no_secret_is_a_clear_error_and_nothing_unsigned(
    bucket_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    a = tiered(bucket_url, tmp_path / "node-a")
    with pytest.raises(NoSecret, match="PERSISTENT_KERNEL_SECRET"):
        commit(a.local, b"x")
    assert a.local.generations() == []
    with pytest.raises(UntrustedCheckpoint):
        raise NoSecret("is an untrusted checkpoint for readers")


def test_an_unreachable_bucket_is_reported_not_raised(
    s3server: S3Server, jupyter_env: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(SECRET_ENV, secrets.token_hex(32))
    for var, value in CREDENTIALS.items():
        monkeypatch.setenv(var, value)
    dead = S3Server()  # a port nobody listens on
    url = f"s3://gone/p?endpoint={dead.url}"
    a = tiered(url, tmp_path / "node")
    commit(a.local, b"local only")
    pulled = a.pull()
    assert pulled.unreachable and pulled.pulled is None
    with pytest.raises(OSError):
        a.push()
    assert a.pending()


def test_without_obstore_the_local_copy_serves_and_the_fix_is_named(
    bucket_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = tiered(bucket_url, tmp_path / "node-a")
    commit(a.local, b"local")
    for module in ("obstore", "obstore.store"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the [s3] extra were missing
    b = tiered(bucket_url, tmp_path / "node-a")
    pulled = b.pull()
    assert pulled.unreachable is not None
    assert "pip install 'persistent-kernel[s3]'" in pulled.unreachable
    assert b.local.latest()[0].generation == 1  # the local tier still serves
    with pytest.raises(MissingExtra, match=r"persistent-kernel\[s3\]"):
        b.push()


def test_the_bucket_is_pruned_only_when_asked(bucket_url: str, tmp_path: Path) -> None:
    a = tiered(bucket_url, tmp_path / "node-a")
    for payload in (b"one", b"two", b"three"):
        commit(a.local, payload)
        a.push(keep=0)  # a kernel that could not see the bucket at start never prunes it
    assert a.remote.generations() == [1, 2, 3]
    commit(a.local, b"four")
    a.push(keep=2)
    assert a.remote.generations() == [3, 4]


def test_chunked_arrays_travel_through_the_bucket(bucket_url: str, tmp_path: Path) -> None:
    """Large arrays are stored as chunks: pushed and pulled whole, a one-element
    change uploads one chunk, and the bucket's copy reads back in place."""
    import numpy as np

    from persistent_kernel.checkpoint import write_checkpoint
    from persistent_kernel.restore import restore_checkpoint
    from persistent_kernel.store import chunks

    a = tiered(bucket_url, tmp_path / "node-a")
    array = np.random.default_rng(3).random(3 * chunks.CHUNK // 8 + 5)
    assert write_checkpoint(a.local, {"x": array}, {}, INFO, keep=5).ok
    assert a.push(keep=5).uploaded >= array.nbytes
    array[7] = -1.0
    assert write_checkpoint(a.local, {"x": array}, {}, INFO, keep=5).ok
    assert a.push(keep=5).uploaded < chunks.CHUNK + (1 << 20)

    b = tiered(bucket_url, tmp_path / "node-b")
    assert b.pull().problems == []
    for session in (b.local, a.remote):  # the local copy, and the bucket read directly
        into: dict[str, object] = {}
        report = restore_checkpoint(session, into)
        assert report.problems == []
        np.testing.assert_array_equal(into["x"], array)


def test_restore_from_reads_another_notebook_s_checkpoints_in_the_bucket(
    bucket_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``%persist restore --from`` looks in the store ``checkpoint_dir`` names, a bucket
    too (it once looked for a local directory named like the URL, and found nothing)."""
    from types import SimpleNamespace

    from persistent_kernel.checkpoint import write_checkpoint
    from persistent_kernel.magics import PersistMagics

    other = tiered(bucket_url, tmp_path / "other-node")
    assert write_checkpoint(other.local, {"x": 41, "y": "from the other"}, {}, INFO, keep=5).ok
    assert other.push().generation == 1

    carried: list[object] = []
    checkpointer = SimpleNamespace(
        target=object(), session=None, autosaver=SimpleNamespace(carry=carried.append)
    )
    kernel = SimpleNamespace(checkpoint_dir=bucket_url, checkpointer=checkpointer)
    shell = SimpleNamespace(user_ns={})
    magics = PersistMagics(shell=shell, kernel=kernel)  # type: ignore[arg-type]
    magics.persist(f"restore x --from '{KEY}'")
    assert shell.user_ns == {"x": 41}
    assert "Restored 1 variable(s) from generation 1" in capsys.readouterr().out
    shell.user_ns.clear()  # the order the README writes: the option first, then the names
    magics.persist(f"restore --from '{KEY}' 1 y")
    assert shell.user_ns == {"y": "from the other"}
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=r"no checkpoints of 'elsewhere\.ipynb'"):
        magics.persist("restore --from elsewhere.ipynb")


def test_a_renamed_notebooks_state_is_uploaded_under_its_new_name(
    bucket_url: str, tmp_path: Path
) -> None:
    """The server follows a rename on this machine's disk: the bucket has nothing under
    the new name, which a start must not take for a removal (it would clear the copy
    here), and the next push sends it all."""
    from persistent_kernel.store import follow

    bucket = BucketStore(bucket_url, cache_root=tmp_path / "node")
    old = bucket.mirror(KEY)
    payload = secrets.token_bytes(1 << 20)
    commit(old.local, payload)
    old.push(keep=5)
    new_key = KEY.replace(".ipynb", "-renamed.ipynb")
    assert follow.renamed(bucket.local(), KEY, new_key) == [follow.Move(KEY, new_key)]
    new = bucket.mirror(new_key)
    pulled = new.pull()
    assert pulled.ahead == 1 and new.local.generations() == [1]  # kept, to be pushed
    assert new.pending()
    assert new.push(keep=5).uploaded == len(payload)
    again = BucketStore(bucket_url, cache_root=tmp_path / "node-b").mirror(new_key)
    assert again.pull().pulled == 1
