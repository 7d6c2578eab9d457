"""Checkpoints in a bucket, with the node's disk as a cache tier.

When ``checkpoint_dir`` is a storage URL (``s3://bucket/prefix``, see
:mod:`.objects`), a kernel still writes and reads every checkpoint on the
local disk, exactly as without a bucket, under a *local tier*
(``<jupyter data dir>/persistent_kernel/tiers/<bucket>-<hash>/``, the local
layout); the bucket holds the same generations, byte for byte.
:meth:`BucketStore.local` is that tier (where a kernel commits and restores)
and :meth:`BucketStore.mirror` the :class:`Mirror` of one session: the
local :class:`~.sessions.SessionStore` and the bucket's, composed, each
keeping the format as it is:

* **push** (:meth:`Mirror.push`), run by the forked writer right after
  its local commit: the blobs the bucket lacks, then the manifest, created
  only if absent. If another kernel made that generation first, the
  manifest is renumbered past the bucket's newest, signed again and created
  again, so neither overwrites the other and no generation is a mix of two.
  A failure leaves the local copy and the bucket's previous generations
  as they were; the kernel retries later. A push first reads the bucket's
  newest: a kernel that could not read it at start never uploads over a
  state it has not seen (it uploads to a copy instead), and one that finds
  another kernel's newest says so once (see :meth:`Mirror.push`).
* **pull** (:meth:`Mirror.pull`), run at start before the restore:
  the bucket's newest generation that verifies (signature, then every blob's
  content address as it is downloaded) is copied into the local tier unless
  the tier has it already; a generation made on this node and never
  uploaded (the bucket was down, the writer was killed) is newer than the
  bucket's and is kept, to be pushed. The restore then reads the local
  tier, at disk speed. The walk is bounded, starting at the session's
  signed head (see :meth:`Mirror._candidates`), and what it passes over is
  summarised, however many manifests others planted.
* **leases** (:meth:`Mirror.write_lease`): each running kernel's sign of
  life in the bucket, which a prune on any machine respects.

The per-user secret that signs manifests must be the same on every node:
it is read from ``$PERSISTENT_KERNEL_SECRET`` (64 hex digits), else the
file ``$PERSISTENT_KERNEL_SECRET_FILE`` (a Kubernetes secret mounted as a
file), else ``<jupyter data dir>/persistent_kernel/secret`` (a home volume
shared by the nodes). It is never created here: a node that made its own
would sign checkpoints no other node trusts. With none, writes fail and
reads pass generations over, both with :class:`NoSecret`'s sentence.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir

from ..errors import (
    CorruptCheckpoint,
    GenerationTaken,
    MissingExtra,
    NoCheckpoint,
    NoSecret,
    UnreadableCheckpoint,
    UntrustedCheckpoint,
    sentence,
)
from ..session import session_dirname
from .fs import TMP, private_dir
from .local import LocalBackend
from .objects import Location, ObjectBackend, connect
from .rename import UPLOAD_RECORD
from .sessions import Manifest, SessionStore, Store, hasher, host_name
from .trust import Signer, read_private

SECRET_ENV = "PERSISTENT_KERNEL_SECRET"
SECRET_FILE_ENV = "PERSISTENT_KERNEL_SECRET_FILE"
_SECRET_BYTES = 32
_UPLOADED = UPLOAD_RECORD  # local session file: digests of the manifests the bucket has had
_RENUMBER_TRIES = 8
#: A kernel's lease in the bucket (see :meth:`Mirror.write_lease`) is fresh this long
#: after it was written; a running kernel renews it every :data:`LEASE_REFRESH`
#: seconds and at every upload, so it lapses this long after its kernel stopped.
LEASE_TTL = 1800.0
LEASE_REFRESH = 600.0
#: The most manifests a walk for the bucket's newest reads on either side of the head
#: (see :meth:`Mirror._candidates`): at 5 to 70 ms a read, a start is held up seconds,
#: not minutes, however many manifests others planted.
WALK_LIMIT = 64
_SHOWN = 3  # unreadable generations named one by one; the rest are counted
_HEAD = "head.json"  # bucket session file: the newest generation uploaded, signed
_LEASES = "leases"  # bucket session folder: a lease per machine whose kernel uses it
_UNSEEN = "bucket-unseen"  # local file: this kernel's start could not read the bucket
_DIVERTED = "copy"  # local file: the copy in the bucket this kernel uploads to
_TOLD = "writers-told"  # local file: the machines the user was told save here too


def home_secret() -> Path:
    """Where the local disk's secret lives (shared when the home volume is)."""
    return Path(jupyter_data_dir()) / "persistent_kernel" / "secret"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:64] or "_"


