"""When to checkpoint: the autosave policy as a plain object.

:class:`Autosaver` knows nothing of kernels, processes or files. The kernel
tells it what happened (a cell started or finished, a checkpoint began,
succeeded or failed) and asks it what to do (:meth:`Autosaver.due`). Time
comes from an injected clock, so the policy is tested in process without
sleeping.

Changes are counted, not flagged: every finished cell adds one to
:attr:`Autosaver.epoch`, and a checkpoint records the epoch its snapshot
saw (a :class:`Ticket`). The namespace is clean only while the newest
successful checkpoint saw the newest epoch. Nothing can skip a change:
``%persist save`` in the middle of a cell saves what was there when it
ran, and the cell's end still counts as a change, unless the save was the
last line of the only running cell (then its snapshot saw the cell's end).

The interval is measured from the last checkpoint that wrote a generation:
a checkpoint that found nothing changed (a cell that only read) does not
put off the next one, and after a restore it counts from when the restored
generation was written (by an earlier kernel), not from the restore.

Also kept here: one back-off rule for failed checkpoints and failed uploads
to a bucket, the user's threads (any alive keeps idle checkpoints coming),
the variables left
out because writing them crashed, hung or got the writer killed
(:class:`Culprits`), the values ``%persist clear`` let go (:class:`Cleared`),
and the groups an interrupted restore did not load,
carried unchanged into every later checkpoint until they are loaded,
bound again or excluded.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .checkpoint import CarriedGroup
from .namespace import bound_names

Clock = Callable[[], float]

BACKOFF_FIRST = 5.0  # seconds before the first retry of a failed checkpoint
BACKOFF_MAX = 60.0
THREAD_PERIOD = 1.0  # at most one checkpoint a second while only threads change things
KILLS_TO_BLAME = 2  # a variable the writer was killed on this many times in a row is left out

# Threads whose target (or class) comes from these packages are the kernel's own.
_OWN_PACKAGES = ("ipykernel", "IPython", "zmq", "tornado", "jupyter_client", "persistent_kernel")


def backoff(failures: int) -> float:
    """Seconds before the next try after *failures* (1 or more) in a row: 5, 10, ... 60."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (failures - 1))


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


@dataclass(frozen=True)
class Ticket:
    """One checkpoint as the policy sees it: which changes its snapshot holds."""

    epoch: int
    started: float
    threads: bool = False  # user threads were alive when the snapshot was taken


@dataclass
class Failure:
    """Why a checkpoint failed, as the kernel learned it from its writer.

    *kind* is ``"error"`` (the writer reported an exception), ``"crash"``
    (a fatal signal), ``"kill"`` (it vanished without a word: SIGKILL, the
    OOM killer) or ``"timeout"`` (it passed its deadline and was stopped).
    *culprit* names the variables it was saving when it died, if it said.
    """

    kind: str
    sentence: str
    culprit: str = ""


class Culprits:
    """Variables left out of checkpoints because writing them went wrong.

    Keyed by name and the ``id`` of the value: binding the name to another
    object gives it another try.
    """

    def __init__(self) -> None:
        self._left_out: dict[str, tuple[int, str]] = {}

    def leave_out(self, name: str, ident: int, reason: str) -> None:
        self._left_out[name] = (ident, reason)

    def apply(self, values: dict[str, Any], skipped: dict[str, str]) -> None:
        """Move left-out variables from *values* to *skipped* (in place)."""
        for name, (ident, reason) in list(self._left_out.items()):
            if name in values and id(values[name]) == ident:
                del values[name]
                skipped[name] = reason
            else:  # bound to something else since: worth a try again
                del self._left_out[name]

    def __contains__(self, name: object) -> bool:
        return name in self._left_out

    def __len__(self) -> int:
        return len(self._left_out)


