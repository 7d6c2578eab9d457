"""Nothing finished is lost: a SIGKILL or an OOM kill at any moment costs at most the
running cell. Real kernels with the default configuration (a 30 s interval), real
signals, and the kernel's own OOM killer in a memory cgroup."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import psutil
import pytest

from .harness import KernelHarness
from .test_kernel_safety import quiet_value

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="a memory cgroup needs root")


def test_a_kill_at_idle_loses_no_finished_cell(kernels: KernelHarness) -> None:
    kernel = kernels.start()
    kernel.run("k1 = 1").check()
    time.sleep(1)
    kernel.run("k2 = [2]").check()
    time.sleep(2)
    assert kernels.session().generations() == []  # the interval has not passed
    kernel.kill()
    kernel = kernels.start()
    out = kernel.run("print(k1, k2)").check().text
    assert "1 [2]" in out
    assert "was killed at" in out and "between cells; no finished cell was lost" in out


def test_a_kill_during_a_cell_gives_back_the_state_from_before_it(
    kernels: KernelHarness,
) -> None:
    kernel = kernels.start()
    kernel.run("a = 1").check()
    kernel.run("b = 2").check()
    kernel.kc.execute("a = 'half'\nimport time\ntime.sleep(60)\nb = 'done'")
    time.sleep(2)
    kernel.kill()
    kernel = kernels.start()
    out = kernel.run("print(a, b)").check().text
    assert "1 2" in out
    assert "while running the cell `a = 'half' ...`" in out
    assert "the state from before that cell was restored" in out


class MemoryCgroup:
    """A memory cgroup (v2 ``memory.max``, else v1 ``memory.limit_in_bytes``) whose
    limit is *headroom* bytes over what the process moved into it holds then.
    Root only (CI runs as root)."""

    def __init__(self, headroom: int) -> None:
        self.headroom = headroom
        root = Path("/sys/fs/cgroup")
        unified = root if (root / "cgroup.controllers").exists() else root / "unified"
        controllers = unified / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            self.path = unified / f"pk-{os.getpid()}"
            self.limit, self.usage, self.events = "memory.max", "memory.current", "memory.events"
        else:
            self.path = root / "memory" / f"pk-{os.getpid()}"
            self.limit, self.usage = "memory.limit_in_bytes", "memory.usage_in_bytes"
            self.events = "memory.oom_control"
        self.path.mkdir()

    def move(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))
        rss = psutil.Process(pid).memory_info().rss
        used = int((self.path / self.usage).read_text())
        (self.path / self.limit).write_text(str(max(used, rss) + self.headroom))

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in this cgroup."""
        for line in (self.path / self.events).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill count in {self.path / self.events}")

    def remove(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:  # a process is still in it (a standby writing)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@needs_root
def test_an_oom_kill_gives_back_every_finished_cell(kernels: KernelHarness) -> None:
    """The cell that allocates past the cgroup's limit is cut by the kernel's OOM
    killer; the finished cells before it are back after the restart."""
    kernel = kernels.start()
    cgroup = MemoryCgroup(headroom=400 << 20)
    try:
        cgroup.move(kernel.pid)
        kernel.run("import numpy as np\nfirst = np.arange(1_000_000)").check()
        kernel.run("second = {'kept': True}").check()
        time.sleep(1)
        kernel.kc.execute("third = 'half'\nhog = np.ones(1 << 30)")
        kernel.wait_dead(timeout=60)
        assert cgroup.oom_kills() >= 1
        kernels.session().locks.wait_for_writers(60)
    finally:
        cgroup.remove()
    kernel.kc.stop_channels()
    kernel.km.cleanup_resources()
    kernel = kernels.start()
    out = kernel.run("print(first.sum(), second, 'third' in dir())").check().text
    assert "499999500000 {'kept': True} False" in out
    assert "was killed at" in out and "while running the cell `third = 'half' ...`" in out


CELL = "counter += 1\npair = (counter, -counter)\narr[:] = counter"
STATE = "(counter, pair == (counter, -counter), bool((arr == counter).all()))"


def test_fifty_random_kills_never_lose_a_finished_cell(kernels: KernelHarness) -> None:
    """Kills at idle, mid-cell and mid-checkpoint (a short interval keeps writers busy),
    against the log of acknowledged cells: the state after each restart is exactly
    the one after the last cell acknowledged before the kill, never torn."""
    rng = random.Random(os.environ.get("PK_KILL_SEED", "24"))
    args = ["--PersistentKernel.checkpoint_interval=0.5"]
    kernel = kernels.start(args=args)
    kernel.run("import numpy as np\ncounter = 0\npair = (0, 0)\narr = np.zeros(1 << 20)").check()
    acknowledged = 0
    for kill in range(50):
        for _ in range(rng.randint(0, 3)):
            kernel.run(CELL).check()
            acknowledged += 1
        mode = rng.choice(["idle", "cell", "checkpoint"])
        if mode == "cell":
            kernel.kc.execute(CELL + "\nimport time\ntime.sleep(30)")
            time.sleep(rng.uniform(0.05, 0.5))
        elif mode == "checkpoint":
            kernel.run(CELL).check()
            acknowledged += 1
            time.sleep(rng.uniform(0.0, 0.2))
        else:
            time.sleep(rng.uniform(0.0, 1.5))
        kernel.kill()
        kernel = kernels.start(args=args)
        state = kernel.value(STATE)
        assert state == f"({acknowledged}, True, True)", (kill, mode, state)


def test_one_standby_per_change_and_none_once_saved(kernels: KernelHarness) -> None:
    """A cell that changes the namespace replaces the standby (after it, before the
    kernel reports idle); a cell that only looks keeps it; a checkpoint lets it go."""
    kernel = kernels.start()
    standby = "getattr(get_ipython().kernel.checkpointer.standby.current, 'pid', None)"
    kernel.run("a = 1").check()
    first = quiet_value(kernel, standby)
    assert first != "None"
    kernel.run("a").check()
    kernel.run("pass").check()
    assert quiet_value(kernel, standby) == first  # nothing changed: no new fork
    kernel.run("a = 2").check()
    second = quiet_value(kernel, standby)
    assert second not in ("None", first)
    kernel.run("%persist save").check()
    assert quiet_value(kernel, standby) == "None"  # saved: nothing left to hold
    assert not psutil.pid_exists(int(first)) or psutil.Process(int(first)).status() == "zombie"


def test_persist_off_lets_the_standby_go(kernels: KernelHarness) -> None:
    """With automatic checkpoints off, nothing is written by itself, a kill included."""
    kernel = kernels.start()
    standby = "getattr(get_ipython().kernel.checkpointer.standby.current, 'pid', None)"
    kernel.run("a = 1").check()
    assert quiet_value(kernel, standby) != "None"
    kernel.run("%persist off").check()
    assert quiet_value(kernel, standby) == "None"
    kernel.run("b = 2").check()
    assert quiet_value(kernel, standby) == "None"
    kernel.kill()
    session = kernels.session()
    session.locks.wait_for_writers(30)  # a standby left alive would be writing now
    assert session.generations() == []
