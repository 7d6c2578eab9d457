"""The kernel state comm the JupyterLab extension talks to (persistent_kernel.panel).

In process first, as ipykernel tests its comms: a fake comm that records what
is sent, over a real checkpointer (inline writer, fake clock and loop: see
test_checkpointer.Rig). Then with a real kernel over jupyter_client: the comm
opened as the extension opens it, its pushes, and each action answered with
the ``%persist`` magic's own sentences.
"""

from __future__ import annotations

import errno
import queue
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from persistent_kernel import panel, snapshot
from persistent_kernel.checkpointer import Checkpointer
from persistent_kernel.restore import RestoreProgress
from persistent_kernel.store import SessionStore

from .harness import Kernel, KernelHarness
from .test_checkpointer import Rig
from .test_kernel_safety import quiet_value

NOW = ["--PersistentKernel.checkpoint_interval=0"]


class FakeComm:
    """Records what the kernel sends; hands the kernel what the frontend would."""

    def __init__(self) -> None:
        self.comm_id = uuid.uuid4().hex
        self.sent: list[dict[str, Any]] = []
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        self.on_closed: Callable[[dict[str, Any]], None] | None = None

    def send(self, data: Any = None) -> None:
        self.sent.append(data)

    def on_msg(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.on_message = callback

    def on_close(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.on_closed = callback

    def request(self, **data: Any) -> dict[str, Any]:
        assert self.on_message is not None
        self.on_message({"content": {"data": data}})
        (reply,) = [m for m in self.sent if m.get("reply") == data.get("id")]
        return reply

    def states(self) -> list[dict[str, Any]]:
        return [m["state"] for m in self.sent if "state" in m]


class FakeKernel:
    """The kernel as the panel sees it, around a test's checkpointer."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.autosave = True
        self.progress: panel.Progress | None = None
        self.persisted: list[str] = []
        self.later: list[Callable[[], None]] = []

    @property
    def checkpointer(self) -> Checkpointer:
        return self.rig.checkpointer

    def restore_progress(self) -> panel.Progress | None:
        return self.progress

    def run_persist(self, line: str) -> tuple[bool, str]:
        self.persisted.append(line)
        return True, f"ran {line}"

    def namespace(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.rig.host.namespace()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.later.append(callback)


@pytest.fixture
def wired(tmp_path: Path) -> tuple[Rig, FakeKernel, panel.StatePanel, FakeComm]:
    rig = Rig(tmp_path / "store", checkpoint_interval=30.0)
    kernel = FakeKernel(rig)
    state = panel.StatePanel(kernel, clock=lambda: 5000.0)
    rig.checkpointer.listeners.append(state.changed)
    comm = FakeComm()
    state.opened(comm, {})
    return rig, kernel, state, comm


def test_the_state_is_pushed_as_it_changes_and_only_then(
    wired: tuple[Rig, FakeKernel, panel.StatePanel, FakeComm],
) -> None:
    rig, _, state, comm = wired
    assert [s["phase"] for s in comm.states()] == ["empty"]  # at once, on opening
    rig.cell(x=1)
    state.changed()  # the kernel calls this once a cell ends
    assert comm.states()[-1]["phase"] == "unsaved"
    assert comm.states()[-1]["unsaved"] == 1
    state.changed()
    assert len(comm.states()) == 2, "an unchanged state was sent again"
    rig.loop.advance(30.0)  # the checkpoint: the checkpointer tells its listeners
    saved = comm.states()[-1]
    assert saved["phase"] == "saved" and saved["generation"] == 1
    assert saved["unsaved"] == 0 and saved["size"] > 0 and saved["created"] is not None


def test_a_failing_checkpoint_is_pushed_with_its_sentence_and_clears_once_saved(
    wired: tuple[Rig, FakeKernel, panel.StatePanel, FakeComm], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig, _, _, comm = wired
    rig.cell(x=1)
    rig.loop.advance(30.0)

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    # A fake for a fault this test cannot make for real (a full disk: see
    # test_kernel_safety for the real one, and test_lab_panel for its state in the UI).
    with monkeypatch.context() as patch:
        patch.setattr(SessionStore, "write_blob", full)
        rig.cell(y=2)
        rig.loop.advance(30.0)
        failing = comm.states()[-1]
    assert failing["phase"] == "failing"
    assert failing["error"] is not None and "is full" in failing["error"]
    assert failing["generation"] == 1, "the last good checkpoint is still shown"
    rig.loop.advance(10.0)  # the retry after the back-off
    assert comm.states()[-1]["phase"] == "saved"
    assert comm.states()[-1]["error"] is None and comm.states()[-1]["generation"] == 2


def test_restore_progress_is_read_while_it_runs(
    wired: tuple[Rig, FakeKernel, panel.StatePanel, FakeComm],
) -> None:
    _, kernel, state, comm = wired
    progress = RestoreProgress()
    progress.total, progress.generation = 3 << 30, 4
    kernel.progress = panel.Progress(progress, None)
    state.changed()
    assert comm.states()[-1]["restoring"] == {
        "generation": 4, "done": 0, "total": 3 << 30, "waited": None,
    }  # fmt: skip
    assert len(kernel.later) == 1, "no tick was set while the restore runs"
    progress.done = 2 << 30
    kernel.later.pop()()
    assert comm.states()[-1]["restoring"]["done"] == 2 << 30
    kernel.progress = None
    kernel.later.pop()()
    assert comm.states()[-1]["phase"] == "empty"
    assert kernel.later == [], "it kept ticking after the restore"


def test_requests_are_answered_with_the_data_of_the_command_line(
    wired: tuple[Rig, FakeKernel, panel.StatePanel, FakeComm],
) -> None:
    rig, kernel, _, comm = wired
    rig.cell(x=1, y="two")
    rig.loop.advance(30.0)
    rig.cell(z=3.0)
    history = comm.request(id=1, request="history")
    assert history["ok"] and [row["generation"] for row in history["data"]] == [1]
    assert history["data"][0]["added"] == ["x", "y"]
    variables = comm.request(id=2, request="variables")["data"]
    rows = {row["name"]: row for row in variables["variables"]}
    assert variables["generation"] == 1
    assert rows["x"]["status"] == "saved" and rows["x"]["type"] == "int"
    assert rows["z"]["status"] == "pending" and rows["z"]["type"] == "float"
    old = comm.request(id=3, request="variables", generation=1)["data"]
    assert {row["name"] for row in old["variables"]} == {"x", "y"}

    reply = comm.request(id=4, request="restore", args=["1", "x"])
    assert reply == {"reply": 4, "ok": True, "text": "ran restore 1 x", "data": None}
    assert kernel.persisted == ["restore 1 x"]
    reply = comm.request(id=5, request="export", args=["my file.pkl"])
    assert kernel.persisted[-1] == "export 'my file.pkl'"  # quoted as the magic splits it
    assert comm.request(id=6, request="nonsense")["ok"] is False
    missing = comm.request(id=7, request="variables", generation=9)
    assert missing["ok"] is False and "has no generation 9" in missing["text"], missing
    assert not missing["text"].startswith("the kernel could not answer"), "told as a fault"


def test_an_action_waits_for_no_cell_and_is_refused_while_one_runs(
    wired: tuple[Rig, FakeKernel, panel.StatePanel, FakeComm],
) -> None:
    rig, kernel, _, comm = wired
    rig.checkpointer.cell_started()  # an async cell awaits: comms are served meanwhile
    reply = comm.request(id=1, request="save")
    assert not reply["ok"] and "a cell is running" in reply["text"]
    assert kernel.persisted == []
    rig.checkpointer.cell_finished(interrupted=False)
    assert comm.request(id=2, request="save")["ok"]


def test_a_closed_comm_is_sent_nothing(
    wired: tuple[Rig, FakeKernel, panel.StatePanel, FakeComm],
) -> None:
    rig, _, state, comm = wired
    assert comm.on_closed is not None
    comm.on_closed({})
    before = len(comm.sent)
    rig.cell(x=1)
    state.changed()
    assert len(comm.sent) == before and state.comms == {}


# -- a real kernel --------------------------------------------------------------------------


class StateComm:
    """The comm as the extension opens it, over jupyter_client's channels."""

    def __init__(self, kernel: Kernel) -> None:
        self.kc = kernel.kc
        self.comm_id = uuid.uuid4().hex
        self.states: list[dict[str, Any]] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self._next = 0
        self.closed = False
        msg = self.kc.session.msg(
            "comm_open", {"comm_id": self.comm_id, "target_name": panel.TARGET, "data": {}}
        )
        self.kc.shell_channel.send(msg)

    def pump(self, timeout: float = 1.0) -> None:
        """Read what the kernel published (iopub) for at most *timeout* seconds."""
        try:
            while True:
                msg = self.kc.get_iopub_msg(timeout=timeout)
                content = msg["content"]
                if content.get("comm_id") != self.comm_id:
                    continue
                if msg["msg_type"] == "comm_close":
                    self.closed = True
                data = content.get("data") or {}
                if "state" in data:
                    self.states.append(data["state"])
                if "reply" in data:
                    self.replies[data["reply"]] = data
                timeout = 0.05
        except queue.Empty:
            return

    def wait(self, predicate: Callable[[], object], what: str, timeout: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if predicate():
                return
        raise AssertionError(f"no {what} in {timeout:.0f} s; states {self.states[-3:]}")

    def phase(self) -> str | None:
        return self.states[-1]["phase"] if self.states else None

    def request(self, request: str, **data: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        msg = self.kc.session.msg(
            "comm_msg",
            {"comm_id": self.comm_id, "data": {"id": ident, "request": request, **data}},
        )
        self.kc.shell_channel.send(msg)
        self.wait(lambda: ident in self.replies, f"reply to {request}", timeout=120)
        return self.replies[ident]


def test_a_real_kernel_pushes_its_state_and_answers_with_the_magics_sentences(
    kernels: KernelHarness, tmp_path: Path
) -> None:
    kernel = kernels.start(args=NOW)
    comm = StateComm(kernel)
    comm.wait(lambda: comm.phase() == "empty", "state on opening")
    kernel.run("x = 1").check()
    comm.wait(lambda: comm.phase() == "saved" and comm.states[-1]["generation"] == 1, "saved")

    kernel.run("x = 2; y = [3]").check()
    comm.wait(lambda: comm.states[-1]["generation"] == 2, "generation 2")
    history = comm.request("history")
    assert [row["generation"] for row in history["data"]] == [1, 2]
    assert history["data"][1]["changed"] == ["x"]

    reply = comm.request("restore", args=["1", "x"])
    assert reply["ok"], reply
    assert reply["text"].startswith("Restored 1 variable(s) from generation 1")
    assert kernel.value("(x, y)") == "(1, [3])"

    reply = comm.request("exclude", args=["y"])
    assert reply == {**reply, "ok": True, "text": "Not saved from now on, in this notebook: y"}
    reply = comm.request("save")
    assert reply["ok"] and re.match(r"Checkpoint \d+ written: ", reply["text"]), reply
    assert "skipped y: excluded by %persist exclude" in reply["text"]
    variables = comm.request("variables")["data"]["variables"]
    assert {row["name"]: row["status"] for row in variables}["y"] == "skipped"

    target = tmp_path / "state.pkl"
    reply = comm.request("export", args=[str(target)])
    assert reply["ok"] and target.exists(), reply
    reply = comm.request("restore", args=["99"])
    assert not reply["ok"] and "99" in reply["text"], reply
    kernel.run("print('still fine')").check()


def test_a_saving_state_says_how_far_the_writer_is(
    wired: tuple[Rig, FakeKernel, panel.StatePanel, FakeComm],
) -> None:
    """What the writer put in its beacon (bytes stored, of all) is what the state says."""
    rig, _, _, _ = wired
    beacon = snapshot.Beacon()
    beacon.set("big")
    beacon.progress(600 << 20, 1500 << 20)
    writer = snapshot.Writer(None, None, None)
    writer.beacon = beacon
    rig.checkpointer.writers.writer = writer  # as if a forked writer were running
    try:
        state = panel.read_state(rig.checkpointer, autosave=True, restoring=None, saving_since=1.0)
    finally:
        rig.checkpointer.writers.writer = None
    assert state["phase"] == "saving"
    assert state["saving"] == {"since": 1.0, "variable": "big", "done": 600 << 20,
                               "total": 1500 << 20}  # fmt: skip


def test_a_background_checkpoint_reports_how_far_it_is(kernels: KernelHarness) -> None:
    """An idle checkpoint of a 1 GiB array: while its writer stores the chunks, its beacon
    says how many of how many bytes; the comm pushes the saving state meanwhile."""
    kernel = kernels.start(args=NOW)
    comm = StateComm(kernel)
    comm.wait(lambda: comm.phase() == "empty", "state on opening")
    kernel.run("import numpy as np\nbig = np.random.default_rng(0).random(2**27)").check()
    progress = (
        "(lambda w: w.beacon.read_progress() if w is not None and w.beacon else None)"
        "(get_ipython().kernel.checkpointer.writers.writer)"
    )
    seen = []
    while (value := quiet_value(kernel, progress)) != "None" or not seen:
        if value != "None":
            seen.append(tuple(int(n) for n in value.strip("()").split(",")))
    comm.wait(lambda: comm.phase() == "saved", "saved", timeout=120)
    assert any(0 < done < total for done, total in seen), seen  # part way, seen
    assert all(done <= total for done, total in seen)
    assert max(total for _, total in seen) >= 1 << 30
    assert "saving" in [s["phase"] for s in comm.states]


def test_a_stock_kernel_closes_the_comm_and_keeps_working(jupyter_env: dict[str, Path]) -> None:
    """What the extension never does (it asks the kernel's implementation first), a
    stock ipykernel survives: the unknown target's comm is closed."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(jupyter_env["work"]))
    try:
        kernel = Kernel(km)
        comm = StateComm(kernel)
        comm.wait(lambda: comm.closed, "comm_close", timeout=30)
        assert kernel.value("1 + 1") == "2"
        assert comm.states == []
    finally:
        kernel.shutdown()
