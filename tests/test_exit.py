"""How the kernel process ends: quickly, yet with Python's exit duties done."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .harness import KernelHarness


def _exit_code_after_shutdown(kernel: Any) -> int | None:
    process = kernel.km.provisioner.process
    kernel.shutdown()
    kernel.wait_dead()
    return process.returncode


def test_a_clean_exit_still_does_what_python_does_at_exit(
    kernels: KernelHarness, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    kernel = kernels.start()
    kernel.run(
        textwrap.dedent(f"""
        import atexit, tempfile, threading, time
        from pathlib import Path
        out = Path({str(out)!r})
        # written, never flushed nor closed, and not directly in the namespace
        box = {{"log": open(out / "unclosed.txt", "w")}}
        box["log"].write("bytes a cell wrote")
        atexit.register((out / "atexit.txt").write_text, "exit handler ran")
        scratch = tempfile.TemporaryDirectory()  # removed by its weakref.finalize at exit
        (out / "scratch.txt").write_text(scratch.name)

        def late():
            time.sleep(1)
            (out / "thread.txt").write_text("non-daemon thread finished")

        threading.Thread(target=late).start()
        """)
    ).check()
    assert _exit_code_after_shutdown(kernel) == 0
    assert (out / "unclosed.txt").read_text() == "bytes a cell wrote"
    assert (out / "atexit.txt").read_text() == "exit handler ran"
    assert (out / "thread.txt").read_text() == "non-daemon thread finished"
    assert not Path((out / "scratch.txt").read_text()).exists()


@pytest.mark.parametrize("fast", [True, False])
def test_fast_exit_skips_freeing_the_namespace(
    kernels: KernelHarness, tmp_path: Path, fast: bool
) -> None:
    # A __del__ is the one thing a fast exit leaves out (Python does not promise
    # it at exit either); with fast_exit off, the namespace is freed as usual.
    marker = tmp_path / "del.txt"
    kernel = kernels.start(args=[f"--PersistentKernel.fast_exit={fast}"])
    kernel.run(
        textwrap.dedent(f"""
        class Noisy:
            def __del__(self):
                open({str(marker)!r}, "w").write("freed")

        noisy = Noisy()
        """)
    ).check()
    assert _exit_code_after_shutdown(kernel) == 0
    assert marker.exists() is not fast
    # either way the namespace came through the shutdown
    kernel = kernels.start()
    assert kernel.value("type(noisy).__name__") == "'Noisy'"


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_armed_exit_runs_later_handlers_flushes_and_skips_teardown(tmp_path: Path) -> None:
    target = tmp_path / "unflushed.txt"
    done = _run(
        """
        import atexit, sys
        from persistent_kernel import quickexit
        assert quickexit.install()
        atexit.register(print, "later handler ran")
        f = open(sys.argv[1], "w")
        f.write("buffered")

        class Noisy:
            def __del__(self):
                print("__del__ ran")

        quickexit.arm([Noisy()])
        print("armed")
        """,
        str(target),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["armed", "later handler ran"]
    assert target.read_text() == "buffered"


def test_unarmed_exit_is_pythons_own() -> None:
    done = _run(
        """
        from persistent_kernel import quickexit
        assert quickexit.install()

        class Noisy:
            def __del__(self):
                print("__del__ ran")

        keep = Noisy()
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["__del__ ran"]


