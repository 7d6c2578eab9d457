"""A failure costs only what it touches: every cell is answered, and the user is told once."""

from __future__ import annotations

from .harness import KernelHarness

NOW = ["--PersistentKernel.checkpoint_interval=0"]


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