class Cleared:
    """The values the namespace held when ``%persist clear`` ran: not saved again,
    and not listed as skipped, until their name is assigned again.

    Like :class:`Culprits`, a value is known by its name and its ``id``:
    binding the name to another object saves it. So does a cell run after
    the clear that assigns the name (by its code), even to the same object:
    ``import numpy as np`` or ``x = 1`` again after a clear are saved. A value
    changed in place (``lst.append(1)``) is not: its name was not assigned.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._cells = 0  # cells of IPython's ``In`` already looked at

    def clear(self, user_ns: Mapping[str, Any], cells: int) -> None:
        """Let go of what *user_ns* holds now; *cells*: how many cells ``In`` holds now
        (the running one included: what it binds is known by ``id`` only)."""
        self._ids = {name: id(value) for name, value in user_ns.items()}
        self._cells = cells

    def apply(
        self,
        user_ns: Mapping[str, Any],
        values: dict[str, Any],
        skipped: dict[str, str],
        inputs: Sequence[str] = (),
    ) -> None:
        """Drop the values let go of from *values* and *skipped* (in place). *inputs*:
        IPython's ``In`` (the cells run so far)."""
        if not self._ids:
            return
        for source in inputs[self._cells :]:
            if isinstance(source, str):
                for name in bound_names(source):
                    self._ids.pop(name, None)
        self._cells = max(self._cells, len(inputs))
        for name, ident in list(self._ids.items()):
            if name not in user_ns or id(user_ns[name]) != ident:
                del self._ids[name]  # assigned again (or deleted) since
                continue
            values.pop(name, None)
            skipped.pop(name, None)

    def names(self, user_ns: Mapping[str, Any]) -> list[str]:
        """The names of *user_ns* that still hold what they held at the clear (whether
        a cell assigned them since is known at the next :meth:`apply`)."""
        return sorted(n for n, i in self._ids.items() if n in user_ns and id(user_ns[n]) == i)


