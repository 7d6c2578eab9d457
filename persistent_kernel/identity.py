"""Which checkpoints a starting kernel continues: one notebook, one state.

A kernel learns who it serves from several signals, none enough alone:

* the **notebook path** a server passes at start (``JPY_SESSION_NAME``, or
  VS Code's ``__vsc_ipynb_file__``). It changes with a rename, but reaches a
  running kernel only when the kernel restarts;
* the **kernel id** (the connection file's name, ``kernel-<id>.json``), which
  jupyter_server and jupyter_client keep across restarts of one kernel, so a
  checkpoint written under the id we have now was written by this very kernel
  before its restart, whatever path it had then;
* the **cell ids** nbformat (4.5+) gives every cell, which survive renames and
  moves, read from the notebook's current file.

:func:`decide` weighs them. A checkpoint is "ours" when it carries our kernel
id, or when its cells and the notebook's share enough ids; "foreign" when both
have cell ids and share too few (a new notebook created under an old name);
"unknown" otherwise (no ids on one side), where the path alone decides, as it
always has. Foreign state is never loaded, and the user is told in one line
where it is and how to take it (``%persist restore --from``).

Kernels with no notebook path follow R's rule: interactive R loads the
working directory's ``.RData``, ``Rscript`` does not. A console (a client that
can answer ``input()``) is keyed by its folder and restores; a batch runner
(nbclient, papermill, ``jupyter execute``: no stdin) gets the stock kernel's
behaviour, keyed by its kernel id so that only a restart of the same kernel by
its own manager (a crash with auto-restart) resumes.

Everything here is a pure function of the data passed in; reading manifests
and notebooks is the caller's (see :func:`persistent_kernel.startup.survey`),
so the rules are tested in process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from .session import JUPYTER_SESSION_ENV, SESSION_ENV, notebook_path

#: The variable VS Code's Jupyter extension sets, by running code at start, to
#: the notebook's absolute path (it sets no environment variable for it).
VSCODE_FILE_VAR = "__vsc_ipynb_file__"

_CONNECTION_FILE = re.compile(r"kernel-(.+)\.json\Z")


def kernel_id(connection_file: str | None) -> str | None:
    """The kernel's id, from its connection file's name; None without one.

    jupyter_server names the file ``kernel-<id>.json`` after the kernel id
    and keeps it when it restarts the kernel; jupyter_client's own manager
    (nbclient, papermill, ``jupyter execute``) uses a fresh temporary name,
    kept across its restarts too. Either way the name is one kernel's for its
    whole life, restarts included, and no other kernel's. VS Code names it
    ``kernel-v3<hex>``, new for each start.
    """
    if not connection_file:
        return None
    name = os.path.basename(connection_file)
    found = _CONNECTION_FILE.match(name)
    if found:
        return found.group(1)
    stem = name[:-5] if name.endswith(".json") else name
    return stem or None


def overlap(ours: Iterable[str], theirs: Iterable[str]) -> bool:
    """Whether two sets of cell ids are one notebook's: half the smaller set, at least one."""
    a, b = set(ours), set(theirs)
    common = len(a & b)
    return common >= 1 and common * 2 >= min(len(a), len(b))


class Verdict(Enum):
    OURS = "ours"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Signals:
    """What a starting kernel knows about itself."""

    kernel_id: str | None
    notebook: str | None  # absolute path of the notebook served, if told one
    cells: frozenset[str] = frozenset()  # cell ids in that file now
    explicit: str | None = None  # PERSISTENT_KERNEL_SESSION
    cwd: str = "/"
    copy_of: str | None = None  # the notebook it was copied from (the server said so)


@dataclass(frozen=True)
class Candidate:
    """The newest readable checkpoint of one session, summarised (nothing unpickled)."""

    key: str
    notebook: str | None
    kernel_id: str | None
    cells: frozenset[str] = frozenset()
    generation: int = 0
    # False when, as it was written, its notebook was no longer at its path
    # (renamed away, or another notebook in its place): a file there now is not it.
    present: bool = True
    handle: str = ""  # the session's directory name: what `%persist restore --from` takes


@dataclass(frozen=True)
class Decision:
    """Which session a kernel reads and writes, and whether to restore it."""

    key: str
    restore: bool
    adopt_from: str | None = None  # move that session's checkpoints to `key` first
    note: str | None = None  # one line for the user: state found and not loaded
    defer: bool = False  # not known yet: decide at the first cell (see decide_at_first_cell)
    notebook: str | None = None
    renamed_from: str | None = None  # the old notebook path, when adopting
    # A batch run's: kept for its own kernel's restarts only, removed when it shuts down.
    ephemeral: bool = False


