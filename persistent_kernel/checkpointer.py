"""Writing checkpoints: jobs, writers and their settling, write tracking, the standby.

:class:`Checkpointer` is the one lifecycle of a kernel's checkpoints. The
kernel hands it a small :class:`Host` (the namespace, the log, a way to tell
the user, the event loop) and frozen :class:`Settings`, tells it what
happens (a cell starts or ends, the kernel stops) and it decides, through
the :class:`~persistent_kernel.autosave.Autosaver` policy, when to write:

* a checkpoint is a *job* (a function returning the writer's result) built
  from the namespace at one instant and run in a forked, detached writer
  (:mod:`snapshot`) that a :class:`~persistent_kernel.writerwatch.WriterWatch`
  follows until it reports; or inline, where fork is unavailable;
* :class:`_Tracking` holds the write tracker of large arrays
  (:mod:`pagewrites`), made only once large arrays exist;
* :class:`_Standby` holds the standby forked when a cell starts on unsaved
  changes (written only if the kernel stops during the cell);
* a session mirrored to a bucket is uploaded by the writer after its
  commit; the policy retries a failed upload later.

Nothing here is a kernel: tests drive it in process with a fake host and
the inline writer (``background='inline'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import checkpoint, namespace, notebook, pagewrites, render, serializer, snapshot
from .autosave import Autosaver, Failure, Ticket
from .checkpoint import CarriedGroup, CheckpointResult
from .errors import PagesLost, PersistentKernelError, UnreadableSettings
from .store import SessionStore, Store, chunks, follow, is_disk_error
from .writerwatch import Loop, WriterWatch, deadline_for

if TYPE_CHECKING:
    from .store.tiers import Mirror  # a bucket only: see store.where

T = TypeVar("T")


class Host(Protocol):
    """What the checkpointer needs of the kernel that hosts it."""

    log: logging.Logger

    def namespace(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The user's namespace and the names hidden from it (``user_ns_hidden``)."""
        ...

    def notice(self, text: str) -> None:
        """Tell the user *text* once, above the next cell's output."""
        ...

    @property
    def loop(self) -> Loop | None:
        """The event loop, once the kernel serves (None before, and in tests without one)."""
        ...

    def stopping(self) -> bool:
        """The kernel is about to stop (``exit()``): no checkpoint starts but the final one."""
        ...


@dataclass(frozen=True)
class Settings:
    """The kernel's configuration as the checkpointer reads it (the traits of the same
    names on :class:`~persistent_kernel.kernel.PersistentKernel` document each)."""

    checkpoint_dir: str = ""
    checkpoint_interval: float = 30.0
    autosave: bool = True
    exclude: tuple[str, ...] = ()
    keep: int = 5
    background: str = "auto"
    writer_timeout: float = 120.0
    standby: bool = True
    track_writes: bool = True
    writer_wait: float = 300.0

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class Target:
    """Which session checkpoints go to, and what a manifest says of the notebook."""

    store: Store  # where checkpoints live (see store.where)
    session: SessionStore  # on this machine's disk: where the writer commits
    key: str
    notebook: str | None = None
    kernel_id: str | None = None
    known_cells: frozenset[str] = frozenset()
    ephemeral: bool = False  # a batch run's state: removed at a shutdown for good
    mirror: Mirror | None = None  # the bucket this session is mirrored to, if any
    #: the bucket's old generations may be pruned (a start saw the bucket)
    prune_mirror: bool = True
    settings: dict[str, Any] | None = field(default=None, repr=False)


