"""Batch runners and VS Code: real clients, real kernels.

* ``jupyter execute``, nbclient and papermill pass no notebook path. Run twice
  in one folder, with two notebooks, each run prints what the stock
  ``python3`` kernel prints, and no restore report lands in the notebook.
* A batch kernel killed and restarted by its own manager (what an
  auto-restart does) resumes from its last checkpoint.
* VS Code's Jupyter extension starts a kernel with no notebook path, in the
  notebook's folder, then runs its own start code, which sets
  ``__vsc_ipynb_file__``: two notebooks in one folder keep separate state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from persistent_kernel.identity import VSCODE_FILE_VAR, batch_key, kernel_id
from persistent_kernel.startup import survey
from persistent_kernel.store import Store

from .harness import KERNEL_NAME, Kernel, KernelHarness
from .test_clients import RESTORED, shown, wait_for_writers

NOW = ["--PersistentKernel.checkpoint_interval=0"]
COUNTER = "x = globals().get('x', 0) + 1\nprint(x)"
OTHER = "print(sorted(k for k in ('x', 'y') if k in globals()))\ny = 'other'"


def write(path: Path, *sources: str) -> Path:
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def outputs(path: Path) -> list[str]:
    """What each cell of the notebook at *path* shows, as text."""
    nb = nbformat.read(path, as_version=4)
    return ["".join(shown(out) for out in cell.outputs) for cell in nb.cells]


def jupyter_execute(path: Path, kernel: str = KERNEL_NAME) -> list[str]:
    jupyter = Path(sys.executable).with_name("jupyter")
    subprocess.run(
        [str(jupyter), "execute", "--inplace", f"--kernel_name={kernel}", str(path)],
        cwd=path.parent,
        check=True,
        capture_output=True,
        timeout=240,
    )
    return outputs(path)


def nbclient_run(path: Path, kernel: str = KERNEL_NAME) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    nbformat.write(nb, path)
    return outputs(path)


def papermill_run(path: Path, kernel: str = KERNEL_NAME) -> list[str]:
    out = path.with_name(f"{path.stem}-out.ipynb")
    papermill.execute_notebook(
        str(path), str(out), kernel_name=kernel, cwd=str(path.parent), progress_bar=False
    )
    return [text for text in outputs(out)]


RUNNERS = {"jupyter execute": jupyter_execute, "nbclient": nbclient_run, "papermill": papermill_run}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_batch_runs_match_the_stock_kernel(
    runner: str, jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    run = RUNNERS[runner]
    folder = jupyter_env["work"]
    stock_folder = tmp_path / "stock"
    stock_folder.mkdir()
    stock = run(write(stock_folder / "counter.ipynb", COUNTER), "python3")
    assert stock == ["1\n"], stock
    for _ in range(2):  # twice in one folder: the same outputs, no report
        assert run(write(folder / "counter.ipynb", COUNTER)) == stock
    # another notebook in the same folder sees nothing of the first
    other_stock = run(write(stock_folder / "other.ipynb", OTHER), "python3")
    assert run(write(folder / "other.ipynb", OTHER)) == other_stock == ["[]\n"]
    wait_for_writers(jupyter_env["checkpoints"])
    # nothing will read a finished run's checkpoints: none are left behind
    assert Store(jupyter_env["checkpoints"]).sessions() == []


def batch_kernel(kernels: KernelHarness) -> Kernel:
    """A kernel started as nbclient starts one: no notebook path, no stdin."""
    kernel = kernels.start(None, args=NOW)
    kernel.kc.allow_stdin = False
    return kernel


def test_a_batch_kernel_restarted_by_its_manager_resumes(kernels: KernelHarness) -> None:
    kernel = batch_kernel(kernels)
    assert kernel.run("x = 41\nx += 1").check().text == ""
    session = Store(kernels.root).session(batch_key(kernel_id(kernel.km.connection_file)))
    kernels.wait_generations(session, 1)
    os.kill(kernel.pid, signal.SIGKILL)  # a crash ...
    kernel.wait_dead()
    kernel.km.restart_kernel(now=True)  # ... and what the manager's auto-restart does
    kernel.kc.wait_for_ready(timeout=120)
    out = kernel.run("print(x)").check()
    assert out.stdout.splitlines()[-1] == "42", out
    assert RESTORED.search(out.text), out
    # a new batch run in the same folder starts clean, and says nothing
    fresh = batch_kernel(kernels).run("print('x' in dir())").check()
    assert fresh.text == "False\n", fresh
    kernel.shutdown()  # the run is over: its checkpoints go
    kernel.wait_dead()
    session.locks.wait_for_writers(60)
    assert not session.path.exists()


def test_console_in_a_folder_restores_as_interactive_r_loads_rdata(
    kernels: KernelHarness,
) -> None:
    """R's rule: a client that can answer input() is interactive; it gets the folder's state.
    Batch runs in that folder neither read it nor write over it."""
    console = kernels.start(None, args=NOW)
    console.run("c = 'typed'").check()
    kernels.wait_generations(kernels.session(None), 1)
    console.shutdown()
    batch = batch_kernel(kernels)
    assert batch.run("print('c' in dir())\nc = 'batch'").check().text == "False\n"
    batch.shutdown()
    again = kernels.start(None).run("print(c)").check()
    assert again.stdout.splitlines()[-1] == "typed", again


# -- VS Code ----------------------------------------------------------------------------

# What VS Code's Jupyter extension runs in a Python kernel it starts, before the
# first cell: a probe for ipywidgets, then its start code (the notebook's path,
# Jedi off, matplotlib inline), each as one request with store_history off.
VSCODE_PROBE = """try:
    import ipywidgets as _VSCODE_ipywidgets
    print("e976ee50-99ed-4aba-9b6b-9dcd5634d07d:IPyWidgets:" + _VSCODE_ipywidgets.__version__)
    del _VSCODE_ipywidgets