def verdict(candidate: Candidate, me: Signals, exists: Callable[[str], bool]) -> Verdict:
    """Whether *candidate* is this kernel's notebook's state."""
    if me.kernel_id is not None and candidate.kernel_id == me.kernel_id:
        return Verdict.OURS
    if candidate.cells and me.cells:
        return Verdict.OURS if overlap(candidate.cells, me.cells) else Verdict.FOREIGN
    if not candidate.present and candidate.notebook and exists(candidate.notebook):
        return Verdict.FOREIGN  # its notebook had left; this file came after
    return Verdict.UNKNOWN


def batch_key(kernel: str | None) -> str:
    """The session key of a batch kernel: its own kernel id.

    A kernel started without a connection file named after an id has no way
    to recognise its own restart; such batch runs share one key that nothing
    restores from.
    """
    return f"batch run, kernel {kernel}" if kernel else "batch run"


def restore_hint(key: str) -> str:
    """How to load the checkpoints of session *key* by hand."""
    return f"%persist restore --from {key!r}"


def _displaced_key(me: Signals, base: str) -> str:
    return f"{base} (kernel {me.kernel_id})" if me.kernel_id else f"{base} (another notebook)"


def decide(
    me: Signals,
    candidates: Iterable[Candidate],
    exists: Callable[[str], bool],
    cells_at: Callable[[str], frozenset[str]],
    owner_of: Callable[[Candidate], str | None] = lambda candidate: None,
) -> Decision:
    """Which checkpoints a kernel that knows its notebook path (or an explicit key) continues.

    *exists* and *cells_at* look at the file system now: whether a path exists,
    and the cell ids of the notebook there; *owner_of* finds the notebook a
    candidate's cells belong to, for the note. The rules, in order:

    1. ``PERSISTENT_KERNEL_SESSION`` is the user's explicit choice: that key, restored.
    2. The session of our path, unless its state is foreign. A notebook the
       server made by a copy, with no session of its own yet, starts clean.
    3. Else the one session written by this kernel id under another path (the
       notebook was renamed while the kernel ran; the server restarted it
       with the new path): adopted into our key.
    4. Else the one session whose cells are ours and whose notebook is gone
       from its path, or holds a different notebook now (a rename while the
       kernel was stopped): adopted. A duplicate, whose original is still
       there, starts clean.
    5. Foreign state under our path is left where it is, and named in the note;
       this kernel then keeps its own checkpoints beside it, under a key of
       its own, so the two lineages never mix.
    """
    if me.explicit:
        return Decision(key=me.explicit, restore=True, notebook=me.notebook)
    assert me.notebook is not None, "decide() needs a notebook path; see decide_unattached()"
    own_key = me.notebook
    others: list[Candidate] = []
    own: Candidate | None = None
    for candidate in candidates:
        if candidate.key == own_key:
            own = candidate
        else:
            others.append(candidate)
    if own is not None and verdict(own, me, exists) is not Verdict.FOREIGN:
        return Decision(key=own_key, restore=True, notebook=me.notebook)
    if own is None and me.copy_of:  # a copy starts clean, and is told where the state is
        note = (
            f"this notebook is a copy of {os.path.basename(me.copy_of)}, so it starts clean; "
            f"{restore_hint(me.copy_of)} loads that notebook's state"
        )
        return Decision(key=own_key, restore=False, notebook=me.notebook, note=note)

    # Our own lineage kept beside foreign state at our path (rule 5 of an earlier start).
    beside = [
        c for c in others if c.notebook == me.notebook and verdict(c, me, exists) is Verdict.OURS
    ]
    by_kernel = [
        c
        for c in others
        if me.kernel_id is not None
        and c.kernel_id == me.kernel_id
        and not (c.cells and me.cells and not overlap(c.cells, me.cells))
    ]
    by_cells = [
        c
        for c in others
        if c.notebook
        and c.notebook != me.notebook
        and c.cells
        and me.cells
        and overlap(c.cells, me.cells)
        and (not exists(c.notebook) or not overlap(c.cells, cells_at(c.notebook)))
    ]
    for found in (beside, by_kernel, by_cells):
        if len(found) != 1:
            continue
        source = found[0]
        renamed = source.notebook if source.notebook != me.notebook else None
        if own is None:
            return Decision(
                key=own_key,
                restore=True,
                adopt_from=source.key,
                notebook=me.notebook,
                renamed_from=renamed,
            )
        # Our path is taken by foreign state: continue ours where it is.
        return Decision(
            key=source.key,
            restore=True,
            notebook=me.notebook,
            renamed_from=renamed,
            note=_foreign_note(own, owner_of(own)),
        )
    if own is None:
        return Decision(key=own_key, restore=False, notebook=me.notebook)
    return Decision(
        key=_displaced_key(me, own_key),
        restore=False,
        notebook=me.notebook,
        note=_foreign_note(own, owner_of(own)),
    )