def _unsigned(data: bytes) -> bool:
    """Whether manifest bytes carry no signature at all (provably not this user's in a
    bucket, where nothing is saved unsigned); False for anything that cannot be parsed."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and "signature" not in raw


def fresh_leases(backend: ObjectBackend, now: float | None = None) -> list[dict[str, Any]]:
    """The leases in a bucket's session written less than :data:`LEASE_TTL` ago,
    newest first (each ``{"host": ..., "time": ...}``). Raises OSError.

    A lease is unsigned: a planted one only makes a prune pass the session
    over (fail closed) or a kernel say that another may be running.
    """
    now = time.time() if now is None else now
    found: list[dict[str, Any]] = []
    for meta in backend._list(_LEASES):
        name = str(meta["path"]).rsplit("/", 1)[-1]
        try:
            lease = json.loads(backend.read_file(f"{_LEASES}/{name}"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            continue  # gone meanwhile, or not a lease
        if not isinstance(lease, dict) or not isinstance(lease.get("host"), str):
            continue
        stamp = lease.get("time")
        if isinstance(stamp, (int, float)) and now - stamp < LEASE_TTL:
            found.append(lease)
    return sorted(found, key=lambda lease: -float(lease["time"]))


def _decode(value: bytes, where: str) -> bytes:
    text = value.strip()
    if len(value) == _SECRET_BYTES:
        return value
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != _SECRET_BYTES:
        raise NoSecret(f"the checkpoint secret in {where} is not 64 hexadecimal digits (32 bytes)")
    return secret


def load_secret(fallback: Path | None = None) -> bytes:
    """The shared secret, from the environment, a mounted file, or the home volume."""
    value = os.environ.get(SECRET_ENV)
    if value:
        return _decode(value.encode(), f"${SECRET_ENV}")
    named = os.environ.get(SECRET_FILE_ENV)
    if named:
        try:
            with open(named, "rb") as f:
                return _decode(f.read(), named)
        except OSError as exc:
            raise NoSecret(f"the checkpoint secret file {named} cannot be read ({exc})") from exc
    path = fallback or home_secret()
    try:
        return _decode(read_private(path, "the checkpoint secret"), str(path))
    except FileNotFoundError:
        pass
    raise NoSecret(
        "checkpoints in a bucket need your checkpoint secret on every node, and none was "
        f"found: set ${SECRET_ENV} to 64 hexadecimal digits, or ${SECRET_FILE_ENV} to a "
        f"file holding them, or put it at {path} (see the README); nothing is saved "
        "unsigned"
    )


class SharedSigner(Signer):
    """A :class:`Signer` whose secret comes from :func:`load_secret`, never made here."""

    def __init__(self, fallback: Path | None = None) -> None:
        super().__init__((fallback or home_secret()).parent)
        self.fallback = fallback

    def _load(self, create: bool) -> bytes | None:
        if self._secret is None:
            self._secret = load_secret(self.fallback)
        return self._secret


@dataclass
class Upload:
    """What a push did."""

    generation: int | None = None  # the bucket's name for the newest local generation
    uploaded: int = 0  # bytes sent
    renumbered: bool = False
    notes: list[str] = field(default_factory=list)  # for the log
    tell: list[str] = field(default_factory=list)  # for the user, once each
    copy: str | None = None  # the session it went to instead of the notebook's (see push)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "uploaded": self.uploaded,
            "renumbered": self.renumbered,
            "notes": list(self.notes),
            "tell": list(self.tell),
            "copy": self.copy,
        }


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _when(stamp: object) -> str:
    """A manifest's or lease's time as a user reads it (UTC, whichever node wrote it)."""
    if not isinstance(stamp, (int, float)):
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def _by(manifest: Manifest) -> str:
    """Who wrote *manifest*: "host X at T" (older releases did not record the host)."""
    host = manifest.raw.get("host")
    where = f"host {host}" if isinstance(host, str) and host else "a kernel"
    return f"{where} at {_when(manifest.created)}"


@dataclass
class Walk:
    """What a walk of the bucket's manifests for the newest one that verifies passed over.

    Summarised for the user (:meth:`notes`): a bucket others can write may hold
    thousands of planted manifests, and one line each would bury the notebook.
    """

    foreign: int = 0  # manifests not signed with this user's secret
    cleaned: int = 0  # of those, deleted: unsigned, so provably not the user's
    unread: int = 0  # generations the bound left unread
    problems: list[str] = field(default_factory=list)  # other reasons, one each

    def notes(self) -> list[str]:
        notes = self.problems[:_SHOWN]
        if len(self.problems) > _SHOWN:
            notes.append(
                f"{_plural(len(self.problems) - _SHOWN, 'more generation')} could not be "
                "read either"
            )
        if self.foreign:
            notes.append(
                f"passed over {_plural(self.foreign, 'manifest')} that are not this user's "
                "(not signed with this user's checkpoint secret); none was unpickled"
                + (f", and {_plural(self.cleaned, 'unsigned one')} deleted" if self.cleaned else "")
            )
        if self.unread:
            notes.append(
                f"{_plural(self.unread, 'generation')} were left unread (a walk reads at most "
                f"{WALK_LIMIT} manifests on either side of the newest this user uploaded)"
            )
        return notes


@dataclass
class Pull:
    """What a pull found: at most one of *pulled*, *current*, *ahead*, *unreachable*."""

    pulled: int | None = None  # generation copied from the bucket
    downloaded: int = 0  # bytes
    current: int | None = None  # the local tier already had the bucket's newest
    ahead: int | None = None  # a local generation the bucket has never had
    unreachable: str | None = None  # why the bucket could not be read
    problems: list[str] = field(default_factory=list)
    #: the walk ended at its bound before it found a generation that verifies
    stopped: bool = False
    source: str | None = None  # who wrote the generation the local tier now has newest

    @property
    def seen(self) -> bool:
        """Whether the bucket's newest generation was read (see :meth:`Mirror.push`)."""
        return self.unreachable is None and not self.stopped

    def notices(self, display: str, local: int | None) -> list[str]:
        """The sentences a user is shown after a start (none when all went well)."""
        notes = [f"persistent-kernel: in {display}, {p}" for p in self.problems]
        held = (
            "until it can, what this kernel saves stays on this machine or goes to a copy "
            "of its own, never in place of the state there"
        )
        if self.unreachable is not None:
            where = (
                f"restored generation {local} from this machine's copy, which may not be the newest"
                if local is not None
                else "this machine has no copy of its checkpoints, so nothing was restored"
            )
            cause = self.unreachable  # the store's sentences name the bucket and the cause
            if not cause.startswith(f"the bucket {display} "):
                cause = f"the bucket {display} could not be reached ({cause})"
            notes.append(f"persistent-kernel: {cause}; {where}; {held}.")
        elif self.stopped:
            notes.append(
                f"persistent-kernel: no generation of this notebook that verifies was found "
                f"among those read in {display}; {held}."
            )
        return notes


