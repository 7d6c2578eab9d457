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
  as they were; the kernel retries later.
* **pull** (:meth:`Mirror.pull`), run at start before the restore:
  the bucket's newest generation that verifies (signature, then every blob's
  content address as it is downloaded) is copied into the local tier unless
  the tier has it already; a generation made on this node and never
  uploaded (the bucket was down, the writer was killed) is newer than the
  bucket's and is kept, to be pushed. The restore then reads the local
  tier, at disk speed.

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
    sentence,
)
from ..session import session_dirname
from .fs import TMP, private_dir
from .local import LocalBackend
from .objects import Location, ObjectBackend, connect
from .rename import UPLOAD_RECORD
from .sessions import Manifest, SessionStore, Store, hasher
from .trust import Signer, read_private

SECRET_ENV = "PERSISTENT_KERNEL_SECRET"
SECRET_FILE_ENV = "PERSISTENT_KERNEL_SECRET_FILE"
_SECRET_BYTES = 32
_UPLOADED = UPLOAD_RECORD  # local session file: digests of the manifests the bucket has had
_RENUMBER_TRIES = 8


def home_secret() -> Path:
    """Where the local disk's secret lives (shared when the home volume is)."""
    return Path(jupyter_data_dir()) / "persistent_kernel" / "secret"


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
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "uploaded": self.uploaded,
            "renumbered": self.renumbered,
            "notes": list(self.notes),
        }


@dataclass
class Pull:
    """What a pull found: at most one of *pulled*, *current*, *ahead*, *unreachable*."""

    pulled: int | None = None  # generation copied from the bucket
    downloaded: int = 0  # bytes
    current: int | None = None  # the local tier already had the bucket's newest
    ahead: int | None = None  # a local generation the bucket has never had
    unreachable: str | None = None  # why the bucket could not be read
    problems: list[str] = field(default_factory=list)

    def notices(self, display: str, local: int | None) -> list[str]:
        """The sentences a user is shown after a start (none when all went well)."""
        notes = [f"persistent-kernel: in {display}, {p}" for p in self.problems]
        if self.unreachable is not None:
            where = (
                f"restored generation {local} from this machine's copy, which may not be the newest"
                if local is not None
                else "this machine has no copy of its checkpoints, so nothing was restored"
            )
            cause = self.unreachable  # the store's sentences name the bucket and the cause
            if not cause.startswith(f"the bucket {display} "):
                cause = f"the bucket {display} could not be reached ({cause})"
            notes.append(f"persistent-kernel: {cause}; {where}.")
        return notes


class Mirror:
    """One session on this machine's disk (:attr:`local`), mirrored to the same
    session in a bucket (:attr:`remote`): composed of the two, the format of
    each unchanged (see the module docstring for what push and pull promise).
    """

    def __init__(self, local: SessionStore, remote: SessionStore, display: str, url: str) -> None:
        self.local = local
        self.remote = remote
        self.display = display  # the bucket's URL as a user reads it
        self.url = url  # the URL as configured (with its options), for the upload process

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

    def clear(self) -> None:
        """Forget every checkpoint of this session, in the bucket and on this machine."""
        self.remote.clear()
        self.local.clear()

    # -- up ---------------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether the newest local generation has never reached the bucket."""
        newest = self._local_newest()
        return newest is not None and not self._was_uploaded(newest[1])

    def push(self, keep: int | None = None) -> Upload:
        """Upload the newest local generation unless the bucket has had it.

        Raises :class:`OSError` (:class:`BucketUnreachable`,
        :class:`PermissionError`) when the bucket cannot take it; the local
        tier is unchanged then. With *keep*, prunes the bucket's session
        afterwards (fail closed, as on disk).
        """
        result = Upload()
        newest = self._local_newest()
        if newest is None:
            return result
        manifest, data = newest
        if self._was_uploaded(data):
            result.generation = manifest.generation
            return result
        remote = self.remote.backend
        assert isinstance(remote, ObjectBackend)
        for name, size in manifest.blobs.items():
            if remote.blob_size(name) != size:
                remote.upload_file(name, self.local.objects_dir / name)
                result.uploaded += size
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
        if keep:
            try:
                result.notes.extend(self.remote.prune(keep).notes())
            except OSError as exc:
                result.notes.append(f"old generations in the bucket were not pruned ({exc})")
        return result

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
        :attr:`Pull.problems`.
        """
        result = Pull()
        local = self._local_newest()
        try:
            remote_generations = self.remote.generations()
            for generation in reversed(remote_generations):
                try:
                    data = self.remote.backend.read_manifest(generation)
                    if local is not None and local[1] == data:
                        result.current = generation
                        break
                    manifest = self.remote.read_manifest(generation)
                except NoCheckpoint:
                    continue
                except UnreadableCheckpoint as exc:
                    result.problems.append(f"generation {generation} was passed over: {exc}")
                    continue
                pending = local is not None and not self._was_uploaded(local[1])
                if pending and local is not None and local[0].created > manifest.created:
                    result.ahead = local[0].generation
                    break
                try:
                    result.downloaded = self._fetch(manifest, data)
                except UnreadableCheckpoint as exc:
                    result.problems.append(f"generation {generation} was passed over: {exc}")
                    continue
                result.pulled = generation
                self._forget_after(generation)
                break
            else:
                if local is not None and not self._was_uploaded(local[1]):
                    result.ahead = local[0].generation
                elif local is not None and not remote_generations:
                    self.clear()  # removed from the bucket (`rm`): not brought back from here
        except OSError as exc:  # MissingExtra too
            result.unreachable = str(exc)
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
        return Mirror(local, self._remote(session_dirname(key), key), self.display, self.url)


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