def _foreign_note(own: Candidate, owner: str | None) -> str:
    where = os.path.basename(own.notebook or own.key) or own.key
    whose = f"belongs to {os.path.basename(owner)}" if owner else "belongs to another notebook"
    return (
        f"checkpoint {own.generation} kept under this notebook's name ({where}) {whose} "
        f"and was not loaded; {restore_hint(own.handle or own.key)} loads it"
    )


def decide_unattached(
    me: Signals, interactive: bool | None, candidates: Iterable[Candidate]
) -> Decision:
    """What a kernel with no notebook path does (a console, a batch run), by R's rule.

    *interactive* is ``None`` at start, before any cell has said what kind of
    client this is: only a restart of this same kernel (our kernel id on the
    newest checkpoint of our folder or of our batch session) is restored then;
    otherwise the decision waits for the first cell (``defer``).
    ``True`` (a client that can answer ``input()``: ``jupyter console``) keys
    the state by the working directory and restores it, as interactive R loads
    ``.RData``. ``False`` (nbclient, papermill, ``jupyter execute``) restores
    nothing, as ``Rscript`` does not, and keeps its checkpoints under its
    kernel id, where only a restart of this kernel looks, until it shuts down.
    """
    folder = os.path.normpath(me.cwd)
    batch = batch_key(me.kernel_id)
    by_key = {c.key: c for c in candidates}
    if interactive is None:
        for key in (batch, folder):
            found = by_key.get(key)
            if found is not None and me.kernel_id is not None and found.kernel_id == me.kernel_id:
                return Decision(key=found.key, restore=True, ephemeral=key == batch)
        return Decision(key=folder, restore=False, defer=True)
    if interactive:
        return Decision(key=folder, restore=True)
    return Decision(key=batch, restore=False, ephemeral=True)


# -- reading the signals ---------------------------------------------------------------


def signals_from(
    environ: Mapping[str, str],
    cwd: str,
    connection_file: str | None,
    cells_at: Callable[[str], frozenset[str]],
    vscode_file: str | None = None,
) -> Signals:
    """The signals of a kernel started with *environ* in *cwd*.

    *vscode_file* is the value of ``__vsc_ipynb_file__`` once VS Code's start
    code has run; it counts as the notebook path when the server passed none.
    """
    notebook = notebook_path(environ, cwd)
    if notebook is None and vscode_file:
        notebook = os.path.normpath(os.path.join(cwd, os.path.expanduser(vscode_file)))
    return Signals(
        kernel_id=kernel_id(connection_file),
        notebook=notebook,
        cells=cells_at(notebook) if notebook else frozenset(),
        explicit=environ.get(SESSION_ENV) or None,
        cwd=cwd,
    )


def cells_to_record(
    exists: bool, current: frozenset[str], known: frozenset[str], previous: frozenset[str] | None
) -> tuple[frozenset[str], bool]:
    """The cell ids a checkpoint records, and whether its notebook is still at its path.

    *exists* and *current* say whether the notebook's path exists and its cell
    ids now, *known* are the ids this kernel knew at start, *previous* those
    of its own newest checkpoint (one this kernel id wrote). The path a kernel
    started with may no longer hold its notebook: renamed away (nothing
    there), or another notebook created under the old name. Then the ids this
    kernel knew are kept, so the checkpoint still names its own notebook and a
    restart with the new path recognises it, and the checkpoint says its
    notebook was not there, so a new notebook at that path does not take it.
    """
    ours = known | (previous or frozenset())
    if not ours:
        return current, exists
    if current and overlap(current, ours):
        return current, True
    return ours, False


__all__ = [
    "JUPYTER_SESSION_ENV",
    "VSCODE_FILE_VAR",
    "Candidate",
    "Decision",
    "Signals",
    "Verdict",
    "batch_key",
    "cells_to_record",
    "decide",
    "decide_unattached",
    "kernel_id",
    "overlap",
    "restore_hint",
    "signals_from",
    "verdict",
]
