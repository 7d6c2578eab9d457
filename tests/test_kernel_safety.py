"""Crash safety and bad input with real kernels, real disks and real signals.

Disk faults use real filesystems: a tmpfs of a few MiB fills up for real
(ENOSPC) and is remounted read-only for real (EROFS). Mounting needs root;
CI runs as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from persistent_kernel.restore import load_generation
from persistent_kernel.store import SessionStore, Store

from .harness import Kernel, KernelHarness
from .helpers import wait_until
from .test_trust import plant

NOW = ["--PersistentKernel.checkpoint_interval=0"]
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")


def quiet_value(kernel: Kernel, expression: str) -> str:
    """Evaluate in the kernel without running a cell (no notices consumed)."""
    reply = kernel.kc.execute(
        "", silent=True, store_history=False, user_expressions={"v": expression}, reply=True
    )
    return str(reply["content"]["user_expressions"]["v"]["data"]["text/plain"])


def test_planted_checkpoint_never_runs_in_a_kernel(kernels: KernelHarness, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plant(kernels.session(), marker, signer=None)
    kernel = kernels.start()
    out = kernel.run("print('hello')").check()
    assert not marker.exists()
    assert "was passed over" in out.text and "not signed" in out.text
    assert "never unpickled" in out.text


def test_a_restore_that_crashes_the_kernel_is_skipped_next_time(kernels: KernelHarness) -> None:
    """A variable whose unpickling aborts the process (as a segfaulting extension
    would) kills one start; the next start leaves it alone and says so."""
    kernel = kernels.start(args=NOW)
    kernel.run("import os\nclass Bomb:\n    def __reduce__(self):\n        return (os.abort, ())\n"
               "bomb = Bomb()\nsafe = [1, 2, 3]").check()  # fmt: skip
    kernels.wait_generations(kernels.session(), 1)
    kernel.shutdown()

    crashing = kernels.start(wait=False)  # restores in a thread: os.abort() kills it
    crashing.wait_dead()
    crashing.shutdown()

    kernel = kernels.start()
    out = kernel.run("print(safe, 'bomb' in dir())").check()
    assert "[1, 2, 3] False" in out.text
    assert "bomb: loading it crashed the kernel at an earlier start" in out.text
    # it is kept, not lost: a later start still leaves it alone, and says so again
    kernel.run("more = 1").check()
    kernels.wait_generations(kernels.session(), 2)
    kernel.restart()
    out = kernel.run("print(more)").check()
    assert "bomb: loading it crashed" in out.text


def failures(kernel: Kernel) -> str:
    """How many checkpoints failed in a row, as the kernel's policy counts them."""
    return quiet_value(kernel, "get_ipython().kernel.checkpointer.autosaver.failures")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(session: SessionStore) -> list[Path]:
    return [p for p in session.path.rglob(".tmp-*") if "corrupt" not in p.name]


def first_checkpoint_on(kernels: KernelHarness, disk: Path) -> tuple[Kernel, SessionStore]:
    """A kernel checkpointing under *disk*, once it has its first generation."""
    root = disk / "ckpt"
    kernel = kernels.start(args=[*NOW, f"--PersistentKernel.checkpoint_dir={root}"])
    session = Store(root).session(kernels.session().key or "")
    kernel.run("first = 'kept'").check()
    kernels.wait_generations(session, 1)
    return kernel, session