def test_install_stands_aside_for_an_earlier_exit_handler() -> None:
    # A handler registered first runs last; a quick exit would skip it.
    done = _run(
        """
        import atexit
        atexit.register(print, "earlier handler ran")
        from persistent_kernel import quickexit
        print(quickexit.install())
        quickexit.arm([])
        print(quickexit.armed())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False", "False", "earlier handler ran"]


def test_files_are_flushed_whenever_they_were_opened(tmp_path: Path) -> None:
    # The kernel notes the open files before its final checkpoint forks and then
    # walks only newer objects: files opened before (even ones the user froze),
    # between and after all reach the disk.
    names = [str(tmp_path / f"{n}.txt") for n in ("frozen", "noted", "between", "handler")]
    done = _run(
        """
        import atexit, gc, sys
        from persistent_kernel import quickexit
        assert quickexit.install()
        keep = [open(sys.argv[1], "w")]
        keep[0].write("frozen by the user")
        gc.freeze()
        keep.append(open(sys.argv[2], "w"))
        keep[1].write("open when noted")
        quickexit.note_files()
        keep.append(open(sys.argv[3], "w"))
        keep[2].write("opened before arm")
        quickexit.arm([])

        def late():
            keep.append(open(sys.argv[4], "w"))
            keep[3].write("opened by an exit handler")

        atexit.register(late)
        print("armed")
        """,
        *names,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["armed"]
    assert [Path(n).read_text() for n in names] == [
        "frozen by the user",
        "open when noted",
        "opened before arm",
        "opened by an exit handler",
    ]


def test_noted_but_unarmed_exit_is_pythons_own() -> None:
    # An unclean stop notes the files but does not arm: the collector is
    # unfrozen again, so Python's exit still collects garbage cycles.
    done = _run(
        """
        from persistent_kernel import quickexit
        assert quickexit.install()

        class Noisy:
            def __del__(self):
                print("__del__ ran")

        cycle = Noisy()
        cycle.me = cycle
        del cycle
        quickexit.note_files()
        print("noted")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["noted", "__del__ ran"]


def test_the_walk_for_open_files_is_skipped_only_when_none_is_new(tmp_path: Path) -> None:
    # A file object holds bytes for a file only while its descriptor is open: with
    # nothing open for writing but what was open at start, no walk is needed.
    done = _run(
        """
        import os, sys
        from persistent_kernel import quickexit
        quickexit.mark_start()
        seen = [quickexit.needs_walk()]
        f = open(sys.argv[1], "w")
        seen.append(quickexit.needs_walk())  # a file opened since
        f.close()
        seen.append(quickexit.needs_walk())
        r, w = os.pipe()
        seen.append(quickexit.needs_walk())  # a pipe's write end
        os.close(w)
        seen.append(quickexit.needs_walk())  # its read end: nothing to flush there
        g = open(sys.argv[1])
        seen.append(quickexit.needs_walk())  # read only
        print(seen)
        """,
        str(tmp_path / "f.txt"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[False, True, False, True, False, False]"


def test_a_standbys_pipe_asks_for_no_walk_and_its_number_reused_does(tmp_path: Path) -> None:
    # A standby is kept whenever a cell changed the namespace: its control pipe is a
    # raw descriptor of the kernel's own, with nothing buffered for it, so the stop
    # after such a cell skips the walk. A file opened later on the same number counts.
    done = _run(
        """
        import os, sys
        from persistent_kernel import quickexit, snapshot
        quickexit.mark_start()
        standby = snapshot.start_standby(lambda: {})
        seen = [quickexit.needs_walk()]
        fd = standby._control
        standby.drop()
        while not standby.reap():
            pass
        seen.append(quickexit.needs_walk())
        mine = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
        os.dup2(mine, fd)  # the notebook's file, on the pipe's old number
        os.close(mine)
        seen.append(quickexit.needs_walk())
        print(seen)
        """,
        str(tmp_path / "f.txt"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[False, False, True]"


def test_a_file_opened_by_exec_lines_is_flushed_at_exit(
    kernels: KernelHarness, tmp_path: Path
) -> None:
    # IPython's startup code runs after the kernel noted its own descriptors.
    target = tmp_path / "startup.txt"
    line = f"log = open({str(target)!r}, 'w'); log.write('from exec_lines')"
    kernel = kernels.start(args=[f"--IPKernelApp.exec_lines={line}"])
    kernel.run("x = 1").check()
    assert _exit_code_after_shutdown(kernel) == 0
    assert target.read_text() == "from exec_lines"
