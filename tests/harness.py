"""Real persistent kernels, started and driven through jupyter_client."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from persistent_kernel.session import session_key
from persistent_kernel.store import SessionStore, Store

KERNEL_NAME = "python-persistent"


@dataclass
class Output:
    """What one execute request produced."""

    stdout: str = ""
    stderr: str = ""
    text: str = ""  # stdout and text/plain displays, in the order they came
    results: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    error: str | None = None
    payload: list[Any] = field(default_factory=list)

    def check(self) -> Output:
        """Fail the test with the kernel's traceback if the cell raised."""
        assert self.error is None, self.error
        return self


class Kernel:
    """One kernel process and a blocking client connected to it."""

    def __init__(self, km: KernelManager, wait: bool = True) -> None:
        self.km = km
        self.kc: BlockingKernelClient = km.client()
        self.kc.start_channels()
        if wait:
            self.kc.wait_for_ready(timeout=120)

    @property
    def pid(self) -> int:
        provisioner: Any = self.km.provisioner
        return int(provisioner.pid)

    def run(self, code: str, timeout: float = 120) -> Output:
        out = Output()

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    out.stdout += content["text"]
                    out.text += content["text"]
                else:
                    out.stderr += content["text"]
            elif kind in ("execute_result", "display_data", "update_display_data"):
                plain = content["data"].get("text/plain", "")
                out.results.append(plain)
                out.text += plain + "\n"
                out.html.append(content["data"].get("text/html", ""))
            elif kind == "error":
                out.error = "\n".join(
                    [f"{content['ename']}: {content['evalue']}", *content["traceback"]]
                )

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        out.payload = reply["content"].get("payload", [])
        return out

    def value(self, expression: str) -> str:
        """``repr`` of *expression* evaluated in the kernel (printed, then read)."""
        return self.run(f"print(repr({expression}))").check().stdout.strip().splitlines()[-1]

    def restart(self) -> None:
        """Restart as a frontend does: shutdown_request, wait, then a new process."""
        self.km.restart_kernel(now=False)
        self.kc.wait_for_ready(timeout=120)

    def shutdown(self) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)

    def wait_dead(self, timeout: float = 30) -> None:
        """Wait for the kernel process to exit; fail the test if it does not."""
        deadline = time.monotonic() + timeout
        while self.km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.km.is_alive(), "the kernel did not exit"

    def kill(self) -> None:
        """SIGKILL the kernel process, as the OOM killer would."""
        os.kill(self.pid, signal.SIGKILL)
        self.wait_dead()
        self.kc.stop_channels()
        self.km.cleanup_resources()


class KernelHarness:
    """Starts kernels in *cwd* with checkpoints under *root*; tidies up after."""

    def __init__(self, cwd: Path, root: Path) -> None:
        self.cwd = cwd
        self.root = root
        self.started: list[Kernel] = []

    def env(self, notebook: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("JPY_SESSION_NAME", None)
        if notebook is not None:
            env["JPY_SESSION_NAME"] = notebook
        return env

    def start(
        self,
        notebook: str | None = "notebook.ipynb",
        args: Iterable[str] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Kernel:
        """Start a kernel serving *notebook* (a path relative to cwd), or none.

        With ``wait=False``, return without waiting for ``kernel_info``.
        """
        km = KernelManager(kernel_name=KERNEL_NAME)
        full_env = {**self.env(notebook), **(env or {})}
        km.start_kernel(cwd=str(self.cwd), env=full_env, extra_arguments=list(args))
        kernel = Kernel(km, wait)
        self.started.append(kernel)
        return kernel

    def session(self, notebook: str | None = "notebook.ipynb") -> SessionStore:
        """The store of the session a kernel started with *notebook* uses."""
        key, _ = session_key(self.env(notebook), str(self.cwd))
        return Store(self.root).session(key)

    def wait_generations(self, session: SessionStore, count: int, timeout: float = 60) -> list[int]:
        """Wait until *session* has at least *count* generations and no live writer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            generations = session.generations()
            if len(generations) >= count and not session.locks.running_writers():
                return generations
            time.sleep(0.05)
        raise AssertionError(f"{session} has {session.generations()}, wanted {count} generations")

    def close(self) -> None:
        for kernel in self.started:
            with contextlib.suppress(Exception):  # already dead is fine
                kernel.shutdown()
        for session in Store(self.root).sessions():
            session.locks.wait_for_writers(120)
