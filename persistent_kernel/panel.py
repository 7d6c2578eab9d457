"""The kernel's side of the JupyterLab / Notebook 7 extension: the state comm.

The extension opens a comm on :data:`TARGET`; the kernel pushes its
checkpoint state on it as that state changes (a checkpoint starts, is
written or fails, a cell leaves changes unsaved, the start-up restore moves
on) and answers the panel's requests. Two plain parts, and a thin shell:

* :func:`read_state` turns what the checkpointer and the restore say through
  their public attributes into one JSON-able dict (what the status bar shows);
* :class:`StatePanel` keeps the open comms, sends that dict when it differs
  from the one sent last, ticks every :data:`TICK` seconds while a checkpoint
  or the restore runs (their progress is read, nothing reports it), and
  answers requests. Every action (save, restore, exclude, include, export) runs
  the ``%persist`` magic itself, so the panel shows the magic's own sentences
  and takes the same code path; history and variables return the data the
  command line prints (:func:`persistent_kernel.restore.history`,
  :func:`persistent_kernel.cli.describe_generation`).

Requests arrive on the shell channel, as cells do: they run between cells,
never beside one, and a save waits for its commit as ``%persist save`` does.
A kernel without this module (a stock ipykernel) has no such comm target; the
extension asks the kernel's ``implementation`` first and opens nothing then.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import namespace, restore, serializer
from .checkpointer import Checkpointer
from .errors import PersistentKernelError, sentence
from .restore import RestoreProgress

#: The comm target the extension opens.
TARGET = "persistent_kernel.state"

#: Seconds between two reads of the progress of a running checkpoint or restore.
TICK = 0.5


@dataclass
class Progress:
    """What the start-up restore is doing now (see :class:`~persistent_kernel.startup.Startup`)."""

    progress: RestoreProgress
    waited: tuple[float, float] | None  # waiting for the previous kernel's writer


def read_state(
    checkpoints: Checkpointer | None,
    *,
    autosave: bool,
    restoring: Progress | None,
    saving_since: float | None,
) -> dict[str, Any]:
    """The state the status bar shows, from public attributes only (nothing is read
    from disk). *saving_since*: the wall-clock time the running checkpoint was seen
    starting. ``phase`` is one of ``restoring``, ``saving``, ``failing``,
    ``unsaved``, ``saved``, ``empty`` (nothing saved yet) and ``off``."""
    state: dict[str, Any] = {
        "phase": "empty",
        "autosave": autosave,
        "session": None,
        "generation": None,
        "created": None,
        "size": None,
        "unsaved": 0,
        "error": None,
        "upload_error": None,
        "saving": None,
        "restoring": None,
        "pending": [],
    }
    if restoring is not None:
        progress = restoring.progress
        state["phase"] = "restoring"
        state["restoring"] = {
            "generation": progress.generation,
            "done": min(progress.done, progress.total),
            "total": progress.total,
            "waited": list(restoring.waited) if restoring.waited else None,
        }
        return state
    if checkpoints is None or checkpoints.target is None:
        return state
    autosaver = checkpoints.autosaver
    state["session"] = checkpoints.target.key
    last = checkpoints.last_result
    good = last if last is not None and last.ok else checkpoints.committed
    if good is not None:
        state.update(generation=good.generation, created=good.created, size=good.size)
    state["unsaved"] = autosaver.unsaved
    state["pending"] = autosaver.pending_names()
    state["error"] = checkpoints.last_failure
    upload = checkpoints.last_upload or {}
    if autosaver.upload_failing and upload.get("error"):
        state["upload_error"] = str(upload["error"])
    writer = checkpoints.writers.writer if checkpoints.writers.running else None
    if writer is not None:
        beacon = writer.beacon
        done, total = beacon.read_progress() if beacon is not None else (0, 0)
        state["saving"] = {
            "since": saving_since,
            "variable": beacon.get() if beacon is not None else "",
            "done": done,  # bytes stored so far, of total (0 while still pickling)
            "total": total,
        }
        state["phase"] = "saving"
    elif state["error"] is not None:
        state["phase"] = "failing"
    elif autosaver.dirty:
        state["phase"] = "unsaved"
    elif good is not None:
        state["phase"] = "saved"
    if not autosave and state["phase"] in ("unsaved", "empty"):
        state["phase"] = "off"
    return state


class Comm(Protocol):
    """What the panel needs of a comm (ipykernel's, or a test's)."""

    comm_id: str

    def send(self, data: Any = None) -> None: ...

    def on_msg(self, callback: Callable[[dict[str, Any]], None]) -> None: ...

    def on_close(self, callback: Callable[[dict[str, Any]], None]) -> None: ...


class Kernel(Protocol):
    """What the panel needs of its kernel (see ``kernel.PersistentKernel``)."""

    @property
    def autosave(self) -> bool: ...

    @property
    def checkpointer(self) -> Checkpointer | None: ...

    def restore_progress(self) -> Progress | None:
        """The start-up restore's progress while it runs; None once it is done."""
        ...

    def run_persist(self, line: str) -> tuple[bool, str]:
        """Run ``%persist <line>``; whether it succeeded, and what it printed (or its error)."""
        ...

    def namespace(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The user's namespace and the names hidden from it."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run *callback* on the kernel's thread after *delay* seconds."""
        ...


#: The requests that run a ``%persist`` subcommand (its arguments quoted for the shell).
ACTIONS = ("save", "restore", "exclude", "include", "export")


class StatePanel:
    """The open state comms of one kernel: pushes and answers (see the module)."""

    def __init__(
        self,
        kernel: Kernel,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
    ) -> None:
        self.kernel = kernel
        self.clock = clock
        self.log = log or logging.getLogger(__name__)
        self.comms: dict[str, Comm] = {}
        self.last: dict[str, Any] | None = None
        self._saving_since: float | None = None
        self._ticking = False

    # -- pushes -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The state now (see :func:`read_state`)."""
        checkpoints = self.kernel.checkpointer
        running = checkpoints is not None and checkpoints.writers.running
        if not running:
            self._saving_since = None
        elif self._saving_since is None:
            self._saving_since = self.clock()
        return read_state(
            checkpoints,
            autosave=self.kernel.autosave,
            restoring=self.kernel.restore_progress(),
            saving_since=self._saving_since,
        )

    def changed(self) -> None:
        """Something may have changed: send the state if it differs from the last sent,
        and keep ticking while a checkpoint or the restore runs."""
        if not self.comms:
            return
        state = self.state()
        if state != self.last:
            self.last = state
            self._send({"state": state})
        if state["phase"] in ("saving", "restoring") and not self._ticking:
            self._ticking = True
            self.kernel.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._ticking = False
        self.changed()

    def _send(self, data: dict[str, Any], only: Comm | None = None) -> None:
        for comm in [only] if only is not None else list(self.comms.values()):
            comm.send(data)

    # -- the comm -----------------------------------------------------------------------

    def opened(self, comm: Comm, msg: dict[str, Any]) -> None:
        """The extension opened a comm (ipykernel's comm manager calls this)."""
        self.comms[comm.comm_id] = comm
        comm.on_msg(lambda message: self.received(comm, message))
        comm.on_close(lambda message: self.closed(comm))
        self.last = None  # the new comm gets the state at once
        self.changed()

    def closed(self, comm: Comm) -> None:
        self.comms.pop(comm.comm_id, None)

    def received(self, comm: Comm, msg: dict[str, Any]) -> None:
        """One request: ``{"id": n, "request": name, ...}``; the reply is
        ``{"reply": n, "ok": bool, "text": sentences, "data": ...}``, then the state
        if the request changed it."""
        data = msg.get("content", {}).get("data", {}) or {}
        ident = data.get("id")
        try:
            ok, text, payload = self.answer(str(data.get("request", "")), data)
        except (PersistentKernelError, OSError) as exc:  # a condition: its sentence
            ok, text, payload = False, sentence(exc), None
        except Exception as exc:  # a fault of ours: the panel shows it, the log has it all
            self.log.exception("persistent-kernel: the state panel's request failed")
            ok, text, payload = False, f"the kernel could not answer ({exc})", None
        self._send({"reply": ident, "ok": ok, "text": text, "data": payload}, only=comm)
        self.changed()

    def answer(self, request: str, data: dict[str, Any]) -> tuple[bool, str, Any]:
        """What the panel asked for: (ok, the sentences to show, data)."""
        if request == "state":
            return True, "", self.state()
        if request == "history":
            checkpoints = self._checkpoints()
            if isinstance(checkpoints, str):
                return False, checkpoints, None
            return True, "", restore.history(checkpoints.session)
        if request == "variables":
            return self._variables(data.get("generation"))
        if request in ACTIONS:
            running = self.kernel.checkpointer
            if running is not None and running.autosaver.running:
                # ipykernel dispatches comm messages while an async cell awaits
                return False, "a cell is running; try again once it has finished", None
            args = [str(a) for a in data.get("args") or []]
            ok, text = self.kernel.run_persist(shlex.join([request, *args]))
            if ok and request == "restore":
                self._namespace_changed()
            return ok, text, None
        return False, f"unknown request {request!r}", None

    def _checkpoints(self) -> Checkpointer | str:
        checkpoints = self.kernel.checkpointer
        if checkpoints is None or checkpoints.target is None:
            return "the kernel is still restoring; ask again once it is done"
        return checkpoints

    def _namespace_changed(self) -> None:
        """A restore from the panel changed the namespace outside any cell: count the
        change, as the end of the cell running ``%persist restore`` would."""
        checkpoints = self.kernel.checkpointer
        if checkpoints is not None:
            checkpoints.autosaver.changed()
            checkpoints.maybe_checkpoint()

    def _variables(self, generation: Any) -> tuple[bool, str, Any]:
        """The variables of a generation (default: the newest) as the command line's
        ``show`` lists them, and the names of the namespace that no generation holds
        yet (``status`` ``pending``), with their type."""
        from . import cli  # only when asked: the kernel starts without the command line

        checkpoints = self._checkpoints()
        if isinstance(checkpoints, str):
            return False, checkpoints, None
        rows: list[dict[str, Any]] = []
        newest: int | None = None
        if checkpoints.session.generations():
            shown = cli.describe_generation(
                checkpoints.session, int(generation) if generation is not None else None
            )
            rows, newest = shown["variables"], shown["generation"]
        if generation is None:
            user_ns, hidden = self.kernel.namespace()
            known = {row["name"] for row in rows}
            carried = set(checkpoints.autosaver.pending_names())
            for name, value in user_ns.items():
                if name in known or namespace.is_internal(name, value, hidden):
                    continue
                rows.append(
                    {"name": name, "type": serializer.type_name(value), "size": None,
                     "status": "pending", "reason": "not in a checkpoint yet",
                     "module": None, "shared_with": [], "carried": name in carried}
                )  # fmt: skip
            rows.sort(key=lambda row: str(row["name"]))
        return True, "", {"generation": newest, "variables": rows}


def run_magic(shell: Any, line: str) -> tuple[bool, str]:
    """``%persist <line>`` in *shell*, its printed output captured: (ok, text). A
    :class:`UsageError` (how the magic reports a condition) is its sentence."""
    from IPython.core.error import UsageError

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            shell.run_line_magic("persist", line)
    except UsageError as exc:
        return False, (out.getvalue() + str(exc)).strip()
    return True, out.getvalue().strip()
