"""A failure costs only what it touches: every cell is answered, and the user is told once."""

from __future__ import annotations

from pathlib import Path

from .harness import KernelHarness
from .helpers import stream_blob_of, wait_until

NOW = ["--PersistentKernel.checkpoint_interval=0"]
REPO = Path(__file__).resolve().parent.parent


def test_a_damaged_format_marker_never_hangs_a_cell(kernels: KernelHarness) -> None:
    """The marker is checked on the standby's path too (before the cell runs):
    a cell on unsaved changes still gets its reply, and nothing is written to a
    root whose format is unknown."""
    kernel = kernels.start(args=NOW)
    kernel.run("x1 = 1").check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    marker = kernels.root / "format"
    good = marker.read_bytes()
    for turn, damage in enumerate([b"\x00garbage", b""], start=1):
        marker.write_bytes(damage)
        told = [kernel.run(f"x{n} = {turn}", timeout=30).check().text for n in range(2, 6)]
        assert kernel.value("x5") == str(turn)
        said = [text for text in told if "no checkpoint could be written" in text]
        assert len(said) == 1, told  # once, not at every cell
        assert "format marker" in said[0] and "cannot be read" in said[0]
        assert "previous checkpoint is kept" in said[0]
        assert len(session.generations()) == turn
        marker.write_bytes(good)
        kernel.run("pass").check()  # the repair is seen: saving resumes by itself
        kernels.wait_generations(session, turn + 1)


def test_no_exception_of_ours_keeps_a_cell_from_its_reply(kernels: KernelHarness) -> None:
    """Every hook the kernel calls on a cell's path raises (tests/faults.py): every
    cell still answers with its own result, and each failure is told once."""
    broken = "--IPKernelApp.kernel_class=tests.faults.KernelWithBrokenCheckpointer"
    kernel = kernels.start(args=[*NOW, broken], env={"PYTHONPATH": str(REPO)})
    texts = [kernel.run(f"print({n} * 2)", timeout=30).check().text for n in range(4)]
    assert [t.strip().splitlines()[-1] for t in texts] == ["0", "2", "4", "6"]
    told = "".join(texts)
    for hook in ("cell_started", "cell_finished", "maybe_checkpoint"):
        assert told.count(f"{hook} is broken") == 1, told
    assert "your cells run as usual" in told


def test_an_unreadable_blob_costs_only_its_group(kernels: KernelHarness) -> None:
    """One object file that cannot be read (a folder in its place: EISDIR, as EIO
    or EACCES would be): the other variables come back, the user is told which
    could not be read, and the next generations carry its group forward byte for
    byte, so that it comes back once the file can be read again."""
    kernel = kernels.start(args=NOW)
    kernel.run("small = 'kept'\nimport numpy as np\nbig = np.arange(10)\nother = [1, 2]").check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    kernel.shutdown()
    blob = stream_blob_of(session, "big")
    saved = blob.read_bytes()
    blob.unlink()
    blob.mkdir()

    kernel = kernels.start(args=NOW)
    out = kernel.run("print(small, other, 'big' in dir())").check().text
    assert "kept [1, 2] False" in out
    assert "big" in out and "could not be read" in out
    kernel.run("later = 3").check()

    def newest() -> set[str]:
        generation = kernels.wait_generations(session, 2)[-1]
        return set(session.read_manifest(generation).content["variables"])

    wait_until(lambda: "later" in newest(), what="a checkpoint of 'later'")
    assert "big" in newest()  # carried, though it could not be read
    kernel.shutdown()

    blob.rmdir()
    blob.write_bytes(saved)
    blob.chmod(0o600)
    kernel = kernels.start()
    assert kernel.value("(small, big.tolist(), other, later)") == (
        "('kept', [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2], 3)"
    )
