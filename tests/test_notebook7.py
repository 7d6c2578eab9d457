"""Notebook 7 in a real headless Chromium: a notebook renamed from its title, its kernel
shut down, the notebook reopened: its state is back (the server extension followed the
rename). The server is ``python -m notebook`` as ``pip install`` leaves it.
"""

from __future__ import annotations

import contextlib
import re
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .lab import STEP, LabServer, chromium
from .server import JupyterServer, code_cell
from .test_clients import ARTIFACTS, api, wait_for, wait_for_writers


class NotebookServer(JupyterServer):
    """``jupyter notebook`` (Notebook 7), with the REST calls of :class:`JupyterServer`."""

    app = "notebook"

    def page(self, path: str) -> str:
        return f"{self.base}/notebooks/{path}?token={self.token}"


def run(page: Any, code: str, shows: str) -> str:
    """Type *code* into the last cell, Shift+Enter, wait until its output shows *shows*."""
    from playwright.sync_api import expect

    cells = page.locator(".jp-Notebook .jp-Cell")
    expect(cells.first).to_be_visible(timeout=STEP)
    cell = cells.nth(cells.count() - 1)
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(code)
    expect(editor).to_have_text(code)
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=STEP)
    output = cell.locator(".jp-OutputArea")
    expect(output).to_contain_text(shows, timeout=STEP)
    return str(output.inner_text())


def menu(page: Any, name: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{name}$")).click()
    page.locator(".lm-Menu .lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()


def kernel_ready(server: LabServer) -> bool:
    """Whether a kernel is up and idle. jupyter_server answers 500 to a listing that
    meets a kernel still starting (its last_activity not set yet): not ready then."""
    try:
        kernels = api(server, "/api/kernels")
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 500:
            raise
        return False
    return any(k["execution_state"] == "idle" for k in kernels)


@contextlib.contextmanager
def browsing(
    server: NotebookServer, tmp_path: Path, checkpoints: Path, failure: str
) -> Iterator[Any]:
    """A Chromium page for *server*. A failure leaves a screenshot named *failure* and
    prints the server's log; the server is stopped, and its kernels' writers waited
    for, whatever happened."""
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with chromium(tmp_path / "chromium-profile") as context:
            page = context.pages[0] if context.pages else context.new_page()
            try:
                yield page
            except BaseException:
                page.screenshot(path=str(ARTIFACTS / f"{failure}.png"))
                print(f"jupyter notebook's log:\n{server.log()}")
                raise
    finally:
        server.stop()
        wait_for_writers(checkpoints)


@pytest.mark.timeout(600)
def test_notebook7_rename_then_shut_down_then_reopen(
    jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    root = jupyter_env["work"]
    server = NotebookServer(root, tmp_path / "notebook.log").start()
    with browsing(server, tmp_path, jupyter_env["checkpoints"], "notebook7-failure") as page:
        # A new notebook with the persistent kernel, as New > Python (persistent) makes.
        open_notebook(server, page, "python-persistent", "Python (persistent)")
        run(page, "x = 42; print('set')", "set")

        # File > Rename…, the dialog, a new name
        menu(page, "File", "Rename…")
        dialog = page.locator(".jp-Dialog")
        dialog.locator('input:not([type="checkbox"])').first.fill("seven.ipynb")
        dialog.locator("button.jp-Dialog-button", has_text=re.compile("^Rename$")).click()
        expect(dialog).to_have_count(0)
        wait_for(lambda: (root / "seven.ipynb").exists(), 30, "the rename")

        # Kernel > Shut Down Kernel, then the notebook opened again
        menu(page, "Kernel", "Shut Down Kernel")
        wait_for(lambda: api(server, "/api/kernels") == [], 60, "the kernel to stop")
        wait_for_writers(jupyter_env["checkpoints"])
        page.goto(server.page("seven.ipynb"))
        wait_for(lambda: kernel_ready(server), 120, "the kernel")
        out = run(page, "print(x + 1)", "43")
        assert "43" in out, out
        page.screenshot(path=str(ARTIFACTS / "notebook7-restored.png"))


def open_notebook(server: NotebookServer, page: Any, kernel: str, display: str) -> str:
    """A new notebook on *kernel*, opened in *page*; its path."""
    path = server.new_notebook()
    content = {
        "cells": [code_cell("n7-state", "")],
        "metadata": {"kernelspec": {"name": kernel, "language": "python",
                     "display_name": display}},
        "nbformat": 4, "nbformat_minor": 5,
    }  # fmt: skip
    server.call("PUT", f"/api/contents/{path}", {"type": "notebook", "content": content})
    page.goto(server.page(path))
    wait_for(lambda: kernel_ready(server), 120, "the kernel")
    return path


@pytest.mark.timeout(600)
def test_notebook7_shows_the_kernel_state(jupyter_env: dict[str, Path], tmp_path: Path) -> None:
    """Notebook 7 has no status bar: the state item sits in the header, the panel in the
    right sidebar. A stock kernel's notebook shows neither, and runs as usual."""
    from playwright.sync_api import expect

    profile = jupyter_env["IPYTHONDIR"] / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        "c.PersistentKernel.checkpoint_interval = 0\n"
    )
    server = NotebookServer(jupyter_env["work"], tmp_path / "notebook.log").start()
    with browsing(server, tmp_path, jupyter_env["checkpoints"], "notebook7-state-failure") as page:
        open_notebook(server, page, "python-persistent", "Python (persistent)")
        item = page.locator(".pk-StateItem")
        expect(item).to_have_text("Kernel state: not saved yet", timeout=STEP)
        run(page, "x = 41; print('set')", "set")
        expect(item).to_have_text(re.compile(r"^Kernel state: saved \d+ s ago"))
        item.click()
        panel = page.locator("#persistent-kernel-state")
        expect(panel).to_be_visible()
        expect(panel.locator('li[data-generation="1"]')).to_contain_text("added x")
        expect(panel.locator('li[data-name="x"]')).to_contain_text("saved")
        page.screenshot(path=str(ARTIFACTS / "notebook7-kernel-state.png"))

        # a stock kernel: no item, no panel content, cells run as usual
        page.goto(f"{server.base}/tree?token={server.token}")
        for kernel in api(server, "/api/kernels"):
            server.call("DELETE", f"/api/kernels/{kernel['id']}")
        open_notebook(server, page, "python3", "Python 3 (ipykernel)")
        out = run(page, "print(6 * 7)", "42")
        assert "42" in out, out
        expect(page.locator(".pk-StateItem")).to_be_hidden()
        page.screenshot(path=str(ARTIFACTS / "notebook7-stock-kernel.png"))
