"""``PersistentKernel``: ipykernel's IPythonKernel that checkpoints and restores.

The kernel is the adapter between ipykernel's hooks and three plain objects:

* :class:`~persistent_kernel.autosave.Autosaver` decides when to checkpoint:
  every finished cell (in any subshell) is one change; when the kernel is
  idle and ``checkpoint_interval`` has passed since the last checkpoint,
  a changed namespace is checkpointed;
* :class:`~persistent_kernel.writerwatch.WriterWatch` follows the detached
  forked writer (see :mod:`snapshot`) until it reports, and kills it at
  its deadline (``writer_timeout``);
* a :class:`~persistent_kernel.snapshot.Standby` is forked when a cell
  starts on unsaved changes and dropped when it ends: if the kernel is
  stopped or dies during the cell, it writes the namespace as it was
  before that cell.

When the event loop stops (shutdown, restart, ``exit()``, SIGTERM), the
application calls :meth:`PersistentKernel.final_checkpoint`, which forks one
more writer for a changed namespace. That writer outlives the kernel (up to
its deadline) and the next kernel waits for it before restoring.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ipykernel.ipkernel import IPythonKernel
from IPython.display import clear_output, display
from traitlets import Bool, CaselessStrEnum, Float, Integer, List, Unicode, default, observe

from . import (
    checkpoint,
    identity,
    memory,
    namespace,
    notebook,
    pagewrites,
    quickexit,
    render,
    restore,
    serializer,
    snapshot,
)
from .autosave import Autosaver, Failure, Ticket
from .checkpoint import CheckpointResult
from .errors import UnreadableSettings
from .kernelconfig import default_checkpoint_dir
from .restore import Preloaded, RestoreReport
from .session import SESSION_ENV, session_key
from .store import SessionStore, Store, chunks, is_disk_error
from .store.where import bucket_store, is_url, open_session
from .writerwatch import TornadoLoop, WriterWatch, deadline_for

if TYPE_CHECKING:
    # Imported where a storage URL is used: a kernel on the local disk never
    # loads the object-storage modules (see store.where).
    from .store.tiers import TieredSession

# Seconds an interrupted cell's state waits before it counts as a change: a
# restart interrupts the running cell and sends shutdown_request at once.
INTERRUPT_GRACE = 3.0

# Threads whose target (or class) comes from these packages are the kernel's own.
_OWN_PACKAGES = ("ipykernel", "IPython", "zmq", "tornado", "jupyter_client", "persistent_kernel")


def user_threads(baseline: set[int | None]) -> list[threading.Thread]:
    """Threads the user's code started that are alive now.

    Not: the main thread, threads alive before the first cell (*baseline*:
    ipykernel's, IPython's history thread), asyncio's executor threads, and
    threads whose target (or class) comes from ipykernel, IPython, zmq,
    tornado or this package (subshells, the restore). A thread a library
    starts for the user (a progress bar's monitor) counts as the user's: it
    may change the namespace.
    """
    found = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.ident in baseline:
            continue
        if thread.name.startswith("asyncio_"):
            continue
        target = getattr(thread, "_target", None)
        owner = getattr(target, "__module__", None) if target is not None else None
        if str(owner or type(thread).__module__).startswith(_OWN_PACKAGES):
            continue
        found.append(thread)
    return found


T = TypeVar("T")


class PersistentKernel(IPythonKernel):
    """An IPython kernel whose namespace survives restarts, crashes and shutdowns."""

    implementation = "persistent-kernel"
    #: Which chunks of large buffers writes touched (see pagewrites); made once large
    #: arrays exist, False where the operating system cannot tell.
    _tracker: pagewrites.Tracker | bool | None

    checkpoint_interval = Float(
        30.0,
        help="""Seconds between automatic checkpoints. After a cell the namespace is
        checkpointed once the kernel is idle and this long has passed since the last
        checkpoint. 0 checkpoints every time the kernel goes idle after a cell.""",
    ).tag(config=True)

    checkpoint_dir = Unicode(
        help="""Where checkpoints are stored. Default: <jupyter data dir>/persistent_kernel
        (honours JUPYTER_DATA_DIR). Directories are created 0700, files 0600.
        A storage URL (s3://bucket/prefix, also gs:// and az://; needs
        persistent-kernel[s3]) keeps them in a bucket, with this machine's disk as a
        cache: credentials as for obstore (AWS_* variables, instance or pod roles), the
        endpoint of an S3-compatible server as ?endpoint=http://host:9000, and the
        signing secret in PERSISTENT_KERNEL_SECRET or PERSISTENT_KERNEL_SECRET_FILE.""",
    ).tag(config=True)

    exclude = List(
        Unicode(),
        help="""Glob patterns of variable names never to save, e.g. ['password', '*_token'].
        Checkpoints hold whatever the namespace holds: keep secrets out with this.""",
    ).tag(config=True)

    keep = Integer(
        5,
        help="""How many generations to keep per notebook. Generations share unchanged
        data, so keeping more costs only what changed between them.""",
    ).tag(config=True)

    restore = Bool(
        True, help="Restore the newest checkpoint of the same notebook when the kernel starts."
    ).tag(config=True)

    autosave = Bool(
        True,
        help="""Checkpoint automatically when idle and at shutdown. When off, only
        `%persist save` writes a checkpoint.""",
    ).tag(config=True)

    background = CaselessStrEnum(
        ["auto", "fork", "inline"],
        default_value="auto",
        help="""How checkpoints are written: 'fork' in a detached forked writer (the kernel
        does not wait), 'inline' in the kernel process (it waits), 'auto' forks where
        the platform allows it.""",
    ).tag(config=True)

    writer_timeout = Float(
        120.0,
        help="""Seconds a background writer may take for each GiB of the kernel's memory
        (and at least this long) before it is stopped. The variable it was pickling is
        then named, left out of checkpoints until it is assigned again, and the
        checkpoint is written without it. A writer that outlives its kernel (the final
        checkpoint) ends itself at the same deadline, so a new kernel never waits
        longer than that for it.""",
    ).tag(config=True)

    standby = Bool(
        True,
        help="""When a cell starts on changes no checkpoint holds yet, fork a standby
        holding the namespace as it is, which writes it only if the kernel is stopped or
        dies during the cell: a restart during a cell then restores the state from before
        that cell. The cost is paid by every such cell: one fork() plus the copy-on-write
        faults of the pages the kernel writes while the cell runs (about 15-20 ms a cell
        on a 2-core VM, whatever the size of the state). False: no standby; a restart
        during a cell restores the last checkpoint, which may be older. Batch runs
        (nbclient, papermill, jupyter execute) never fork one: their state is kept for
        their own restarts only.""",
    ).tag(config=True)

    writer_wait = Float(
        300.0,
        help="""At start, how many seconds to wait at most for a writer still finishing
        the previous kernel's final checkpoint before restoring.""",
    ).tag(config=True)

    track_writes = Bool(
        True,
        help="""Ask Linux (6.7 or newer, where userfaultfd is allowed) which pages of large
        arrays were written since the last checkpoint, so that a checkpoint hashes and
        writes only the 8 MiB chunks a cell changed: a one-element change of a large array
        then hashes one chunk instead of reading the whole array. The first write to each page
        after a checkpoint costs a page fault (a large array found mostly rewritten is no
        longer watched until it is found unchanged again). False: every chunk of every large
        array is hashed at every checkpoint. Without kernel support this does nothing.""",
    ).tag(config=True)

    fast_exit = Bool(
        True,
        help="""After a clean stop, with nothing left to save, end the process without
        freeing the namespace object by object, so that shutdown and restart take tens of
        milliseconds, not the hundreds a large namespace costs. Exit handlers still run and
        open files are flushed, but __del__ methods of objects alive at exit do not run.
        False gives Python's ordinary exit.""",
    ).tag(config=True)

    @default("checkpoint_dir")
    def _default_checkpoint_dir(self) -> str:
        return default_checkpoint_dir()  # one default, the CLI's too

    @observe("track_writes")
    def _track_writes_changed(self, change: dict[str, Any]) -> None:
        tracker = getattr(self, "_tracker", None)
        if not change["new"] and isinstance(tracker, pagewrites.Tracker):
            tracker.close()  # no page faults for a tracking nobody reads
            self._tracker = None

    @observe("checkpoint_interval", "autosave")
    def _policy_changed(self, change: dict[str, Any]) -> None:
        autosaver = getattr(self, "autosaver", None)
        if autosaver is None:
            return
        autosaver.interval = self.checkpoint_interval
        autosaver.enabled = self.autosave
        if getattr(self, "io_loop", None) is not None:
            self._maybe_checkpoint()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        key, notebook = session_key(os.environ, os.getcwd())
        self.session_key: str = key
        self.notebook_path: str | None = notebook
        connection_file = getattr(self.parent, "connection_file", None)
        self.kernel_id: str | None = identity.kernel_id(connection_file)
        self._known_cells: frozenset[str] = frozenset()
        # Set by the first cell of a kernel with no notebook path: what kind of
        # client it is (see identity.decide_unattached).
        self._first_cell: tuple[threading.Event, dict[str, Any]] = (threading.Event(), {})
        self._names_at_start: frozenset[str] = frozenset()
        self._ephemeral = False  # a batch run's state: removed at a shutdown for good
        self._shutdown_restart: bool | None = None  # what the shutdown request said
        self.autosaver = Autosaver(
            time.monotonic, interval=self.checkpoint_interval, enabled=self.autosave
        )
        self.writers = WriterWatch(None, self._on_writer_done)
        self._ticket: Ticket | None = None
        self._timer: Any = None
        self._standby: snapshot.Standby | None = None
        self._standby_registration: tuple[int, Path] | None = None
        self._exited_standbys: list[snapshot.Standby] = []
        self.standby_pause = 0.0  # seconds the last standby cost the cell that started it
        self._baseline_threads: set[int | None] = set()
        self._shutdown_requested = False
        self.last_result: CheckpointResult | None = None
        self.restore_report: RestoreReport | None = None
        self._pending_summary: str | None = None
        self._restore_done: concurrent.futures.Future[None] | None = None
        self._restore_progress: restore.RestoreProgress | None = None
        self._waiting_for: float | None = None  # since when the restore waits for a writer
        self._pending_notices: list[str] = []
        self._settings: dict[str, Any] | None = None
        self._session_at: tuple[tuple[str, str], SessionStore] | None = None
        self._upload_failures = 0  # uploads to the bucket failed in a row
        self._pulled = False  # the bucket's newest generation was brought to this disk
        self._bucket_seen = True  # the start-up pull reached the bucket (else: never prune it)
        #: What the last upload to the bucket did (generation, bytes, seconds) or its error.
        self.last_upload: dict[str, Any] | None = None
        self._tracker = None
        if self.shell is not None:
            serializer.import_dill()  # now that __main__ is the notebook's namespace
            # `%config PersistentKernel.x = y` reaches the configurables listed here.
            self.shell.configurables.append(self)
            from .magics import PersistMagics

            self.shell.register_magics(PersistMagics(shell=self.shell, kernel=self))
            self.shell.events.register("pre_run_cell", self._show_restore_summary)
        quickexit.mark_start()  # before the notebook's code runs: see quickexit

    # -- where ------------------------------------------------------------------

    @property
    def session_store(self) -> SessionStore:
        """This notebook's checkpoints: on disk, or tiered over a bucket (``s3://...``)."""
        where = (self.checkpoint_dir, self.session_key)
        if self._session_at is None or self._session_at[0] != where:
            self._session_at = (where, open_session(*where))
        return self._session_at[1]

    def _local_store(self) -> Store:
        """The store on this machine's disk; for a storage URL, the bucket's local tier,
        after the newest generation of this notebook's own key was pulled into it."""
        store = bucket_store(self.checkpoint_dir)
        if store is None:
            return Store(self.checkpoint_dir)
        if not self._pulled:  # once: the decision may be taken again after the first cell
            self._pulled = True
            self._pull(store.tiered(self.session_key))
        return store.local()

    @property
    def settings(self) -> dict[str, Any]:
        """This notebook's ``%persist exclude``/``include`` lists, read once."""
        if self._settings is None:
            self._settings = self.session_store.read_settings()
        return self._settings

    def update_settings(self, settings: dict[str, Any]) -> None:
        """Keep *settings* for this notebook, across restarts."""
        self.session_store.write_settings(settings)
        self._settings = settings

    def _use_fork(self) -> bool:
        return self.background != "inline" and snapshot.fork_supported()

    def _deadline(self) -> float:
        return deadline_for(self.writer_timeout, snapshot.resident_bytes())

    # -- restore ------------------------------------------------------------------

    def start(self) -> None:
        """Start serving, with the restore running beside it.

        The restore starts here, not in ``__init__`` (ipykernel hides whatever
        is in the namespace before its init code runs), in a thread, so that
        ``kernel_info`` is answered at once however large the checkpoint
        (servers give up on a kernel that stays silent for 60 s). No cell
        runs before the restore is done: :meth:`execute_request` waits for it
        and shows its progress.
        """
        super().start()
        self.writers.loop = TornadoLoop(self.io_loop)
        self._baseline_threads = {t.ident for t in threading.enumerate()}
        self._install_sigterm_handler()
        if self.restore:
            if self.shell is not None:
                self._names_at_start = frozenset(self.shell.user_ns)
            if self.notebook_path is not None or os.environ.get(SESSION_ENV):
                self._first_cell[0].set()  # nothing to learn from the first cell
            self._restore_progress = restore.RestoreProgress()
            self._restore_progress.on_chunked = self._watch_restored
            self._restore_done = concurrent.futures.Future()
            threading.Thread(
                target=self._restore_thread, name="persistent-kernel-restore", daemon=True
            ).start()

    @property
    def restoring(self) -> bool:
        """True while the start-up restore is still running."""
        return self._restore_done is not None and not self._restore_done.done()

    def _restore_thread(self) -> None:
        assert self._restore_done is not None
        try:
            self._restore_at_start()
        except BaseException:
            self.log.exception("persistent-kernel: restore failed; starting empty")
        finally:
            self._restore_done.set_result(None)

    def _progress_text(self) -> str:
        progress = self._restore_progress
        assert progress is not None
        if self._waiting_for is not None:
            waited = time.monotonic() - self._waiting_for
            return (
                "persistent-kernel: waiting for the previous kernel to finish writing its "
                f"checkpoint ({waited:.0f} s, at most {self.writer_wait:.0f} s); "
                "interrupt to stop waiting"
            )
        total = progress.total
        done = min(progress.done, total)
        fraction = done / total if total else 0.0
        return (
            f"persistent-kernel: restoring checkpoint {progress.generation or ''}: "
            f"{render.human_size(done)} of {render.human_size(total)} ({fraction:.0%}); "
            "interrupt to stop and keep what is loaded"
        )

    async def _wait_for_restore(self) -> None:
        """Hold the first cell until the restore is done; show one progress line.

        The line says what is happening (waiting for the previous kernel's
        writer, then restoring) and is replaced by the restore report (or
        removed) when the restore ends, so it is not left in the notebook.
        An interrupt stops the wait or the restore and keeps what is loaded.
        """
        assert self._restore_done is not None and self._restore_progress is not None
        progress = self._restore_progress
        done = asyncio.wrap_future(self._restore_done)
        previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda signum, frame: progress.stop.set())
        shown = None
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(done), timeout=1.0)
                    break
                except asyncio.TimeoutError:
                    text = self._progress_text()
                    if shown is None:
                        shown = display({"text/plain": text}, raw=True, display_id=True)
                    else:
                        shown.update({"text/plain": text}, raw=True)
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)
        if shown is not None:
            rep = self.restore_report
            if self._pending_summary and rep is not None:
                self._pending_summary = None
                shown.update(
                    {"text/plain": render.restore_text(rep), "text/html": render.restore_html(rep)},
                    raw=True,
                )
            else:
                clear_output()

    def _first_cell_ready(self, parent: Any) -> bool:
        """Whether an execute request must wait for the restore; records what it says.

        A kernel with no notebook path decides whose state it has at the first
        cell a user runs. Requests a client makes for itself before that
        (VS Code's start code: ``store_history`` false) run at once.
        """
        event, info = self._first_cell
        if event.is_set():
            return True
        content = parent.get("content", {}) if isinstance(parent, dict) else {}
        if not content.get("store_history", True):
            return False
        assert self.shell is not None
        vscode_file = self.shell.user_ns.get(identity.VSCODE_FILE_VAR)
        info["interactive"] = bool(content.get("allow_stdin", True))
        info["vscode_file"] = vscode_file if isinstance(vscode_file, str) else None
        # What the client's own start code bound is the client's, not the notebook's.
        for name in set(self.shell.user_ns) - self._names_at_start:
            self.shell.user_ns_hidden[name] = self.shell.user_ns[name]
        event.set()
        return True

    def _decide_identity(self, wait: bool = True) -> identity.Decision:
        """Which checkpoints this kernel continues (see :mod:`identity`); waits for the
        writers still finishing a previous kernel's checkpoints, and for the first cell
        when it cannot tell before it. With *wait* false, waits for neither: a guess from
        what is on disk now, which may say ``defer``."""
        store = self._local_store()
        if wait:
            self._wait_for_writers(list(store.sessions()))
        event, info = self._first_cell
        signals = identity.signals_from(
            os.environ, os.getcwd(), getattr(self.parent, "connection_file", None),
            notebook.cell_set, info.get("vscode_file"),
        )  # fmt: skip
        if signals.notebook is None and not signals.explicit:
            decision = identity.decide_unattached(
                signals, info.get("interactive"), identity.survey(store)
            )
            if not decision.defer or not wait:
                return decision
            event.wait()
            return self._decide_identity()
        self._known_cells = signals.cells
        return identity.decide(signals, identity.survey(store), os.path.exists, notebook.cell_set)

    def _wait_for_writers(self, sessions: list[SessionStore]) -> tuple[float, int]:
        """Wait for the writers of *sessions* (the previous kernel's final checkpoint).

        At most ``writer_wait`` seconds from the start of the restore (a writer
        ends itself at its deadline anyway); an interrupt ends the wait.
        Returns the seconds waited and how many writers are still alive.
        """
        progress = self._restore_progress
        assert progress is not None
        start = self._waiting_for = self._waiting_for or time.monotonic()
        try:
            while True:
                alive = sum(len(session.running_writers()) for session in sessions)
                waited = time.monotonic() - start
                if not alive or waited >= self.writer_wait or progress.stop.is_set():
                    return waited, alive
                time.sleep(0.05)
        finally:
            self._waiting_for = None

    def _preload(self) -> Preloaded | None:
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
        failure here only costs the time.
        """
        if is_url(self.checkpoint_dir):
            return None
        try:
            decision = self._decide_identity(wait=False)
            if decision.defer or not decision.restore or decision.adopt_from is not None:
                return None
            session = Store(self.checkpoint_dir).session(decision.key)
            if not session.running_writers() or not session.generations():
                return None
            newest, _ = session.latest()
            if not memory.enough_for(newest.size, memory.available()):
                return None  # the writer holds the old state: no room for a second copy
            return restore.preload(session, decision.key, self._restore_progress)
        except Exception:
            self.log.warning("persistent-kernel: loading ahead of the writer failed", exc_info=True)
            return None

    def _restore_at_start(self) -> None:
        preloaded = self._preload()
        decision = self._decide_identity()
        self.session_key = decision.key
        self.notebook_path = decision.notebook
        self._ephemeral = decision.ephemeral
        self._settings = None
        session = self.session_store
        renamed_from = None
        if decision.adopt_from is not None and self._adopt(decision.adopt_from, session):
            renamed_from = decision.renamed_from
        waited, alive = self._wait_for_writers([session])
        if alive:
            self.log.warning(
                "persistent-kernel: %d writer(s) still busy after %.0f s; restoring the "
                "newest complete checkpoint", alive, waited,
            )  # fmt: skip
        assert self.shell is not None
        # With nothing readable under its own key, a kernel still walks what is
        # there (damaged, unsigned, newer generations): the walk loads only what
        # verifies, and the user hears why nothing came back.
        if decision.restore or (not decision.defer and session.generations()):
            reuse = preloaded if preloaded is not None and preloaded.key == decision.key else None
            result = restore.restore_checkpoint(
                session, self.shell.user_ns, self._restore_progress, reuse
            )
        else:
            result = RestoreReport()
        if decision.note:
            result.problems.append(decision.note)
        result.waited = waited
        result.renamed_from = renamed_from
        self.restore_report = result
        self.autosaver.restored(result.carried, has_checkpoint=bool(session.generations()))
        if not (result.restored or result.skipped or result.problems):
            return
        summary = render.restore_summary(result)
        # Warning level: the server's log shows it by default, as it shows the
        # kernel's other start-up notices.
        for line in summary.splitlines():
            self.log.warning("%s", line)
        self._pending_summary = summary
        if result.generation is not None:
            self.last_result = CheckpointResult(
                ok=True,
                generation=result.generation,
                created=result.created,
                size=result.size,
                saved=list(result.restored),
                skipped=dict(result.skipped),
                unchanged=True,
            )

    def _pull(self, session: TieredSession) -> None:
        """Bring the bucket's newest generation to this machine's disk before a restore."""
        pulled = session.pull()
        # Unseen at start, the bucket may hold newer state than this kernel restored:
        # its old generations are not pruned until a start has seen it.
        self._bucket_seen = pulled.unreachable is None
        local = session.generations()
        for text in pulled.notices(session.display, local[-1] if local else None):
            self.log.warning("%s", text)
            self._notice(text)
        if pulled.ahead is not None:  # made here, never uploaded: upload it now
            threading.Thread(
                target=self._push_quietly, args=(session,), name="persistent-kernel-upload",
                daemon=True,
            ).start()  # fmt: skip

    def _push_quietly(self, session: TieredSession) -> None:
        try:
            session.push(self.keep)
        except Exception as exc:  # the next checkpoint tries again
            self.log.warning("persistent-kernel: upload to %s failed: %s", session.display, exc)

    def _adopt(self, key: str, session: SessionStore) -> bool:
        """Take over the checkpoints of session *key* (this notebook's, under another name)."""
        if is_url(self.checkpoint_dir):  # renames are followed on the local disk only
            return False
        old = Store(self.checkpoint_dir).session(key)
        old.wait_for_writers(self.writer_wait)
        try:
            notebook.adopt(old, session)
        except OSError as exc:
            self.log.warning("persistent-kernel: could not adopt %s: %s", old.path, exc)
            return False
        return True

    def _show_restore_summary(self, *args: Any) -> None:
        if self._pending_summary and self.restore_report is not None:
            self._pending_summary = None
            report_ = self.restore_report
            display(
                {
                    "text/plain": render.restore_text(report_),
                    "text/html": render.restore_html(report_),
                },
                raw=True,
            )
        while self._pending_notices:
            print(self._pending_notices.pop(0), flush=True)

    # -- when -----------------------------------------------------------------------

    async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
        if self.autosaver.cell_started():
            self._drop_standby()  # an interrupted cell's, if any: its state is accepted
            self._start_standby()
        before = getattr(self.shell, "last_execution_result", None)
        ended = False
        try:
            if self.restoring and self._first_cell_ready(parent):
                await self._wait_for_restore()
            await super().execute_request(stream, ident, parent)
            ended = True
        finally:
            # Interrupted (a restart interrupts the running cell first), stopped
            # by a shutdown request or broken off: held back until the user goes on.
            result = getattr(self.shell, "last_execution_result", None)
            error = getattr(result, "error_in_exec", None) if result is not before else None
            interrupted = (
                not ended or self._shutdown_requested or isinstance(error, KeyboardInterrupt)
            )
            self.autosaver.cell_finished(interrupted=interrupted)
            if not self.autosaver.running and not self.autosaver.interrupted:
                self._drop_standby()
            loop = getattr(self, "io_loop", None)
            if loop is not None:  # thread-safe: subshell cells end on other threads
                loop.add_callback(self._maybe_checkpoint)
                if interrupted:
                    loop.call_later(INTERRUPT_GRACE, self._accept_interrupted)

    def _accept_interrupted(self) -> None:
        """No shutdown followed the interrupt: the user goes on from the state it left."""
        if self.autosaver.interrupted and not self.autosaver.running:
            self.autosaver.accept_interrupted()
            self._drop_standby()
            self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        """Checkpoint now, or set a timer for when the interval has passed."""
        if self._timer is not None:
            self.io_loop.remove_timeout(self._timer)
            self._timer = None
        shell = self.shell
        if self.restoring or (shell is not None and shell.exit_now):
            return
        autosaver = self.autosaver
        idle_and_clean = autosaver.enabled and not autosaver.dirty and not autosaver.running
        if idle_and_clean and user_threads(self._baseline_threads):
            autosaver.changed()  # a user thread may have changed the namespace
        wait = autosaver.due()
        if wait is None:
            return
        if wait <= 0:
            self.start_checkpoint()
        else:
            self._timer = self.io_loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_checkpoint()

    # -- how --------------------------------------------------------------------------

    def _job(
        self,
        beacon: snapshot.Beacon | None,
        forked: bool = True,
        final: bool = False,
        tracked: int | None = None,
    ) -> tuple[snapshot.Job, SessionStore]:
        """The checkpoint's work, to run in a forked writer (or inline: not *forked*).

        *final*: the kernel is ending; no cell will run beside the writer, and
        the next kernel waits for it, so its helper process (if any) is not
        made to yield.
        *tracked*: the read end of a pipe on which the writer receives what
        :meth:`pagewrites.Tracker.forked` says once the kernel has forked it.
        """
        assert self.shell is not None
        try:
            settings = self.settings
        except UnreadableSettings as exc:
            # Its exclude list is unknown: save nothing rather than what it may exclude.
            refused = exc

            def refuse() -> dict[str, Any]:
                raise refused

            return refuse, self.session_store
        exclude = [*self.exclude, *settings.get("exclude", [])]
        values, skipped = namespace.select(
            self.shell.user_ns, self.shell.user_ns_hidden, exclude, settings.get("include", [])
        )
        self.autosaver.culprits.apply(values, skipped)
        excluded = [
            n
            for n in self.autosaver.pending_names()
            if namespace.matches_any(n, exclude)
            and not namespace.matches_any(n, settings.get("include", []))
        ]
        carried = self.autosaver.carry([*values, *skipped, *excluded])
        session = self.session_store
        info: dict[str, Any] = {
            "session": self.session_key,
            "notebook": self.notebook_path,
            "kernel_id": self.kernel_id,
        }
        known = self._known_cells
        inputs = list(self.shell.user_ns.get("In") or [])  # for `%persist rerun`
        keep = self.keep
        on_variable = beacon.set if beacon is not None else None
        upload = self._uploader(session) if is_url(self.checkpoint_dir) else None
        tracker = self._tracker if tracked is not None else None
        if isinstance(tracker, pagewrites.Tracker):
            arrays = pagewrites.top_level_buffers(values, chunks.THRESHOLD)
            self._tracking(tracker.watch_new, arrays)

        def job() -> dict[str, Any]:
            names = None
            if isinstance(tracker, pagewrites.Tracker) and tracked is not None:
                names = tracker.reusable(pagewrites.receive(tracked, timeout=10.0))
            # Read in the writer, not the kernel: a notebook with outputs can be large.
            info.update(notebook.cells_for_checkpoint(session, info, known))
            result = checkpoint.write_checkpoint(
                session,
                values,
                skipped,
                info,
                keep,
                carried=carried,
                on_variable=on_variable,
                inputs=inputs,
                second_core=forked,
                urgent=final,
                known=names,
            ).to_dict()
            if upload is not None and (outcome := upload()) is not None:
                result["upload"] = outcome
            return result

        return job, session

    def _uploader(self, session: SessionStore) -> Callable[[], dict[str, Any] | None]:
        """What the writer runs after its commit, for a session tiered over a bucket:
        the upload of what the bucket lacks (None when it lacks nothing)."""
        from .store.tiers import TieredSession, upload_in_child  # a bucket only: see store.where

        assert isinstance(session, TieredSession)
        keep = self.keep if self._bucket_seen else 0

        def upload() -> dict[str, Any] | None:
            return upload_in_child(session, keep) if session.pending() else None

        return upload

    def start_checkpoint(
        self, *, detach: bool = True, covers_running_cell: bool = False, final: bool = False
    ) -> snapshot.Writer:
        """Snapshot the namespace now; in a forked writer unless told otherwise.

        *covers_running_cell*: called as the last line of the running cell
        (``%persist save``), so the snapshot holds all of that cell's changes.
        *final*: the kernel's last checkpoint (see :meth:`_job`).
        """
        began = time.perf_counter()
        forked = detach and self._use_fork()
        beacon = snapshot.Beacon() if forked else None
        wanted = forked and self.shell is not None
        # the namespace is looked through for large arrays only while no tracker was made
        create = wanted and self._tracker is None and self._has_large_arrays()
        if wanted and self._write_tracker(create=create) is None:
            wanted = False
        pipe = os.pipe() if wanted else None
        try:
            job, session = self._job(beacon, forked, final, pipe[0] if pipe else None)
        except BaseException:
            for fd in pipe or ():
                os.close(fd)
            raise
        threads = bool(user_threads(self._baseline_threads))
        ticket = self._ticket = self.autosaver.begin(
            covers_running_cell=covers_running_cell, threads=threads
        )
        try:
            return self._start_writer(job, session, ticket, began, forked, beacon, pipe)
        finally:
            for fd in pipe or ():
                os.close(fd)

    def _watch_restored(self, buffer: Any, parts: list[tuple[str, int]]) -> None:
        """In the restore: watch a chunked buffer as soon as it is read (see pagewrites),
        so that the first checkpoint hashes only the chunks changed since."""
        tracker = self._write_tracker(create=True) if self._use_fork() else None
        if tracker is not None:
            view = memoryview(buffer)
            self._tracking(tracker.seed, pagewrites.address_of(view), view.nbytes, parts)

    def _tracking(self, call: Callable[..., T], *args: Any) -> T | None:
        """``call(*args)``, a step of write tracking; should it fail, tracking stops
        (every chunk is hashed from then on) and the kernel goes on."""
        try:
            return call(*args)
        except Exception:
            self.log.warning("persistent-kernel: write tracking stopped", exc_info=True)
            tracker, self._tracker = self._tracker, False
            if isinstance(tracker, pagewrites.Tracker):
                with contextlib.suppress(Exception):
                    tracker.close()
            return None

    def _has_large_arrays(self) -> bool:
        """Whether a name is bound to an array large enough to be chunked."""
        assert self.shell is not None
        return bool(pagewrites.top_level_buffers(self.shell.user_ns, chunks.THRESHOLD))

    def _write_tracker(self, create: bool = False) -> pagewrites.Tracker | None:
        """The tracker of writes to large buffers; made when first needed (*create*:
        there are large buffers), so that a kernel without any never opens a
        userfaultfd. None where turned off or where the operating system cannot tell."""
        if not self.track_writes:
            return None
        if self._tracker is None and create:
            watcher = pagewrites.Watcher.open()
            self._tracker = (
                pagewrites.Tracker(watcher, chunks.CHUNK) if watcher is not None else False
            )
        return self._tracker if isinstance(self._tracker, pagewrites.Tracker) else None

    def _start_writer(
        self,
        job: snapshot.Job,
        session: SessionStore,
        ticket: Ticket,
        began: float,
        forked: bool,
        beacon: snapshot.Beacon | None,
        pipe: tuple[int, int] | None,
    ) -> snapshot.Writer:
        """Run *job*, forked unless not *forked*; *pipe*: see :meth:`_job`."""
        if not forked:
            writer = snapshot.run_inline(job)
            writer.pause = time.perf_counter() - began
            self._settle(ticket, writer)
            return writer
        try:
            session.ensure()
            registration = session.register_writer()
        except OSError as exc:
            writer = snapshot.Writer(None, None, snapshot.failure(exc))
            self._settle(ticket, writer)
            return writer

        def announced_job() -> dict[str, Any]:
            try:
                return job()
            finally:
                session.release_writer(*registration)

        deadline = self._deadline()
        inherit = [registration[0], *(pipe[:1] if pipe else ())]
        try:
            writer = snapshot.start_forked(announced_job, inherit, deadline)
        finally:
            os.close(registration[0])  # the writer holds its own copy of the lock
        tracker = self._write_tracker() if pipe else None  # made before the fork
        if pipe and tracker is not None:
            # after the fork: see pagewrites
            pagewrites.send(pipe[1], self._tracking(tracker.forked) or b"")
            writer.tracked_fork = tracker.forks
        writer.pause = time.perf_counter() - began
        writer.beacon = beacon
        self.writers.watch(writer, deadline)
        return writer

    def wait_for_writer(self, timeout: float | None = None) -> bool:
        """Block until the running writer (if any) has reported or was stopped at
        its deadline, at most *timeout* seconds; True if none runs any more."""
        return self.writers.wait(timeout)

    def save_now(self, *, covers_running_cell: bool = False) -> CheckpointResult | None:
        """Checkpoint now and wait for the commit (``%persist save``).

        A variable that crashes or hangs the writer is left out and the
        checkpoint is written again without it, so this returns with the
        rest saved. Returns the result (None if no checkpoint ran).
        """
        self.wait_for_writer()
        for _ in range(3):
            left_out = len(self.autosaver.culprits)
            self.start_checkpoint(covers_running_cell=covers_running_cell)
            self.wait_for_writer()
            result = self.last_result
            if result is None or result.ok or len(self.autosaver.culprits) == left_out:
                break
        return self.last_result

    def clear_checkpoints(self, *, covers_running_cell: bool = False) -> None:
        """Delete this notebook's checkpoints; what the namespace holds now is not saved.

        Changes made from now on (and the rest of the running cell, unless
        *covers_running_cell*) are checkpointed again.
        """
        self.wait_for_writer()
        self._drop_standby()
        session = self.session_store
        with session.locked(timeout=60):
            session.clear()
        self.autosaver.cleared(covers_running_cell=covers_running_cell)
        self.last_result = None

    def _on_writer_done(self, writer: snapshot.Writer) -> None:
        ticket = self._ticket
        assert ticket is not None
        self._settle(ticket, writer)
        if getattr(self, "io_loop", None) is not None:
            self.io_loop.add_callback(self._maybe_checkpoint)

    def _settle(self, ticket: Ticket, writer: snapshot.Writer) -> None:
        """Tell the policy how the checkpoint of *ticket* ended; tell the user if needed."""
        data = writer.result or {"ok": False, "error": "no result"}
        result = CheckpointResult.from_dict(data)
        result.pause = writer.pause
        errno_ = data.get("errno")
        result.disk_error = (
            not result.ok and errno_ is not None and is_disk_error(OSError(errno_, ""))
        )
        buffers, result.buffers = result.buffers, []
        self.last_result = result
        # a forked writer's large buffers are watched from now on (made first if need be)
        if result.ok and (writer.tracked_fork or (buffers and writer.pid is not None)):
            tracker = self._write_tracker(create=bool(buffers))
            if tracker is not None:
                self._tracking(tracker.committed, writer.tracked_fork, buffers)
        if result.ok:
            self.log.info(
                "persistent-kernel: checkpoint %s %s: %d saved, %d skipped, %s written in %.2f s",
                result.generation, "unchanged" if result.unchanged else "written",
                len(result.saved), len(result.skipped), render.human_size(result.written),
                result.elapsed,
            )  # fmt: skip
            notice = self.autosaver.succeeded(ticket)
            if "upload" in data:
                self._on_upload(data["upload"])
        else:
            kind = (
                "timeout"
                if writer.timed_out
                else "crash"
                if writer.crashed
                else "kill"
                if writer.died
                else "error"
            )
            culprit = writer.beacon.get() if writer.died and writer.beacon is not None else ""
            user_ns = self.shell.user_ns if self.shell is not None else {}
            idents = {n: id(user_ns[n]) for n in culprit.split(",") if n in user_ns}
            sentence = render.failure_sentence(result.error or "", errno_, self.checkpoint_dir)
            self.log.warning(
                "persistent-kernel: %s (%s%s)", sentence, result.error,
                f"; while saving {culprit}" if culprit else "",
            )  # fmt: skip
            failure = Failure(kind, sentence, culprit)
            notice = self.autosaver.failed(ticket, failure, idents, self.writers.deadline)
        if notice:
            self._notice(f"persistent-kernel: {notice}")

    def _on_upload(self, outcome: dict[str, Any]) -> None:
        """After a checkpoint saved locally: tell the user once if the bucket refused it,
        and try again later (the namespace stays unsaved), backing off."""
        self.last_upload = outcome
        error = outcome.get("error")
        if not error:
            if self._upload_failures:
                self._notice("persistent-kernel: checkpoints reach the bucket again.")
            self._upload_failures = 0
            return
        self._upload_failures += 1
        # the next checkpoint uploads what this one could not
        self.autosaver.retry_later(min(300.0, 5.0 * 2 ** (self._upload_failures - 1)))
        self.log.warning("persistent-kernel: upload failed: %s", error)
        if self._upload_failures == 1:
            self._notice(
                f"persistent-kernel: the checkpoint could not be uploaded ({error}). It is kept "
                "on this machine's disk, and the upload is retried in the background."
            )

    def _notice(self, text: str) -> None:
        """Show *text* above the next cell's output (once)."""
        self._pending_notices.append(text)

    # -- the cell that is running -------------------------------------------------------

    def _start_standby(self) -> None:
        """Fork a standby holding the namespace as it is before this cell (see :mod:`snapshot`)."""
        if not (self.autosave and self.standby and self._use_fork()) or self._ephemeral:
            return
        if self.restoring or self.shell is None:
            return
        began = time.perf_counter()
        for old in list(self._exited_standbys):
            if old.reap():
                self._exited_standbys.remove(old)
        session = self.session_store
        try:
            session.ensure()
            registration = session.register_writer()
        except OSError:
            return  # the idle checkpoint will say what is wrong with the disk

        def job() -> dict[str, Any]:
            # Runs in the standby, on its own copy of the namespace.
            try:
                return self._job(None, final=True)[0]()  # written only at the end
            finally:
                session.release_writer(*registration)

        try:
            self._standby = snapshot.start_standby(job, [registration[0]], self._deadline())
        finally:
            os.close(registration[0])
        self._standby_registration = registration
        self.standby_pause = time.perf_counter() - began

    def _drop_standby(self) -> None:
        standby, self._standby = self._standby, None
        registration, self._standby_registration = self._standby_registration, None
        if standby is None:
            return
        standby.drop()
        if registration is not None:
            with contextlib.suppress(OSError):
                registration[1].unlink()
        if not standby.reap():
            self._exited_standbys.append(standby)

    # -- the end ----------------------------------------------------------------------

    def final_checkpoint(self) -> None:
        """Called once the event loop has stopped: checkpoint a changed namespace.

        If a cell still runs (in a subshell), the standby forked when it
        started writes the namespace as it was before it. The writer is
        forked and detached, so it completes even when jupyter_client
        SIGKILLs this process group 2.5 s from now; the next kernel waits
        for it (at most until its deadline).
        """
        if self.fast_exit:
            quickexit.note_files()  # before any fork: see quickexit
        if self._ephemeral and self._shutdown_restart is False:
            self._forget_batch_state()
            return
        if self.restoring:
            return
        if self.autosaver.running or self.autosaver.interrupted:
            # A cell runs, or was interrupted by this very shutdown: keep the
            # state from before it (the standby's; without one, it is saved).
            if self._standby is not None and self.autosave:
                self._standby.write()
                self._standby = None
            return
        self._drop_standby()
        if self.autosave and user_threads(self._baseline_threads):
            self.autosaver.changed()  # saved consistently: the fork sees one instant
        if not (self.autosave and self.autosaver.dirty):
            return
        try:
            self.start_checkpoint(final=True)
        except Exception:
            self.log.exception("persistent-kernel: final checkpoint failed")

    def do_shutdown(self, restart: bool) -> Any:
        self._shutdown_restart = bool(restart)
        self._shutdown_requested = True  # a cell it ends is not a finished cell
        return super().do_shutdown(restart)

    def _forget_batch_state(self) -> None:
        """A batch run ends: nothing will read its checkpoints (see identity.decide_unattached)."""
        self.wait_for_writer(timeout=self.writer_wait)
        self._drop_standby()
        session = self.session_store
        try:
            session.wait_for_writers(self.writer_wait)
            with session.locked(timeout=60):
                session.clear()
            shutil.rmtree(session.path, ignore_errors=True)
        except Exception:
            self.log.exception("persistent-kernel: could not remove the batch run's checkpoints")

    def prepare_exit(self) -> None:
        """Called after :meth:`final_checkpoint` when the kernel stopped cleanly.

        With ``fast_exit``, arms :mod:`quickexit`: the namespace values are kept
        alive, so IPython's exit handler clears the namespace without freeing
        them, and the process ends after the other exit handlers (see there).
        An inline final checkpoint has returned by now and a forked one is on
        its own, so nothing still needs these objects.
        """
        if not self.fast_exit or self.shell is None:
            return
        shell = self.shell
        keep: list[Any] = [*shell.user_ns.values(), *shell.user_ns_hidden.values()]
        outputs = shell.user_ns.get("_oh")
        if isinstance(outputs, dict):
            keep.extend(outputs.values())
        quickexit.arm(keep)

    def _install_sigterm_handler(self) -> None:
        """SIGTERM between cells stops the loop, so the final checkpoint runs.

        During a cell the namespace is half-changed: the standby (if the cell
        started on unsaved changes) writes the state from before the cell,
        and the kernel dies at once.
        """
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.autosaver.running:
                standby = self._standby
                if standby is not None and self.autosave:
                    standby.write()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            loop = getattr(self, "io_loop", None)
            if loop is not None:
                loop.asyncio_loop.call_soon_threadsafe(loop.stop)

        signal.signal(signal.SIGTERM, on_sigterm)
