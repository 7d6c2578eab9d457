"""Only our own checkpoints are unpickled: planted, edited, foreign or exposed ones never are."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.errors import UntrustedCheckpoint
from persistent_kernel.restore import RestoreReport, restore_checkpoint
from persistent_kernel.store import FORMAT, HASH, SessionStore, Store, blob_hash, write_atomic
from persistent_kernel.trust import Signer

from .helpers import INFO, KEY


class Planted:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def restore(session: SessionStore) -> tuple[dict[str, Any], RestoreReport]:
    into: dict[str, Any] = {}
    return into, restore_checkpoint(session, into)


def plant(session: SessionStore, marker: Path, signer: Signer | None) -> None:
    """Write a complete generation whose payload runs code, as an attacker would:
    a manifest just like ours, signed with *signer* (someone else's) or not at all."""
    session.ensure()
    data = pickle.dumps({"evil": Planted(marker)}, protocol=5)
    digest = blob_hash([data])
    write_atomic(session.objects_dir, digest, [data])
    generation = (session.generations() or [0])[-1] + 1
    group = {"parts": [[digest, len(data)]], "size": len(data), "pickler": "pickle"}
    raw: dict[str, Any] = {
        "format": FORMAT,
        "hash": HASH,
        "generation": generation,
        "created": 1.0,
        "session": KEY,
        "blobs": {digest: len(data)},
        "content": {
            "variables": {"evil": {"type": "x", "group": 0, "module": None}},
            "groups": [{**group, "names": ["evil"]}],
            "skipped": {},
            "notes": [],
        },
    }
    if signer is not None:
        raw["signature"] = signer.sign(raw)
    write_atomic(session.generations_dir, f"{generation:08d}.json", [json.dumps(raw).encode()])


def test_planted_checkpoint_without_any_secret_is_never_unpickled(
    session: SessionStore, marker: Path
) -> None:
    plant(session, marker, signer=None)
    into, report = restore(session)
    assert not marker.exists()
    assert into == {} and report.generation is None
    assert "not signed" in report.problems[0] and "never unpickled" in report.problems[0]


def test_planted_checkpoint_signed_with_another_secret(
    session: SessionStore, marker: Path, tmp_path: Path
) -> None:
    write_checkpoint(session, {"mine": 1}, {}, INFO, keep=5)
    plant(session, marker, signer=Signer(tmp_path / "attacker"))
    into, report = restore(session)
    assert not marker.exists()
    # the planted newest generation is passed over for the user's own
    assert into == {"mine": 1} and report.generation == 1
    assert "not signed with your secret" in report.problems[0]


def test_edited_manifest_is_refused(session: SessionStore, marker: Path) -> None:
    """Pointing a real manifest at a planted blob breaks its signature."""
    write_checkpoint(session, {"mine": 1}, {}, INFO, keep=5)
    data = pickle.dumps({"mine": Planted(marker)}, protocol=5)
    digest = blob_hash([data])
    write_atomic(session.objects_dir, digest, [data])
    path = session.manifest_path(1)
    raw = json.loads(path.read_bytes())
    raw["blobs"] = {digest: len(data)}
    raw["content"]["groups"][0].update(size=len(data), parts=[[digest, len(data)]])
    path.write_text(json.dumps(raw))
    into, report = restore(session)
    assert not marker.exists() and into == {}
    assert "not signed with your secret" in report.problems[0]


def test_replaced_blob_is_refused_by_its_hash(session: SessionStore, marker: Path) -> None:
    write_checkpoint(session, {"mine": [1, 2]}, {}, INFO, keep=5)
    (blob,) = session.objects_dir.iterdir()
    evil = pickle.dumps({"mine": Planted(marker)}, protocol=5)
    os.chmod(blob, 0o600)
    blob.write_bytes(evil.ljust(blob.stat().st_size, b"."))  # same size, other bytes
    into, _ = restore(session)
    assert not marker.exists() and into == {}


@pytest.mark.parametrize("target", ["manifest", "blob", "generations dir", "session dir"])
def test_writable_by_others_is_refused(session: SessionStore, target: str) -> None:
    write_checkpoint(session, {"mine": 1}, {}, INFO, keep=5)
    path = {
        "manifest": session.manifest_path(1),
        "blob": next(session.objects_dir.iterdir()),
        "generations dir": session.generations_dir,
        "session dir": session.path,
    }[target]
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | stat.S_IWOTH)
    into, report = restore(session)
    assert into == {}
    assert "writable by other users" in " ".join(report.problems)


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_owned_by_another_user_is_refused(session: SessionStore) -> None:
    write_checkpoint(session, {"mine": 1}, {}, INFO, keep=5)
    os.chown(session.manifest_path(1), 65534, 65534)
    into, report = restore(session)
    assert into == {}
    assert "belongs to user id 65534" in report.problems[0]


def test_symlinked_manifest_is_refused(session: SessionStore, tmp_path: Path) -> None:
    write_checkpoint(session, {"mine": 1}, {}, INFO, keep=5)
    elsewhere = tmp_path / "elsewhere.json"
    session.manifest_path(1).rename(elsewhere)
    session.manifest_path(1).symlink_to(elsewhere)
    into, report = restore(session)
    assert into == {} and "symbolic link" in report.problems[0]


def test_secret_is_private_and_exposed_secret_is_refused(session: SessionStore) -> None:
    write_checkpoint(session, {"mine": 1}, {}, INFO, keep=5)
    secret = session.signer.path
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    os.chmod(secret, 0o644)
    fresh = Store(secret.parent).session(KEY)  # a new process: nothing cached
    with pytest.raises(UntrustedCheckpoint, match="readable by other users"):
        fresh.read_manifest(1)


def test_the_storage_root_and_its_parents_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        root = tmp_path / "a" / "b" / "root"
        Signer(root).sign({"x": 1})
        Store(tmp_path / "c" / "d" / "root").ensure()
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", root, tmp_path / "c", tmp_path / "c" / "d"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
