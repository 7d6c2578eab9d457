"""Moving a session's checkpoints to a new key: a notebook renamed while no kernel ran.

The kernel decides *whether* a notebook is another's under a new name
(:mod:`persistent_kernel.identity`); this module does the move, through the
backend (:meth:`.backend.Backend.rename_to`): on the local disk a rename of
the session's directory, atomic. A backend that cannot move a session at
once (a bucket: objects are copied one by one) raises
:class:`RenameUnsupported` before anything is touched.

The manifests moved still name the old key (they are signed as they were
written), so the new key is written beside them, in the session file
:data:`KEY_FILE`; :func:`.follow.key_of` reads it.
"""

from __future__ import annotations

from typing import Any

from ..errors import RenameUnsupported, UnreadableCheckpoint
from .sessions import SessionStore

#: In a session moved to a new key: that key (its manifests name the old one).
KEY_FILE = "key"
#: Session file of a session mirrored to a bucket: the manifests the bucket has had
#: under this key (see :class:`.tiers.Mirror`). Dropped by a move: under its new key
#: the bucket has had none, and a start that trusted it would take the bucket's
#: silence for a removal and clear this machine's copy.
UPLOAD_RECORD = "uploaded"


def adopt(old: SessionStore, new: SessionStore, timeout: float = 60.0) -> None:
    """Move *old*'s checkpoints to *new* (which has none), under *old*'s lock.

    Settings the adopting notebook already had are merged into the adopted
    ones, excludes first: a name either excluded stays excluded. Settings
    that cannot be read stop the adoption (:class:`UnreadableSettings`), so
    no exclude is forgotten. :class:`FileExistsError` if *new* has
    checkpoints; :class:`RenameUnsupported` where the backend cannot rename.
    Either way nothing has changed then.
    """
    if not old.backend.renames or type(old.backend) is not type(new.backend):
        raise RenameUnsupported(
            f"the checkpoints of {old.key or old.path.name} cannot be moved to "
            f"{new.key or new.path.name}: {old.backend!r} cannot rename a session "
            "(renames are followed on the local disk only)"
        )
    with old.locks.locked(timeout):
        merged = None
        if new.backend.exists():
            if new.generations():
                raise FileExistsError(f"{new.path} already has checkpoints")
            mine = new.read_settings()
            if mine:
                merged = merge_settings(old.read_settings(), mine)
            new.backend.remove()
        old.backend.rename_to(new.backend)
        new.backend.delete_file(UPLOAD_RECORD)
        if merged is not None:
            new.write_settings(merged)
        if new.key is not None:
            new.backend.write_file(KEY_FILE, new.key.encode("utf-8", "surrogatepass"))


def adopted_key(session: SessionStore) -> str | None:
    """The key *session* was moved to by :func:`adopt`; None if it never was (or the
    file cannot be read: it is then no help in telling the key)."""
    try:
        return session.backend.read_file(KEY_FILE).decode("utf-8", "surrogatepass")
    except (OSError, UnreadableCheckpoint, ValueError):
        return None


def merge_settings(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two sets of ``%persist`` settings as one; what either excludes stays excluded."""
    exclude = list(dict.fromkeys([*first.get("exclude", []), *second.get("exclude", [])]))
    include = [
        n
        for n in dict.fromkeys([*first.get("include", []), *second.get("include", [])])
        if n not in exclude
    ]
    return {**first, **second, "exclude": exclude, "include": include}