except:
    pass"""
VSCODE_START = """{var} = "{path}"
%config Completer.use_jedi = False
try:
    import matplotlib
    %matplotlib inline
    _VSCODE_defaultMatplotlib_Params = dict(matplotlib.rcParams)
except:
    print('Failed to initialize matplotlib startup code. Matplotlib might be missing.')"""


def vscode_kernel(kernels: KernelHarness, notebook: Path) -> Kernel:
    """Start a kernel the way VS Code does for *notebook*; return it ready for cells."""
    runtime = Path(os.environ["JUPYTER_RUNTIME_DIR"])
    km = KernelManager(
        kernel_name=KERNEL_NAME,
        connection_file=str(runtime / f"kernel-v3{uuid.uuid4().hex}.json"),
    )
    env = {**kernels.env(None), "PYDEVD_IPYTHON_COMPATIBLE_DEBUGGING": "1"}
    km.start_kernel(cwd=str(notebook.parent), env=env, extra_arguments=NOW)
    # VS Code sends its start code once the kernel is ready (kernel_info answered and
    # IOPub connected); a request sent before IOPub connects never sees its idle status.
    kernel = Kernel(km)
    kernels.started.append(kernel)
    start = VSCODE_START.format(var=VSCODE_FILE_VAR, path=notebook)
    for code in (VSCODE_PROBE, start):
        reply: dict[str, Any] = kernel.kc.execute_interactive(
            code, store_history=False, allow_stdin=True, timeout=120, output_hook=lambda m: None
        )
        assert reply["content"]["status"] == "ok", reply
    return kernel


def test_vscode_two_notebooks_in_one_folder(kernels: KernelHarness) -> None:
    folder = kernels.cwd
    one = write(folder / "one.ipynb", "who = 'one'")
    two = write(folder / "two.ipynb", "who = 'two'")
    for path in (one, two):
        kernel = vscode_kernel(kernels, path)
        out = kernel.run(f"print('who' in dir())\nwho = {path.stem!r}").check()
        assert out.text == "False\n", out
        kernels.wait_generations(Store(kernels.root).session(str(path)), 1)
        kernel.shutdown()
    for path in (one, two):  # VS Code's restart: a new process, its start code again
        out = vscode_kernel(kernels, path).run("print(who)").check()
        assert out.stdout.splitlines()[-1] == path.stem, out
        assert RESTORED.search(out.text), out
    wait_for_writers(kernels.root)
    found = {c.key for c in survey(Store(kernels.root))}
    assert found == {str(one), str(two)}, found
    for key in found:  # VS Code's own names are VS Code's, not the notebook's
        manifest, _ = Store(kernels.root).session(key).latest()
        assert set(manifest.content["variables"]) == {"who"}, manifest.content["variables"]


CHILDREN = (
    "import psutil\n"
    "print(len([c for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE]))"
)


def test_a_batch_run_forks_no_standby_per_cell(kernels: KernelHarness) -> None:
    """A standby costs every cell a fork and its copy-on-write faults; a batch run's
    state is kept for its own restarts only, so its cells go without. An interactive
    kernel in the same situation (a cell starting on unsaved changes) forks one."""
    long = ["--PersistentKernel.checkpoint_interval=3600"]
    interactive = kernels.start(args=long)
    interactive.run("x = 1").check()
    interactive.run("y = 2").check()
    assert interactive.run(CHILDREN).check().stdout.strip() == "1"
    batch = kernels.start(None, args=long)
    batch.kc.allow_stdin = False
    batch.run("x = 1").check()
    batch.run("y = 2").check()
    assert batch.run(CHILDREN).check().stdout.strip() == "0"
