"""What the user reads: the restore report, ``%persist`` status and history, made by
:mod:`persistent_kernel.render` from real checkpoints, in process.

Each test is a promise one of these made and did not keep: the cell of a variable
not restored, its type and size, one readable reason, a group's size counted once,
variables pending after an interrupted restore counted, a status that never
contradicts itself, an exclusion not called a removal.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from persistent_kernel import render
from persistent_kernel.checkpoint import CheckpointResult, write_checkpoint
from persistent_kernel.restore import RestoreProgress, history, restore_checkpoint
from persistent_kernel.store import SessionStore

from .helpers import INFO

CELLS = [
    "",
    "import numpy as np\nbig = np.arange(10000)\nalias = big\nholder = [big]",
    "from pk_report_module import Gone\nbad = Gone(1)",
    "n = 1\ngen = (i for i in range(3))\nm = 2",
]


@pytest.fixture
def gone_module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("pk_report_module")
    exec("class Gone:\n    def __init__(self, v):\n        self.v = v\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        yield module
    finally:
        sys.modules.pop(module.__name__, None)


def state(module: types.ModuleType) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The values a notebook ran CELLS into, what the namespace filter skipped, and its types."""
    import numpy as np

    big = np.arange(10000)
    values = {"np": np, "big": big, "alias": big, "holder": [big], "bad": module.Gone(1)}
    values.update(n=1, m=2, gen=(i for i in range(3)))
    return values, {"secret": "excluded by %persist exclude"}, {"secret": "str"}


def save(session: SessionStore, module: types.ModuleType) -> CheckpointResult:
    values, skipped, skipped_types = state(module)
    result = write_checkpoint(
        session, values, skipped, INFO, keep=5, inputs=CELLS, skipped_types=skipped_types
    )
    assert result.ok
    return result


def test_the_report_names_each_variable_once_with_its_cell_type_and_size(
    session: SessionStore, gone_module: types.ModuleType
) -> None:
    save(session, gone_module)
    del sys.modules[gone_module.__name__]  # `bad` cannot be loaded now
    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into)
    text = render.restore_text(report)
    # one readable reason, not the exception's text
    assert "gen: not saved: cannot pickle a generator's frame" in text and "TypeError" not in text
    # the cell that assigned it, by the line that did
    assert "last assigned by: n = 1 ... gen = (i for i in range(3)) ..." in text
    assert "last assigned by: from pk_report_module import Gone ... bad = Gone(1)" in text
    # `bad` failed to load: not restored, once (not also "not loaded yet")
    assert text.count("bad") == 2 and "not loaded yet" not in text
    assert "bad: could not be loaded" in text and "kept in later checkpoints" in text
    page = render.restore_html(report)
    assert "6 restored, 3 not restored</summary>" in page
    assert "<pre>from pk_report_module import Gone\nbad = Gone(1)</pre>" in page
    assert "last assigned by: <code>n = 1 ... gen = (i for i in range(3)) ...</code>" in page
    rows = {row.split("</td>")[0].rsplit(">", 1)[1]: row for row in page.split("<tr>")[2:]}
    cells = {
        name: [c.split(">", 1)[1] for c in row.split("</td>")[:3]] for name, row in rows.items()
    }
    assert cells["gen"][1] == "generator"  # the type of a variable not saved
    assert cells["secret"][1] == "str"
    assert cells["bad"][1] == "pk_report_module.Gone" and cells["bad"][2].endswith(" B")
    assert "not restored: not saved" not in page  # one reason, not two
    # big, alias and holder share one group: its size is shown once
    sized = [name for name in ("alias", "big", "holder") if cells[name][2]]
    assert len(sized) == 1 and "(saved with" in rows["big"]


def test_an_interrupted_restore_counts_what_it_left_pending(
    session: SessionStore, gone_module: types.ModuleType
) -> None:
    save(session, gone_module)
    progress = RestoreProgress()
    progress.stop.set()  # interrupted while reading: nothing loaded
    report = restore_checkpoint(session, {}, progress)
    assert report.interrupted and report.carried
    page = render.restore_html(report)
    assert "1 restored, 2 not restored, 6 not loaded yet</summary>" in page
    assert "not loaded yet: %persist restore big loads it" in page
    assert "6 variable(s) not loaded yet" in render.restore_text(report)