class Autosaver:
    """The autosave policy: change epochs, interval, back-off, culprits, pending groups.

    Thread-safe for :meth:`cell_started` / :meth:`cell_finished` (cells of
    ipykernel subshells run on other threads); everything else is called
    from the kernel's main thread.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        interval: float = 30.0,
        enabled: bool = True,
        threads: Callable[[], bool] | None = None,
    ) -> None:
        self.clock = clock
        #: Whether threads the user started are alive (see :func:`user_threads`).
        self.user_threads_alive = threads or self._user_threads_alive
        self._baseline: set[int | None] = set()
        self.interval = interval
        self.enabled = enabled
        self.culprits = Culprits()
        self.cleared_values = Cleared()
        self._lock = threading.Lock()
        self._epoch = 0
        self._saved = 0  # epoch the newest successful checkpoint saw
        self._running = 0  # cells running now, in any subshell
        self._held = 0  # interrupted cells whose changes are not counted yet
        self._read_only = False  # the one running cell changes nothing (see read_only)
        self._in_flight: Ticket | None = None
        self._last_start = clock()
        self._last_write = self._last_start  # the start of the last checkpoint that wrote
        self._last_threads = False
        self._retry_at = 0.0
        self._failures = 0  # checkpoints failed in a row
        self._upload_failures = 0  # uploads to the bucket failed in a row
        self._upload_retry_at: float | None = None  # when a failed upload is tried again
        self._kills: list[str] = []  # culprits of the writer deaths in a row
        self._pending: list[CarriedGroup] = []
        self.has_checkpoint = False  # a generation exists on disk for this notebook
        #: the epoch when the first cell that ran during the start-up restore started
        self._during_restore: int | None = None

    # -- changes --------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def running(self) -> int:
        """How many cells run now (in every subshell)."""
        return self._running

    def cell_started(self) -> bool:
        """A cell starts. True when it is the only one and starts on changes that
        no checkpoint, committed or being written, has seen: then the state
        before it exists nowhere else (a writer at work finishes on its own)."""
        with self._lock:
            self._epoch += self._held  # a cell after an interrupt accepts its state
            self._held = 0
            self._running += 1
            self._read_only = False  # another cell runs beside it: its end may change things
            seen = max(self._saved, self._in_flight.epoch if self._in_flight else 0)
            return self._running == 1 and self._epoch > seen

    def cell_finished(self, interrupted: bool = False) -> None:
        """A cell finished (whatever it did, even if it raised): one change.

        An *interrupted* cell's change is held back: a restart interrupts the
        running cell before it shuts the kernel down, and then the state from
        before that cell is the one to keep. It counts once the next cell
        starts or :meth:`accept_interrupted` is called (after a grace period
        with no shutdown: the user interrupted, and goes on from there).
        """
        with self._lock:
            self._running = max(0, self._running - 1)
            read_only, self._read_only = self._read_only, False
            if read_only:
                return
            if interrupted:
                self._held += 1
            else:
                self._epoch += 1

    def read_only(self) -> None:
        """The running cell only looks (``%persist`` alone in it): its end is no change.
        Only while it is the one cell running; a cell starting beside it undoes this."""
        with self._lock:
            self._read_only = self._running == 1

    @property
    def interrupted(self) -> bool:
        """An interrupted cell's changes are held back (see :meth:`cell_finished`)."""
        return self._held > 0

    def accept_interrupted(self) -> None:
        with self._lock:
            self._epoch += self._held
            self._held = 0

    def changed(self) -> None:
        """Something other than a cell may have changed the namespace (a user thread)."""
        with self._lock:
            self._epoch += 1

    def record_baseline(self) -> None:
        """The threads alive now (before the first cell) are the kernel's own."""
        self._baseline = {t.ident for t in threading.enumerate()}

    def _user_threads_alive(self) -> bool:
        return bool(user_threads(self._baseline))

    def threads_changed(self) -> None:
        """With user threads alive, the namespace may have changed: count a change."""
        if self.user_threads_alive():
            self.changed()

    @property
    def dirty(self) -> bool:
        """True while some change is in no successful checkpoint."""
        return self._epoch > self._saved

    @property
    def unsaved(self) -> int:
        """How many changes (cells that finished, mostly) no successful checkpoint holds."""
        return max(0, self._epoch - self._saved)

    # -- when -----------------------------------------------------------------------

    def due(self) -> float | None:
        """Seconds until the next automatic checkpoint; 0 for now, None for none.

        None while autosave is off, nothing changed, a cell runs (a snapshot
        then would see half a cell) or a checkpoint is being written.
        """
        if self._running or self._in_flight:
            return None
        return self.next_in()

    def next_in(self) -> float | None:
        """Seconds from now until the next automatic checkpoint once the kernel is
        idle (0: as soon as it is), whether or not a cell runs; None while autosave
        is off or nothing changed. What ``%persist`` tells.

        The interval counts from the last checkpoint that wrote a generation; while
        user threads were alive at the last one, from its start, at least
        :data:`THREAD_PERIOD` apart (a thread may change nothing for hours).
        """
        if not self.enabled:
            return None
        waits = []
        if self.dirty:
            if self._last_threads:
                at = self._last_start + max(self.interval, THREAD_PERIOD)
            else:
                at = self._last_write + self.interval
            waits.append(max(at, self._retry_at))
        if self._upload_retry_at is not None:  # a checkpoint carries the upload's retry
            waits.append(self._upload_retry_at)
        return max(0.0, min(waits) - self.clock()) if waits else None

    def begin(self, *, covers_running_cell: bool = False, threads: bool = False) -> Ticket:
        """A checkpoint's snapshot is taken now.

        *covers_running_cell*: it runs as the last line of the cell that is
        running, so it holds that cell's changes too (only when that cell is
        the only one running). *threads*: user threads are alive, so the
        namespace may change after the snapshot; it stays dirty.
        """
        with self._lock:
            covers = covers_running_cell and self._running == 1
            ticket = Ticket(self._epoch + (1 if covers else 0), self.clock(), threads)
            if threads:
                self._epoch += 1
        self._in_flight = ticket
        self._last_start = ticket.started
        self._last_threads = threads
        return ticket

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def succeeded(self, ticket: Ticket, wrote: bool = True) -> str | None:
        """The checkpoint of *ticket* is committed; a notice for the user, if any.

        *wrote*: it committed a new generation (False: the namespace was the
        newest generation's already, and the interval still counts from the
        last checkpoint that wrote).
        """
        if self._in_flight is ticket:
            self._in_flight = None
        if wrote:
            self._last_write = max(self._last_write, ticket.started)
        self._saved = max(self._saved, ticket.epoch)
        self.has_checkpoint = True
        notice = "checkpoints are being saved again." if self._failures else None
        self._failures = 0
        self._kills = []
        self._retry_at = 0.0
        return notice

    def failed(
        self, ticket: Ticket, failure: Failure, idents: Mapping[str, int], deadline: float = 0.0
    ) -> str | None:
        """The checkpoint of *ticket* failed; the namespace stays dirty.

        A variable the writer crashed or hung on is left out and the next
        try comes at once; so is one it was killed on twice in a row (the
        OOM killer, picking the same big object each time). Other failures
        back off (5 s, 10 s, ... up to a minute). The kernel itself never
        takes over the writing: what killed a writer would kill the kernel.
        *idents* are the ``id`` of the named values now. Returns the notice
        to show the user once, or None.
        """
        if self._in_flight is ticket:
            self._in_flight = None
        names = [n for n in failure.culprit.split(",") if n and n in idents]
        listed = ", ".join(names)
        if failure.kind == "kill":
            self._kills.append(failure.culprit)
            if not (
                names
                and len(self._kills) >= KILLS_TO_BLAME
                and len(set(self._kills[-KILLS_TO_BLAME:])) == 1
            ):
                names = []
            reason = "the background writer was killed each time it saved it (out of memory?)"
            what = f"saving {listed} got the background writer killed twice in a row"
        elif failure.kind == "crash":
            reason = "pickling it crashed the background writer"
            what = f"saving {listed} crashed the background writer"
        elif failure.kind == "timeout":
            reason = f"pickling it did not finish within {deadline:.0f} s"
            what = (
                f"saving {listed} did not finish within {deadline:.0f} s, so the background "
                "writer was stopped"
            )
        else:
            names = []
        if names:
            for name in names:
                self.culprits.leave_out(name, idents[name], reason)
            self._kills = []
            return (
                f"{what}; it is left out of checkpoints until you assign it again. "
                "Everything else is saved as usual."
            )
        self._failures += 1
        self._retry_at = self.clock() + backoff(self._failures)
        if self._failures != 1:
            return None
        kept = (
            "Your previous checkpoint is kept"
            if self.has_checkpoint
            else "Nothing of this notebook is saved yet"
        )
        return f"{failure.sentence}. {kept}, and saving resumes by itself once this is fixed."

    def uploaded(self, error: str | None) -> str | None:
        """The checkpoint was saved locally and its upload to the bucket ended: *error*
        None if it succeeded (or the bucket lacked nothing). Returns the notice to show
        the user once, or None.

        A failed upload is tried again by a checkpoint once its own back-off has
        passed (5, 10, ... 60 s), whether or not anything changed; checkpoints in
        between are written locally at their usual rhythm and skip the upload
        (:meth:`upload_due`), so a bucket that is down or silent never holds the
        local tier back.
        """
        if not error:
            notice = "checkpoints reach the bucket again." if self._upload_failures else None
            self._upload_failures = 0
            self._upload_retry_at = None
            return notice
        self._upload_failures += 1
        self._upload_retry_at = self.clock() + backoff(self._upload_failures)
        if self._upload_failures != 1:
            return None
        return (
            f"the checkpoint could not be uploaded ({error}). It is kept on this machine's "
            "disk, and the upload is retried in the background."
        )

    def upload_due(self) -> bool:
        """Whether a checkpoint now should upload (False while a failed upload backs off)."""
        return self._upload_retry_at is None or self.clock() >= self._upload_retry_at

    @property
    def upload_failing(self) -> bool:
        """Whether the last upload failed (the bucket may lack the newest generation)."""
        return self._upload_retry_at is not None

    @property
    def failures(self) -> int:
        return self._failures

    # -- what the user asked for ----------------------------------------------------

    def cleared(self, *, covers_running_cell: bool = False) -> None:
        """The notebook's checkpoints were deleted: what is there now is not wanted.

        Changes from now on are saved again (and with them the namespace). The
        running cell's own end counts as a change unless *covers_running_cell*.
        """
        with self._lock:
            covers = covers_running_cell and self._running == 1
            self._saved = self._epoch + (1 if covers else 0)
        self._pending = []
        self.has_checkpoint = False
        self._failures = 0
        self._retry_at = 0.0

    # -- pending groups (not loaded by an interrupted restore) ------------------------

    def cell_during_restore(self) -> None:
        """A cell (started already) runs while the start-up restore still binds names."""
        with self._lock:
            if self._during_restore is None:
                self._during_restore = self._epoch

    def restored(
        self,
        pending: Iterable[CarriedGroup],
        has_checkpoint: bool,
        written_ago: float | None = None,
    ) -> None:
        """The start-up restore ended: what it did not load is pending.

        What was loaded is on disk already: nothing to write until a change;
        but what cells that ran during the restore changed is not (see
        :meth:`cell_during_restore`): it counts as unsaved.
        A restore writes nothing: the interval counts from when the newest
        generation was written, *written_ago* seconds ago (by the kernel before,
        which may have ended hours ago: then the next change is saved at the next
        idle; or a second ago, at a restart: then the interval runs as it would
        have); unknown, as if it had passed.
        """
        self._pending = list(pending)
        self.has_checkpoint = has_checkpoint
        if has_checkpoint:
            ago = math.inf if written_ago is None else max(0.0, written_ago)
            self._last_write = self.clock() - ago
        with self._lock:
            during, self._during_restore = self._during_restore, None
            self._saved = self._epoch if during is None else min(during, self._epoch)

    def carry(self, bound: Iterable[str]) -> list[CarriedGroup]:
        """Pending groups to keep in the next checkpoint.

        A group one of whose names is *bound* (assigned, loaded by
        ``%persist restore`` or excluded) is no longer pending: the new value
        or the exclusion wins.
        """
        names = set(bound)
        self._pending = [g for g in self._pending if not names & set(g.record.get("names", []))]
        return list(self._pending)

    def pending_names(self) -> list[str]:
        return sorted(str(n) for g in self._pending for n in g.record.get("names", []))


_MAGIC_LINE = re.compile(r"^%persist\s+(\w+)\s*(#.*)?$")
_ONLY_MAGIC = re.compile(r"^%persist(?:\s+(\w+))?\s*(#.*)?$")


def ends_cell(code: str, command: str) -> bool:
    """True if the last statement of the cell *code* is ``%persist <command>``.

    Only then does a snapshot taken by that magic see everything the cell
    changed. Conservative: an indented magic (inside a block), a call through
    ``get_ipython()`` or anything after the magic gives False.
    """
    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return False
    match = _MAGIC_LINE.match(lines[-1].rstrip())
    return match is not None and match.group(1) == command


def only_command(code: str, command: str) -> bool:
    """True if the cell *code* is ``%persist <command>`` and nothing else (comments
    and blank lines aside); ``%persist`` alone is ``status``."""
    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        return False
    match = _ONLY_MAGIC.match(lines[0].rstrip())
    return match is not None and (match.group(1) or "status") == command
