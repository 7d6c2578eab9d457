"""A real JupyterLab server and a real headless Chromium, for the browser test.

Nothing here is faked: the server is ``python -m jupyterlab`` in a subprocess
on 127.0.0.1, the browser is Debian's Chromium driven by Playwright, and the
notebook is built by typing into JupyterLab's own UI.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
]

#: How long one UI step may take (ms): a kernel start or restore on a busy CI box.
STEP = 120_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LabServer:
    """``jupyter lab`` on 127.0.0.1 with a token, serving *root*.

    It inherits the test's environment, so with the ``jupyter_env`` fixture
    every Jupyter directory (and so its settings, workspaces, kernels'
    checkpoints) is a fresh temp folder.
    """

    #: The server application's module: JupyterLab, or the bare ``jupyter_server``.
    app = "jupyterlab"

    def __init__(self, root: Path, log: Path, args: Sequence[str] = ()) -> None:
        self.root = root
        self.args = list(args)  # more of the server's command line
        self.log_path = log
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/lab?token={self.token}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def start(self, timeout: float = 120) -> LabServer:
        argv = [
            sys.executable,
            "-m",
            self.app,
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            # CI and this sandbox run as root, which jupyter_server refuses by default
            "--ServerApp.allow_root=True",
            *self.args,
        ]
        if self.app == "jupyterlab":
            # nothing from outside this machine: no news feed, no update check
            argv += [
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
            ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(
                    f"{self.base}/api/status?token={self.token}", timeout=5
                ) as reply:
                    if reply.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                exc.close()  # an answer, not yet 200: it holds the socket until closed
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"jupyter lab did not answer in {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 60) -> None:
        """Stop as Ctrl-C would: the server shuts its kernels down first."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def chromium(user_data_dir: Path) -> Iterator[Any]:
    """A fresh headless Chromium profile; yields a Playwright ``BrowserContext``.

    Fails (never skips) without Debian's Chromium: CI installs it.
    """
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(STEP)
        try:
            yield context
        finally:
            context.close()