class Mirror:
    """One session on this machine's disk (:attr:`local`), mirrored to the same
    session in a bucket (:attr:`remote`): composed of the two, the format of
    each unchanged (see the module docstring for what push and pull promise).

    *sibling* opens another session of the same bucket by its directory name
    (where :meth:`push` puts a copy, see there).
    """

    def __init__(
        self,
        local: SessionStore,
        remote: SessionStore,
        display: str,
        url: str,
        sibling: Callable[[str], SessionStore] | None = None,
    ) -> None:
        self.local = local
        self.remote = remote
        self.display = display  # the bucket's URL as a user reads it
        self.url = url  # the URL as configured (with its options), for the upload process
        self._sibling = sibling

    def __repr__(self) -> str:
        return f"Mirror({self.local!r} -> {self.display})"

    @property
    def key(self) -> str | None:
        return self.local.key

    # -- bookkeeping of what the bucket has had -------------------------------------

    def _uploaded(self) -> list[str]:
        try:
            found = json.loads(self.local.backend.read_file(_UPLOADED))
        except (OSError, ValueError, UnreadableCheckpoint):
            return []
        return [str(d) for d in found] if isinstance(found, list) else []

    def _record_upload(self, data: bytes) -> None:
        digests = [*self._uploaded(), hashlib.sha256(data).hexdigest()][-64:]
        self.local.backend.write_file(_UPLOADED, json.dumps(digests).encode())

    def _was_uploaded(self, data: bytes) -> bool:
        return hashlib.sha256(data).hexdigest() in self._uploaded()

    def _local_newest(self) -> tuple[Manifest, bytes] | None:
        try:
            manifest = self.local.latest()[0]
        except NoCheckpoint:
            return None
        return manifest, self.local.backend.read_manifest(manifest.generation)

    def _read_local(self, name: str) -> Any:
        """A small JSON file of this session's local tier; None if absent or unreadable."""
        try:
            return json.loads(self.local.backend.read_file(name))
        except (OSError, ValueError, UnreadableCheckpoint):
            return None

    def _write_local(self, name: str, value: Any) -> None:
        self.local.ensure()
        self.local.backend.write_file(name, json.dumps(value).encode())

    def clear(self) -> None:
        """Forget every checkpoint of this session, in the bucket and on this machine."""
        self.remote.clear()
        self.local.clear()

    # -- what this kernel's start saw -------------------------------------------------

    def started(self, seen: bool) -> None:
        """Record what this kernel's start read of the bucket (:attr:`Pull.seen`).

        Unseen, :meth:`push` never uploads a generation that would supersede
        the bucket's newest without having read it (see there). Either way a
        new kernel starts afresh: no copy yet, no other writer told of.
        """
        for name in (_DIVERTED, _TOLD):
            with suppress(FileNotFoundError):
                self.local.backend.delete_file(name)
        if seen:
            with suppress(FileNotFoundError):
                self.local.backend.delete_file(_UNSEEN)
        else:
            self._write_local(_UNSEEN, {"since": time.time()})

    def _unseen(self) -> bool:
        return self._read_local(_UNSEEN) is not None

    # -- leases -----------------------------------------------------------------------

    def write_lease(self, now: float | None = None) -> None:
        """Leave (or renew) this machine's lease in the bucket's session: a sign,
        read by a prune on any node (:meth:`BucketStore.in_use`) and by a kernel
        starting elsewhere, that a kernel here is using it. Raises OSError."""
        host = host_name()
        lease = {"host": host, "time": time.time() if now is None else now}
        name = f"{_LEASES}/{_slug(host)}.json"
        self.remote.backend.write_file(name, json.dumps(lease).encode())

    def others(self, now: float | None = None) -> list[dict[str, Any]]:
        """The fresh leases of kernels on other machines (newest first). Raises OSError."""
        backend = self.remote.backend
        assert isinstance(backend, ObjectBackend)
        me = host_name()
        return [lease for lease in fresh_leases(backend, now) if lease["host"] != me]

    # -- the bucket's newest ------------------------------------------------------------

    def _head(self, remote: SessionStore) -> int | None:
        """The generation the head of *remote* names, if it is this user's (signed)."""
        try:
            raw = json.loads(remote.backend.read_file(_HEAD))
            if not isinstance(raw, dict) or not isinstance(raw.get("head"), int):
                return None
            remote.signer.verify(raw, _HEAD)
        except FileNotFoundError:
            return None
        except (ValueError, UntrustedCheckpoint):
            return None  # planted or damaged: the walk does without it
        return int(raw["head"])

    def _write_head(self, remote: SessionStore, generation: int) -> None:
        raw: dict[str, Any] = {"head": generation, "time": time.time()}
        raw["signature"] = remote.signer.sign(raw)
        remote.backend.write_file(_HEAD, json.dumps(raw).encode())

    def _candidates(
        self, walk: Walk, generations: list[int] | None = None
    ) -> Iterator[tuple[bytes, Manifest]]:
        """The bucket's generations that verify, newest first, read within a bound.

        First the generations above the head (the newest one this user's
        kernels uploaded, named in a signed object, see :meth:`_write_head`),
        then the head and those below it, at most :data:`WALK_LIMIT` read on
        either side: a bucket others can write may hold any number of planted
        manifests, and reading them all would hold up every start. What is
        passed over is counted in *walk*. An unsigned manifest is deleted:
        every manifest a kernel puts in a bucket is signed (nothing is saved
        unsigned, see :class:`NoSecret`), so it is provably not the user's and
        can never be read. One signed with another secret is kept: it may be
        the user's under a secret since replaced. Raises OSError when the
        bucket cannot be read.
        """
        if generations is None:
            generations = self.remote.generations()
        head = self._head(self.remote)
        above = [g for g in generations if head is None or g > head]
        below = [g for g in generations if head is not None and g <= head]
        for part in (above, below):
            order = part[::-1]
            for index, generation in enumerate(order):
                if index >= WALK_LIMIT:
                    walk.unread += len(order) - index
                    break
                found = self._verified(generation, walk)
                if found is not None:
                    yield found

    def _verified(self, generation: int, walk: Walk) -> tuple[bytes, Manifest] | None:
        data = b""
        try:
            data = self.remote.backend.read_manifest(generation)
            return data, self.remote.manifest_from(data, generation)
        except NoCheckpoint:
            return None
        except NoSecret as exc:
            if str(exc) not in walk.problems:
                walk.problems.append(str(exc))
        except UntrustedCheckpoint:
            walk.foreign += 1
            if _unsigned(data):
                self.remote.backend.delete_manifest(generation)
                walk.cleaned += 1
        except UnreadableCheckpoint as exc:
            walk.problems.append(f"generation {generation} was passed over: {exc}")
        return None

    # -- up ---------------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether the newest local generation has never reached the bucket."""
        newest = self._local_newest()
        return newest is not None and not self._was_uploaded(newest[1])

    def push(self, keep: int | None = None) -> Upload:
        """Upload the newest local generation unless the bucket has had it.

        First it reads the bucket's newest generation that verifies. One this
        machine neither wrote nor pulled was written by another kernel:

        * if this kernel's start could not read the bucket (:meth:`started`),
          its state may be the user's real one, which this kernel never
          restored. Nothing is uploaded over it: from then on this kernel's
          generations go to a copy, a session of their own in the bucket,
          named for this machine and the time, and the user is told once how
          to load it. Nothing is lost either way: the next start restores the
          bucket's state, and the copy holds this kernel's.
        * otherwise another kernel is saving the same notebook (two pods):
          the upload goes ahead (the newest wins, as ever), and the user is
          told once per machine.

        Raises :class:`OSError` (:class:`BucketUnreachable`,
        :class:`PermissionError`) when the bucket cannot take it; the local
        tier is unchanged then. With *keep*, prunes the bucket's session
        afterwards (fail closed, as on disk). Renews this machine's lease.
        """
        result = Upload()
        newest = self._local_newest()
        if newest is None:
            return result
        manifest, data = newest
        if self._was_uploaded(data):
            result.generation = manifest.generation
            return result
        copy = self._read_local(_DIVERTED) or self._check(result)
        if isinstance(copy, dict) and self._sibling is not None:
            return self._push_copy(copy, manifest, data, keep, result)
        self._send_blobs(self.remote, manifest, result)
        remote = self.remote.backend
        with suppress(FileNotFoundError):
            remote.write_file("settings.json", self.local.backend.read_file("settings.json"))
        generation = manifest.generation
        for _ in range(_RENUMBER_TRIES):
            try:
                remote.write_manifest(generation, data)
                break
            except GenerationTaken:
                # Another kernel made this generation first: ours becomes the next.
                generation = max([*self.remote.generations(), *self.local.generations()]) + 1
                data = self._renumbered(manifest, generation)
                result.renumbered = True
        else:
            raise GenerationTaken(f"generation {generation} kept being taken by other kernels")
        self._record_upload(data)
        result.generation = generation
        self._write_head(self.remote, generation)
        self.write_lease()
        if keep:
            try:
                result.notes.extend(self.remote.prune(keep, _unsigned).notes())
            except OSError as exc:
                result.notes.append(f"old generations in the bucket were not pruned ({exc})")
        return result

    def _check(self, result: Upload) -> dict[str, Any] | None:
        """Read the bucket's newest before an upload (see :meth:`push`): the copy to
        upload to instead, or None to upload to the notebook's session."""
        walk = Walk()
        newest = next(self._candidates(walk), None)
        unseen = self._unseen()
        if newest is None:
            if walk.unread and unseen:  # it still cannot tell what the bucket holds
                return self._divert(None, result)
            if unseen:
                self.local.backend.delete_file(_UNSEEN)
            return None
        data, manifest = newest
        if self._was_uploaded(data):
            if unseen:  # read now: the bucket holds nothing this kernel has not seen
                self.local.backend.delete_file(_UNSEEN)
            return None
        if unseen:
            return self._divert(manifest, result)
        self._tell_writer(manifest, result)
        return None

    def _tell_writer(self, manifest: Manifest, result: Upload) -> None:
        """Tell the user, once per machine, that another kernel saves this notebook too."""
        host = manifest.raw.get("host")
        who = str(host) if isinstance(host, str) and host else "?"
        told = self._read_local(_TOLD)
        told = [str(t) for t in told] if isinstance(told, list) else []
        if who in told:
            return
        self._write_local(_TOLD, [*told, who])
        result.tell.append(
            f"another kernel saves this notebook's state to {self.display} too: generation "
            f"{manifest.generation} there was written by {_by(manifest)}, not by this kernel. "
            "Each save replaces the other's as the newest, and a start restores whichever "
            "came last; keep one kernel per notebook."
        )

    def _divert(self, manifest: Manifest | None, result: Upload) -> dict[str, Any]:
        """Send this kernel's uploads to a copy from now on (see :meth:`push`)."""
        host = host_name()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        key = f"{self.key or self.local.path.name}#{host}-{stamp}"
        copy = {"key": key, "dirname": session_dirname(key)}
        self._write_local(_DIVERTED, copy)
        what = (
            f"a state of this notebook written by {_by(manifest)}"
            if manifest is not None
            else "generations of this notebook"
        )
        result.tell.append(
            f"the bucket {self.display} holds {what} that this kernel did not restore, "
            "as it could not read the bucket when it started. So as not to replace that "
            f"state, what this kernel saves goes to a copy in the bucket, {copy['dirname']} "
            f"(load it with %persist restore --from {copy['dirname']}); restart the kernel "
            "to restore the bucket's state."
        )
        return copy

    def _push_copy(
        self, copy: dict[str, Any], manifest: Manifest, data: bytes, keep: int | None,
        result: Upload,
    ) -> Upload:  # fmt: skip
        """Upload the newest local generation to the copy *copy* names, signed again
        under the copy's key; the local tier keeps it as it is."""
        assert self._sibling is not None
        remote = self._sibling(str(copy["dirname"]))
        self._send_blobs(remote, manifest, result)
        generation = max([0, *remote.generations()]) + 1
        for _ in range(_RENUMBER_TRIES):
            raw = {k: v for k, v in manifest.raw.items() if k != "signature"}
            raw.update(generation=generation, session=str(copy["key"]))
            raw["signature"] = self.local.signer.sign(raw)
            try:
                remote.backend.write_manifest(
                    generation, json.dumps(raw, indent=1, sort_keys=True).encode()
                )
                break
            except GenerationTaken:
                generation = max([0, *remote.generations()]) + 1
        else:
            raise GenerationTaken(f"generation {generation} kept being taken by other kernels")
        self._record_upload(data)
        self._write_head(remote, generation)
        self.write_lease()
        result.generation, result.copy = generation, str(copy["dirname"])
        if keep:
            try:
                result.notes.extend(remote.prune(keep, _unsigned).notes())
            except OSError as exc:
                result.notes.append(f"old generations of the copy were not pruned ({exc})")
        return result

    def _send_blobs(self, remote: SessionStore, manifest: Manifest, result: Upload) -> None:
        backend = remote.backend
        assert isinstance(backend, ObjectBackend)
        for name, size in manifest.blobs.items():
            if backend.blob_size(name) != size:
                backend.upload_file(name, self.local.objects_dir / name)
                result.uploaded += size

    def _renumbered(self, manifest: Manifest, generation: int) -> bytes:
        """*manifest* as generation *generation*, signed again, committed locally too."""
        raw = {k: v for k, v in manifest.raw.items() if k != "signature"}
        raw["generation"] = generation
        raw["signature"] = self.local.signer.sign(raw)
        data = json.dumps(raw, indent=1, sort_keys=True).encode()
        with self.local.locks.locked(60.0):
            self.local.backend.write_manifest(generation, data)
        return data

    # -- down -------------------------------------------------------------------------

    def pull(self) -> Pull:
        """Make the local tier hold the newest generation (see the module docstring).

        Never raises for the bucket: an unreachable bucket is reported in
        :attr:`Pull.unreachable`, generations that do not verify in
        :attr:`Pull.problems` (summarised: see :class:`Walk`). The walk is
        bounded (see :meth:`_candidates`): when it ends before it finds a
        generation that verifies, :attr:`Pull.stopped` says so.
        """
        result = Pull()
        walk = Walk()
        local = self._local_newest()
        try:
            remote_generations = self.remote.generations()
            for data, manifest in self._candidates(walk, remote_generations):
                generation = manifest.generation
                if local is not None and local[1] == data:
                    result.current, result.source = generation, _by(manifest)
                    break
                pending = local is not None and not self._was_uploaded(local[1])
                if pending and local is not None and local[0].created > manifest.created:
                    result.ahead, result.source = local[0].generation, _by(local[0])
                    break
                try:
                    result.downloaded = self._fetch(manifest, data)
                except UnreadableCheckpoint as exc:
                    walk.problems.append(f"generation {generation} was passed over: {exc}")
                    continue
                result.pulled, result.source = generation, _by(manifest)
                self._forget_after(generation)
                break
            else:
                result.stopped = walk.unread > 0
                if local is not None and not self._was_uploaded(local[1]):
                    result.ahead, result.source = local[0].generation, _by(local[0])
                elif local is not None and not remote_generations:
                    self.clear()  # removed from the bucket (`rm`): not brought back from here
        except OSError as exc:  # MissingExtra too
            result.unreachable = str(exc)
        result.problems = walk.notes()
        return result

    def _forget_after(self, generation: int) -> None:
        """Drop local generations numbered after the one just pulled.

        They were uploaded and have left the bucket since (removed there), or
        were never uploaded and are older than what the bucket has: either
        way, restoring them would bring back what the bucket has moved past.
        """
        with self.local.locks.locked(60.0):
            for number in self.local.generations():
                if number > generation:
                    self.local.backend.delete_manifest(number)

    def _fetch(self, manifest: Manifest, data: bytes) -> int:
        """Copy *manifest*'s blobs (each checked against its address) and then itself."""
        local, remote = self.local, self.remote.backend
        assert isinstance(remote, ObjectBackend) and isinstance(local.backend, LocalBackend)
        local.ensure()
        downloaded = 0
        for name, size in manifest.blobs.items():
            if local.has_blob(name, size):
                continue
            temp = local.objects_dir / f"{TMP}pull-{os.getpid()}-{name}"
            try:
                digest = hasher(manifest.hash)
                got = remote.download_file(name, temp, digest)
                if got != size or digest.hexdigest() != name:
                    raise CorruptCheckpoint(
                        f"blob {name} in the bucket does not match its content address"
                    )
                os.replace(temp, local.objects_dir / name)
                downloaded += size
            finally:
                temp.unlink(missing_ok=True)
        try:
            settings = remote.read_file("settings.json")
        except FileNotFoundError:
            pass
        else:
            local.backend.write_file("settings.json", settings)
        with local.locks.locked(60.0):
            local.backend.write_manifest(manifest.generation, data)
        self._record_upload(data)
        return downloaded


