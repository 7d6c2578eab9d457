"""Reading a notebook's cell ids, and finding a notebook by them.

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
from .identity import cells_to_record, overlap
from .store import SessionStore

__all__ = ["MAX_IDS", "cell_ids", "cell_set", "cells_for_checkpoint", "owner"]

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


def owner(
    folder: str, cells: frozenset[str], skip: str | None = None, limit: int = 100
) -> str | None:
    """The notebook in *folder* (other than *skip*) whose cells overlap *cells*: which
    notebook a checkpoint found under another notebook's name belongs to. Looks at
    *limit* notebooks at most, so a large folder costs a bounded read; None if none."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".ipynb"))[:limit]
    except OSError:
        return None
    for name in names:
        path = os.path.join(folder, name)
        if path != skip and overlap(cell_set(path), cells):
            return path
    return None
