"""Every kind of :mod:`tests.corpus` comes back after a real kernel restart.

One kernel runs every kind's setup (one cell each), ``%persist save``, is
restarted, and runs every kind's check (one cell each). For each kind: its
setup ran, its variables were listed as saved *and* restored (saved means
restorable), and its check passed. Then: everything the checkpoint lists as
saved was restored, and ``persistent-kernel show`` agrees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from persistent_kernel.store import Store

from .corpus import KINDS, Kind
from .harness import KernelHarness

#: The first test also pays for the fixture: one kernel running every kind twice.
pytestmark = pytest.mark.timeout(900)

_ISOLATED = ("JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR", "HOME")


@dataclass
class Run:
    """What one kernel made of the corpus."""

    work: Path
    root: Path
    setup_errors: dict[str, str] = field(default_factory=dict)
    check_errors: dict[str, str] = field(default_factory=dict)
    saved: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    not_restored: dict[str, str] = field(default_factory=dict)
    first_cell: list[str] = field(default_factory=list)
    kernel: Any = None  # the restarted kernel, still running


def _state(kernel: object, expression: str) -> object:
    # binds no variable: what it reads must not change what is saved
    code = f"print(__import__('json').dumps((lambda _k: {expression})(get_ipython().kernel)))"
    out = kernel.run(code).check()  # type: ignore[attr-defined]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as mp:
        for var in _ISOLATED:
            (base / var).mkdir()
            mp.setenv(var, str(base / var))
        for var in ("JPY_SESSION_NAME", "PERSISTENT_KERNEL_SESSION", "JUPYTER_PATH"):
            mp.delenv(var, raising=False)
        # plt.subplots() in a cell must not need a display
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        work = base / "work"
        work.mkdir()
        root = base / "JUPYTER_DATA_DIR" / "persistent_kernel"
        harness = KernelHarness(cwd=work, root=root)
        run = Run(work, root)
        try:
            kernel = harness.start(args=["--PersistentKernel.checkpoint_interval=3600"])
            kernel.run("from pathlib import Path as _Path\nWORK = _Path.cwd()").check()
            for kind in KINDS:
                out = kernel.run(kind.setup, timeout=120)
                if out.error:
                    run.setup_errors[kind.name] = out.error
            kernel.run("%persist save", timeout=300).check()
            result = _state(
                kernel,
                "(lambda r: {'saved': r.saved, 'skipped': r.skipped})(_k.checkpointer.last_result)",
            )
            assert isinstance(result, dict)
            run.saved, run.skipped = result["saved"], result["skipped"]
            # A restart in two steps, so that files can change in between.
            kernel.shutdown()
            kernel.wait_dead()
            for session in Store(root).sessions():
                session.locks.wait_for_writers(120)
            for kind in KINDS:
                if kind.after_shutdown:
                    exec(kind.after_shutdown, {"WORK": work})
            kernel = harness.start(args=["--PersistentKernel.checkpoint_interval=3600"])
            # `globals` makes the cell wait for the whole restore (a `pass` would run
            # beside it), so the report shows above it.
            first = kernel.run("globals and None").check()
            run.first_cell = first.results
            report = _state(
                kernel,
                "{'restored': _k.restore_report.restored, 'skipped': _k.restore_report.skipped}",
            )
            assert isinstance(report, dict)
            run.restored, run.not_restored = report["restored"], report["skipped"]
            for kind in KINDS:
                out = kernel.run(kind.check, timeout=120)
                if out.error:
                    run.check_errors[kind.name] = out.error
            run.kernel = kernel
            yield run
        finally:
            harness.close()


def test_the_corpus_is_large_and_its_names_are_unique() -> None:
    assert len(KINDS) >= 100
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"lists {len(KINDS)} kinds of objects" in readme  # the README states its size
    assert len({kind.name for kind in KINDS}) == len(KINDS)
    counts = Counter(name for kind in KINDS for name in kind.own_names())
    assert [name for name, count in counts.items() if count > 1] == []


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_kind_comes_back(kind: Kind, corpus_run: Run) -> None:
    assert kind.name not in corpus_run.setup_errors, corpus_run.setup_errors[kind.name]
    names = [n for n in kind.saved_names() if n not in kind.lost]
    assert names or kind.lost, "a kind must bind at least one variable"
    for name, phrase in kind.lost.items():
        assert name not in corpus_run.restored
        reason = corpus_run.skipped.get(name) or corpus_run.not_restored.get(name) or ""
        assert phrase in reason, (name, reason)
    not_saved = {n: corpus_run.skipped.get(n, "absent") for n in names if n not in corpus_run.saved}
    assert not_saved == {}, "listed as not saved"
    lost = {
        n: corpus_run.not_restored.get(n, "absent") for n in names if n not in corpus_run.restored
    }
    assert lost == {}, "saved but not restored"
    assert kind.name not in corpus_run.check_errors, corpus_run.check_errors[kind.name]


def test_saved_is_restored_and_show_agrees(corpus_run: Run) -> None:
    """Nothing listed as saved fails to load (but what changed on disk on purpose);
    ``persistent-kernel show`` says the same."""
    lost = {name for kind in KINDS for name in kind.lost}
    assert sorted(set(corpus_run.saved) - lost) == sorted(set(corpus_run.restored) - lost)
    cli = Path(sys.executable).with_name("persistent-kernel")
    proc = subprocess.run(
        [str(cli), "show", "notebook.ipynb", "--json", "--checkpoint-dir", str(corpus_run.root)],
        cwd=corpus_run.work,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "JPY_SESSION_NAME": "notebook.ipynb"},
    )
    rows = json.loads(proc.stdout)["variables"]
    shown = sorted(row["name"] for row in rows if row["status"] == "saved")
    assert shown == sorted(corpus_run.saved)


def test_a_restored_figure_is_not_shown_again(corpus_run: Run) -> None:
    """The first cell after the restore displays nothing but the restore summary."""
    assert [r for r in corpus_run.first_cell if "Figure" in r] == []


def test_export_writes_everything_saved(corpus_run: Run, tmp_path: Path) -> None:
    """``persistent-kernel export`` leaves out nothing the checkpoint saved.

    (Run with the notebook's directory importable, as the kernel has it: one
    kind is a class from a module beside the notebook.)"""
    cli = Path(sys.executable).with_name("persistent-kernel")
    target, root = tmp_path / "state.pkl", str(corpus_run.root)
    proc = subprocess.run(
        [str(cli), "export", "notebook.ipynb", str(target), "--json", "--checkpoint-dir", root],
        cwd=corpus_run.work,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "PYTHONPATH": str(corpus_run.work)},
    )
    result = json.loads(proc.stdout)
    lost = {name for kind in KINDS for name in kind.lost}
    saved = set(corpus_run.saved) - lost
    assert {n: r for n, r in result["skipped"].items() if n in saved} == {}
    assert sorted(set(result["written"]) - lost) == sorted(saved)


def test_no_false_version_warning(corpus_run: Run) -> None:
    """Saved and restored with the same packages: the report names no version
    change (``sklearn`` is provided by scikit-learn, ``yaml`` by PyYAML...)."""
    summary = "\n".join(corpus_run.first_cell)
    assert "restored" in summary
    assert "saved with" not in summary


def test_what_did_not_come_back_shows_its_cell_and_reruns_on_request(corpus_run: Run) -> None:
    """The report shows the cell that last assigned a variable not restored;
    ``%persist rerun NAME`` runs that cell again (and nothing ran before)."""
    summary = "\n".join(corpus_run.first_cell)
    assert "stale_reader: its file" in summary
    assert (
        "last assigned by: (WORK / 'changing.txt').write_text('old'); stale_reader = open"
        in summary
    )
    assert "%persist rerun NAME" in summary
    out = corpus_run.kernel.run("%persist rerun stale_reader").check()
    assert "Running again: (WORK / 'changing.txt')" in out.stdout
    assert corpus_run.kernel.value("stale_reader.read()") == "'old'"
    refused = corpus_run.kernel.run("%persist rerun fav_color")
    assert "only variables the last restore did not bring back" in refused.stderr
