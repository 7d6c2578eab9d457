"""A cell after a restart waits only for the names it uses: real kernels.

The state holds variables whose loading is held at a gate: unpickling one
calls a notebook function that waits until the test creates its gate file
(or the restore is told to stop: an interrupt, a shutdown), after leaving a
``.started`` file. So what is loaded when a cell runs is decided by the test,
never by a clock: a cell that replies while a gate is closed did not wait
for what is behind it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Kernel, KernelHarness
from .helpers import wait_until

NOW = ["--PersistentKernel.checkpoint_interval=0"]

GATED = """
def gated_{n}(v, gate):
    import os, time
    from IPython import get_ipython
    open(gate + '.started', 'w').close()
    stop = get_ipython().kernel.startup.progress.stop
    deadline = time.monotonic() + 120
    while not (os.path.exists(gate) or stop.is_set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return v
class Gated_{n}:
    def __init__(self, v, gate):
        self.v, self.gate = v, gate
    def __reduce__(self):
        return (gated_{n}, (self.v, self.gate))
slow_{n} = Gated_{n}({value!r}, {gate!r})
"""

# loaded in this order; more than a MiB left to load when a cell needs none of it: it
# runs beside the restore at once (see kernel.ENDING_BYTES)
VALUES = {1: "one", 2: "two" * 400_000, 3: "three" * 400_000}


class Cell:
    """A cell sent without waiting for it; its output read as it comes."""

    def __init__(self, kernel: Kernel, code: str) -> None:
        self.kernel = kernel
        self.msg_id = kernel.kc.execute(code)
        self.text = ""
        self.results: list[str] = []
        self.error: str | None = None
        self.idle = False

    def _read(self, timeout: float) -> None:
        msg = self.kernel.kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != self.msg_id:
            return
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            self.text += content["text"]
        elif kind in ("display_data", "update_display_data", "execute_result"):
            plain = content["data"].get("text/plain", "")
            self.results.append(plain)
            self.text += plain + "\n"
        elif kind == "error":
            self.error = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle = True

    def waiting(self, timeout: float = 60) -> None:
        """Until the kernel shows the restore's progress line above this cell: it waits."""
        deadline = time.monotonic() + timeout
        while not any("restoring checkpoint" in r for r in self.results):
            assert not self.idle, f"the cell ran without waiting: {self.text}"
            assert time.monotonic() < deadline, "no progress line"
            self._read(timeout)

    def done(self, timeout: float = 60) -> Cell:
        deadline = time.monotonic() + timeout
        while not self.idle:
            assert time.monotonic() < deadline, "the cell did not end"
            self._read(timeout)
        return self


def seed(kernels: KernelHarness, gates: Path, count: int) -> Kernel:
    """A kernel whose newest generation holds ``small``, ``table`` (a function that
    reads ``slow_1``, kept in a dict) and *count* gated variables, each in a group of
    its own, in the order they load; restarted, restoring."""
    code = "small = 7\ntable = {'get': lambda: slow_1}\n" + "".join(
        GATED.format(n=n, value=VALUES[n], gate=str(gates / str(n))) for n in range(1, count + 1)
    )
    kernel = kernels.start(args=NOW)
    kernel.run(code).check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    content = session.latest()[0].content
    group: dict[str, Any] = {}
    for name in ["small", "table", *(f"slow_{n}" for n in range(1, count + 1))]:
        group[name] = content["groups"][content["variables"][name]["group"]]
    sizes = [g["size"] for g in group.values()]
    assert sizes == sorted(sizes) and len({id(g) for g in group.values()}) == count + 2
    kernel.restart()
    return kernel


def opened(gates: Path, n: int) -> None:
    (gates / str(n)).write_text("")


def started(gates: Path, n: int) -> bool:
    return (gates / f"{n}.started").exists()


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Path]:
    """The folder of the slow groups' gates; every gate opened at the end, so that no
    restore is left waiting on one."""
    folder = tmp_path / "gates"
    folder.mkdir()
    try:
        yield folder
    finally:
        for n in VALUES:
            opened(folder, n)


