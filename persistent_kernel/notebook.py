"""Recognising a notebook under a new name.

Checkpoints are keyed by the notebook's path, so renaming a notebook would
orphan its checkpoint. A notebook's identity is not its inode (Jupyter saves
by writing a new file and renaming it over the old one) but its cells: since
nbformat 4.5 every cell has a random id, and a renamed notebook keeps them.

A checkpoint is adopted by a notebook with no checkpoint of its own only
when all of these hold, so another notebook's state is never taken over:

* the checkpoint's notebook path no longer exists (a copy made with "Save
  as" or "Duplicate" leaves the original in place, and is not adopted);
* the two share at least half of the smaller set of cell ids, and at least
  one id;
* exactly one checkpoint qualifies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import NoCheckpoint, UnreadableCheckpoint
from .store import SessionStore, Store

#: Cell ids recorded per manifest, at most: enough to recognise a notebook.
MAX_IDS = 2000


def cell_ids(path: str | os.PathLike[str] | None) -> list[str]:
    """The ids of the cells of the notebook at *path* ([] if none, or unreadable)."""
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            notebook = json.load(f)
    except (OSError, ValueError):
        return []
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        return []
    ids = [c["id"] for c in cells if isinstance(c, dict) and isinstance(c.get("id"), str)]
    return sorted(set(ids))[:MAX_IDS]


def _same_notebook(ours: set[str], theirs: set[str]) -> bool:
    common = len(ours & theirs)
    return common >= 1 and common * 2 >= min(len(ours), len(theirs))


def find_renamed(store: Store, notebook_path: str) -> tuple[SessionStore, str] | None:
    """The session of the notebook that *notebook_path* was renamed from, if any.

    Returns ``(session, old_path)``; ``None`` unless exactly one session
    qualifies (see the module docstring). Nothing is unpickled.
    """
    ours = set(cell_ids(notebook_path))
    if not ours:
        return None
    found: list[tuple[SessionStore, str]] = []
    for session in store.sessions():
        try:
            manifest, _ = session.latest()
        except (NoCheckpoint, UnreadableCheckpoint, OSError):
            continue
        old = manifest.notebook
        if not old or old == notebook_path or Path(old).exists():
            continue
        theirs = manifest.raw.get("notebook_cells")
        if isinstance(theirs, list) and _same_notebook(ours, {str(i) for i in theirs}):
            found.append((session, old))
    return found[0] if len(found) == 1 else None


def adopt(old: SessionStore, new: SessionStore) -> None:
    """Move *old*'s checkpoints to *new* (which has none), under *old*'s lock.

    Settings the adopting notebook already had are merged into the adopted
    ones, excludes first: a name either excluded stays excluded. Settings
    that cannot be read stop the adoption (:class:`UnreadableSettings`), so
    no exclude is forgotten.
    """
    with old.locked(timeout=60):
        merged = None
        if new.path.exists():
            if new.generations():
                raise FileExistsError(f"{new.path} already has checkpoints")
            mine = new.read_settings()
            if mine:
                merged = merge_settings(old.read_settings(), mine)
            for child in sorted(new.path.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
            new.path.rmdir()
        os.rename(old.path, new.path)
        if merged is not None:
            new.write_settings(merged)


def merge_settings(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two sets of ``%persist`` settings as one; what either excludes stays excluded."""
    exclude = list(dict.fromkeys([*first.get("exclude", []), *second.get("exclude", [])]))
    include = [
        n
        for n in dict.fromkeys([*first.get("include", []), *second.get("include", [])])
        if n not in exclude
    ]
    return {**first, **second, "exclude": exclude, "include": include}