@needs_root
def test_full_disk_keeps_the_kernel_working(kernels: KernelHarness, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "32m") as disk:
        kernel, session = first_checkpoint_on(kernels, disk)

        filler = disk / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        kernel.run("import numpy as np\nbig = np.ones(1_000_000)").check()
        wait_until(lambda: failures(kernel) != "0",
                   what="a failed checkpoint")  # fmt: skip
        first = kernel.run("x = 1").check().text
        assert "is full" in first and "previous checkpoint is kept" in first
        for n in range(3):  # one warning, not one per cell
            assert "persistent-kernel" not in kernel.run(f"y = {n}").check().text
        assert session.generations() == [1] and leftovers(session) == []
        assert session.read_manifest(1).content["variables"].keys() == {"first"}

        filler.unlink()  # the disk recovers; saving resumes by itself
        kernel.run("z = 2").check()
        kernels.wait_generations(session, 2, timeout=60)
        # the writer is done on disk; its result reaches the kernel through its loop
        wait_until(lambda: failures(kernel) == "0",
                   what="the kernel to read the writer's result")  # fmt: skip
        assert "being saved again" in kernel.run("pass").check().text
        kernel.restart()
        assert kernel.value("(first, big.shape, z)") == "('kept', (1000000,), 2)"
        kernel.shutdown()


@needs_root
def test_read_only_disk_keeps_the_kernel_working(kernels: KernelHarness, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "16m") as disk:
        kernel, session = first_checkpoint_on(kernels, disk)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        kernel.run("second = 2").check()
        wait_until(lambda: failures(kernel) != "0",
                   what="a failed checkpoint")  # fmt: skip
        assert "read-only" in kernel.run("third = 3").check().text
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        kernels.wait_generations(session, 2, timeout=60)
        kernel.restart()
        assert kernel.value("(first, second, third)") == "('kept', 2, 3)"
        kernel.shutdown()


def test_deleted_or_truncated_newest_files_fall_back(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("v = 'one'").check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    kernel.run("v = 'two'").check()
    kernels.wait_generations(session, 2)
    kernel.shutdown()
    newest = session.read_manifest(2)
    (digest,) = set(newest.blobs) - set(session.read_manifest(1).blobs)
    blob = session.objects_dir / digest
    blob.write_bytes(blob.read_bytes()[:-5])  # truncated by hand
    kernel = kernels.start()
    out = kernel.run("print(v)").check().text
    assert out.strip().endswith("one")
    assert "generation 2 was passed over" in out and "bytes, the manifest says" in out
    kernel.shutdown()
    # that cell made generation 3 (v = 'one' again); delete it and truncate 2's manifest
    assert session.generations() == [1, 2, 3]
    session.manifest_path(3).unlink()
    session.manifest_path(2).write_bytes(session.manifest_path(2).read_bytes()[:40])
    kernel = kernels.start()
    out = kernel.run("print(v)").check().text
    assert out.strip().endswith("one")
    assert "generation 2 was passed over: manifest 00000002.json is not valid JSON" in out


# -- fault injection ---------------------------------------------------------------

STATE_MB = 200

BUILD = f"""
import numpy as np, hashlib
rng = np.random.default_rng(0)
blocks = [rng.random({STATE_MB} * 2**20 // 8 // 4) for _ in range(4)]
version = 0
def checksum():
    h = hashlib.sha256(str(version).encode())
    for b in blocks:
        h.update(b.tobytes())
    return h.hexdigest()
expected = (version, checksum())
"""

MUTATE = """
version += 1
for block in blocks:  # every block changes: each checkpoint rewrites all 200 MB
    block += 1.0
extra = list(range(version * 1000))
expected = (version, checksum())
"""


def processes_of(connection_file: str) -> list[psutil.Process]:
    """The kernel and every writer it forked (they share its command line)."""
    return [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if connection_file in " ".join(proc.info["cmdline"] or [])
    ]


def kill_kernel_and_writers(connection_file: str) -> int:
    killed = 0
    for proc in processes_of(connection_file):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
            killed += 1
    return killed


def _fault_injection(kernels: KernelHarness, iterations: int) -> None:
    seed = int(os.environ.get("PK_FAULT_SEED", random.randrange(2**32)))
    rnd = random.Random(seed)
    kernel = kernels.start(args=NOW)
    kernel.run(BUILD).check()
    session = kernels.session()
    kernels.wait_generations(session, 1, timeout=120)
    versions = []
    mid_write = 0
    for i in range(iterations):
        kernel.run(MUTATE).check()  # the checkpoint starts as the kernel goes idle
        # half the kills aim at the write itself, half anywhere up to well after it
        time.sleep(rnd.uniform(0.0, 0.4) if i % 2 == 0 else rnd.uniform(0.0, 2.0))
        writing = bool(session.locks.running_writers())
        killed = kill_kernel_and_writers(kernel.km.connection_file)
        assert killed >= 1
        mid_write += writing and killed >= 2
        kernel.kill()
        kernel = kernels.start(args=NOW)
        # every restart restores one complete generation: the arrays match the
        # checksum computed with them before the kill, never a mix, never an error
        out = kernel.run("print('RESULT', expected[0], checksum() == expected[1])").check()
        line = next(line for line in out.text.splitlines() if line.startswith("RESULT"))
        version, consistent = line.split()[1:]
        assert consistent == "True", (seed, i, out.text)
        assert "passed over" not in out.text, (seed, i, out.text)
        versions.append(int(version))
        kernel.run("pass").check()
    assert versions == sorted(versions), (seed, versions)
    # the faults did land while checkpoints were being written
    assert mid_write >= 1, (seed, mid_write)
    report = {"seed": seed, "kills": iterations, "while_writing": mid_write, "lost": 0,
              "state_mb": STATE_MB, "restored_versions": versions}  # fmt: skip
    artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / f"fault-injection-{iterations}.json").write_text(json.dumps(report, indent=1))


