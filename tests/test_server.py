"""One notebook, one state, through a real jupyter_server without this package's server
extension (REST and the kernel websocket): the kernel's own signals, the fallback for a
server where the extension is not installed. test_serverext.py runs the same flows with it.

The flows are JupyterLab's: a new notebook from the launcher is an empty
``Untitled.ipynb`` on disk; its first save renames it (the "Rename file"
dialog: contents PATCH, session PATCH) and then writes its cells; a restart
hands the kernel the new path. The checkpoint interval is left at its
default (30 s), so, as for a user, the state reaches the disk at the restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from persistent_kernel.errors import NoCheckpoint
from persistent_kernel.startup import survey
from persistent_kernel.store import Store

from .server import WITHOUT_EXTENSION, JupyterServer, code_cell
from .test_clients import RESTORED, wait_for_writers


@contextlib.contextmanager
def served(
    jupyter_env: dict[str, Path], log: Path, args: Sequence[str] = ()
) -> Iterator[JupyterServer]:
    """A jupyter_server on the test's work folder; its log shown if the test fails, and
    the kernels' last writers waited for once it stopped."""
    running = JupyterServer(jupyter_env["work"], log, args).start()
    try:
        yield running
    except BaseException:
        print(f"jupyter_server's log:\n{running.log()}")
        raise
    finally:
        running.stop()
        wait_for_writers(jupyter_env["checkpoints"])


@pytest.fixture
def server(jupyter_env: dict[str, Path], tmp_path: Path) -> Iterator[JupyterServer]:
    with served(jupyter_env, tmp_path / "server.log", WITHOUT_EXTENSION) as running:
        yield running


def notebooks(root: Path) -> dict[str, list[str]]:
    """Session key -> variables of its newest checkpoint, for every session. A session
    the server moves while this reads (a rename, a delete) is left out of this look."""
    store = Store(root)
    found = {}
    for candidate in survey(store):
        try:
            manifest, _ = store.session(candidate.key).latest()
        except NoCheckpoint:
            continue  # moved meanwhile: the caller polls, or looks again once it is done
        found[candidate.key] = sorted(manifest.content["variables"])
    return found


@pytest.mark.timeout(300)
def test_rename_in_lab_keeps_the_state_and_a_new_notebook_starts_clean(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    work = jupyter_env["work"]
    path = server.new_notebook()
    assert path == "Untitled.ipynb"
    lab = server.open(path, name=path)
    assert server.run(lab, "x = 42") == ""
    # Ctrl-S on an untitled notebook: the "Rename file" dialog, then the save
    server.rename(path, "analysis.ipynb", lab)
    server.save("analysis.ipynb", [code_cell("c-1", "x = 42"), code_cell("c-2", "y = x + 1")])
    assert server.run(lab, "y = x + 1") == ""
    server.restart(lab)
    out = server.run(lab, "print(x, y)")
    assert out.splitlines()[-1] == "42 43", out
    assert RESTORED.search(out), out
    assert f"renamed from {work / path}" in out, out

    # The next new notebook takes the free name Untitled.ipynb: it gets nothing.
    again = server.new_notebook()
    assert again == path
    fresh = server.open(again, name=again)
    out = server.run(fresh, "print('x' in dir(), 'y' in dir())")
    assert out == "False False\n", out
    assert notebooks(jupyter_env["checkpoints"]) == {str(work / "analysis.ipynb"): ["x", "y"]}


@pytest.mark.timeout(300)
def test_new_notebook_under_the_old_name_while_the_renamed_one_still_runs(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    """The renamed notebook's kernel still writes under the old name: the new
    notebook there loads none of it, says where it is, and keeps its own apart."""
    work, root = jupyter_env["work"], jupyter_env["checkpoints"]
    path = server.new_notebook()
    first = server.open(path, name=path)
    server.run(first, "x = 'first'")
    server.rename(path, "first.ipynb", first)
    server.save("first.ipynb", [code_cell("f-1", "x = 'first'")])
    assert "Checkpoint 1 written" in server.run(first, "%persist save")

    assert server.new_notebook() == path
    second = server.open(path, name=path)
    out = server.run(second, "print('x' in dir())")
    assert out.splitlines()[-1] == "False", out
    # its notebook cannot be told (it had no cells when its kernel wrote it, since its
    # file was gone): the note gives a handle that loads it
    assert "belongs to another notebook" in out, out
    handle = Store(root).session(str(work / path)).path.name
    assert f"%persist restore --from '{handle}'" in out, out
    assert not RESTORED.search(out), out
    server.run(second, "z = 'second'")
    server.save(path, [code_cell("s-1", "z = 'second'")])

    server.restart(second)  # its own state, not the other's
    out = server.run(second, "print(z, 'x' in dir())")
    assert out.splitlines()[-1] == "second False", out
    server.restart(first)  # and the renamed one takes its state to its new name
    out = server.run(first, "print(x, 'z' in dir())")
    assert out.splitlines()[-1] == "first False", out
    assert f"renamed from {work / path}" in out, out
    server.restart(second)
    out = server.run(second, "print(z)")
    assert out.splitlines()[-1] == "second", out
    wait_for_writers(root)
    saved = notebooks(root)
    assert saved == {str(work / "first.ipynb"): ["x"], str(work / path): ["z"]}, saved
    # the other notebook's state can still be taken on purpose
    out = server.run(second, f"%persist restore --from '{work / 'first.ipynb'}'\nprint(x, z)")
    assert out.splitlines()[-1] == "first second", out


@pytest.mark.timeout(300)
def test_session_without_a_name_in_a_subfolder(
    server: JupyterServer, jupyter_env: dict[str, Path]
) -> None:
    """A session created with a path only: the server passes it relative to its root."""
    work = jupyter_env["work"]
    server.call("PUT", "/api/contents/sub", {"type": "directory"})
    path = server.new_notebook("sub")
    assert path == "sub/Untitled.ipynb"
    session = server.open(path)
    server.run(session, "v = 'in sub'\n%persist save")
    assert notebooks(jupyter_env["checkpoints"]) == {str(work / "sub" / "Untitled.ipynb"): ["v"]}
    server.restart(session)
    assert server.run(session, "print(v)").splitlines()[-1] == "in sub"