class BucketStore(Store):
    """A storage URL: sessions in the bucket (:meth:`session`, :meth:`sessions`, for the
    command line), this machine's cache tier (:meth:`local`, where a kernel writes)
    and the mirror between the two (:meth:`mirror`)."""

    def __init__(self, location: str, cache_root: Path | None = None) -> None:
        self.url = location
        self.location = Location.parse(location)  # BadLocation: nothing is touched
        base = Path(jupyter_data_dir()) / "persistent_kernel" / "tiers"
        super().__init__(cache_root or base / self.location.cache_name())
        self.display = self.location.display
        self.signer = SharedSigner()
        self._bucket: Any = None
        self._local: Store | None = None
        # Options obstore refuses are refused here, before anything is written; without
        # obstore, MissingExtra is said when the bucket is first needed (see bucket()).
        with suppress(MissingExtra):
            self._bucket = connect(self.location)

    def bucket(self) -> Any:
        """The obstore store (made at once when obstore is there): a kernel without
        obstore still starts, restores this machine's copy and says what to install."""
        if self._bucket is None:
            self._bucket = connect(self.location)
        return self._bucket

    def _remote(self, dirname: str, key: str | None) -> SessionStore:
        path = self.sessions_dir / dirname
        backend = ObjectBackend(self.bucket, self.location, dirname)
        return SessionStore(path, key, self.signer, backend=backend, root=self.root)

    def session(self, key: str) -> SessionStore:
        return self._remote(session_dirname(key), key)

    def session_at(self, path: Path) -> SessionStore:
        return self._remote(path.name, None)

    def sessions(self) -> list[SessionStore]:
        probe = ObjectBackend(self.bucket, self.location, "-")
        return [self._remote(name, None) for name in probe.session_dirnames()]

    def local(self) -> Store:
        """The cache tier on this machine's disk, as a store of its own (signed with
        the shared secret): where a kernel commits and restores, at disk speed."""
        if self._local is None:
            self._local = Store(self.root)
            self._local.signer = self.signer
        return self._local

    def mirror(self, key: str) -> Mirror:
        """Session *key* of :meth:`local`, mirrored to the same session in the bucket."""
        private_dir(self.root)
        local = self.local().session(key)
        remote = self._remote(session_dirname(key), key)
        return Mirror(local, remote, self.display, self.url, lambda name: self._remote(name, None))

    def in_use(self, session: SessionStore, now: float) -> str | None:
        """Why a prune must pass *session* over: a kernel's fresh lease in it (see
        :meth:`Mirror.write_lease`), on any node. Raises OSError."""
        backend = session.backend
        assert isinstance(backend, ObjectBackend)
        leases = fresh_leases(backend, now)
        if not leases:
            return None
        lease = leases[0]
        return (
            f"a kernel on host {lease['host']} is using it (its lease in the bucket was "
            f"renewed at {_when(lease['time'])}; a lease lapses "
            f"{LEASE_TTL / 60:.0f} minutes after its kernel stops)"
        )