def test_sigkill_during_checkpoints_never_loses_a_generation(kernels: KernelHarness) -> None:
    _fault_injection(kernels, iterations=10)


@pytest.mark.slow
def test_sigkill_during_checkpoints_100_times(kernels: KernelHarness) -> None:
    _fault_injection(kernels, iterations=100)


def test_a_variable_that_crashes_the_writer_is_left_out(kernels: KernelHarness) -> None:
    """The writer dies pickling one variable (as a crashing extension would):
    the kernel is unharmed, says which variable once, and saves the rest."""
    kernel = kernels.start(args=NOW)
    kernel.run("import os\nclass Crasher:\n    def __reduce__(self):\n        os.abort()\n"
               "crasher = Crasher()\ngood = 'saved'").check()  # fmt: skip
    session = kernels.session()
    kernels.wait_generations(session, 1, timeout=60)
    out = kernel.run("print('still alive')").check().text
    assert "still alive" in out
    assert "saving crasher crashed the background writer" in out
    manifest, _ = session.latest()
    assert "good" in manifest.content["variables"]
    assert "crashed the background writer" in manifest.content["skipped"]["crasher"]
    kernel.restart()
    assert kernel.value("(good, 'crasher' in dir())") == "('saved', False)"


def test_two_kernels_on_one_notebook_never_tear_a_generation(kernels: KernelHarness) -> None:
    """Two tabs on one notebook: their writers take turns; every generation is
    whole and holds one kernel's namespace, never a mix of both."""
    left = kernels.start(args=[*NOW, "--PersistentKernel.keep=50"])
    right = kernels.start(args=[*NOW, "--PersistentKernel.keep=50"])
    for i in range(8):
        for name, kernel in (("left", left), ("right", right)):
            kernel.run(f"import numpy as np\nwho = '{name}'\nstep = {i}\n"
                       f"data = np.full(2_000_000, {i}.0)\nsig = (who, step)").check()  # fmt: skip
    session = kernels.session()
    deadline = time.monotonic() + 60
    while session.locks.running_writers() and time.monotonic() < deadline:
        time.sleep(0.1)
    generations = session.generations()
    assert len(generations) >= 8
    for generation in generations:
        into, report = load_generation(session, generation)
        assert report.problems == [] and report.generation == generation, report.problems
        assert into["sig"] == (into["who"], into["step"]), (generation, into["sig"])
        assert float(into["data"][0]) == into["step"]  # type: ignore[index]
