"""The server extension, through a real jupyter_server started as ``pip install`` leaves it.

The server is ``python -m jupyter_server`` with nothing enabled by hand: the
extension is on because the wheel's ``jupyter_server_config.d`` file says so.
The flows are JupyterLab's, over REST and the kernel websocket (see
tests/server.py): a new notebook named at its first save, Shut Down Kernel,
Duplicate, Delete, and a server stopped with SIGTERM as Kubernetes stops a pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .helpers import wait_until
from .server import JupyterServer, code_cell
from .test_clients import RESTORED, wait_for_writers
from .test_server import notebooks, served

LOADED = "persistent_kernel.serverext | extension was successfully loaded"


@pytest.fixture
def server(jupyter_env: dict[str, Path], tmp_path: Path) -> Iterator[JupyterServer]:
    with served(jupyter_env, tmp_path / "server.log") as running:  # as pip leaves it
        yield running


def first_save(server: JupyterServer, session: dict, name: str, cells: list[dict]) -> None:
    """Ctrl-S on Untitled.ipynb: Lab's "Rename file" dialog, then the save."""
    server.rename(session["path"], name, session)
    server.save(name, cells)


def test_the_extension_is_on_with_nothing_but_pip_install(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    assert LOADED in server.log_path.read_text(), server.log()
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "persistent_kernel.serverext \x1b[32menabled" in listed.stdout + listed.stderr


@pytest.mark.timeout(300)
def test_a_notebook_named_at_its_first_save_then_shut_down_reopens_with_its_state(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    work, root = jupyter_env["work"], jupyter_env["checkpoints"]
    path = server.new_notebook()
    lab = server.open(path, name=path)
    assert server.run(lab, "x = 42\ny = x + 1") == ""
    first_save(server, lab, "g.ipynb", [code_cell("c-1", "x = 42\ny = x + 1")])
    server.shutdown_kernel(lab)  # Kernel > Shut Down Kernel (the server ends the session too)
    wait_for_writers(root)

    again = server.open("g.ipynb", name="g.ipynb")
    out = server.run(again, "print(x, y)")
    assert out.splitlines()[-1] == "42 43", out
    assert RESTORED.search(out), out
    assert notebooks(root) == {str(work / "g.ipynb"): ["x", "y"]}
    # the next new notebook takes the free name: nothing loaded, and nothing to say
    assert server.new_notebook() == path
    out = server.run(server.open(path, name=path), "print('x' in dir())")
    assert out == "False\n", out


@pytest.mark.timeout(300)
def test_a_notebook_named_at_its_first_save_survives_a_server_stopped_by_sigterm(
    jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    work, root = jupyter_env["work"], jupyter_env["checkpoints"]
    with served(jupyter_env, tmp_path / "server.log") as server:
        path = server.new_notebook()
        lab = server.open(path, name=path)
        server.run(lab, "x = 'kept'")
        first_save(server, lab, "h.ipynb", [code_cell("h-1", "x = 'kept'")])
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    kill_what_the_server_left(jupyter_env["JUPYTER_RUNTIME_DIR"])
    with served(jupyter_env, tmp_path / "server2.log") as server:
        out = server.run(server.open("h.ipynb", name="h.ipynb"), "print(x)")
        assert out.splitlines()[-1] == "kept", out
    assert str(work / "h.ipynb") in notebooks(root)


@pytest.mark.timeout(300)
def test_a_rename_with_no_kernel_running_moves_the_state(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    work, root = jupyter_env["work"], jupyter_env["checkpoints"]
    server.save("a.ipynb", [code_cell("a-1", "v = 'a'")])
    lab = server.open("a.ipynb", name="a.ipynb")
    server.run(lab, "v = 'a'\n%persist exclude secret\nsecret = 's'")
    server.close(lab)
    wait_for_writers(root)
    server.call("PATCH", "/api/contents/a.ipynb", {"path": "b.ipynb"})  # the file browser
    # the server records it as soon as the rename is answered
    wait_until(lambda: notebooks(root) == {str(work / "b.ipynb"): ["v"]}, 30, "the move")
    lab = server.open("b.ipynb", name="b.ipynb")
    out = server.run(lab, "print(v, 'secret' in dir())\nsecret = 's2'\n%persist save")
    assert "a False" in out.splitlines(), out
    assert RESTORED.search(out), out
    assert notebooks(root) == {str(work / "b.ipynb"): ["v"]}  # its exclude came along


@pytest.mark.timeout(300)
def test_duplicate_starts_clean_and_the_original_keeps_its_state(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    work, root = jupyter_env["work"], jupyter_env["checkpoints"]
    path = server.new_notebook()
    lab = server.open(path, name=path)
    server.run(lab, "original = 1")
    first_save(server, lab, "orig.ipynb", [code_cell("o-1", "original = 1")])
    copy = server.duplicate("orig.ipynb")  # while the original's kernel runs
    assert copy == "orig-Copy1.ipynb"
    dup = server.open(copy, name=copy)
    out = server.run(dup, "print('original' in dir())")
    assert out.splitlines()[-1] == "False", out
    assert not RESTORED.search(out), out
    # one line: what it is a copy of, and how to take that state on purpose
    assert "this notebook is a copy of orig.ipynb, so it starts clean" in out, out
    assert f"%persist restore --from {str(work / 'orig.ipynb')!r}" in out, out
    server.run(dup, "copied = 2\n%persist save")
    server.shutdown_kernel(dup)
    server.shutdown_kernel(lab)
    wait_for_writers(root)

    out = server.run(server.open("orig.ipynb", name="orig.ipynb"), "print(original)")
    assert out.splitlines()[-1] == "1", out
    out = server.run(server.open(copy, name=copy), "print(copied, 'original' in dir())")
    assert out.splitlines()[-1] == "2 False", out
    saved = notebooks(root)
    assert saved == {str(work / "orig.ipynb"): ["original"], str(work / copy): ["copied"]}


@pytest.mark.timeout(300)
def test_a_deleted_notebooks_state_is_kept_and_never_given_to_its_successor(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    work, root = jupyter_env["work"], jupyter_env["checkpoints"]
    path = server.new_notebook()
    server.save(path, [code_cell("d-1", "gone = 1")])
    lab = server.open(path, name=path)
    server.run(lab, "gone = 1\n%persist save")
    server.close(lab)
    wait_for_writers(root)
    server.delete(path)
    wait_until(lambda: str(work / path) not in notebooks(root), 30, "the state set aside")
    assert server.new_notebook() == path
    fresh = server.open(path, name=path)
    out = server.run(fresh, "print('gone' in dir())")
    assert out == "False\n", out  # nothing loaded, and nothing to say about it
    kept = [key for key in notebooks(root) if key.startswith(f"{work / path} (deleted ")]
    assert len(kept) == 1, notebooks(root)
    listed = subprocess.run(
        [sys.executable, "-m", "persistent_kernel", "list"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "(deleted " in listed.stdout, listed.stdout


def kill_what_the_server_left(runtime: Path) -> int:
    """Kill every process of the server's kernels (their writers are forks of them, with
    the same command line), as a container's end does; how many there were."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(runtime) in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    for proc in found:
        proc.kill()
    psutil.wait_procs(found, timeout=10)
    return len(found)


@pytest.mark.timeout(300)
def test_a_server_stopped_by_sigterm_waits_for_a_large_final_checkpoint(
    jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    work, root = jupyter_env["work"], jupyter_env["checkpoints"]
    runtime = jupyter_env["JUPYTER_RUNTIME_DIR"]
    server = JupyterServer(work, tmp_path / "server.log").start()
    try:
        server.save("big.ipynb", [code_cell("b-1", "big = ...")])
        lab = server.open("big.ipynb", name="big.ipynb")
        # 1 GiB of random floats (nothing to deduplicate), not saved yet
        code = "import numpy as np\nbig = np.random.default_rng(7).random(1 << 27)\n"
        code += "print(big.nbytes, float(big.sum()))"
        before = server.run(lab, code).strip()
        assert before.startswith(str(1 << 30)), before
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod
        server.proc.wait(60)
    except BaseException:
        print(f"jupyter_server's log:\n{server.log()}")
        raise
    finally:
        server.stop()
    kill_what_the_server_left(runtime)  # the container ends with its main process
    log = server.log()
    assert "waiting for the final checkpoints of big.ipynb" in log, log
    assert "final checkpoints written" in log, log

    again = JupyterServer(work, tmp_path / "server2.log").start()
    try:
        lab = again.open("big.ipynb", name="big.ipynb")
        out = again.run(lab, "print(big.nbytes, float(big.sum()))")
        assert out.splitlines()[-1] == before, out
    finally:
        again.stop()
        wait_for_writers(root)
    assert os.path.isdir(root)