def upload_in_child(mirror: Mirror, keep: int, timeout: float = 3600.0) -> dict[str, Any]:
    """Run :meth:`Mirror.push` in a new interpreter; its :class:`Upload` as a dict.

    For the kernel's forked writer: obstore's I/O runtime (tokio) does not
    survive a fork, so the upload runs in a process of its own, started
    fresh, which dies with the writer (``PR_SET_PDEATHSIG``) so that a
    killed writer never leaves an upload running behind it. A failure is
    ``{"error": sentence}``.

    The storage URL goes to the process on its standard input, never on its
    command line: options may hold keys, and any user of the machine can read
    a process's command line (``ps``, ``/proc/<pid>/cmdline``).
    """
    command = [
        sys.executable, "-m", "persistent_kernel.store.tiers",
        str(mirror.local.root), mirror.key or "", str(keep),
    ]  # fmt: skip
    began = time.monotonic()
    try:
        done = subprocess.run(
            command,
            input=json.dumps({"url": mirror.url}).encode(),
            capture_output=True,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"the upload could not run ({exc})"}
    try:
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return {"error": f"the upload ended with status {done.returncode} {''.join(tail)}"}
    result["elapsed"] = time.monotonic() - began
    return result


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _upload_main(argv: list[str]) -> int:
    """``python -m persistent_kernel.store.tiers LOCAL_ROOT KEY KEEP``: one push, to the
    storage URL read from standard input as ``{"url": ...}`` (see :func:`upload_in_child`)."""
    root, key, keep = argv
    try:
        url = str(json.loads(sys.stdin.read())["url"])
        mirror = BucketStore(url, cache_root=Path(root)).mirror(key)
        outcome = mirror.push(int(keep)).to_dict()
    except Exception as exc:  # said to the kernel, which tells the user once
        outcome = {"error": sentence(exc)}
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_upload_main(sys.argv[1:]))
