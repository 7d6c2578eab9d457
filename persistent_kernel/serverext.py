"""The Jupyter server extension: the server tells the store what only it knows.

Enabled by ``pip install`` alone (the wheel carries
``etc/jupyter/jupyter_server_config.d/persistent_kernel.json``), it does three
things, and declares nothing a stock server would not have (no handler, no
setting outside its own class):

* it follows the server's contents events (``jupyter_events``' contents
  service: ``rename``, ``copy``, ``delete``) and records them in the store
  (:mod:`.store.follow`): a renamed notebook's state moves with it, kernel
  running or not; a copy starts clean; a deleted notebook's state is kept,
  set aside, and never handed to a new notebook of the same name;
* it tells a running kernel its notebook's new path through the store: a
  *forward* record in the session, which the kernel reads before its next
  checkpoint (:meth:`.checkpointer.Checkpointer.follow_renames`). A record in
  the store rather than a message to the kernel, because the path matters only
  when the kernel writes; the kernel may be busy in a cell, restarting or dead
  when the rename happens; and the record outlives a server restart, so the
  next start carries it out if the kernel never did;
* at shutdown (SIGTERM, ^C, ``jupyter server stop``, the idle culler stopping
  the server) it shuts down the persistent kernels first, so each writes its
  final checkpoint, and waits for those writers (their upload to a bucket
  included), at most :attr:`PersistentKernelServer.shutdown_wait` seconds, a
  deadline shorter than a pod's grace period: a container ends with the server,
  and with it every writer still running.

Paths: the store's keys are the notebooks' absolute paths, as kernels see
them (``JPY_SESSION_NAME``, which the server makes from its ``root_dir``). A
contents manager that serves no local files (no ``root_dir``) is not
followed: the kernels' own signals are the fallback then, as they are for
clients without a server (see ``docs/clients.md``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.extension.application import ExtensionApp
from traitlets import Float

from . import kernelconfig
from .errors import PersistentKernelError
from .kernelspec import KERNEL_NAME
from .store import Store, follow
from .store.where import open_store

CONTENTS_EVENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class PersistentKernelServer(ExtensionApp):
    """Renames, copies and deletes told to the store; final checkpoints waited for."""

    name = "persistent_kernel"
    load_other_extensions = True

    shutdown_wait = Float(
        25.0,
        help="""Seconds the server waits at most, when it stops, for the final checkpoints
        of the persistent kernels it shuts down (and their upload to a bucket). Keep it
        below the time the server is given to stop (Kubernetes' terminationGracePeriodSeconds,
        30 by default), or the container ends before the wait does.""",
    ).tag(config=True)

    @property
    def server(self) -> Any:
        assert self.serverapp is not None, "an extension runs inside a server"
        return self.serverapp

    def initialize_settings(self) -> None:
        self._lock = asyncio.Lock()  # one event at a time: a rename then a copy of it
        self.root = _root_dir(self.server)
        # Where the kernels commit, read from their configuration once (a bucket's cache).
        self.store: Store = open_store(kernelconfig.checkpoint_dir()).local()
        self.server.event_logger.add_listener(schema_id=CONTENTS_EVENTS, listener=self._on_contents)

    def _key(self, api_path: str) -> str | None:
        if self.root is None:
            return None
        return os.path.normpath(os.path.join(self.root, *api_path.strip("/").split("/")))

    # -- contents events ------------------------------------------------------------

    async def _on_contents(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        action = data.get("action")
        if action not in ("rename", "copy", "delete"):
            return
        path, source = self._key(data.get("path", "")), data.get("source_path")
        if path is None:
            return
        old = self._key(source) if source else None
        async with self._lock:
            busy = await self._busy_keys()
            try:
                moved = await asyncio.to_thread(self._record, action, path, old, busy)
            except (OSError, PersistentKernelError) as exc:
                self.log.warning(
                    "persistent-kernel: could not record the %s of %s in %s: %s",
                    action, path, self.store.display, exc,
                )  # fmt: skip
                return
        for move in moved:
            self.log.info(
                "persistent-kernel: checkpoints of %s %s %s", move.old,
                "follow their kernel to" if move.forwarded else "moved to", move.new,
            )  # fmt: skip

    def _record(self, action: str, path: str, old: str | None, busy: set[str]) -> list[follow.Move]:
        store = self.store
        if action == "rename" and old is not None:
            return follow.renamed(store, old, path, busy, folder=os.path.isdir(path))
        if not store.sessions_dir.exists():
            return []  # no checkpoint yet, anywhere: nothing to copy or set aside
        if action == "copy" and old is not None:
            if path.endswith(".ipynb"):
                follow.copied(store, path, old)
            return []
        if action == "delete":
            aside = follow.set_aside(store, path, "deleted", busy=path in busy)
            return [aside] if aside is not None else []
        return []

    async def _busy_keys(self) -> set[str]:
        """The notebooks a kernel of this server serves now (by their old path too: the
        server updates a session's path after the rename)."""
        keys = set()
        for model in await self.server.session_manager.list_sessions():
            key = self._key(str(model.get("path") or ""))
            if key is not None and model.get("kernel"):
                keys.add(key)
        return keys

    # -- shutdown -------------------------------------------------------------------

    async def stop_extension(self) -> None:
        """Shut the persistent kernels down and wait for their final checkpoints."""
        manager = self.server.kernel_manager
        ours = [
            kernel_id
            for kernel_id in list(manager.list_kernel_ids())
            if _is_persistent(manager.get_kernel(kernel_id))
        ]
        began = time.monotonic()
        if ours:
            self.log.info(
                "persistent-kernel: shutting down %d kernel(s) for their final checkpoints",
                len(ours),
            )
            await asyncio.gather(
                *(ensure_async(manager.shutdown_kernel(kernel_id)) for kernel_id in ours),
                return_exceptions=True,
            )
        left = max(0.0, self.shutdown_wait - (time.monotonic() - began))
        waited, alive = await asyncio.to_thread(_wait_for_writers, self.store, left, self.log)
        if alive:
            self.log.warning(
                "persistent-kernel: %d checkpoint writer(s) still running after %.1f s "
                "(shutdown_wait); their checkpoints may be lost with this server",
                alive, time.monotonic() - began,
            )  # fmt: skip
        elif ours or waited > 0.05:
            self.log.info(
                "persistent-kernel: final checkpoints written in %.1f s",
                time.monotonic() - began,
            )


def _is_persistent(kernel: Any) -> bool:
    """Whether *kernel* (a server's kernel manager) runs this package's kernel."""
    if getattr(kernel, "kernel_name", None) == KERNEL_NAME:
        return True
    spec = getattr(kernel, "kernel_spec", None)
    argv = getattr(spec, "argv", None) or []
    return any("persistent_kernel" in str(arg) for arg in argv)


def _wait_for_writers(store: Store, timeout: float, log: Any) -> tuple[float, int]:
    """Wait, at most *timeout* seconds in all, for every session's writers; log whose."""
    began = time.monotonic()
    alive = 0
    try:
        busy = [s for s in store.sessions() if s.locks.running_writers()]
    except (OSError, PersistentKernelError) as exc:
        log.warning("persistent-kernel: could not look for checkpoint writers: %s", exc)
        return 0.0, 0
    if busy:
        names = ", ".join(follow.key_of(store, s) or s.path.name for s in busy)
        log.info("persistent-kernel: waiting for the final checkpoints of %s", names)
    for session in busy:
        left = max(0.0, timeout - (time.monotonic() - began))
        alive += session.locks.wait_for_writers(left)[1]
    return time.monotonic() - began, alive


def _root_dir(serverapp: Any) -> str | None:
    """The folder the server's notebooks are in, as kernels see it; None when its
    contents manager serves no local files."""
    contents = serverapp.contents_manager
    root = getattr(contents, "root_dir", None)
    if not root or not getattr(contents, "_get_os_path", None):
        return None
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(root))))


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "persistent_kernel.serverext", "app": PersistentKernelServer}]
