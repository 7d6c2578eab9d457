"""A kernel's start: whose checkpoints it continues, and bringing them back.

:class:`Startup` runs once, in a thread beside the kernel's event loop (so
that ``kernel_info`` is answered at once, however large the state), and
returns one :class:`Outcome`. In order, it:

1. brings the bucket's newest generation of this notebook to the local disk,
   when the checkpoints live in a bucket (the pull);
2. surveys the store once (every session's newest manifest, nothing
   unpickled) and decides which session this kernel continues
   (:mod:`identity`, pure functions of what the survey found), waiting first
   for writers still finishing a previous kernel's final checkpoint, and, for
   a kernel with no notebook path, for the first cell a user runs
   (:class:`FirstCell`);
3. takes over the checkpoints of this notebook under its old name (a rename);
4. restores the newest generation that verifies into the namespace.

Every wait has a deadline: the writers ``writer_wait`` seconds from the start
of the restore (a writer also ends itself at its own deadline), the first
cell until the kernel stops (:meth:`Startup.cancel`); an interrupt ends both.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import identity, memory, notebook, restore
from .checkpoint import CheckpointResult
from .checkpointer import Target
from .errors import NoCheckpoint, UnreadableCheckpoint
from .identity import Candidate
from .restore import Preloaded, RestoreReport
from .store import SessionStore, Store, follow
from .store.where import open_store

if TYPE_CHECKING:
    from .store.tiers import Mirror

Clock = Callable[[], float]

# Seconds between two looks at a previous kernel's writers, or at whether the first cell came.
_POLL = 0.05


def survey(store: Store) -> list[Candidate]:
    """Summaries of every session's newest readable checkpoint (nothing unpickled).

    A session that cannot be read (damaged, foreign-owned, empty) is left out:
    it can be neither ours nor in the way; so is one whose key cannot be told
    from its manifest (no key it names leads to its directory).
    """
    found: list[Candidate] = []
    for session in store.sessions():
        try:
            manifest, _ = session.latest()
        except (NoCheckpoint, UnreadableCheckpoint, OSError):
            continue
        key = follow.key_of(store, session, manifest)
        if key is None:
            continue
        raw = manifest.raw
        cells = raw.get("notebook_cells")
        kernel = raw.get("kernel_id")
        present = raw.get("notebook_present", True)
        found.append(
            Candidate(
                key=key,
                notebook=manifest.notebook,
                kernel_id=kernel if isinstance(kernel, str) else None,
                cells=frozenset(str(c) for c in cells) if isinstance(cells, list) else frozenset(),
                generation=manifest.generation,
                present=present is not False,
                handle=session.path.name,
            )
        )
    return found


class FirstCell:
    """What the first cell a user runs says of the client, for a kernel with no
    notebook path (see :func:`identity.decide_unattached`). Set once, from the
    thread that serves requests; read by the restore."""

    def __init__(self) -> None:
        self._seen = threading.Event()
        self.interactive: bool | None = None
        self.vscode_file: str | None = None

    @property
    def seen(self) -> bool:
        return self._seen.is_set()

    def skip(self) -> None:
        """Nothing is to be learnt from the first cell (the kernel knows its notebook)."""
        self._seen.set()

    def record(self, interactive: bool, vscode_file: str | None) -> None:
        self.interactive = interactive
        self.vscode_file = vscode_file
        self._seen.set()

    def wait(self, stop: threading.Event) -> bool:
        """Until the first cell came (True) or *stop* is set (False)."""
        while not self._seen.wait(0.5):
            if stop.is_set():
                return False
        return True


@dataclass
class Outcome:
    """What a start found and did."""

    target: Target
    report: RestoreReport
    has_checkpoint: bool
    #: the checkpoint the namespace now matches (None when nothing was restored)
    last_result: CheckpointResult | None = None
    notices: list[str] = field(default_factory=list)  # sentences for the user, once


class Startup:
    """One kernel start (see the module's docstring)."""

    def __init__(
        self,
        checkpoint_dir: str,
        environ: Mapping[str, str],
        cwd: str,
        connection_file: str | None,
        *,
        key: str,
        writer_wait: float = 300.0,
        log: logging.Logger | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.environ = environ
        self.cwd = cwd
        self.connection_file = connection_file
        self.key = key  # where this kernel starts looking (see session.session_key)
        self.writer_wait = writer_wait
        self.log = log or logging.getLogger(__name__)
        self.clock = clock
        self.sleep = sleep
        self.progress = restore.RestoreProgress()
        self.first_cell = FirstCell()
        self.waiting_since: float | None = None  # since when it waits for a writer
        self._notices: list[str] = []
        self._prune_mirror = True
        self._lease_stop = threading.Event()  # never set: the lease thread ends with the kernel
        self.store = open_store(checkpoint_dir)  # where checkpoints live: disk or bucket
        self._known_cells: frozenset[str] = frozenset()  # the notebook's cell ids at start

    def waited(self) -> tuple[float, float] | None:
        """While it waits for a previous kernel's writer: seconds so far, and at most."""
        since = self.waiting_since
        return None if since is None else (self.clock() - since, self.writer_wait)

    def cancel(self) -> None:
        """Stop waiting and restoring; what is loaded stays (an interrupt, or the end)."""
        self.progress.stop.set()

    # -- the steps ------------------------------------------------------------------

    def unrestored(self) -> Outcome:
        """With ``restore`` off: checkpoints go under the key the kernel started with,
        and nothing is read or waited for."""
        signals = identity.signals_from(
            self.environ, self.cwd, self.connection_file, notebook.cell_set
        )
        target = Target(
            store=self.store,
            session=self.store.local().session(self.key),
            key=self.key,
            notebook=signals.notebook,
            kernel_id=signals.kernel_id,
            known_cells=signals.cells,
            mirror=self.store.mirror(self.key),
        )
        return Outcome(target, RestoreReport(), has_checkpoint=False)

    def run(self, into: dict[str, Any]) -> Outcome:
        """Decide, wait, adopt, restore into *into* (the user's namespace)."""
        store = self._local_store()
        preloaded = self._preload(store)
        self._settle(store)
        decision = self._decide(store)
        session = store.session(decision.key)
        renamed_from = None
        adopt = decision.adopt_from
        if adopt is not None and self._adopt(store, adopt, decision.key):
            renamed_from = decision.renamed_from
        waited, alive = self._wait_for_writers([session])
        if alive:
            self.log.warning(
                "persistent-kernel: %d writer(s) still busy after %.0f s; restoring the "
                "newest complete checkpoint", alive, waited,
            )  # fmt: skip
        # With nothing readable under its own key, a kernel still walks what is
        # there (damaged, unsigned, newer generations): the walk loads only what
        # verifies, and the user hears why nothing came back.
        if decision.restore or (not decision.defer and session.generations()):
            reuse = preloaded if preloaded is not None and preloaded.key == decision.key else None
            report = restore.restore_checkpoint(session, into, self.progress, reuse)
        else:
            report = RestoreReport()
        if decision.note:
            report.problems.append(decision.note)
        report.waited = waited
        report.renamed_from = renamed_from
        target = Target(
            store=self.store,
            session=session,
            key=decision.key,
            notebook=decision.notebook,
            kernel_id=identity.kernel_id(self.connection_file),
            known_cells=self._known_cells,
            ephemeral=decision.ephemeral,
            mirror=self.store.mirror(decision.key),
            prune_mirror=self._prune_mirror,
        )
        return Outcome(
            target, report, bool(session.generations()), last_result(report), self._notices
        )

    def _local_store(self) -> Store:
        """The store on this machine's disk; for a bucket, its local tier, after the
        newest generation of this notebook's own key was pulled into it."""
        mirror = self.store.mirror(self.key)
        if mirror is None:
            return self.store.local()
        pulled = mirror.pull()
        # Unseen at start, the bucket may hold newer state than this kernel restored:
        # its old generations are not pruned, nor superseded (see Mirror.push).
        self._prune_mirror = pulled.seen
        local = mirror.local.generations()
        for text in pulled.notices(mirror.display, local[-1] if local else None):
            self.log.warning("%s", text)
            self._notices.append(text)
        try:
            mirror.started(pulled.seen)
        except OSError as exc:
            self._tell(f"this machine's copy of the checkpoints cannot be written ({exc})")
        if pulled.seen:
            self._lease(mirror, pulled.source)
        threading.Thread(
            target=self._keep_lease, args=(mirror,), name="persistent-kernel-lease", daemon=True
        ).start()
        if pulled.ahead is not None:  # made here, never uploaded: upload it now
            threading.Thread(
                target=self._push, args=(mirror,), name="persistent-kernel-upload", daemon=True
            ).start()
        return self.store.local()

    def _lease(self, mirror: Mirror, source: str | None) -> None:
        """Leave this kernel's lease in the bucket; tell the user of another kernel's.

        A fresh lease of another machine means a kernel there is using this
        notebook's checkpoints now (two pods on one notebook): both are told,
        this one here, the other at its next upload (see ``Mirror.push``).
        """
        try:
            others = mirror.others()
            mirror.write_lease()
        except OSError as exc:
            self._tell(
                f"this kernel could not leave its lease in {mirror.display} ({exc}), so a "
                "prune on another machine may not see that this notebook is in use"
            )
            return
        if others:
            lease = others[0]
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease["time"])))
            took = f" This kernel restored the state written by {source}." if source else ""
            self._tell(
                f"another kernel, on host {lease['host']}, is using this notebook's "
                f"checkpoints in {mirror.display} (its last sign of life at {when}): each "
                "save replaces the other's as the newest, and a start restores whichever "
                f"came last; keep one kernel per notebook.{took}"
            )

    def _keep_lease(self, mirror: Mirror) -> None:
        """Renew the lease while the kernel runs (a daemon thread: it ends with the
        kernel). A failure is logged once until a renewal succeeds again: the bucket
        is down, which the next upload tells the user."""
        from .store.tiers import LEASE_REFRESH  # a bucket only: see store.where

        failing = False
        while not self._lease_stop.wait(LEASE_REFRESH):
            try:
                mirror.write_lease()
                failing = False
            except Exception as exc:
                if not failing:
                    self.log.warning(
                        "persistent-kernel: the lease in %s was not renewed: %s",
                        mirror.display, exc,
                    )  # fmt: skip
                failing = True

    def _push(self, mirror: Any) -> None:
        try:
            mirror.push()
        except Exception as exc:  # the next checkpoint uploads it, and tells the user if not
            self.log.warning("persistent-kernel: upload to %s failed: %s", mirror.display, exc)

    def _decide(self, store: Store, wait: bool = True) -> identity.Decision:
        """Which checkpoints this kernel continues (see :mod:`identity`); waits for the
        writers still finishing a previous kernel's checkpoints, and for the first cell
        when it cannot tell before it. With *wait* false, waits for neither: a guess from
        what is on disk now, which may say ``defer``."""
        if wait:
            self._wait_for_writers(list(store.sessions()))
        first = self.first_cell
        signals = identity.signals_from(
            self.environ, self.cwd, self.connection_file, notebook.cell_set, first.vscode_file
        )
        if signals.notebook is None and not signals.explicit:
            decision = identity.decide_unattached(signals, first.interactive, survey(store))
            if not decision.defer or not wait or not first.wait(self.progress.stop):
                return decision
            return self._decide(store)
        self._known_cells = signals.cells
        if signals.notebook is not None:
            source = follow.copy_of(store, signals.notebook)
            signals = dataclasses.replace(signals, copy_of=source) if source else signals
        mine = signals.notebook

        def owner_of(candidate: Candidate) -> str | None:
            folder = os.path.dirname(mine or "")
            return notebook.owner(folder, candidate.cells, skip=mine) if folder else None

        return identity.decide(signals, survey(store), os.path.exists, notebook.cell_set, owner_of)

    def _wait_for_writers(self, sessions: list[SessionStore]) -> tuple[float, int]:
        """Wait for the writers of *sessions* (the previous kernel's final checkpoint).

        At most ``writer_wait`` seconds from the start of the restore (a writer
        ends itself at its deadline anyway); an interrupt ends the wait.
        Returns the seconds waited and how many writers are still alive.
        """
        start = self.waiting_since = self.waiting_since or self.clock()
        try:
            while True:
                alive = sum(len(session.locks.running_writers()) for session in sessions)
                waited = self.clock() - start
                if not alive or waited >= self.writer_wait or self.progress.stop.is_set():
                    return waited, alive
                self.sleep(_POLL)
        finally:
            self.waiting_since = None

    def _preload(self, store: Store) -> Preloaded | None:
        """While the previous kernel's writer is still writing this notebook's
        checkpoint, unpickle the newest generation already on disk.

        A restart after a cell that changed nothing (or little) would otherwise
        wait for that writer to pickle everything again and then unpickle
        everything: this way the wait and the unpickling overlap, and the
        restore after the wait loads only the groups the writer changed (see
        :class:`restore.Preloaded`). Only when the guess of which notebook
        this is needs no waiting (no first cell, no rename to follow), the
        store is on this machine's disk, and memory has room for the state
        twice more (the writer holds it once already: see :mod:`memory`); a
        failure here only costs the time, and is logged.
        """
        if self.store.mirror(self.key) is not None:
            return None  # the state is on this disk once pulled, not before
        try:
            decision = self._decide(store, wait=False)
            if decision.defer or not decision.restore or decision.adopt_from is not None:
                return None
            session = store.session(decision.key)
            if not session.locks.running_writers() or not session.generations():
                return None
            newest, _ = session.latest()
            if not memory.enough_for(newest.size, memory.available()):
                return None  # the writer holds the old state: no room for a second copy
            return restore.preload(session, decision.key, self.progress)
        except Exception:
            self.log.warning("persistent-kernel: loading ahead of the writer failed", exc_info=True)
            return None

    def _adopt(self, store: Store, key: str, new_key: str) -> bool:
        """Take over the checkpoints of session *key* (this notebook's, under another name)."""
        store.session(key).locks.wait_for_writers(self.writer_wait)
        try:
            self.store.adopt(key, new_key)
        except OSError as exc:  # RenameUnsupported (a bucket), a disk error
            self._tell(f"the checkpoints of {key} could not be moved to this notebook: {exc}")
            return False
        return True

    def _settle(self, store: Store) -> None:
        """Carry out renames the server saw while a kernel that has since gone wrote to the
        session (see :mod:`.store.follow`)."""
        try:
            follow.settle(store)
        except OSError as exc:
            self._tell(f"a notebook renamed earlier could not take its checkpoints along: {exc}")

    def _tell(self, text: str) -> None:
        self.log.warning("persistent-kernel: %s", text)
        self._notices.append(f"persistent-kernel: {text}")


def last_result(report: RestoreReport) -> CheckpointResult | None:
    """The checkpoint a restore left the namespace matching, as ``%persist`` shows it."""
    if report.generation is None:
        return None
    return CheckpointResult(
        ok=True,
        generation=report.generation,
        created=report.created,
        size=report.size,
        saved=list(report.restored),
        skipped=dict(report.skipped),
        unchanged=True,
    )
