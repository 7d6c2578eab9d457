"""``PersistentKernel``: ipykernel's IPythonKernel that checkpoints and restores.

The kernel is a thin shell over :mod:`checkpoint` and :mod:`store`:

* a finished ``execute_request`` marks the namespace dirty;
* when the kernel goes idle, a dirty namespace is checkpointed if
  ``checkpoint_interval`` seconds have passed since the last checkpoint,
  else a timer is set for when they will have; the timer re-checks that no
  request is running, so a checkpoint always sees the namespace between
  two cells;
* the checkpoint is written by a detached forked writer (see
  :mod:`snapshot`), so the next cell runs at once;
* when the event loop stops (shutdown, restart, ``exit()``, SIGTERM), the
  application calls :meth:`PersistentKernel.final_checkpoint`, which forks
  one more writer for a dirty namespace. That writer outlives the kernel
  and the next kernel waits for it before restoring.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from IPython.display import display
from tornado.ioloop import IOLoop
from traitlets import Bool, CaselessStrEnum, Float, Integer, List, Unicode, default, observe

from . import (
    checkpoint,
    identity,
    namespace,
    notebook,
    quickexit,
    report,
    restore,
    serializer,
    snapshot,
)
from .checkpoint import CheckpointResult
from .errors import UnreadableSettings
from .kernelconfig import default_checkpoint_dir
from .restore import RestoreReport
from .session import SESSION_ENV, session_key
from .store import SessionStore, Store, is_disk_error
from .store.tiers import BucketStore, TieredSession, open_session, open_store, upload_in_child


class PersistentKernel(IPythonKernel):
    """An IPython kernel whose namespace survives restarts, crashes and shutdowns."""

    implementation = "persistent-kernel"

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

    writer_wait = Float(
        300.0,
        help="""At start, how many seconds to wait at most for a writer still finishing
        the previous kernel's final checkpoint before restoring.""",
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

    @observe("checkpoint_interval")
    def _interval_changed(self, change: dict[str, Any]) -> None:
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
        self._dirty = False
        self._busy = False
        self._skip_dirty_once = False
        self._last_checkpoint = time.monotonic()
        self._timer: Any = None
        self._writer: snapshot.Writer | None = None
        self._writer_registration: tuple[int, Path] | None = None
        self.last_result: CheckpointResult | None = None
        self.restore_report: RestoreReport | None = None
        self._pending_summary: str | None = None
        self._restore_done: concurrent.futures.Future[None] | None = None
        self._restore_progress: restore.RestoreProgress | None = None
        self._carried: list[checkpoint.CarriedGroup] = []
        self._failures = 0  # checkpoints failed in a row
        self._writer_deaths = 0  # of which the forked writer died without a word
        self._fork_broken = False
        self._retry_at = 0.0
        self._pending_notices: list[str] = []
        self._crashers: dict[str, tuple[int, str]] = {}  # name -> (id of value, reason)
        self._settings: dict[str, Any] | None = None
        self._session_at: tuple[tuple[str, str], SessionStore] | None = None
        self._upload_failures = 0  # uploads to the bucket failed in a row
        self._pulled = False  # the bucket's newest generation was brought to this disk
        self._bucket_seen = True  # the start-up pull reached the bucket (else: never prune it)
        #: What the last upload to the bucket did (generation, bytes, seconds) or its error.
        self.last_upload: dict[str, Any] | None = None
        if self.shell is not None:
            serializer.import_dill()  # now that __main__ is the notebook's namespace
            # `%config PersistentKernel.x = y` reaches the configurables listed here.
            self.shell.configurables.append(self)
            from .magics import PersistMagics

            self.shell.register_magics(PersistMagics(shell=self.shell, kernel=self))
            self.shell.events.register("pre_run_cell", self._show_restore_summary)

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
        store = open_store(self.checkpoint_dir)
        if not isinstance(store, BucketStore):
            return store
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
        return self.background != "inline" and snapshot.fork_supported() and not self._fork_broken

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
        self._install_sigterm_handler()
        if self.restore:
            if self.shell is not None:
                self._names_at_start = frozenset(self.shell.user_ns)
            if self.notebook_path is not None or os.environ.get(SESSION_ENV):
                self._first_cell[0].set()  # nothing to learn from the first cell
            self._restore_progress = restore.RestoreProgress()
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

    async def _wait_for_restore(self) -> None:
        """Hold the first cell until the restore is done; show progress; obey interrupts."""
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
                    text = (
                        f"persistent-kernel: restoring checkpoint {progress.generation or ''}: "
                        f"{report.human_size(progress.done)} of "
                        f"{report.human_size(progress.total)} ({progress.fraction:.0%}); "
                        "interrupt to stop and keep what is loaded"
                    )
                    if shown is None:
                        shown = display({"text/plain": text}, raw=True, display_id=True)
                    else:
                        shown.update({"text/plain": text}, raw=True)
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)

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

    def _decide_identity(self) -> identity.Decision:
        """Which checkpoints this kernel continues (see :mod:`identity`); waits for the first
        cell when it cannot tell before it."""
        store = self._local_store()
        identity.wait_for_writers(store, self.writer_wait)
        event, info = self._first_cell
        signals = identity.signals_from(
            os.environ, os.getcwd(), getattr(self.parent, "connection_file", None),
            notebook.cell_set, info.get("vscode_file"),
        )  # fmt: skip
        if signals.notebook is None and not signals.explicit:
            decision = identity.decide_unattached(
                signals, info.get("interactive"), identity.survey(store)
            )
            if not decision.defer:
                return decision
            event.wait()
            return self._decide_identity()
        self._known_cells = signals.cells
        return identity.decide(signals, identity.survey(store), os.path.exists, notebook.cell_set)

    def _restore_at_start(self) -> None:
        decision = self._decide_identity()
        self.session_key = decision.key
        self.notebook_path = decision.notebook
        self._ephemeral = decision.ephemeral
        self._settings = None
        session = self.session_store
        renamed_from = None
        if decision.adopt_from is not None and self._adopt(decision.adopt_from, session):
            renamed_from = decision.renamed_from
        waited, alive = session.wait_for_writers(self.writer_wait)
        if alive:
            self.log.warning(
                "persistent-kernel: %d writer(s) still busy after %.0f s; restoring the "
                "newest complete checkpoint", alive, waited,
            )  # fmt: skip
        assert self.shell is not None
        if decision.restore:
            result = restore.restore_checkpoint(session, self.shell.user_ns, self._restore_progress)
        else:
            result = RestoreReport()
        if decision.note:
            result.problems.append(decision.note)
        result.waited = waited
        result.renamed_from = renamed_from
        self.restore_report = result
        self._carried = list(result.carried)
        if not (result.restored or result.skipped or result.problems):
            return
        summary = report.restore_summary(result)
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
        # What was restored is on disk already: nothing to write until a cell runs.
        self._dirty = False

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
        if isinstance(session, TieredSession):  # renames are followed on the local disk only
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
                    "text/plain": report.restore_text(report_),
                    "text/html": report.restore_html(report_),
                },
                raw=True,
            )
        while self._pending_notices:
            print(self._pending_notices.pop(0), flush=True)

    # -- when -----------------------------------------------------------------------

    async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
        self._busy = True
        try:
            if self.restoring and self._first_cell_ready(parent):
                await self._wait_for_restore()
            await super().execute_request(stream, ident, parent)
        finally:
            self._busy = False
            if self._skip_dirty_once:
                self._skip_dirty_once = False
            else:
                self._dirty = True

    async def dispatch_shell(self, *args: Any, **kwargs: Any) -> None:
        await super().dispatch_shell(*args, **kwargs)
        if threading.current_thread() is threading.main_thread():
            shell = self.shell
            if shell is None or not shell.exit_now:
                self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        """Checkpoint now, or set a timer for when the interval has passed."""
        if self._timer is not None:
            self.io_loop.remove_timeout(self._timer)
            self._timer = None
        if not (self.autosave and self._dirty) or self._busy or self._writer is not None:
            return
        if self.restoring:  # a checkpoint now would save half a namespace
            return
        now = time.monotonic()
        wait = max(self._last_checkpoint + self.checkpoint_interval, self._retry_at) - now
        if wait <= 0:
            self.start_checkpoint()
        else:
            self._timer = self.io_loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_checkpoint()

    # -- how --------------------------------------------------------------------------

    def _job(self, beacon: snapshot.Beacon | None) -> tuple[snapshot.Job, SessionStore]:
        assert self.shell is not None
        try:
            settings = self.settings
        except UnreadableSettings as exc:
            # Its exclude list is unknown: save nothing rather than what it may exclude.
            refused = exc

            def refuse() -> dict[str, Any]:
                raise refused

            return refuse, self.session_store
        values, skipped = namespace.select(
            self.shell.user_ns,
            self.shell.user_ns_hidden,
            [*self.exclude, *settings.get("exclude", [])],
            settings.get("include", []),
        )
        for name, (ident, reason) in list(self._crashers.items()):
            if name in values and id(values[name]) == ident:
                del values[name]
                skipped[name] = reason
            else:  # bound to something else since: worth a try again
                del self._crashers[name]
        session = self.session_store
        info: dict[str, Any] = {
            "session": self.session_key,
            "notebook": self.notebook_path,
            "kernel_id": self.kernel_id,
        }
        known = self._known_cells
        inputs = list(self.shell.user_ns.get("In") or [])  # for `%persist rerun`
        keep, carried = self.keep, list(self._carried)
        on_variable = beacon.set if beacon is not None else None

        bucket_seen = self._bucket_seen

        def job() -> dict[str, Any]:
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
            ).to_dict()
            if isinstance(session, TieredSession) and session.pending():
                result["upload"] = upload_in_child(session, keep if bucket_seen else 0)
            return result

        return job, session

    def start_checkpoint(self, *, detach: bool = True) -> snapshot.Writer:
        """Snapshot the namespace now; in a forked writer unless told otherwise.

        Marks the namespace clean: anything that changes after this instant
        makes it dirty again.
        """
        began = time.perf_counter()
        forked = detach and self._use_fork()
        beacon = snapshot.Beacon() if forked else None
        job, session = self._job(beacon)
        self._dirty = False
        self._last_checkpoint = time.monotonic()
        if not forked:
            writer = snapshot.run_inline(job)
            writer.pause = time.perf_counter() - began
            self._on_writer_done(writer)
            return writer
        try:
            session.ensure()
            registration = session.register_writer()
        except OSError as exc:
            writer = snapshot.Writer(None, None, snapshot._failure(exc))
            self._on_writer_done(writer)
            return writer

        def announced_job() -> dict[str, Any]:
            try:
                return job()
            finally:
                session.release_writer(*registration)

        try:
            writer = snapshot.start_forked(announced_job, inherit=[registration[0]])
        finally:
            os.close(registration[0])  # the writer holds its own copy of the lock
        writer.pause = time.perf_counter() - began
        writer.beacon = beacon
        self._writer = writer
        if writer.fd is not None and getattr(self, "io_loop", None) is not None:
            self.io_loop.add_handler(
                writer.fd, partial(self._on_writer_readable, writer), IOLoop.READ
            )
        return writer

    def _on_writer_readable(self, writer: snapshot.Writer, fd: int, events: int) -> None:
        if writer.poll():
            self.io_loop.remove_handler(fd)
            writer.finish()
            self._on_writer_done(writer)

    def wait_for_writer(self, timeout: float | None = None) -> None:
        """Block until the running writer (if any) has reported."""
        writer = self._writer
        if writer is None or writer.fd is None:
            return
        self.io_loop.remove_handler(writer.fd)
        if writer.wait(timeout) is None:  # still running: watch it again
            self.io_loop.add_handler(
                writer.fd, partial(self._on_writer_readable, writer), IOLoop.READ
            )
            return
        self._on_writer_done(writer)

    def _on_writer_done(self, writer: snapshot.Writer) -> None:
        if self._writer is writer:
            self._writer = None
        data = writer.result or {"ok": False, "error": "no result"}
        result = CheckpointResult.from_dict(data)
        result.pause = writer.pause
        errno_ = data.get("errno")
        result.disk_error = (
            not result.ok and errno_ is not None and is_disk_error(OSError(errno_, ""))
        )
        self.last_result = result
        if result.ok:
            self._on_checkpoint_ok(result)
            if "upload" in data:
                self._on_upload(data["upload"])
        else:
            # A crash while pickling a variable is blamed on it; a kill (the OOM
            # killer) is not, and counts towards writing inline instead.
            culprit = writer.beacon.get() if writer.crashed and writer.beacon is not None else ""
            self._on_checkpoint_failed(result, errno_, died=writer.died, culprit=culprit)
        if getattr(self, "io_loop", None) is not None:
            self.io_loop.add_callback(self._maybe_checkpoint)

    def _on_checkpoint_ok(self, result: CheckpointResult) -> None:
        self.log.info(
            "persistent-kernel: checkpoint %s %s: %d saved, %d skipped, %s written in %.2f s",
            result.generation, "unchanged" if result.unchanged else "written",
            len(result.saved), len(result.skipped), report.human_size(result.written),
            result.elapsed,
        )  # fmt: skip
        if self._failures:
            self._notice("persistent-kernel: checkpoints are being saved again.")
        self._failures = self._writer_deaths = 0
        self._retry_at = 0.0

    def _on_upload(self, outcome: dict[str, Any]) -> None:
        """After a checkpoint saved locally: tell the user once if the bucket refused it,
        and try again later (the namespace stays dirty), backing off."""
        self.last_upload = outcome
        error = outcome.get("error")
        if not error:
            if self._upload_failures:
                self._notice("persistent-kernel: checkpoints reach the bucket again.")
            self._upload_failures = 0
            return
        self._upload_failures += 1
        self._dirty = True  # the next checkpoint uploads what this one could not
        self._retry_at = time.monotonic() + min(300.0, 5.0 * 2 ** (self._upload_failures - 1))
        self.log.warning("persistent-kernel: upload failed: %s", error)
        if self._upload_failures == 1:
            self._notice(
                f"persistent-kernel: the checkpoint could not be uploaded ({error}). It is kept "
                "on this machine's disk, and the upload is retried in the background."
            )

    def _on_checkpoint_failed(
        self, result: CheckpointResult, errno_: Any, died: bool, culprit: str = ""
    ) -> None:
        """Keep the namespace dirty, back off, and tell the user once."""
        self._dirty = True
        if culprit and self.shell is not None:
            # The writer died pickling these: leave them out (while they are the
            # same objects) and try again at once without them.
            reason = "pickling it crashed the background writer"
            for name in culprit.split(","):
                if name in self.shell.user_ns:
                    self._crashers[name] = (id(self.shell.user_ns[name]), reason)
            self.log.warning("persistent-kernel: the writer died while saving %s", culprit)
            self._notice(
                f"persistent-kernel: saving {culprit} crashed the background writer; "
                "it is left out of checkpoints until you assign it again."
            )
            return
        self._failures += 1
        self._retry_at = time.monotonic() + min(60.0, 5.0 * 2 ** (self._failures - 1))
        if died:
            self._writer_deaths += 1
            if self._writer_deaths >= 3 and self._use_fork():
                self._fork_broken = True
                self.log.warning(
                    "persistent-kernel: the background writer died %d times in a row; "
                    "checkpoints are now written inline",
                    self._writer_deaths,
                )
        sentence = report.failure_sentence(result.error or "", errno_, self.checkpoint_dir)
        self.log.warning("persistent-kernel: %s (%s)", sentence, result.error)
        if self._failures == 1:
            self._notice(
                f"persistent-kernel: {sentence}. Your previous checkpoint is kept, and saving "
                "resumes by itself once this is fixed."
            )

    def _notice(self, text: str) -> None:
        """Show *text* above the next cell's output (once)."""
        self._pending_notices.append(text)

    # -- the end ----------------------------------------------------------------------

    def final_checkpoint(self) -> None:
        """Called once the event loop has stopped: checkpoint a dirty namespace.

        The loop has stopped, so no cell is running. The writer is forked and
        detached, so it completes even when jupyter_client SIGKILLs this
        process group 2.5 s from now; the next kernel waits for it.
        """
        if self._ephemeral and self._shutdown_restart is False:
            self._forget_batch_state()
            return
        if not (self.autosave and self._dirty) or self.restoring:
            return
        try:
            self.start_checkpoint()
        except Exception:
            self.log.exception("persistent-kernel: final checkpoint failed")

    def do_shutdown(self, restart: bool) -> Any:
        self._shutdown_restart = bool(restart)
        return super().do_shutdown(restart)

    def _forget_batch_state(self) -> None:
        """A batch run ends: nothing will read its checkpoints (see identity.decide_unattached)."""
        self.wait_for_writer(timeout=self.writer_wait)
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
        """SIGTERM between cells stops the loop, so the final checkpoint runs."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            if self._busy:  # mid-cell: the namespace is half-changed; just die
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            loop = getattr(self, "io_loop", None)
            if loop is not None:
                loop.asyncio_loop.call_soon_threadsafe(loop.stop)

        signal.signal(signal.SIGTERM, on_sigterm)
