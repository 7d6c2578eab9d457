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
from .identity import cells_to_record
from .store import SessionStore, rename
from .store.rename import merge_settings

__all__ = ["MAX_IDS", "adopt", "cell_ids", "cell_set", "cells_for_checkpoint", "merge_settings"]

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

    Through the store (:func:`.store.rename.adopt`): settings are merged, the
    new key is written beside the manifests, and a store that cannot rename
    (a bucket) raises :class:`RenameUnsupported` before anything is touched.
    """
    rename.adopt(old, new)