def test_status_never_contradicts_itself() -> None:
    nothing = render.checkpoint_status(None, pending=False, running=False)
    assert "No checkpoint written" in nothing and "Nothing changed since" not in nothing
    assert "Nothing to save yet." in nothing
    waiting = render.checkpoint_status(None, pending=True, running=False, due=25.2)
    assert "Changes will be checkpointed when the kernel is idle, in 25 s." in waiting
    now = render.checkpoint_status(None, pending=True, running=False, due=0.0)
    assert "when the kernel is idle, right after this cell" in now
    off = render.checkpoint_status(None, pending=True, running=False, due=None)
    assert "when the kernel is idle" not in off and "%persist save saves them" in off
    empty = CheckpointResult(ok=True, unchanged=True)  # nothing to save (after a clear)
    text = render.checkpoint_status(empty, pending=False, running=False, cleared=["x"])
    assert "generation None" not in text and "Nothing changed since" not in text
    assert "Not saved since %persist clear, until assigned again: x" in text


def test_status_shows_what_the_generation_wrote_and_what_is_excluded_now() -> None:
    result = CheckpointResult(
        ok=True, generation=3, created=0.0, size=3 << 20, written=0, unchanged=True,
        saved=["a", "b", "token"], skipped={"g": "not saved: cannot pickle a generator's frame"},
    )  # fmt: skip
    text = render.checkpoint_status(
        result, pending=False, running=False, written=1 << 20, excluded=["token"]
    )
    assert "generation 3" in text and "3.0 MiB (1.0 MiB written)" in text
    assert "Saved (2): a, b\n" in text
    assert "Excluded since (left out of the next checkpoint): token" in text
    assert "  g: cannot pickle a generator's frame" in text
    assert "Nothing changed since the last checkpoint." in text
    restored = render.checkpoint_status(result, pending=False, running=False, carried=["b"])
    assert "(restored at start)" in restored and "Saved (2): a, token\n" in restored


def test_history_says_excluded_not_removed(session: SessionStore) -> None:
    write_checkpoint(session, {"a": 1, "token": "s"}, {}, INFO, keep=5)
    write_checkpoint(session, {"a": 1}, {"token": "excluded by %persist exclude"}, INFO, keep=5)
    write_checkpoint(session, {}, {"token": "excluded by %persist exclude"}, INFO, keep=5)
    rows = history(session)
    assert (rows[1]["removed"], rows[1]["excluded"]) == ([], ["token"])
    assert (rows[2]["removed"], rows[2]["excluded"]) == (["a"], [])
    assert "excluded token" in render.history_table(rows)


def test_cells_survive_a_restart_for_variables_no_cell_of_this_kernel_bound(
    session: SessionStore, gone_module: types.ModuleType
) -> None:
    save(session, gone_module)
    # the next kernel's checkpoint: its `In` holds only its own cells
    values, skipped, skipped_types = state(gone_module)
    values["n"] = 5
    write_checkpoint(
        session, values, skipped, INFO, keep=5, inputs=["", "n = 5"], skipped_types=skipped_types
    )
    del sys.modules[gone_module.__name__]
    report = restore_checkpoint(session, {})
    assert report.cells["n"] == "n = 5"
    assert report.cells["gen"] == CELLS[3] and report.cells["bad"] == CELLS[2]


def test_a_note_alone_is_one_line_with_no_empty_table_under_it() -> None:
    """State found and not loaded (another notebook's, or a copy's original): the first
    cell shows the note, not a table of nothing."""
    from persistent_kernel.restore import RestoreReport

    report = RestoreReport(problems=["this notebook is a copy of a.ipynb, so it starts clean"])
    shown = render.restore_html(report)
    assert "copy of a.ipynb" in shown
    assert "<table>" not in shown and "0 restored" not in shown
    assert render.restore_text(report).count("\n") == 0
