"""``PersistentKernel``: ipykernel's IPythonKernel that checkpoints and restores.

An adapter, as ipykernel's kernel is glue around its shell: its traits are the
public ``%config`` surface, and it wires ipykernel's hooks to
:class:`~persistent_kernel.startup.Startup` (once, in a thread, at start: whose
checkpoints, and the restore; no cell runs before it is done) and to
:class:`~persistent_kernel.checkpointer.Checkpointer` (from then on: told when
cells start and end, and when the kernel stops, it writes checkpoints).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from IPython.display import clear_output, display
from traitlets import (
    Bool,
    CaselessStrEnum,
    Float,
    Instance,
    Integer,
    List,
    Type,
    Unicode,
    default,
    observe,
)

from . import cellnames, identity, lazypages, panel, quickexit, render, serializer
from .checkpointer import Checkpointer, Settings
from .kernelconfig import default_checkpoint_dir
from .restore import RestoreReport
from .session import SESSION_ENV, session_key
from .startup import Outcome, Startup
from .writerwatch import Loop, TornadoLoop

# Seconds an interrupted cell's state waits before it counts as a change: a
# restart interrupts the running cell and sends shutdown_request at once.
INTERRUPT_GRACE = 3.0

# Seconds a kernel stopping during its restore waits for the restore to stop at
# its next group, so that the final checkpoint carries the groups not loaded:
# jupyter_client sends SIGTERM 2.5 s after the shutdown request, SIGKILL at 5 s.
RESTORE_END_WAIT = 2.0

# A cell whose names are there while at most this many bytes of groups are left to
# load waits for the restore's end (at most ENDING_WAIT seconds): its report then
# shows above that cell, and the few milliseconds left cost nothing.
ENDING_BYTES = 1 << 20
ENDING_WAIT = 0.3


class PersistentKernel(IPythonKernel):
    """An IPython kernel whose namespace survives restarts, crashes and shutdowns."""

    implementation = "persistent-kernel"

    checkpointer_class = Type(
        Checkpointer, help="The class that writes checkpoints (see persistent_kernel.checkpointer)."
    )
    startup_class = Type(
        Startup, help="The class that restores at start (see persistent_kernel.startup)."
    )
    checkpointer = Instance(Checkpointer, allow_none=True)

    checkpoint_interval = Float(
        30.0,
        help="""Seconds between automatic checkpoints. After a cell the namespace is
        checkpointed once the kernel is idle and this long has passed since the last
        checkpoint that wrote something. 0 checkpoints every time the kernel goes idle
        after a cell.""",
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
        help="""While changes no checkpoint holds yet exist, keep a standby: a forked
        copy of the namespace as of the last finished cell, which writes it only if the
        kernel dies (SIGKILL, the OOM killer) or is stopped: a kill or a restart then
        costs at most the cell that was running, whatever checkpoint_interval is. The cost
        is paid by every cell that changes the namespace: one fork() when it ends, plus
        the copy-on-write faults of the pages the kernel writes while the standby lives
        (about 11 ms a cell on a 2-core VM holding 1 GiB); a cell that only looks (pass,
        df) pays nothing. False: no standby; a kill or a restart costs what changed since
        the last checkpoint. Batch runs (nbclient, papermill, jupyter execute) never fork
        one: their state is kept for their own restarts only.""",
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
        writes only the chunks (1 to 8 MiB) a cell changed: a one-element change of a large array
        then hashes one chunk instead of reading the whole array. The first write to each page
        after a checkpoint costs a page fault (a large array found mostly rewritten is no
        longer watched until it is found unchanged again). False: every chunk of every large
        array is hashed at every checkpoint. Without kernel support this does nothing.""",
    ).tag(config=True)

    lazy_restore = Bool(
        True,
        help="""At start, restore large arrays (16 MiB and more) lazily: each chunk (1 to 8
        MiB) is read from disk and checked against its hash the first time the array's
        memory there is touched, so that the first cell runs at once whatever the size
        of the state, and memory grows with what is used. Needs Linux 6.7 or newer with a
        userfaultfd that serves faults in system calls and forked processes (root,
        CAP_SYS_PTRACE or vm.unprivileged_userfaultfd = 1) and the chunks on local disk;
        elsewhere, and with False, every array is read in full before it is bound.""",
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

    @observe(*Settings.names())
    def _settings_changed(self, change: dict[str, Any]) -> None:
        if self.checkpointer is not None:
            self.checkpointer.configure(self._settings())

    def _settings(self) -> Settings:
        values = {name: getattr(self, name) for name in Settings.names()}
        return Settings(**{**values, "exclude": tuple(self.exclude)})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkpointer = self.checkpointer_class(_Host(self), self._settings())
        self.startup: Startup | None = None  # made when the kernel starts serving
        self._restore_done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.restore_report: RestoreReport | None = None
        self._unshown: RestoreReport | None = None  # the report, until a cell shows it
        self._unshown_lock = threading.Lock()  # set by the restore's thread, taken by cells
        self._notices: list[str] = []  # sentences for the user, shown above the next cell
        self._told: set[tuple[str, str]] = set()  # the failures of ours told (see guarded)
        self._names_at_start: frozenset[str] = frozenset()
        self._shutdown_restart: bool | None = None  # what the shutdown request said
        self.panel = panel.StatePanel(_PanelHost(self), log=self.log)
        self.checkpointer.listeners.append(self.panel.changed)
        comm_manager = getattr(self, "comm_manager", None)
        if comm_manager is not None:  # the extension's comm (see persistent_kernel.panel)
            comm_manager.register_target(panel.TARGET, self.panel.opened)
        if self.shell is not None:
            serializer.import_dill()  # now that __main__ is the notebook's namespace
            # `%config PersistentKernel.x = y` reaches the configurables listed here.
            self.shell.configurables.append(self)
            from .magics import PersistMagics

            self.shell.register_magics(PersistMagics(shell=self.shell, kernel=self))
            self.shell.events.register("pre_run_cell", self._show_pending)
        quickexit.mark_start()  # before the notebook's code runs: see quickexit

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving, with the restore running beside it.

        The restore starts here, not in ``__init__`` (ipykernel hides whatever
        is in the namespace before its init code runs), in a thread, so that
        ``kernel_info`` is answered at once however large the checkpoint
        (servers give up on a kernel that stays silent for 60 s). A cell
        runs before the restore is done only if none of the names it may use
        is still to come: :meth:`execute_request` waits for those (or for the
        whole restore) and shows its progress.
        """
        super().start()
        checkpointer = self.checkpointer
        assert checkpointer is not None and self.shell is not None
        checkpointer.autosaver.record_baseline()
        self._install_sigterm_handler()
        key, notebook = session_key(os.environ, os.getcwd())
        startup = self.startup_class(
            self.checkpoint_dir, dict(os.environ), os.getcwd(),
            getattr(self.parent, "connection_file", None), key=key,
            writer_wait=self.writer_wait, log=self.log,
        )  # fmt: skip
        startup.progress.on_chunked = checkpointer.watch_restored
        if self.restore and self.lazy_restore:
            startup.progress.pages = self._page_server()
        self._names_at_start = frozenset(self.shell.user_ns)
        if notebook is not None or os.environ.get(SESSION_ENV):
            startup.first_cell.skip()  # nothing to learn from the first cell
        self.startup = startup
        if not self.restore:
            try:
                self._started(startup.unrestored())
            except Exception as exc:  # a checkpoint_dir that names no one place
                self.log.exception("persistent-kernel: checkpoints are off")
                self._notices.append(
                    f"persistent-kernel: checkpoints are off ({exc}); the kernel works "
                    "without them until it restarts."
                )
            self._restore_done.set_result(None)
            return
        threading.Thread(
            target=self._run_startup, args=(startup,), name="persistent-kernel-restore",
            daemon=True,
        ).start()  # fmt: skip

    def _page_server(self) -> lazypages.PageServer | None:
        """The server of lazily restored arrays, told to tell the user what goes wrong."""
        pages = lazypages.PageServer.open()
        if pages is None:
            return None

        def damaged(label: str, reason: str, size: int) -> None:
            self.log.error("persistent-kernel: a chunk of %s is damaged: %s", label, reason)
            self.notice(render.damaged_chunk_sentence(label, size, reason))

        def unreadable(label: str, reason: str) -> None:
            self.log.error("persistent-kernel: a chunk of %s cannot be read: %s", label, reason)
            self.notice(render.unreadable_chunk_sentence(label, reason))

        def replaced() -> None:
            self.log.warning("persistent-kernel: a page server ended; its spare serves")
            loop, checkpointer = getattr(self, "io_loop", None), self.checkpointer
            if loop is not None and checkpointer is not None:
                loop.add_callback(self.guarded, "a new standby", checkpointer.pages_replaced)

        def lost() -> None:
            self.log.error("persistent-kernel: the page server ended, and no spare is left")
            self.notice(render.page_server_lost_sentence())
            loop = getattr(self, "io_loop", None)
            if loop is not None:  # traits are set on the kernel's thread
                loop.add_callback(self.guarded, "turning checkpoints off", self._pages_lost)

        pages.on_damaged, pages.on_unreadable = damaged, unreadable
        pages.on_replaced, pages.on_lost = replaced, lost
        assert self.checkpointer is not None
        self.checkpointer.pages = pages
        return pages

    def _pages_lost(self) -> None:
        """No page server is left: a fork would wait for one forever (its fork event
        is never read), so no writer or standby is forked until the kernel restarts."""
        self.autosave = False
        self.standby = False

    @property
    def restoring(self) -> bool:
        """True while the start-up restore is still running."""
        return not self._restore_done.done()

    def _run_startup(self, startup: Startup) -> None:
        assert self.shell is not None
        try:
            self._started(startup.run(self.shell.user_ns))
        except Exception as exc:
            self.log.exception("persistent-kernel: restore failed")
            self._notices.append(
                f"persistent-kernel: the restore failed ({exc}); the kernel starts without "
                "it, and checkpoints are not written until it restarts."
            )
        finally:
            startup.progress.names.finish()  # nothing more is bound: no cell waits for it
            self._restore_done.set_result(None)
            loop = getattr(self, "io_loop", None)
            if loop is not None:  # the panel learns the restore ended
                loop.add_callback(self.guarded, "the state panel", self.panel.changed)
                # what cells changed while it ran is on no disk yet
                checkpointer = self.checkpointer
                assert checkpointer is not None
                loop.add_callback(self.guarded, "the checkpoint", checkpointer.maybe_checkpoint)

    def _started(self, outcome: Outcome) -> None:
        """The start-up restore ended: checkpoints go where it decided from now on."""
        checkpointer = self.checkpointer
        assert checkpointer is not None
        report = self.restore_report = outcome.report
        checkpointer.attach(outcome.target, report.carried, outcome.has_checkpoint, report.created)
        checkpointer.last_result = outcome.last_result or checkpointer.last_result
        self._notices.extend(outcome.notices)
        if report.restored or report.skipped or report.problems:
            # Warning level: the server's log shows it by default, as it shows the
            # kernel's other start-up notices.
            for line in render.restore_summary(report).splitlines():
                self.log.warning("%s", line)
            with self._unshown_lock:
                self._unshown = report

    async def _wait_for_restore(self, startup: Startup, code: str) -> None:
        """Hold a cell while a name it may use is still to be restored; show one
        progress line while it waits.

        The names are :func:`cellnames.names_used`; where it cannot tell, or
        before the restore has chosen its generation, the cell waits for the
        whole restore, as every first cell once did. Once its names are there
        with little left to load (``ENDING_BYTES``), it waits a moment more
        (``ENDING_WAIT`` at most) for the restore's end, so that on a small
        state the report shows above this first cell. The names are asked
        again after each wait: a notebook function loaded meanwhile may lead
        to more.
        The line says what is happening (waiting for the previous kernel's
        writer, then restoring) and is replaced by the restore report (or
        removed) when the wait ends, so it is not left in the notebook.
        An interrupt stops the wait and the restore and keeps what is loaded.
        """
        done = asyncio.wrap_future(self._restore_done)
        pending = startup.progress.names
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGINT)
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.signal(signal.SIGINT, lambda signum, frame: startup.cancel())
        shown = None
        ending: float | None = None  # until when the cell waits for the restore's end
        try:
            while not done.done():
                needed: set[str] | None = set()  # before the choice: wait for the choice
                if pending.chosen:
                    needed = self._names_needed(code)
                    if needed is not None and not pending.pending(needed):
                        # Little left to load: the restore ends in a moment, and its
                        # report and notices go above this cell, not a later one.
                        if pending.bytes_left > ENDING_BYTES:
                            break
                        now = loop.time()
                        ending = ending or now + ENDING_WAIT
                        if now >= ending:
                            break
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(asyncio.shield(done), ending - now)
                        continue
                if needed is None:
                    try:
                        await asyncio.wait_for(asyncio.shield(done), timeout=1.0)
                        break
                    except asyncio.TimeoutError:
                        pass
                elif await loop.run_in_executor(None, pending.wait_for, needed, 1.0):
                    continue  # those came: ask again, the cell may lead to more
                waits_for = pending.pending(needed) if needed else None
                text = render.progress_text(startup.progress, startup.waited(), waits_for)
                if shown is None:
                    shown = display({"text/plain": text}, raw=True, display_id=True)
                else:
                    shown.update({"text/plain": text}, raw=True)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        if self.restoring:  # the cell runs beside the restore
            checkpointer = self.checkpointer
            assert checkpointer is not None
            checkpointer.cell_during_restore()
        if shown is not None:
            report = self._take_report() if done.done() else None
            if report is not None:
                shown.update(render.restore_data(report), raw=True)
            else:
                clear_output()

    def _names_needed(self, code: str) -> set[str] | None:
        """The names the cell *code* may use (None: it cannot tell); see cellnames."""
        shell = self.shell
        assert shell is not None
        return cellnames.names_used(code, shell.user_ns, shell.transform_cell)

    def _take_report(self) -> RestoreReport | None:
        """The restore report, if it is still to be shown (once)."""
        with self._unshown_lock:
            report, self._unshown = self._unshown, None
        return report

    def _first_cell_ready(self, startup: Startup, content: dict[str, Any]) -> bool:
        """Whether an execute request must wait for the restore; records what it says.

        A kernel with no notebook path decides whose state it has at the first
        cell a user runs. Requests a client makes for itself before that
        (VS Code's start code: ``store_history`` false) run at once.
        """
        if startup.first_cell.seen:
            return True
        if not content.get("store_history", True):
            return False
        assert self.shell is not None
        vscode_file = self.shell.user_ns.get(identity.VSCODE_FILE_VAR)
        # What the client's own start code bound is the client's, not the notebook's.
        for name in set(self.shell.user_ns) - self._names_at_start:
            self.shell.user_ns_hidden[name] = self.shell.user_ns[name]
        startup.first_cell.record(
            bool(content.get("allow_stdin", True)),
            vscode_file if isinstance(vscode_file, str) else None,
        )
        return True

    def _show_pending(self, *args: Any) -> None:
        """Show the restore report and the notices above the cell that starts."""
        report = self._take_report()
        if report is not None:
            display(render.restore_data(report), raw=True)
        while self._notices:
            print(self._notices.pop(0), flush=True)

    def notice(self, text: str) -> None:
        """Show *text* above the next cell's output (once)."""
        self._notices.append(text)

    # -- cells ------------------------------------------------------------------------

    async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
        checkpointer = self.checkpointer
        assert checkpointer is not None
        content = parent.get("content", {}) if isinstance(parent, dict) else {}
        content = content if isinstance(content, dict) else {}
        source = content.get("code", "")
        self.guarded("preparing the checkpoint of this cell", checkpointer.cell_started, source)
        before = getattr(self.shell, "last_execution_result", None)
        ended = beside = False
        try:
            startup = self.startup
            if self.restoring and startup is not None:
                beside = await self._hold_for_restore(startup, content)
            await super().execute_request(stream, ident, parent)
            ended = True
        finally:
            # Interrupted (a restart interrupts the running cell first), stopped
            # by a shutdown request or broken off: held back until the user goes on.
            result = getattr(self.shell, "last_execution_result", None)
            error = getattr(result, "error_in_exec", None) if result is not before else None
            interrupted = (
                not ended
                or self._shutdown_restart is not None
                or isinstance(error, KeyboardInterrupt)
            )
            self.guarded("recording the cell", checkpointer.cell_finished, interrupted)
            if beside and isinstance(error, NameError):
                self.guarded("looking at the cell's error", self._missed_name, error)
            loop = getattr(self, "io_loop", None)
            if loop is not None and threading.current_thread() is threading.main_thread():
                # Before the kernel reports idle: once a client sees it idle, the
                # cell's changes are held by a writer or a standby (see snapshot.Standby).
                self.guarded("the checkpoint", checkpointer.maybe_checkpoint)
            elif loop is not None:  # thread-safe: subshell cells end on other threads
                loop.add_callback(self.guarded, "the checkpoint", checkpointer.maybe_checkpoint)
            if loop is not None:
                loop.add_callback(self.guarded, "the state panel", self.panel.changed)
            if loop is not None and interrupted:
                loop.call_later(
                    INTERRUPT_GRACE, self.guarded, "the checkpoint after an interrupt",
                    checkpointer.accept_interrupted,
                )  # fmt: skip

    async def _hold_for_restore(self, startup: Startup, content: dict[str, Any]) -> bool:
        """A cell waits for the names it uses (see :meth:`_wait_for_restore`); a fault
        of ours in the wait is told, and the cell waits for the whole restore (without
        progress) before it runs. True if the cell runs beside the restore."""
        try:
            if self._first_cell_ready(startup, content):
                code = content.get("code", "")
                await self._wait_for_restore(startup, code if isinstance(code, str) else "")
        except Exception as exc:
            self._failed("showing the restore's progress", exc)
            await asyncio.wrap_future(self._restore_done)
        return self.restoring

    def _missed_name(self, error: NameError) -> None:
        """A cell that ran beside the restore failed on a name the restore had not bound
        yet: it reached the name in a way :func:`cellnames.names_used` cannot see (a
        function kept in a container, a library reading ``__main__``). Say so."""
        name, startup, shell = getattr(error, "name", None), self.startup, self.shell
        if not isinstance(name, str) or startup is None or shell is None:
            return
        if startup.progress.names.pending([name]) or name in shell.user_ns:
            self.notice(render.missed_name_sentence(name))

    def guarded(self, what: str, hook: Callable[..., object], *args: Any) -> None:
        """Run *hook*, one of ours on a cell's path: a failure is told, never raised.

        No exception of the checkpointer may keep a cell from its reply: the
        cell runs (or has run) as usual, the traceback goes to the log, and the
        user reads one sentence above the next cell, once for each kind of
        failure (a fault that repeats at every cell is not repeated).
        """
        try:
            hook(*args)
        except Exception as exc:
            self._failed(what, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        """Log the exception being handled; tell the user once (see :meth:`guarded`)."""
        self.log.exception("persistent-kernel: %s failed", what)
        kind = (what, type(exc).__name__)
        if kind not in self._told:
            self._told.add(kind)
            self.notice(
                f"persistent-kernel: {what} failed ({exc}); your cells run as usual, "
                "and the last checkpoint is kept."
            )

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
        if self.startup is not None and self.restoring:
            self.startup.cancel()  # it waits for nothing more: the kernel ends
            # Stopped at its next group, it carries the groups it did not load into
            # the final checkpoint, byte for byte; stopped later than that, nothing is
            # written (the checkpointer has no target): never a partial namespace.
            with contextlib.suppress(concurrent.futures.TimeoutError):
                self._restore_done.result(timeout=RESTORE_END_WAIT)
        assert self.checkpointer is not None
        try:
            self.checkpointer.final(self._shutdown_restart)
        except Exception:
            # No cell is left to tell: the log is the only reader now.
            self.log.exception("persistent-kernel: final checkpoint failed")

    def do_shutdown(self, restart: bool) -> Any:
        self._shutdown_restart = bool(restart)  # a cell it ends is not a finished cell
        return super().do_shutdown(restart)

    def prepare_exit(self) -> None:
        """Called after :meth:`final_checkpoint` when the kernel stopped cleanly.

        With ``fast_exit``, arms :mod:`quickexit`: the namespace values are kept
        alive, so IPython's exit handler clears the namespace without freeing
        them, and the process ends after the other exit handlers (see there).
        An inline final checkpoint has returned by now and a forked one is on
        its own, so nothing still needs these objects.
        """
        if self.fast_exit and self.shell is not None:
            quickexit.arm_namespace(self.shell.user_ns, self.shell.user_ns_hidden)

    def _install_sigterm_handler(self) -> None:
        """SIGTERM between cells stops the loop, so the final checkpoint runs.

        During a cell the namespace is half-changed: the standby (if the cell
        started on unsaved changes) writes the state from before the cell,
        and the kernel dies at once.
        """
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            checkpointer = self.checkpointer
            if checkpointer is not None and checkpointer.autosaver.running:
                checkpointer.write_standby_if_running()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            loop = getattr(self, "io_loop", None)
            if loop is not None:
                loop.asyncio_loop.call_soon_threadsafe(loop.stop)

        signal.signal(signal.SIGTERM, on_sigterm)


class _Host:
    """What the checkpointer sees of its kernel (see :class:`checkpointer.Host`)."""

    def __init__(self, kernel: PersistentKernel) -> None:
        self.kernel, self.log = kernel, kernel.log
        self.notice = kernel.notice
        self._loop: Loop | None = None

    def namespace(self) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.kernel.shell is not None
        return self.kernel.shell.user_ns, self.kernel.shell.user_ns_hidden

    @property
    def loop(self) -> Loop | None:
        if self._loop is None and getattr(self.kernel, "io_loop", None) is not None:
            self._loop = TornadoLoop(self.kernel.io_loop)
        return self._loop

    def stopping(self) -> bool:
        return bool(self.kernel.shell is not None and self.kernel.shell.exit_now)


class _PanelHost:
    """What the state panel sees of its kernel (see :class:`panel.Kernel`)."""

    def __init__(self, kernel: PersistentKernel) -> None:
        self.kernel = kernel

    @property
    def autosave(self) -> bool:
        return bool(self.kernel.autosave)

    @property
    def checkpointer(self) -> Checkpointer | None:
        return self.kernel.checkpointer

    def restore_progress(self) -> panel.Progress | None:
        startup = self.kernel.startup
        if startup is None or not self.kernel.restoring:
            return None
        return panel.Progress(startup.progress, startup.waited())

    def run_persist(self, line: str) -> tuple[bool, str]:
        return panel.run_magic(self.kernel.shell, line)

    def namespace(self) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.kernel.shell is not None
        return self.kernel.shell.user_ns, self.kernel.shell.user_ns_hidden

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        loop = getattr(self.kernel, "io_loop", None)
        if loop is not None:
            loop.call_later(delay, self.kernel.guarded, "the state panel", callback)
