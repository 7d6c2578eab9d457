"""Every sentence and table a user sees about checkpoints, in one place.

``%persist`` (:mod:`.magics`), the kernel's notices and the
``persistent-kernel`` command (:mod:`.cli`) compute data and hand it here;
the same data reads the same way wherever it is shown. Functions return
text; the callers print it. Errors become sentences in
:func:`persistent_kernel.errors.sentence`.
"""

from __future__ import annotations

import errno
import html
import shlex
import time
from collections.abc import Collection, Sequence
from typing import Any

from . import namespace
from .checkpoint import CheckpointResult
from .restore import RestoreProgress, RestoreReport


def human_size(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def short_list(names: list[str], limit: int = 12) -> str:
    """Names joined by commas, cut to *limit* with a count of the rest."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"


def failure_sentence(error: str, errno_: int | None, directory: str) -> str:
    """One plain sentence for a failed checkpoint."""
    if errno_ in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {directory} is full, so no checkpoint could be written"
    if errno_ == errno.EROFS:
        return f"{directory} is on a read-only disk, so no checkpoint could be written"
    if errno_ in (errno.EACCES, errno.EPERM):
        return f"permission to write in {directory} was denied, so no checkpoint could be written"
    if errno_ == errno.ENOENT:
        return f"{directory} has vanished, so no checkpoint could be written"
    kind, _, message = error.partition(": ")
    if kind in ("UnreadableSettings", "PagesLost"):  # their own sentences
        return message
    if kind in ("CorruptCheckpoint", "NewerFormat", "UntrustedCheckpoint"):
        return f"no checkpoint could be written: {message}"  # the store's own sentence
    return f"a checkpoint could not be written ({error})"


def cell_line(source: str, width: int = 70, name: str | None = None) -> str:
    """A cell's source on one line: its first non-empty line, cut to *width*; with
    *name*, also the line that binds *name* in it (when that is not the first), so
    that a long cell is recognised by its start and the assignment is seen."""
    lines = source.splitlines()
    shown = [line.strip() for line in lines if line.strip()]
    first = shown[0] if shown else ""
    at = namespace.binding_line(source, name) if name is not None else None
    binding = lines[at - 1].strip() if at is not None and 0 < at <= len(lines) else ""
    if not binding or binding == first:
        return _cut(first, width) + (" ..." if len(shown) > 1 else "")
    last = binding == shown[-1]
    return f"{_cut(first, width // 2)} ... {_cut(binding, width)}" + ("" if last else " ...")


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def pending_sentence(names: list[str]) -> str:
    """Which variables a restore did not load, and how to load or drop them."""
    return (
        f"{len(names)} variable(s) not loaded yet stay in later checkpoints as they were: "
        f"{short_list(names)}. Load them with %persist restore {' '.join(names[:12])}; "
        "%persist exclude NAME drops one."
    )


def damaged_chunk_sentence(label: str, size: int, reason: str) -> str:
    """A chunk of a lazily restored array, when first touched, was found damaged or
    missing (*reason*: "its file is missing", ...); its pages read as zeros."""
    return (
        f"persistent-kernel: {human_size(size)} of {label or 'an array'} could not be "
        f"restored ({reason}) and read as zeros (the rest is exact); re-run the cell "
        "that made it, or %persist rerun NAME."
    )


def unreadable_chunk_sentence(label: str, reason: str) -> str:
    """A chunk of a lazily restored array cannot be read now (EIO, EACCES)."""
    return (
        f"persistent-kernel: part of {label or 'an array'} cannot be read from disk now "
        f"({reason}); a cell that touches it waits, and the read is tried again every "
        "second (interrupting does not stop that wait: restart the kernel to give up)."
    )


def pages_lost_in_writer_sentence() -> str:
    """A forked writer's page server ended before it committed (see lazypages)."""
    return (
        "the process that read restored arrays for this checkpoint ended before it was "
        "written, so it may have read zeros; nothing was stored, and the next checkpoint "
        "is written by a new one"
    )


def pages_lost_sentence() -> str:
    """No checkpoint is started once no page server is left (see lazypages)."""
    return (
        "the processes that read this kernel's restored arrays from disk ended, so no "
        "checkpoint can be written until the kernel restarts"
    )


def page_server_lost_sentence() -> str:
    """The process that fills lazily restored arrays ended while the kernel runs."""
    return (
        "persistent-kernel: the processes that read restored arrays from disk ended; a cell "
        "that touches a part not read yet will wait, and checkpoints are off, until you "
        "restart the kernel (the checkpoint on disk is whole)."
    )


def _carried_names(report: RestoreReport) -> list[str]:
    return sorted(str(n) for g in report.carried for n in g.record.get("names", []))


def not_loaded(report: RestoreReport) -> list[str]:
    """The variables an interrupted restore left pending (not the ones that failed to
    load, which are reported as not restored, though kept in later checkpoints too)."""
    return [n for n in _carried_names(report) if n not in report.skipped]


def _plural(count: int, word: str = "variable") -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def ended_sentence(ended: dict[str, Any]) -> str:
    """What the end of the last kernel cost, from the note its standby wrote.

    *ended*: ``{"how": "killed" | "stopped", "at": time, "cell": source or None}``
    (see :func:`snapshot.read_orders`).
    """
    at = ended.get("at")
    moment = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, (int, float)) else "?"
    how = "was killed" if ended.get("how") == "killed" else "was stopped"
    cell = ended.get("cell")
    if isinstance(cell, str) and cell.strip():
        return (
            f"the kernel {how} at {moment} while running the cell `{cell_line(cell)}`; "
            "the state from before that cell was restored"
        )
    return f"the kernel {how} at {moment} between cells; no finished cell was lost"


