"""Reading a notebook's cell ids, and moving checkpoints to a notebook's new name.

A notebook's identity is not its inode (Jupyter saves by writing a new file
and renaming it over the old one) but its cells: since nbformat 4.5 every
cell has a random id, and a renamed or moved notebook keeps them. Checkpoints
record the ids, so that :mod:`identity` can recognise a notebook under a new
name, and tell a new notebook created under an old name from the old one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from .errors import NoCheckpoint, UnreadableCheckpoint
from .identity import KEY_FILE, cells_to_record
from .store import SessionStore, write_atomic

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


def cell_set(path: str | os.PathLike[str] | None) -> frozenset[str]:
    """:func:`cell_ids` as a set."""
    return frozenset(cell_ids(path))


def cells_for_checkpoint(
    session: SessionStore, info: Mapping[str, Any], known: frozenset[str]
) -> dict[str, Any]:
    """What a checkpoint of *session* records of its notebook: ``notebook_cells`` and
    ``notebook_present`` (see :func:`identity.cells_to_record`).

    Read in the writer, not the kernel: a notebook with outputs can be large.
    *info* names the notebook and the kernel id; *known* are the ids the
    kernel knew at start. The ids of this kernel's own newest checkpoint count
    too, so a notebook renamed away while its kernel runs keeps being named by
    its own ids, not by whatever now lives at its old path.
    """
    path = info.get("notebook")
    current = cell_set(path)
    previous: frozenset[str] | None = None
    kernel = info.get("kernel_id")
    if kernel is not None:
        try:
            manifest, _ = session.latest()
        except (NoCheckpoint, UnreadableCheckpoint, OSError):
            manifest = None
        if manifest is not None and manifest.raw.get("kernel_id") == kernel:
            ids = manifest.raw.get("notebook_cells")
            previous = frozenset(str(i) for i in ids) if isinstance(ids, list) else None
    exists = path is not None and os.path.exists(path)
    cells, present = cells_to_record(exists, current, known, previous)
    return {"notebook_cells": sorted(cells)[:MAX_IDS], "notebook_present": present}


def adopt(old: SessionStore, new: SessionStore) -> None:
    """Move *old*'s checkpoints to *new* (which has none), under *old*'s lock.

    Settings the adopting notebook already had are merged into the adopted
    ones, excludes first: a name either excluded stays excluded. Settings
    that cannot be read stop the adoption (:class:`UnreadableSettings`), so
    no exclude is forgotten. The new key is written beside the manifests,
    which still name the old one (they are signed as they were written).
    """
    with old.locks.locked(timeout=60):
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
        if new.key is not None:
            write_atomic(new.path, KEY_FILE, [new.key.encode("utf-8", "surrogatepass")])


def merge_settings(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two sets of ``%persist`` settings as one; what either excludes stays excluded."""
    exclude = list(dict.fromkeys([*first.get("exclude", []), *second.get("exclude", [])]))
    include = [
        n
        for n in dict.fromkeys([*first.get("include", []), *second.get("include", [])])
        if n not in exclude
    ]
    return {**first, **second, "exclude": exclude, "include": include}
