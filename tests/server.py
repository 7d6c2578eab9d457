"""A real jupyter_server, driven as JupyterLab drives it: REST and the kernel websocket.

Nothing is faked: the server is ``python -m jupyter_server`` on 127.0.0.1 (see
:class:`~tests.lab.LabServer`), notebooks are created, renamed and saved
through the contents API, sessions through the sessions API, and cells run
over ``/api/kernels/<id>/channels`` with the messages JupyterLab sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from .lab import LabServer

#: The server's command line without this package's server extension (the fallback:
#: a server where it is not installed, or turned off).
WITHOUT_EXTENSION = ["--ServerApp.jpserver_extensions=persistent_kernel.serverext=False"]


class JupyterServer(LabServer):
    """The bare ``jupyter_server`` (what JupyterLab and Notebook 7 run on)."""

    app = "jupyter_server"

    def call(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        """One REST call; the decoded JSON reply (None for 204)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            raw = reply.read()
        return json.loads(raw) if raw else None

    # -- what JupyterLab does --------------------------------------------------------

    def new_notebook(self, folder: str = "") -> str:
        """File > New > Notebook: an empty ``Untitled*.ipynb``; returns its path."""
        return str(self.call("POST", f"/api/contents/{folder}", {"type": "notebook"})["path"])

    def save(self, path: str, cells: list[dict[str, Any]]) -> None:
        """Ctrl-S: the notebook's cells (with their nbformat ids) written to *path*."""
        content = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        self.call("PUT", f"/api/contents/{path}", {"type": "notebook", "content": content})

    def rename(self, old: str, new: str, session: dict[str, Any]) -> None:
        """The "Rename file" dialog: the file, then the session, as JupyterLab does."""
        self.call("PATCH", f"/api/contents/{old}", {"path": new})
        self.call("PATCH", f"/api/sessions/{session['id']}", {"path": new, "name": new})

    def open(self, path: str, name: str | None = None) -> dict[str, Any]:
        """Open *path* with the persistent kernel; the session model.

        JupyterLab passes the file name as ``name``; a client that passes none
        makes the server hand the kernel a path relative to its root.
        """
        body: dict[str, Any] = {
            "path": path,
            "type": "notebook",
            "kernel": {"name": "python-persistent"},
        }
        if name is not None:
            body["name"] = name
        return dict(self.call("POST", "/api/sessions", body))

    def duplicate(self, path: str) -> str:
        """File > Duplicate: a copy beside *path*; returns the copy's path."""
        folder = path.rpartition("/")[0]
        return str(self.call("POST", f"/api/contents/{folder}", {"copy_from": path})["path"])

    def delete(self, path: str) -> None:
        """Delete in the file browser."""
        self.call("DELETE", f"/api/contents/{path}")

    def shutdown_kernel(self, session: dict[str, Any]) -> None:
        """Kernel > Shut Down Kernel: the kernel ends, the notebook stays open."""
        self.call("DELETE", f"/api/kernels/{session['kernel']['id']}")

    def restart(self, session: dict[str, Any]) -> None:
        """Kernel > Restart Kernel."""
        self.call("POST", f"/api/kernels/{session['kernel']['id']}/restart", {})

    def close(self, session: dict[str, Any]) -> None:
        """Close and Shut Down Notebook."""
        self.call("DELETE", f"/api/sessions/{session['id']}")

    def run(self, session: dict[str, Any], code: str, timeout: float = 120) -> str:
        """Run one cell over the kernel's websocket; what it shows (streams, text/plain)."""
        return asyncio.run(_execute(self, session["kernel"]["id"], code, timeout))


def code_cell(cell_id: str, source: str) -> dict[str, Any]:
    return {
        "id": cell_id,
        "cell_type": "code",
        "source": source,
        "metadata": {},
        "outputs": [],
        "execution_count": None,
    }


def _message(msg_type: str, content: dict[str, Any], session: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "lab",
            "session": session,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }


async def _connect(server: JupyterServer, kernel_id: str, session: str) -> Any:
    url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={session}"
    # The server answers once the kernel is up: on a busy machine that takes a while.
    request = HTTPRequest(
        url,
        headers={"Authorization": f"token {server.token}"},
        connect_timeout=120,
        request_timeout=120,
    )
    return await websocket_connect(request)


async def _reply(ws: WebSocketClientConnection, msg_id: str, deadline: float) -> list[Any]:
    """Messages answering *msg_id*, up to the reply and the idle status after it."""
    seen: list[Any] = []
    replied = idle = False
    while not (replied and idle):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no answer to {msg_id}: {seen}")
        raw = await asyncio.wait_for(ws.read_message(), left)
        if raw is None:
            raise AssertionError("the server closed the kernel websocket")
        if not isinstance(raw, str):
            continue  # binary frames carry buffers, which these cells do not send
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        seen.append(msg)
        kind = msg["msg_type"]
        if kind.endswith("_reply"):
            replied = True
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    return seen


async def _execute(server: JupyterServer, kernel_id: str, code: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    session = uuid.uuid4().hex
    ws = await _connect(server, kernel_id, session)
    try:
        # After a restart the kernel may still be starting: kernel_info until it answers.
        while True:
            info = _message("kernel_info_request", {}, session)
            ws.write_message(json.dumps(info))
            try:
                await _reply(ws, info["header"]["msg_id"], min(deadline, time.monotonic() + 10))
                break
            except (AssertionError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": True,
            "stop_on_error": True,
        }
        msg = _message("execute_request", content, session)
        ws.write_message(json.dumps(msg))
        text = ""
        for reply in await _reply(ws, msg["header"]["msg_id"], deadline):
            kind, body = reply["msg_type"], reply["content"]
            if kind == "stream":
                text += body["text"]
            elif kind in ("execute_result", "display_data"):
                text += body["data"].get("text/plain", "") + "\n"
            elif kind == "error":
                text += f"{body['ename']}: {body['evalue']}\n"
        return text
    finally:
        ws.close()
        # Wait for the closing handshake, so the socket is closed before the loop ends.
        with contextlib.suppress(asyncio.TimeoutError):
            while await asyncio.wait_for(ws.read_message(), 10) is not None:
                pass