def restore_summary(report: RestoreReport) -> str:
    """The lines shown above the first cell's output after a restore. Each variable
    is counted once: restored, not restored (with the reason, and the cell that
    last assigned it), or not loaded yet (an interrupted restore)."""
    lines: list[str] = []
    if report.generation is not None:
        count = len(report.restored)
        lines.append(
            f"persistent-kernel: restored {_plural(count)} "
            f"from checkpoint {report.generation} ({when(report.created)}, "
            f"{human_size(report.size)})" + (f": {short_list(report.restored)}" if count else "")
        )
    if report.ended:
        lines.append(f"persistent-kernel: {ended_sentence(report.ended)}")
    if report.renamed_from:
        lines.append(
            f"persistent-kernel: this notebook was renamed from {report.renamed_from}; "
            "its checkpoints came along"
        )
    if report.versions:
        lines.append(
            "persistent-kernel: the checkpoint was saved with " + ", ".join(report.versions)
        )
    for problem in report.problems:
        lines.append(f"persistent-kernel: {problem}")
    kept = set(_carried_names(report))
    if report.skipped:
        lines.append(f"persistent-kernel: {len(report.skipped)} not restored:")
        for name, reason in report.skipped.items():
            suffix = "; kept in later checkpoints as it was" if name in kept else ""
            lines.append(f"  {name}: {reason}{suffix}")
            if name in report.cells:
                lines.append(f"    last assigned by: {cell_line(report.cells[name], name=name)}")
        if any(name in report.cells for name in report.skipped):
            lines.append(
                "persistent-kernel: %persist rerun NAME runs again the cell that assigned NAME"
            )
    pending = not_loaded(report)
    if pending:
        lines.append(f"persistent-kernel: {pending_sentence(pending)}")
    if report.waited >= 1:
        lines.append(
            f"persistent-kernel: waited {report.waited:.1f} s for the previous kernel's "
            "final checkpoint"
        )
    return "\n".join(lines)


START_CLEAN = "To start clean: %persist clear, then restart the kernel."
_FOLD_AFTER = 12  # rows shown unfolded


def restore_text(report: RestoreReport) -> str:
    """The plain-text report shown in consoles (and logged)."""
    summary = restore_summary(report)
    return f"{summary}\n{START_CLEAN}" if report.generation is not None else summary


def _row(cells: tuple[str, ...], extra: str = "") -> str:
    """A table row of *cells* (escaped); *extra*: HTML added to the last cell."""
    tds = [f"<td style='text-align:left'>{html.escape(c)}</td>" for c in cells]
    if extra:
        tds[-1] = tds[-1].removesuffix("</td>") + extra + "</td>"
    return "<tr>" + "".join(tds) + "</tr>"


