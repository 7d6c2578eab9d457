"""Notebooks renamed, copied and deleted: the store follows what the Jupyter server saw.

Session keys are notebook paths, and only the Jupyter server knows when a
notebook changes its path. Its extension (:mod:`persistent_kernel.serverext`)
calls these functions from its contents events; a kernel and the start-up
read what they leave. The rules:

* **rename** (a notebook, or a folder of them): the session moves to the new
  key (:meth:`.sessions.Store.adopt`). While a kernel writes to it (a live
  session in the server, or a writer still registered), it is not moved under
  that kernel's feet: a *forward* record (the session file :data:`FORWARD`,
  naming the new key) is left in it, and the kernel moves it itself before its
  next checkpoint (:func:`follow`), or the next start does (:func:`settle`).
* **copy**: the copy starts clean. Its key gets an empty session holding an
  :data:`ORIGIN` record, so a start never adopts the original's state for it
  by their shared cell ids (:func:`copy_of`).
* **delete**: the session is kept, set aside under a key of its own
  (``<path> (deleted <time>)``), so a new notebook of the same name starts
  clean and ``persistent-kernel list`` shows the orphan (``prune`` removes it).

Nothing here deletes a checkpoint. A session whose key cannot be told (no
readable manifest, no key record) is not moved: a folder renamed around it
leaves it where it was.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection
from dataclasses import dataclass

from ..errors import NoCheckpoint, UnreadableCheckpoint
from .rename import adopted_key
from .sessions import Manifest, SessionStore, Store

#: Session file: the key its notebook was renamed to while a kernel wrote to it.
FORWARD = "forward"
#: Session file: this key's notebook was made by copying another (it starts clean).
ORIGIN = "origin"
#: A forward is followed at most this many times in a row (a rename of a rename...).
_CHAIN = 16


@dataclass(frozen=True)
class Move:
    """One session moved (or to be moved by its kernel: *forwarded*)."""

    old: str
    new: str
    forwarded: bool = False


def key_of(store: Store, session: SessionStore, manifest: Manifest | None = None) -> str | None:
    """The key *session* is stored under, told from its key record or its newest
    manifest (read here unless given); None if it cannot be told. A key counts only
    if it leads to this very directory, so no file can point a session elsewhere
    (a session taken over by a renamed notebook keeps manifests that name the old
    key, signed as they were written: its key record names the new one)."""
    keys = [adopted_key(session)]
    try:
        if manifest is None:
            manifest, _ = session.latest()
        keys += [manifest.session, manifest.notebook]
    except (NoCheckpoint, UnreadableCheckpoint, OSError):
        pass
    for key in keys:
        if key and store.session(key).path.name == session.path.name:
            return key
    return None


def _under(key: str, folder: str) -> bool:
    return key.startswith(folder.rstrip(os.sep) + os.sep)


def renamed(
    store: Store, old: str, new: str, busy: Collection[str] = (), folder: bool = False
) -> list[Move]:
    """The notebook (or *folder*) at path *old* is now at *new*: move its sessions.

    *busy*: keys a kernel is serving now (the server's live sessions); theirs
    are forwarded, not moved, even before their first checkpoint (a notebook
    named at its first save). Returns what was done.
    """
    if not folder:
        exists = store.session(old).backend.exists()
        return [move(store, old, new, old in busy)] if exists or old in busy else []
    pairs = []
    for session in store.sessions():
        key = key_of(store, session)
        if key is not None and _under(key, old):
            pairs.append((key, new + key[len(old.rstrip(os.sep)) :]))
    return [move(store, a, b, a in busy) for a, b in pairs]


def move(store: Store, old: str, new: str, busy: bool = False) -> Move:
    """Move session *old* to *new*, or leave a forward record if a kernel writes to it."""
    source = store.session(old)
    if busy or source.locks.running_writers():
        source.ensure()
        source.backend.write_file(FORWARD, json.dumps({"to": new}).encode())
        return Move(old, new, forwarded=True)
    _carry_out(store, old, new)
    return Move(old, new)


def _carry_out(store: Store, old: str, new: str) -> None:
    """Move session *old* to *new* now (no writer of it runs), keeping what *new* held."""
    _make_room(store, new)
    store.adopt(old, new)
    store.session(new).backend.delete_file(FORWARD)


def _make_room(store: Store, key: str) -> None:
    """Set aside the checkpoints *key* holds (of a notebook that was there before), so
    a move there loses nothing. Settings alone stay: a move merges them (see
    :func:`.rename.adopt`)."""
    there = store.session(key)
    if there.backend.exists() and there.generations():
        set_aside(store, key, "replaced")


def set_aside(store: Store, key: str, why: str = "deleted", busy: bool = False) -> Move | None:
    """Keep session *key* under a key of its own, ``<key> (<why> <time>)``; None if it
    holds nothing and no kernel (*busy*) will write to it."""
    if not store.session(key).backend.exists() and not busy:
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return move(store, key, f"{key} ({why} {stamp})", busy)


def copied(store: Store, new: str, source: str) -> None:
    """The notebook at *new* was made by copying *source*: it starts clean, with the
    original's ``%persist exclude``/``include`` settings (a copy of a notebook that
    keeps a password out keeps it out too). :class:`UnreadableSettings` if those
    cannot be read; the copy is then not marked, and nothing was changed."""
    original = store.session(source)
    settings = original.read_settings() if original.backend.exists() else {}
    _make_room(store, new)
    session = store.session(new)
    if session.backend.exists():
        session.backend.remove()  # settings of a notebook no longer there
    session.ensure()
    if settings:
        session.write_settings(settings)
    session.backend.write_file(ORIGIN, json.dumps({"copy_of": source}).encode())


def copy_of(store: Store, key: str) -> str | None:
    """The key of the notebook the notebook of *key* was copied from, if the server said
    it was made by a copy; None otherwise (or if the record cannot be read)."""
    try:
        data = json.loads(store.session(key).backend.read_file(ORIGIN))
    except (OSError, UnreadableCheckpoint, ValueError):
        return None
    source = data.get("copy_of") if isinstance(data, dict) else None
    return source if isinstance(source, str) and source else None


def forwarded(session: SessionStore) -> str | None:
    """The key *session*'s notebook was renamed to while a kernel wrote to it, if any."""
    try:
        data = json.loads(session.backend.read_file(FORWARD))
    except (OSError, UnreadableCheckpoint, ValueError):
        return None  # none, or a damaged one: no instruction, the session stays where it is
    to = data.get("to") if isinstance(data, dict) else None
    return to if isinstance(to, str) and to else None


def follow(store: Store, key: str) -> str:
    """The key a kernel writing to *key* must write to now, after moving its session there
    (call with no writer of that kernel running). *key* itself if nothing was renamed.

    A rename of a rename (A to B to C, the kernel busy throughout) leaves a record
    in each: the session goes straight to the end of the chain.
    """
    chain = [key]
    while len(chain) <= _CHAIN:
        new = forwarded(store.session(chain[-1]))
        if new is None or new in chain:
            break
        chain.append(new)
    final = chain[-1]
    if final == key:
        return key
    for middle in chain[1:-1]:
        store.session(middle).backend.delete_file(FORWARD)
    _carry_out(store, key, final)
    return final


def settle(store: Store) -> list[Move]:
    """Carry out the forwards whose kernel is gone (no writer registered): a start does
    this before it looks for its own session."""
    done = []
    for session in store.sessions():
        if forwarded(session) is None or session.locks.running_writers():
            continue
        key = key_of(store, session)
        if key is None:
            continue  # no checkpoint here: nothing to move (a rename before any write)
        new = follow(store, key)
        if new != key:
            done.append(Move(key, new))
    return done