class _Tracking:
    """The tracker of writes to large buffers (see :mod:`pagewrites`); made when first
    needed, so that a kernel without large arrays never opens a userfaultfd."""

    def __init__(self, log: logging.Logger, enabled: bool) -> None:
        self.log = log
        self.enabled = enabled
        # None: not made yet; False: the operating system cannot tell
        self._tracker: pagewrites.Tracker | bool | None = None

    @property
    def unknown(self) -> bool:
        """No tracker was made yet, nor found impossible."""
        return self._tracker is None

    def get(self, create: bool = False) -> pagewrites.Tracker | None:
        """The tracker; made first if *create* (there are large buffers). None where
        turned off or where the operating system cannot tell."""
        if not self.enabled:
            return None
        if self._tracker is None and create:
            watcher = pagewrites.Watcher.open()
            self._tracker = (
                pagewrites.Tracker(watcher, chunks.chunk_size) if watcher is not None else False
            )
        return self._tracker if isinstance(self._tracker, pagewrites.Tracker) else None

    def step(self, call: Callable[..., T], *args: Any) -> T | None:
        """``call(*args)``, a step of write tracking; should it fail, tracking stops
        (every chunk is hashed from then on) and the kernel goes on."""
        try:
            return call(*args)
        except Exception:
            self.log.warning("persistent-kernel: write tracking stopped", exc_info=True)
            self.close(False)
            return None

    def close(self, then: bool | None = None) -> None:
        """Stop tracking: no page faults for a tracking nobody reads. *then*: None to
        allow a new tracker later, False never to try again."""
        tracker, self._tracker = self._tracker, then
        if isinstance(tracker, pagewrites.Tracker):
            with contextlib.suppress(Exception):
                tracker.close()


class _Standby:
    """At most one standby at a time, and the exited ones not reaped yet."""

    def __init__(self) -> None:
        self.current: snapshot.Standby | None = None
        self.registration: tuple[int, Path] | None = None
        self.exited: list[snapshot.Standby] = []
        self.pause = 0.0  # seconds the last standby cost the cell that started it

    def start(
        self,
        session: SessionStore,
        job: snapshot.Job,
        deadline: float,
        epoch: int = 0,
        note: Callable[[dict[str, Any]], None] | None = None,
        inherit: Iterable[int] = (),
    ) -> None:
        """Fork a standby holding the state of change count *epoch* (see :meth:`holds`);
        it keeps *inherit* open besides its lock."""
        began = time.perf_counter()
        for old in list(self.exited):
            if old.reap():
                self.exited.remove(old)
        try:
            session.ensure()
            registration = session.locks.register_writer(standby=True)
        except (OSError, PersistentKernelError):
            # No standby: the idle checkpoint meets the same fault (a full disk,
            # an unreadable format marker) and tells the user.
            return

        def announced() -> dict[str, Any]:
            try:
                return job()
            finally:
                session.locks.release_writer(*registration)

        try:
            self.current = snapshot.start_standby(
                announced, [registration[0], *inherit], deadline, epoch, note
            )
        finally:
            if registration[0] >= 0:
                os.close(registration[0])
        self.registration = registration
        self.pause = time.perf_counter() - began

    def holds(self, epoch: int) -> bool:
        """Whether a live standby holds the state of change count *epoch* (one the
        OOM killer or a user took is let go, and the next change forks another)."""
        current = self.current
        if current is None or current.epoch != epoch:
            return False
        if current.reap():  # it has exited: nothing holds that state any more
            self.drop()
            return False
        return True

    def cell(self, source: str) -> None:
        """A cell starts (the standby holds the state from before it)."""
        if self.current is not None:
            self.current.cell(source)

    def cell_ended(self) -> None:
        """The cell changed nothing: the standby's state is still the newest."""
        if self.current is not None:
            self.current.cell_ended()

    def write(self) -> bool:
        """Tell the standby to write the state it holds; False if there is none."""
        standby, self.current = self.current, None
        if standby is None:
            return False
        standby.write()
        return True

    def drop(self) -> None:
        standby, self.current = self.current, None
        registration, self.registration = self.registration, None
        if standby is None:
            return
        standby.drop()
        if registration is not None:
            with contextlib.suppress(OSError):
                registration[1].unlink()
        if not standby.reap():
            self.exited.append(standby)


class Served(Protocol):
    """Who serves the pages of lazily restored arrays (``lazypages.PageServer``): a
    forked writer checks, before it commits, that the server that served it when
    it was forked still runs (where it ended, pages not placed read as zeros)."""

    def current(self) -> int | None:
        """A pidfd of the serving process (None: none), for :meth:`serving`."""
        ...

    def serving(self, pidfd: int | None) -> bool:
        """Whether the process of *pidfd* still serves."""
        ...

    def descriptors(self) -> list[int]:
        """The pidfds a forked writer keeps open."""
        ...

    @property
    def lost(self) -> bool:
        """No server is left: a fork would wait forever for one to read its event,
        and a page not placed yet cannot be read."""
        ...


