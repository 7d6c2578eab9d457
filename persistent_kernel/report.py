"""Plain-text lines shown to the user about checkpoints and restores."""

from __future__ import annotations

import errno
import html
import time

from .checkpoint import CheckpointResult
from .restore import RestoreReport


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
    settings = "UnreadableSettings: "
    if error.startswith(settings):  # its own sentence: saving stopped on purpose
        return error.removeprefix(settings)
    return f"a checkpoint could not be written ({error})"


def restore_summary(report: RestoreReport) -> str:
    """The lines shown above the first cell's output after a restore."""
    lines: list[str] = []
    if report.generation is not None:
        count = len(report.restored)
        lines.append(
            f"persistent-kernel: restored {count} variable{'s' if count != 1 else ''} "
            f"from checkpoint {report.generation} ({when(report.created)}, "
            f"{human_size(report.size)})" + (f": {short_list(report.restored)}" if count else "")
        )
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
    if report.skipped:
        lines.append(f"persistent-kernel: {len(report.skipped)} not restored:")
        lines.extend(f"  {name}: {reason}" for name, reason in report.skipped.items())
    if report.carried:
        count = sum(len(g.record.get("names", [])) for g in report.carried)
        lines.append(
            f"persistent-kernel: the {count} variable(s) not loaded stay in later checkpoints "
            "until you assign those names"
        )
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


def _row(cells: tuple[str, ...]) -> str:
    return (
        "<tr>"
        + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in cells)
        + "</tr>"
    )


def restore_html(report: RestoreReport) -> str:
    """A compact HTML report for notebooks: the summary, then a table of
    name, type, size and status, folded when it is long."""
    rows: list[tuple[str, ...]] = []
    for name in report.restored:
        detail = report.details.get(name, {})
        size = detail.get("size")
        rows.append(
            (name, str(detail.get("type", "")), human_size(size) if size else "", "restored")
        )
    for name, reason in report.skipped.items():
        detail = report.details.get(name, {})
        rows.append((name, str(detail.get("type", "")), "", f"not restored: {reason}"))
    # the summary's own lines, without the per-variable ones the table shows
    lines = [
        html.escape(line.removeprefix("persistent-kernel: "))
        for line in restore_summary(report).splitlines()
        if not line.startswith("  ") and not line.endswith("not restored:")
    ]
    head = "<br>".join(lines)
    opened = " open" if len(rows) <= _FOLD_AFTER else ""
    summary = f"{len(report.restored)} restored, {len(report.skipped)} not restored"
    table = "".join(_row(row) for row in rows)
    return (
        "<div class='persistent-kernel-restore'>"
        f"<b>persistent-kernel</b>: {head}"
        f"<details{opened}><summary>{summary}</summary><table>"
        + _row(("name", "type", "size", "status")).replace("td", "th")
        + f"{table}</table></details><small>{html.escape(START_CLEAN)}</small></div>"
    )


def checkpoint_status(result: CheckpointResult | None, pending: bool, running: bool) -> str:
    """What ``%persist`` prints."""
    lines: list[str] = []
    if result is None:
        lines.append("No checkpoint written by this kernel yet.")
    elif not result.ok:
        lines.append(f"The last checkpoint failed: {result.error}")
    else:
        lines.append(
            f"Last checkpoint: generation {result.generation}, {when(result.created)}, "
            f"{human_size(result.size)} ({human_size(result.written)} written)"
        )
        lines.append(f"Saved ({len(result.saved)}): {short_list(result.saved, 30) or '-'}")
        if result.skipped:
            lines.append(f"Skipped ({len(result.skipped)}):")
            lines.extend(f"  {name}: {reason}" for name, reason in result.skipped.items())
        lines.extend(f"Note: {note}" for note in result.notes)
    if running:
        lines.append("A checkpoint is being written now.")
    elif pending:
        lines.append("Changes since then will be checkpointed when the kernel is idle.")
    else:
        lines.append("Nothing changed since the last checkpoint.")
    return "\n".join(lines)
