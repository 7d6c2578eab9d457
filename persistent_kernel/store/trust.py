"""Only our own checkpoints are ever unpickled.

Unpickling runs code, so a checkpoint planted in a user's storage directory
would be a way into their account. Two checks stand before any unpickling:

* **Ownership and permissions.** Every directory and file read must belong
  to the current user and be writable by nobody else (no group or other
  write bit), and is opened without following symlinks.
* **Signatures.** Each manifest carries an HMAC-SHA256 of its canonical
  JSON, made with a per-user secret (``<storage root>/secret``, 32 random
  bytes, created 0600 on first use). Payload hashes are inside the signed
  manifest, and are BLAKE3 (collision resistant: nobody can make other bytes
  with the same name), so a signed manifest vouches for every byte it names.
  Format-1 manifests named blobs by xxh3-128, which does not resist a crafted
  collision: for those, the ownership checks on ``objects/`` are what protect.

Limits: this guards against other users and against files copied in from
elsewhere; it cannot guard against code already running as the user, who
can read the secret.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import UntrustedCheckpoint
from .fs import private_dir, write_new

SECRET_NAME = "secret"
_SECRET_BYTES = 32
_PREFIX = "hmac-sha256:"
HOW_TO_LOAD = (
    "it is never unpickled; to load a file you trust on purpose, unpickle it yourself "
    "(dill.load_module or pickle.load), knowing that this runs its code"
)


def check_private(st: os.stat_result, what: str) -> None:
    """Refuse *what* unless the current user owns it and nobody else may write it."""
    if st.st_uid != os.getuid():
        raise UntrustedCheckpoint(
            f"{what} belongs to user id {st.st_uid}, not to you; {HOW_TO_LOAD}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedCheckpoint(
            f"{what} is writable by other users (mode {stat.filemode(st.st_mode)}); {HOW_TO_LOAD}"
        )


def check_private_path(path: Path, what: str | None = None) -> None:
    """:func:`check_private` for a path, not following a final symlink."""
    check_private(os.lstat(path), what or str(path))


def read_private(path: Path, what: str | None = None) -> bytes:
    """Read a file we own and nobody else can write; never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the file is a symlink
            raise UntrustedCheckpoint(f"{what or path} is a symbolic link; {HOW_TO_LOAD}") from exc
        raise
    with os.fdopen(fd, "rb") as f:
        check_private(os.fstat(f.fileno()), what or str(path))
        return f.read()


def canonical(raw: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without its signature."""
    body = {k: v for k, v in raw.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class Signer:
    """Signs and verifies manifests with the per-user secret under *root*."""

    def __init__(self, root: Path) -> None:
        self.path = root / SECRET_NAME
        self._secret: bytes | None = None

    def _load(self, create: bool) -> bytes | None:
        if self._secret is not None:
            return self._secret
        if create:
            private_dir(self.path.parent)
            write_new(self.path.parent, self.path.name, os.urandom(_SECRET_BYTES))
        try:
            secret = read_private(self.path, "the checkpoint secret")
        except FileNotFoundError:
            return None
        if stat.S_IMODE(os.stat(self.path).st_mode) & 0o077:
            raise UntrustedCheckpoint(
                f"the checkpoint secret {self.path} is readable by other users; "
                "remove it (new checkpoints get a new one)"
            )
        if len(secret) != _SECRET_BYTES:
            raise UntrustedCheckpoint(f"the checkpoint secret {self.path} is damaged")
        self._secret = secret
        return secret

    def sign(self, raw: dict[str, Any]) -> str:
        """The signature for manifest *raw* (creates the secret on first use)."""
        secret = self._load(create=True)
        assert secret is not None
        return _PREFIX + hmac.new(secret, canonical(raw), hashlib.sha256).hexdigest()

    def verify(self, raw: dict[str, Any], name: str) -> None:
        """Raise :class:`UntrustedCheckpoint` unless *raw* carries our signature."""
        signature = raw.get("signature")
        if not isinstance(signature, str) or not signature.startswith(_PREFIX):
            raise UntrustedCheckpoint(f"manifest {name} is not signed; {HOW_TO_LOAD}")
        secret = self._load(create=False)
        if secret is None:
            raise UntrustedCheckpoint(
                f"manifest {name} cannot be verified: there is no secret at {self.path}, "
                f"so it was not made by you here; {HOW_TO_LOAD}"
            )
        expected = _PREFIX + hmac.new(secret, canonical(raw), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise UntrustedCheckpoint(
                f"manifest {name} is not signed with your secret (it was changed, or made "
                f"by someone else); {HOW_TO_LOAD}"
            )