class Checkpointer:
    """Checkpoints of one kernel: when (the policy), how (jobs, writers) and what came of it."""

    def __init__(self, host: Host, settings: Settings, autosaver: Autosaver | None = None) -> None:
        self.host = host
        self.settings = settings
        self.autosaver = autosaver or Autosaver(
            time.monotonic, settings.checkpoint_interval, settings.autosave
        )
        self.writers = WriterWatch(None, self._on_writer_done)
        self.target: Target | None = None  # None until the start-up restore has ended
        self.last_result: CheckpointResult | None = None
        #: The last checkpoint of this kernel that wrote a generation (what it wrote).
        self.committed: CheckpointResult | None = None
        #: What the last upload to the bucket did (generation, bytes, seconds) or its error.
        self.last_upload: dict[str, Any] | None = None
        #: The one sentence why the last checkpoint failed; None once one succeeds.
        self.last_failure: str | None = None
        self.tracking = _Tracking(host.log, settings.track_writes)
        self.standby = _Standby()
        self._ticket: Ticket | None = None
        self._timer: Any = None
        self._unfollowed: str | None = None  # the key a failed move was told for
        #: Called (no arguments, on the kernel's thread) when a checkpoint starts or ends,
        #: so that a watcher (the kernel's state comm) reads the state again.
        self.listeners: list[Callable[[], None]] = []
        self._listener_failed = False  # told once
        #: The server of lazily restored arrays, once a restore mapped one (see Served).
        self.pages: Served | None = None

    # -- configuration and target -----------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """New settings (``%config``); the policy and the tracker follow at once."""
        self.settings = settings
        self.autosaver.interval = settings.checkpoint_interval
        self.autosaver.enabled = settings.autosave
        self.tracking.enabled = settings.track_writes
        if not settings.track_writes:
            self.tracking.close()
        if not (settings.autosave and settings.standby):
            self.standby.drop()  # nothing is written by itself any more, even at a kill
        self.maybe_checkpoint()

    def attach(
        self,
        target: Target,
        pending: Iterable[CarriedGroup] = (),
        has_checkpoint: bool = False,
        written_at: float | None = None,
    ) -> None:
        """Checkpoints go to *target* from now on: the start-up restore has ended, leaving
        *pending* the groups it did not load; the newest generation was written at the
        wall-clock time *written_at* (see :meth:`Autosaver.restored`)."""
        ago = None if written_at is None else time.time() - written_at
        self.autosaver.restored(pending, has_checkpoint=has_checkpoint, written_ago=ago)
        self.target = target  # no checkpoint now: this runs on the restore's thread

    @property
    def session(self) -> SessionStore:
        assert self.target is not None, "no session before the start-up restore has ended"
        return self.target.session

    def follow_renames(self) -> None:
        """Move this notebook's session where the Jupyter server says the notebook went (a
        rename or a delete while this kernel ran: see :mod:`.store.follow`), so that the
        checkpoints from now on are the notebook's under its new name. Waits for this
        kernel's writer first; a move that fails is told once, and tried again at the
        next checkpoint (the checkpoints go to the old name meanwhile)."""
        target = self.target
        if target is None or follow.forwarded(target.session) is None:
            return
        self.wait_for_writer()
        self.standby.drop()
        old = target.key
        local = target.store.local()
        try:
            key = follow.follow(local, old)
        except OSError as exc:
            if self._unfollowed != old:
                self._unfollowed = old
                self.host.notice(
                    f"persistent-kernel: this notebook was renamed, but its checkpoints could "
                    f"not be moved to the new name ({exc}); they stay under {old}."
                )
            return
        self._unfollowed = None
        self.host.log.warning("persistent-kernel: the notebook's checkpoints moved to %s", key)
        target.key, target.session, target.settings = key, local.session(key), None
        target.mirror = target.store.mirror(key)
        if target.notebook == old and os.path.exists(key):
            target.notebook = key
            target.known_cells = notebook.cell_set(key)

    def notebook_settings(self) -> dict[str, Any]:
        """This notebook's ``%persist exclude``/``include`` lists, read once."""
        target = self.target
        assert target is not None
        if target.settings is None:
            target.settings = target.session.read_settings()
        return target.settings

    def update_notebook_settings(self, settings: dict[str, Any]) -> None:
        """Keep *settings* for this notebook, across restarts."""
        self.session.write_settings(settings)
        assert self.target is not None
        self.target.settings = settings

    def forked(self) -> bool:
        """Whether writers are forked (else checkpoints are written inline)."""
        return self.settings.background != "inline" and snapshot.fork_supported()

    def _deadline(self) -> float:
        return deadline_for(self.settings.writer_timeout, snapshot.resident_bytes())

    # -- when -------------------------------------------------------------------------

    def cell_started(self, source: str | None = None) -> None:
        """A cell starts: on unsaved changes, a standby holds the state before it.

        The one kept since the last change (see :meth:`maybe_checkpoint`) holds
        it already, unless a user thread may have changed the namespace since;
        otherwise one is forked now. *source*: the cell's code, for the note a
        kill leaves (which cell it cut); a cell that only looks
        (:func:`namespace.looks_only`) is no change. None: not known.
        """
        autosaver = self.autosaver
        changes = autosaver.cell_started()  # always: it counts the cell
        if source is not None and namespace.looks_only(source):
            autosaver.read_only()  # its end is no change: the standby stays
        if changes:
            # an interrupted cell's standby, if any, is dropped: its state is accepted
            self._hold_standby(anew=autosaver.user_threads_alive())
        self.standby.cell(source or "")

    def cell_during_restore(self) -> None:
        """A cell runs before the start-up restore has ended (it needs none of the names
        still to come): what it changes is on no disk, so the restore's end must not
        count it as saved (see :meth:`Autosaver.restored`). No checkpoint is written
        before that end (there is no target): it would save a partial namespace."""
        self.autosaver.cell_during_restore()

    def cell_finished(self, interrupted: bool) -> None:
        """A cell ended (*interrupted*: by an interrupt or a shutdown). Thread-safe.

        A standby whose state the cell changed is let go (the next one is forked
        once the kernel is idle); after a cell that changed nothing it stays.
        """
        autosaver = self.autosaver
        autosaver.cell_finished(interrupted=interrupted)
        if autosaver.running or autosaver.interrupted:
            return
        if self.standby.holds(autosaver.epoch):
            self.standby.cell_ended()
        else:
            self.standby.drop()

    def accept_interrupted(self) -> None:
        """No shutdown followed the interrupt: the user goes on from the state it left."""
        if self.autosaver.interrupted and not self.autosaver.running:
            self.autosaver.accept_interrupted()
            self.standby.drop()
            self.maybe_checkpoint()

    def maybe_checkpoint(self) -> None:
        """Checkpoint now, or set a timer for when the interval has passed."""
        loop = self.host.loop
        if self._timer is not None and loop is not None:
            loop.cancel(self._timer)
        self._timer = None
        if self.target is None or loop is None or self.host.stopping():
            return
        autosaver = self.autosaver
        if autosaver.enabled and not autosaver.dirty and not autosaver.running:
            autosaver.threads_changed()  # a user thread may have changed the namespace
        wait = autosaver.due()
        if wait is not None and wait <= 0:
            self.start_checkpoint()
            return
        if wait is not None:
            self._timer = loop.call_later(wait, self._on_timer)
        self._keep_standby()  # also while a writer saves an older state

    def _keep_standby(self) -> None:
        """Until the interval lets a checkpoint save them, the changes of the cells that
        finished are held by a standby, which writes them if the kernel is killed."""
        autosaver = self.autosaver
        if autosaver.running or autosaver.interrupted or not autosaver.dirty:
            return
        self._hold_standby()

    def pages_replaced(self) -> None:
        """A page server ended and its spare took over (see :class:`Served`): the
        standby forked before would fail its check, so it is let go, and one is forked
        anew for the changes of the cells that finished (at the running cell's end,
        if one runs). A running writer fails its check and is written again."""
        self.standby.drop()
        self._keep_standby()

    def _hold_standby(self, anew: bool = False) -> None:
        """Have a standby hold the namespace as it is now: the one kept if it holds this
        state already, else a new one (*anew*: always a new one, as a user thread may
        have changed the namespace since the last was forked)."""
        if anew or not self.standby.holds(self.autosaver.epoch):
            self.standby.drop()
            self._start_standby()

    def _on_timer(self) -> None:
        self._timer = None
        self.maybe_checkpoint()

    # -- how --------------------------------------------------------------------------

    def _job(
        self,
        beacon: snapshot.Beacon | None,
        forked: bool = True,
        final: bool = False,
        tracked: int | None = None,
        ended: dict[str, Any] | None = None,
    ) -> snapshot.Job:
        """The checkpoint's work, to run in a forked writer (or inline: not *forked*).

        *final*: the kernel is ending; no cell will run beside the writer, and
        the next kernel waits for it, so its helper process (if any) is not
        made to yield.
        *tracked*: the read end of a pipe on which the writer receives what
        :meth:`pagewrites.Tracker.forked` says once the kernel has forked it.
        *ended*: a standby's; filled in the standby before the job runs, with how
        the kernel ended (recorded in the generation, for the restore's report).
        """
        target = self.target
        assert target is not None
        try:
            settings = self.notebook_settings()
        except UnreadableSettings as exc:
            # Its exclude list is unknown: save nothing rather than what it may exclude.
            refused = exc

            def refuse() -> dict[str, Any]:
                raise refused

            return refuse
        user_ns, hidden = self.host.namespace()
        own = settings.get("exclude", [])
        exclude = [*self.settings.exclude, *own]
        include = settings.get("include", [])
        values, skipped = namespace.select(user_ns, hidden, self.settings.exclude, include, own)
        self.autosaver.culprits.apply(values, skipped)
        inputs = list(user_ns.get("In") or [])  # for `%persist rerun`, and `Cleared`
        self.autosaver.cleared_values.apply(user_ns, values, skipped, inputs)
        excluded = [
            n
            for n in self.autosaver.pending_names()
            if namespace.matches_any(n, exclude) and not namespace.matches_any(n, include)
        ]
        carried = self.autosaver.carry([*values, *skipped, *excluded])
        types = {name: serializer.type_name(user_ns[name]) for name in skipped if name in user_ns}
        session = target.session
        info: dict[str, Any] = {
            "session": target.key,
            "notebook": target.notebook,
            "kernel_id": target.kernel_id,
        }
        known = target.known_cells
        keep = self.settings.keep
        on_variable = beacon.set if beacon is not None else None
        upload = self._uploader(target, final)
        tracker = self.tracking.get() if tracked is not None else None
        if tracker is not None:
            arrays = pagewrites.top_level_buffers(values, chunks.THRESHOLD)
            self.tracking.step(tracker.watch_new, arrays)
        before_commit = self._served_check() if forked else None

        def job() -> dict[str, Any]:
            # Chunks are named, and buffers watched, by address only where the memory is
            # the namespace's, not a copy made while pickling (see pagewrites.Holdings).
            holdings = pagewrites.Holdings(values, chunks.THRESHOLD) if forked else None
            names = None
            if tracker is not None and tracked is not None and holdings is not None:
                names = holdings.names(tracker.reusable(pagewrites.receive(tracked, timeout=10.0)))
            # Read in the writer, not the kernel: a notebook with outputs can be large.
            info.update(notebook.cells_for_checkpoint(session, info, known))
            if ended:  # a standby's, written because its kernel ended (see snapshot.Standby)
                info["ended"] = dict(ended)
            result = checkpoint.write_checkpoint(
                session,
                values,
                skipped,
                info,
                keep,
                carried=carried,
                on_variable=on_variable,
                on_bytes=beacon.progress if beacon is not None else None,
                inputs=inputs,
                second_core=forked,
                urgent=final,
                known=names,
                skipped_types=types,
                before_commit=before_commit,
            ).to_dict()
            # only a forked writer's buffers are watched (see _settle)
            result["buffers"] = holdings.reported(result["buffers"]) if holdings else []
            if holdings is not None and holdings.failure is not None:
                result["notes"].append(
                    f"large arrays were hashed whole: which memory the namespace owns could not "
                    f"be told ({holdings.failure})"
                )
            if upload is not None and (outcome := upload()) is not None:
                result["upload"] = outcome
            return result

        return job

    def _served_check(self) -> Callable[[], None] | None:
        """What a writer forked next runs before it commits: a check that the page
        server that serves it then has not ended (see :class:`Served`)."""
        pages = self.pages
        if pages is None:
            return None
        pidfd = pages.current()
        if pidfd is None:
            return None

        def check() -> None:
            if not pages.serving(pidfd):
                raise PagesLost(render.pages_lost_in_writer_sentence())

        return check

    def _unserved(self) -> bool:
        """No page server is left (see :attr:`Served.lost`): nothing may be forked."""
        return self.pages is not None and self.pages.lost

    def inherited(self) -> list[int]:
        """Descriptors a forked writer or standby keeps (see :class:`Served`)."""
        return self.pages.descriptors() if self.pages is not None else []

    def _uploader(
        self, target: Target, final: bool = False
    ) -> Callable[[], dict[str, Any] | None] | None:
        """What the writer runs after its commit, for a session mirrored to a bucket:
        the upload of what the bucket lacks (``{}`` when it lacks nothing). None while
        a failed upload backs off (see :meth:`Autosaver.uploaded`), unless *final*."""
        mirror = target.mirror
        if mirror is None:
            return None
        from .store.tiers import upload_in_child  # a bucket only: see store.where

        keep = self.settings.keep if target.prune_mirror else 0
        if not (final or self.autosaver.upload_due()):
            return None  # a failed upload backs off; the local checkpoint does not wait

        def upload() -> dict[str, Any] | None:
            return upload_in_child(mirror, keep) if mirror.pending() else {}

        return upload

    def start_checkpoint(
        self, *, detach: bool = True, covers_running_cell: bool = False, final: bool = False
    ) -> snapshot.Writer:
        """Snapshot the namespace now; in a forked writer unless told otherwise.

        *covers_running_cell*: called as the last line of the running cell
        (``%persist save``), so the snapshot holds all of that cell's changes.
        *final*: the kernel's last checkpoint (see :meth:`_job`).
        """
        self.follow_renames()
        began = time.perf_counter()
        forked = detach and self.forked()
        beacon = snapshot.Beacon() if forked else None
        wanted = forked
        # the namespace is looked through for large arrays only while no tracker was made
        create = wanted and self.tracking.unknown and self._has_large_arrays()
        if wanted and self.tracking.get(create=create) is None:
            wanted = False
        pipe = os.pipe() if wanted else None
        try:
            job = self._job(beacon, forked, final, pipe[0] if pipe else None)
            threads = self.autosaver.user_threads_alive()
            ticket = self._ticket = self.autosaver.begin(
                covers_running_cell=covers_running_cell, threads=threads
            )
            return self._start_writer(job, ticket, began, forked, beacon, pipe)
        finally:
            for fd in pipe or ():
                os.close(fd)

    def _has_large_arrays(self) -> bool:
        """Whether a name is bound to an array large enough to be chunked."""
        user_ns, _ = self.host.namespace()
        return bool(pagewrites.top_level_buffers(user_ns, chunks.THRESHOLD))

    def _start_writer(
        self,
        job: snapshot.Job,
        ticket: Ticket,
        began: float,
        forked: bool,
        beacon: snapshot.Beacon | None,
        pipe: tuple[int, int] | None,
    ) -> snapshot.Writer:
        """Run *job*, forked unless not *forked*; *pipe*: see :meth:`_job`."""
        if self._unserved():
            refused = PagesLost(render.pages_lost_sentence())
            writer = snapshot.Writer(None, None, snapshot.failure(refused))
            self._settle(ticket, writer)
            return writer
        if not forked:
            writer = snapshot.run_inline(job)
            writer.pause = time.perf_counter() - began
            self._ticket = ticket
            self._on_writer_done(writer)  # as a forked writer's report: a retry is timed
            return writer
        session = self.session
        try:
            session.ensure()
            registration = session.locks.register_writer()
        except (OSError, PersistentKernelError) as exc:  # a full disk, a damaged root
            writer = snapshot.Writer(None, None, snapshot.failure(exc))
            self._settle(ticket, writer)
            return writer

        def announced_job() -> dict[str, Any]:
            try:
                return job()
            finally:
                session.locks.release_writer(*registration)

        deadline = self._deadline()
        inherit = [registration[0], *(pipe[:1] if pipe else ()), *self.inherited()]
        try:
            writer = snapshot.start_forked(announced_job, inherit, deadline)
        finally:
            os.close(registration[0])  # the writer holds its own copy of the lock
        tracker = self.tracking.get() if pipe else None  # made before the fork
        if pipe and tracker is not None:
            # after the fork: see pagewrites
            pagewrites.send(pipe[1], self.tracking.step(tracker.forked) or b"")
            writer.tracked_fork = tracker.forks
        writer.pause = time.perf_counter() - began
        writer.beacon = beacon
        self.writers.loop = self.host.loop
        self.writers.watch(writer, deadline)
        self._changed()
        return writer

    def _changed(self) -> None:
        """Tell the listeners; one that fails is logged, and never stops a checkpoint."""
        for listener in list(self.listeners):
            try:
                listener()
            except Exception as exc:
                self.host.log.exception("persistent-kernel: a state listener failed")
                if not self._listener_failed:
                    self._listener_failed = True
                    self.host.notice(
                        f"persistent-kernel: the kernel state panel stopped updating ({exc}); "
                        "checkpoints go on, and %persist shows their state."
                    )

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

    def clear(self, *, covers_running_cell: bool = False) -> None:
        """Delete this notebook's checkpoints; what the namespace holds now is not saved
        until its name is assigned again (see :class:`~persistent_kernel.autosave.Cleared`).

        Changes made from now on (and the rest of the running cell, unless
        *covers_running_cell*) are checkpointed again.
        """
        self.wait_for_writer()
        self.standby.drop()
        session, mirror = self.session, self.target.mirror if self.target else None
        with session.locks.locked(timeout=60):
            (mirror or session).clear()  # a mirror clears the bucket's copy too
        self.autosaver.cleared(covers_running_cell=covers_running_cell)
        user_ns, _ = self.host.namespace()
        self.autosaver.cleared_values.clear(user_ns, len(user_ns.get("In") or []))
        self.last_result = None
        self.committed = None

    # -- what came of it ------------------------------------------------------------------

    def _on_writer_done(self, writer: snapshot.Writer) -> None:
        ticket = self._ticket
        assert ticket is not None
        self._settle(ticket, writer)
        loop = self.host.loop
        if loop is not None:
            loop.call_soon(self.maybe_checkpoint)

    def _settle(self, ticket: Ticket, writer: snapshot.Writer) -> None:
        """Tell the policy how the checkpoint of *ticket* ended; tell the user if needed."""
        log = self.host.log
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
            tracker = self.tracking.get(create=bool(buffers))
            if tracker is not None:
                self.tracking.step(tracker.committed, writer.tracked_fork, buffers)
        if result.ok:
            log.info(
                "persistent-kernel: checkpoint %s %s: %d saved, %d skipped, %s written in %.2f s",
                result.generation, "unchanged" if result.unchanged else "written",
                len(result.saved), len(result.skipped), render.human_size(result.written),
                result.elapsed,
            )  # fmt: skip
            wrote = not result.unchanged
            self.last_failure = None
            if wrote:
                self.committed = result
            notice = self.autosaver.succeeded(ticket, wrote=wrote)
            if not self.autosaver.dirty:
                self.standby.drop()  # what it holds is saved
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
            user_ns, _ = self.host.namespace()
            idents = {n: id(user_ns[n]) for n in culprit.split(",") if n in user_ns}
            # The disk written is the local one (a bucket's cache tier); never the URL as
            # configured, whose options may hold keys.
            target = self.target
            where = target.store.local().display if target else self.settings.checkpoint_dir
            sentence = render.failure_sentence(result.error or "", errno_, where)
            log.warning(
                "persistent-kernel: %s (%s%s)", sentence, result.error,
                f"; while saving {culprit}" if culprit else "",
            )  # fmt: skip
            self.last_failure = sentence
            failure = Failure(kind, sentence, culprit)
            notice = self.autosaver.failed(ticket, failure, idents, self.writers.deadline)
        if notice:
            self.host.notice(f"persistent-kernel: {notice}")
        self._changed()

    def _on_upload(self, outcome: dict[str, Any]) -> None:
        """After a checkpoint saved locally: tell the user once if the bucket refused it;
        a checkpoint tries the upload again once its back-off has passed."""
        if outcome:  # {}: the bucket lacked nothing
            self.last_upload = outcome
        error = outcome.get("error")
        if error:
            self.host.log.warning("persistent-kernel: upload failed: %s", error)
        notice = self.autosaver.uploaded(error)
        if notice:
            self.host.notice(f"persistent-kernel: {notice}")
        for text in outcome.get("tell") or []:  # the upload says each once (see Mirror.push)
            self.host.notice(f"persistent-kernel: {text}")

    # -- the cell that is running -------------------------------------------------------

    def _start_standby(self) -> None:
        """Fork a standby holding the namespace as it is now (see :class:`snapshot.Standby`)."""
        settings, target = self.settings, self.target
        if not (settings.autosave and settings.standby and self.forked()):
            return
        if target is None or target.ephemeral or self._unserved():
            return
        self.follow_renames()
        refused = snapshot.prefer_oom_kill()  # the kernel, not its standby, is killed first
        if refused:
            self.host.log.warning("persistent-kernel: %s", refused)
        ended: dict[str, Any] = {}  # filled in the standby: how the kernel ended
        job = self._job(None, final=True, ended=ended)  # written only at the end
        self.standby.start(
            target.session, job, self._deadline(), self.autosaver.epoch, ended.update,
            self.inherited(),
        )  # fmt: skip

    def write_standby_if_running(self) -> bool:
        """A cell runs while the kernel stops: have the standby write the state from
        before it (with autosave on). True if a cell runs (nothing else is to be saved)."""
        if not (self.autosaver.running or self.autosaver.interrupted):
            return False
        if self.settings.autosave:
            self.standby.write()
        return True

    def watch_restored(self, buffer: Any, parts: list[tuple[str, int]]) -> None:
        """In the restore: watch a chunked buffer as soon as it is read (see pagewrites),
        so that the first checkpoint hashes only the chunks changed since."""
        tracker = self.tracking.get(create=True) if self.forked() else None
        if tracker is not None:
            view = memoryview(buffer)
            self.tracking.step(tracker.seed, pagewrites.address_of(view), view.nbytes, parts)

    # -- the end ----------------------------------------------------------------------

    def final(self, shutdown_restart: bool | None) -> None:
        """The kernel is ending: checkpoint a changed namespace (see ``final_checkpoint``).

        *shutdown_restart*: what the shutdown request said (None: there was none).
        """
        target = self.target
        if target is None:
            return  # still restoring: what is on disk is what there is
        if target.ephemeral and shutdown_restart is False:
            self._forget_batch_state()
            return
        if self.write_standby_if_running():
            return
        self.standby.drop()
        if self.settings.autosave:
            self.autosaver.threads_changed()  # saved consistently: the fork sees one instant
        if not (self.settings.autosave and (self.autosaver.dirty or self.autosaver.upload_failing)):
            return
        self.start_checkpoint(final=True)

    def _forget_batch_state(self) -> None:
        """A batch run ends: nothing will read its checkpoints (see identity.decide_unattached)."""
        wait = self.settings.writer_wait
        self.wait_for_writer(timeout=wait)
        self.standby.drop()
        session = self.session
        session.locks.wait_for_writers(wait)
        with session.locks.locked(timeout=60):
            session.clear()
        if session.backend.exists():
            session.backend.remove()