def _sizes(report: RestoreReport, names: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """name -> (its size as shown, the variables it shares its group with). A group's
    size is shown once, on the first of its names listed: variables that share
    objects are saved together, and their sizes are not added up twice."""
    members: dict[Any, list[str]] = {}
    for name in names:
        group = report.details.get(name, {}).get("group")
        if group is not None:
            members.setdefault(group, []).append(name)
    shown: dict[str, tuple[str, list[str]]] = {}
    for name in names:
        detail = report.details.get(name, {})
        size, group = detail.get("size"), detail.get("group")
        mates = [n for n in members.get(group, []) if n != name] if group is not None else []
        first = not mates or members[group][0] == name
        shown[name] = (human_size(size) if size and first else "", mates)
    return shown


def restore_html(report: RestoreReport) -> str:
    """A compact HTML report for notebooks: the summary, then a table of
    name, type, size and status, folded when it is long. A variable not
    restored shows the cell that last assigned it; a group's size is shown once."""
    pending = not_loaded(report)
    names = [*report.restored, *report.skipped, *pending]
    sizes = _sizes(report, names)
    kept = set(_carried_names(report))
    rows: list[str] = []
    for name in names:
        detail = report.details.get(name, {})
        size, mates = sizes[name]
        if name in report.skipped:
            reason = report.skipped[name]
            status = reason if reason.startswith("not saved") else f"not restored: {reason}"
            if name in kept:
                status += "; kept in later checkpoints as it was"
        elif name in report.restored:
            status = "restored"
        else:
            status = f"not loaded yet: %persist restore {name} loads it"
        if mates:
            status += f" (saved with {', '.join(mates)})"
        cell = ""
        if name in report.skipped and name in report.cells:
            source = report.cells[name]
            cell = (
                f"<details><summary>last assigned by: <code>"
                f"{html.escape(cell_line(source, name=name))}</code></summary>"
                f"<pre>{html.escape(source)}</pre></details>"
            )
        rows.append(_row((name, str(detail.get("type", "")), size, status), extra=cell))
    # the summary's own lines, without the per-variable ones the table shows
    lines = [
        html.escape(line.removeprefix("persistent-kernel: "))
        for line in restore_summary(report).splitlines()
        if not line.startswith("  ") and not line.endswith("not restored:")
    ]
    head = "<br>".join(lines)
    if not rows:  # a note alone (state found and not loaded): no empty table under it
        return f"<div class='persistent-kernel-restore'><b>persistent-kernel</b>: {head}</div>"
    opened = " open" if len(rows) <= _FOLD_AFTER else ""
    counts = [f"{len(report.restored)} restored", f"{len(report.skipped)} not restored"]
    if pending:
        counts.append(f"{len(pending)} not loaded yet")
    table = "".join(rows)
    return (
        "<div class='persistent-kernel-restore'>"
        f"<b>persistent-kernel</b>: {head}"
        f"<details{opened}><summary>{', '.join(counts)}</summary><table>"
        + _row(("name", "type", "size", "status")).replace("td", "th")
        + f"{table}</table></details><small>{html.escape(START_CLEAN)}</small></div>"
    )


def duration(seconds: float) -> str:
    """``75.8`` -> ``'1 min 15 s'``."""
    total = max(0, int(seconds))  # down, as a countdown shows it
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def checkpoint_status(
    result: CheckpointResult | None,
    pending: bool,
    running: bool,
    *,
    due: float | None = None,
    written: int | None = None,
    excluded: Sequence[str] = (),
    carried: Sequence[str] = (),
    cleared: Sequence[str] = (),
) -> str:
    """What ``%persist`` prints: the last checkpoint, and whether one is pending.

    *pending*: changes no checkpoint holds; *due*: seconds until the next
    automatic checkpoint once the kernel is idle (None: none comes by itself,
    autosave is off). *written*: bytes the commit of that generation wrote
    (None: this kernel did not write it; the restore brought it). *excluded*:
    names it saved that are excluded now (left out of the next checkpoint);
    *carried*: variables it carries that a restore has not loaded yet (the
    caller tells of them); *cleared*: values held since ``%persist clear``,
    not saved until assigned again.
    """
    lines: list[str] = []
    held = result is not None and result.ok and result.generation is not None
    if result is None:
        lines.append("No checkpoint written by this kernel yet.")
    elif not result.ok:
        lines.append(f"The last checkpoint failed: {result.error}")
    elif result.generation is None:
        lines.append("No checkpoint written yet: there was nothing to save.")
    if held:
        assert result is not None
        origin = "restored at start" if written is None else f"{human_size(written)} written"
        lines.append(
            f"Last checkpoint: generation {result.generation}, {when(result.created)}, "
            f"{human_size(result.size)} ({origin})"
        )
        left_out = set(excluded) | set(carried)
        saved = [name for name in result.saved if name not in left_out]
        lines.append(f"Saved ({len(saved)}): {short_list(saved, 30) or '-'}")
        gone = [name for name in result.saved if name in excluded]
        if gone:
            lines.append(
                f"Excluded since (left out of the next checkpoint): {short_list(gone, 30)}"
            )
        if result.skipped:
            lines.append(f"Skipped ({len(result.skipped)}):")
            lines.extend(
                f"  {name}: {reason.removeprefix('not saved: ')}"
                + ("; kept in later checkpoints as it was" if name in carried else "")
                for name, reason in result.skipped.items()
            )
        lines.extend(f"Note: {note}" for note in result.notes)
    if cleared:
        lines.append(
            f"Not saved since %persist clear, until assigned again: {short_list(list(cleared))}"
        )
    since = "Changes since then" if held else "Changes"
    if running:
        lines.append("A checkpoint is being written now.")
    elif pending and due is None:
        lines.append(f"{since} are not checkpointed automatically; %persist save saves them.")
    elif pending:
        when_idle = (
            "right after this cell" if due is not None and due < 1 else f"in {duration(due or 0)}"
        )
        lines.append(f"{since} will be checkpointed when the kernel is idle, {when_idle}.")
    elif held:
        lines.append("Nothing changed since the last checkpoint.")
    else:
        lines.append("Nothing to save yet.")
    return "\n".join(lines)


# -- tables -----------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Rows as aligned columns (the last column is not padded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        indent
        + "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


def changes(row: dict[str, Any]) -> str:
    """What a generation added, changed, removed and excluded, as history shows it."""
    text = "; ".join(
        f"{label} {short_list(row[label], 8)}"
        for label in ("added", "changed", "removed", "excluded")
        if row.get(label)
    )
    return text or "no variable changed"


def history_table(rows: Sequence[dict[str, Any]]) -> str:
    """The generations kept (:func:`persistent_kernel.restore.history`), oldest first."""
    lines = [["GEN", "CREATED", "SIZE", "CHANGES"]]
    for row in rows:
        if row.get("error"):
            lines.append([str(row["generation"]), "-", "-", f"unreadable: {row['error']}"])
        else:
            lines.append(
                [
                    str(row["generation"]),
                    when(row["created"]),
                    human_size(row["size"]),
                    changes(row),
                ]
            )
    return table(lines)


# -- the command line's data, as text ---------------------------------------------------


def sessions_text(rows: Sequence[dict[str, Any]]) -> str:
    """``persistent-kernel list``."""
    if not rows:
        return "No checkpoints."
    lines: list[str] = []
    for row in rows:
        lines.append(row["session"])
        if row.get("notebook_gone"):
            lines.append(
                "  its notebook is gone (renamed or deleted outside Jupyter, or deleted in it); "
                f"persistent-kernel rm {shlex.quote(row['session'])} deletes these checkpoints, "
                "persistent-kernel prune --older-than 30d all such old ones"
            )
        lines.append(
            f"  {row['generations']} generation(s), newest {row['newest']} at "
            f"{when(row['created'])}, {human_size(row['size'])} "
            f"({human_size(row['disk_usage'])} on disk)"
        )
        lines.append(f"  variables: {short_list(row['variables'], 20) or '-'}")
        lines.extend(f"  warning: {problem}" for problem in row["problems"])
    return "\n".join(lines)


def variable_status(var: dict[str, Any]) -> str:
    """How one variable of a generation was saved (or why not)."""
    if var["status"] == "skipped":
        status = f"skipped: {var['reason']}"
    elif var["module"]:
        status = f"saved (import {var['module']})"
    elif var["shared_with"]:
        status = f"saved (with {', '.join(var['shared_with'])})"
    else:
        status = "saved"
    if var["carried"]:
        status += ", carried over: not loaded at the last restore"
    return status


def show_text(data: dict[str, Any]) -> str:
    """``persistent-kernel show``: one generation's variables."""
    lines = [
        f"Session:    {data['session']}",
        f"Generation: {data['generation']} (of {len(data['generations'])} kept), "
        f"{when(data['created'])}, {human_size(data['size'])}",
        f"Written by: Python {data['python']}, dill {data['dill']}, "
        f"persistent_kernel {data['persistent_kernel']}",
    ]
    rows = [["NAME", "TYPE", "SIZE", "STATUS"]]
    for var in data["variables"]:
        size = "-" if var["size"] is None else human_size(var["size"])
        rows.append([var["name"], var["type"] or "-", size, variable_status(var)])
    lines.append(table(rows))
    lines.extend(f"Note: {note}" for note in data["notes"])
    lines.extend(f"Warning: {problem}" for problem in data["problems"])
    return "\n".join(lines)


def history_text(data: dict[str, Any]) -> str:
    """``persistent-kernel history``."""
    return f"Session: {data['session']}\n" + history_table(data["generations"])


def export_text(data: dict[str, Any]) -> str:
    """``persistent-kernel export`` and ``%persist export``: what went into the file."""
    lines = [
        f"Exported {len(data['written'])} variable(s) from generation {data['generation']}"
        + (f" of {data['session']}" if data.get("session") else "")
        + f" to {data['path']}: {short_list(data['written'], 20) or '-'}"
    ]
    lines.extend(f"  not exported {name}: {reason}" for name, reason in data["skipped"].items())
    lines.extend(f"Warning: {problem}" for problem in data["problems"])
    lines.append(f"Load them with: import dill; dill.load_module({data['path']!r})")
    return "\n".join(lines)


def removed_text(data: dict[str, Any]) -> str:
    """``persistent-kernel rm``."""
    return (
        f"Removed the checkpoints of {data['session']} ({data['generations']} generation(s), "
        f"{human_size(data['disk_usage'])} on disk)."
    )


def prune_text(data: dict[str, Any]) -> str:
    """``persistent-kernel prune``."""
    verb = "Would remove" if data["dry_run"] else "Removed"
    lines = []
    for row in data["removed"]:
        newest = when(row["newest"]) if row["newest"] else "none readable"
        lines.append(
            f"{verb} {row['session']} (newest checkpoint {newest}, "
            f"{human_size(row['disk_usage'])} on disk)"
        )
    if not data["removed"] and not data["failed"]:
        lines.append("No session is that old.")
    return "\n".join(lines)


def restore_data(report: RestoreReport) -> dict[str, str]:
    """The restore report as a display's data: text and HTML."""
    return {"text/plain": restore_text(report), "text/html": restore_html(report)}


def missed_name_sentence(name: str) -> str:
    """A cell that ran during the restore failed on *name*, which it was still loading."""
    return (
        f"persistent-kernel: {name} was not restored yet when the last cell ran: the cell "
        "reached it in a way the kernel cannot see before a cell runs (a function kept in "
        "a container, a library), so it did not wait for it; run the cell again once the "
        "restore is done."
    )


def progress_text(
    progress: RestoreProgress,
    waited: tuple[float, float] | None,
    needed: Collection[str] | None = None,
) -> str:
    """The one line shown while a cell waits for the start-up restore:
    *waited* (seconds so far, at most) while it waits for the previous kernel's writer;
    *needed*: the names still to come that the cell waits for (None: all of them)."""
    if waited is not None:
        return (
            "persistent-kernel: waiting for the previous kernel to finish writing its "
            f"checkpoint ({waited[0]:.0f} s, at most {waited[1]:.0f} s); "
            "interrupt to stop waiting"
        )
    total = progress.total
    done = min(progress.done, total)
    fraction = done / total if total else 0.0
    names = sorted(needed or ())
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"persistent-kernel: restoring checkpoint {progress.generation or ''}: "
        f"{human_size(done)} of {human_size(total)} ({fraction:.0%}); "
        + (f"this cell waits for {shown}; " if names else "")
        + "interrupt to stop and keep what is loaded"
    )