def test_a_cell_waits_only_for_the_names_it_uses(kernels: KernelHarness, gates: Path) -> None:
    kernel = seed(kernels, gates, 3)
    wait_until(lambda: started(gates, 1), what="slow_1 to be loading")
    # slow_1 is held at its gate: a cell that does not use it runs now
    assert "42" in kernel.run("print(small * 6)").check().stdout
    assert not started(gates, 2)  # nothing after slow_1 was loaded either
    # a cell binding a new name runs now too, and its change is saved later
    kernel.run("added = small + 1").check()
    # a function kept in a dict is beyond what a cell can be seen to use: the cell
    # runs, fails, and the next cell says why
    assert "NameError: name 'slow_1'" in (kernel.run("table['get']()").error or "")
    # a cell naming slow_1 waits for it, showing the progress, and sees it
    cell = Cell(kernel, "print(slow_1)")
    cell.waiting()
    assert "this cell waits for slow_1;" in cell.results[0]
    opened(gates, 1)
    assert "one" in cell.done().text and cell.error is None
    assert "slow_1 was not restored yet when the last cell ran" in cell.text
    # a cell binding a pending name waits for its group: its own value wins
    wait_until(lambda: started(gates, 2), what="slow_2 to be loading")
    cell = Cell(kernel, "slow_2 = 'mine'")
    cell.waiting()
    opened(gates, 2)
    assert cell.done().error is None
    assert kernel.value("slow_2") == "'mine'"
    # globals(): the cell cannot tell what it uses, so it waits for all
    wait_until(lambda: started(gates, 3), what="slow_3 to be loading")
    cell = Cell(kernel, "print(sorted(k for k in globals() if k.startswith('slow_')))")
    cell.waiting()
    opened(gates, 3)
    cell.done()
    assert "['slow_1', 'slow_2', 'slow_3']" in cell.text and cell.error is None
    # the restore report replaced the progress line of the cell that waited for its end
    assert "restored" in cell.results[-1] and "from checkpoint 1" in cell.results[-1]
    # what cells changed during the restore is saved once it ended
    session = kernels.session()
    kernels.wait_generations(session, 2)
    variables = session.latest()[0].content["variables"]
    assert {"added", "slow_1", "slow_2", "slow_3", "small"} <= set(variables)
    kernel.restart()
    assert kernel.value("(small, added, slow_1, slow_2)") == "(7, 8, 'one', 'mine')"


def test_an_interrupt_while_a_cell_waits_keeps_what_is_loaded(
    kernels: KernelHarness, gates: Path
) -> None:
    kernel = seed(kernels, gates, 2)
    wait_until(lambda: started(gates, 1), what="slow_1 to be loading")
    cell = Cell(kernel, "print(slow_2)")
    cell.waiting()
    kernel.km.interrupt_kernel()  # the restore stops after slow_1, the cell goes on
    cell.done()
    assert cell.error == "NameError: name 'slow_2' is not defined", cell.text
    assert "the restore was interrupted" in cell.text
    assert not started(gates, 2)
    assert kernel.value("(small, slow_1, 'slow_2' in dir())") == "(7, 'one', False)"
    # slow_2 stays in later checkpoints as it was, and comes back at the next start
    opened(gates, 2)
    kernel.run("more = 1").check()
    kernels.wait_generations(kernels.session(), 2)
    kernel.restart()
    assert kernel.value("(slow_1, len(slow_2), more)") == f"('one', {len(VALUES[2])}, 1)"


def test_a_shutdown_during_the_restore_carries_what_was_not_loaded(
    kernels: KernelHarness, gates: Path
) -> None:
    kernel = seed(kernels, gates, 2)
    session = kernels.session()
    before = session.latest()[0].content
    wait_until(lambda: started(gates, 1), what="slow_1 to be loading")
    kernel.run("added = small + 1").check()
    assert session.generations() == [1]  # nothing is written while the restore binds
    # the shutdown stops the restore after slow_1; the final checkpoint has the
    # cell's change and slow_2 as it was on disk, never loaded
    kernel.shutdown()
    kernels.wait_generations(session, 2)
    after = session.latest()[0].content
    assert {"added", "small", "slow_1", "slow_2"} <= set(after["variables"])
    assert after["variables"]["slow_2"].get("carried") is True
    old = before["groups"][before["variables"]["slow_2"]["group"]]["parts"]
    new = after["groups"][after["variables"]["slow_2"]["group"]]["parts"]
    assert old == new
    assert not started(gates, 2)
    opened(gates, 2)
    kernel = kernels.start()
    assert kernel.value("(small, added, slow_1, len(slow_2))") == (
        f"(7, 8, 'one', {len(VALUES[2])})"
    )


def test_on_a_small_state_the_first_cell_shows_the_report(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("a = 1\nb = {'k': 2}\nc = list(range(1000))").check()
    kernels.wait_generations(kernels.session(), 1)
    kernel.restart()
    # the cell's names come first, then the rest (a few bytes): it waits for the end
    out = kernel.run("print(c[-1])").check()
    assert "999" in out.stdout
    assert "restored 3 variables from checkpoint 1" in out.text, out.text
