"""Checkpoints in a bucket when things go wrong: a start that cannot read the bucket, a
prune on another machine, two pods on one notebook, manifests planted by others.

Real kernels on a real S3 server (moto on 127.0.0.1) where the flow is the
kernel's; the store's own promises directly where it is not. A "node" is a
Jupyter data directory and ``$HOSTNAME`` (what Kubernetes sets to the pod's
name); an endpoint that refuses connections for a while is a real TCP gate in
front of moto, closed and opened again (moto itself keeps its objects only
while it runs).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from persistent_kernel.cli import prune_sessions
from persistent_kernel.session import session_key
from persistent_kernel.store import SessionStore
from persistent_kernel.store.objects import Location, ObjectBackend
from persistent_kernel.store.tiers import LEASE_TTL, WALK_LIMIT, BucketStore, Mirror

from .harness import Kernel, KernelHarness
from .helpers import INFO, KEY, wait_until
from .s3server import S3Server, free_port

NOTEBOOK = "notebook.ipynb"


class Gate:
    """A TCP forwarder to the S3 server that can refuse connections (:meth:`close`)
    and take them again (:meth:`open`) on the same port: an endpoint down for a
    moment, as a pod sees it at start (connection refused)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> Gate:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True).start()
        return self

    def close(self) -> None:
        """Refuse every connection from now on, and cut those open."""
        self._stop.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                upstream.settimeout(None)
                with self._lock:
                    self._sockets += [client, upstream]
                for src, dst in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def gate(s3server: S3Server) -> Iterator[Gate]:
    opened = Gate(s3server.port).open()
    try:
        yield opened
    finally:
        opened.close()


def start(kernels: KernelHarness, url: str, host: str, node: Path) -> Kernel:
    """A kernel on the pod *host* whose local disk is *node*."""
    args = [f"--PersistentKernel.checkpoint_dir={url}", "--PersistentKernel.checkpoint_interval=0"]
    env = {"JUPYTER_DATA_DIR": str(node), "HOSTNAME": host}
    return kernels.start(NOTEBOOK, args=args, env=env)


def tier(kernels: KernelHarness, url: str, node: Path) -> Mirror:
    """The notebook's session as the kernel whose local disk is *node* sees it."""
    cache = node / "persistent_kernel" / "tiers" / Location.parse(url).cache_name()
    key = session_key(kernels.env(NOTEBOOK), str(kernels.cwd))[0]
    return BucketStore(url, cache_root=cache).mirror(key)


def told(kernel: Kernel, seen: list[str], text: str) -> bool:
    """Run an empty cell; whether *text* has been shown above any cell so far."""
    seen.append(kernel.run("pass").text)
    return any(text in t for t in seen)


def save(kernel: Kernel, mirror: Mirror, count: int) -> None:
    """Checkpoint now and wait until the bucket's session has *count* generations."""
    kernel.run("%persist save").check()
    wait_until(lambda: len(mirror.remote.generations()) >= count, 120, "the upload")


# -- 5: a start that cannot read the bucket ------------------------------------------------


def test_a_start_that_cannot_read_the_bucket_never_replaces_its_state(
    kernels: KernelHarness, bucket_url: str, s3server: S3Server, gate: Gate, tmp_path: Path
) -> None:
    url = bucket_url.replace(s3server.url, gate.url)
    a = start(kernels, url, "pod-a", tmp_path / "node-a")
    a.run("x = 'the real state'").check()
    notebook = tier(kernels, url, tmp_path / "node-a")
    save(a, notebook, 1)
    a.shutdown()
    assert notebook.local.locks.wait_for_writers(120)[1] == 0

    gate.close()  # connection refused, for a moment, as the next pod starts
    b = start(kernels, url, "pod-b", tmp_path / "node-b")
    out = b.run("print('x' in dir())")
    assert out.stdout.strip().endswith("False")
    assert "could not be reached" in out.text and "never in place of the state there" in out.text
    gate.open()
    b.run("y = 'made while the bucket was not read'").check()
    b.run("%persist save").check()
    seen: list[str] = []
    wait_until(lambda: told(b, seen, "goes to a copy"), 120, "the notice of the copy")
    text = "".join(seen)
    assert "written by host pod-a" in text and "restart the kernel" in text
    assert text.count("goes to a copy") == 1
    (copy,) = set(re.findall(r"%persist restore --from (\S+)\)", text))
    b.run("y = 'and more'").check()
    b.run("%persist save").check()
    copies = BucketStore(url).session_at(Path(copy))
    wait_until(lambda: len(copies.generations()) == 2, 120, "the second upload to the copy")
    assert "goes to a copy" not in b.run("pass").text  # told once
    assert notebook.remote.generations() == [1]  # the notebook's own state, untouched

    # The next pod restores the real state; the copy holds what pod-b made.
    c = start(kernels, url, "pod-c", tmp_path / "node-c")
    assert c.value("x") == "'the real state'"
    assert c.value("'y' in dir()") == "False"
    c.run(f"%persist restore --from {copy} y").check()
    assert c.value("y") == "'and more'"


def test_an_unread_bucket_is_read_before_the_first_upload_and_not_replaced(
    bucket_url: str, tmp_path: Path
) -> None:
    """The store's side of the rule: unseen at start, a push reads the bucket first;
    with nothing there it has not seen, it uploads as usual."""
    a = BucketStore(bucket_url, cache_root=tmp_path / "node-a").mirror(KEY)
    commit(a.local, b"the real state")
    a.push()
    b = BucketStore(bucket_url, cache_root=tmp_path / "node-b").mirror(KEY)
    b.started(seen=False)  # its start could not read the bucket
    commit(b.local, b"made blind")
    pushed = b.push(keep=5)
    assert pushed.copy is not None and len(pushed.tell) == 1
    assert a.remote.generations() == [1]
    # A start that reads the bucket and finds its own newest uploads in place.
    c = BucketStore(bucket_url, cache_root=tmp_path / "node-a").mirror(KEY)
    c.started(seen=False)
    commit(c.local, b"newer, from the node that wrote the bucket's newest")
    pushed = c.push()
    assert (pushed.copy, pushed.tell, pushed.generation) == (None, [], 2)


def commit(session: SessionStore, payload: bytes) -> int:
    with session.locks.locked(10):
        ref = session.write_blob([payload])
        content = {
            "variables": {"x": {"type": "bytes", "group": 0, "module": None}},
            "groups": [{"parts": [[ref.hash, ref.size]], "size": ref.size, "names": ["x"]}],
            "skipped": {},
        }
        return session.commit(content, [ref], INFO).generation


# -- 6: prune and a kernel on another node ---------------------------------------------------


def test_prune_passes_over_a_session_whose_kernel_runs_on_another_node(
    kernels: KernelHarness, bucket_url: str, tmp_path: Path
) -> None:
    a = start(kernels, bucket_url, "pod-a", tmp_path / "node-a")
    a.run("x = 1").check()
    notebook = tier(kernels, bucket_url, tmp_path / "node-a")
    save(a, notebook, 1)
    # From this machine, later than the prune's age: the kernel on pod-a still runs.
    later = time.time() + 120
    result = prune_sessions(bucket_url, older_than=60, now=later)
    assert result["removed"] == []
    (row,) = result["failed"]
    assert "a kernel on host pod-a is using it" in row["error"]
    assert notebook.remote.generations() == [1]
    # Once its lease lapsed (the kernel gone that long), the session goes.
    result = prune_sessions(bucket_url, older_than=60, now=later + LEASE_TTL)
    assert len(result["removed"]) == 1 and result["failed"] == []
    assert notebook.remote.generations() == []


# -- 8: two pods on one notebook ------------------------------------------------------------


def test_two_pods_on_one_notebook_are_told_of_each_other(
    kernels: KernelHarness, bucket_url: str, tmp_path: Path
) -> None:
    a = start(kernels, bucket_url, "pod-a", tmp_path / "node-a")
    a.run("first = 1").check()
    notebook = tier(kernels, bucket_url, tmp_path / "node-a")
    save(a, notebook, 1)

    b = start(kernels, bucket_url, "pod-b", tmp_path / "node-b")
    out = b.run("print(first)")
    assert out.stdout.strip().endswith("1")
    assert "another kernel, on host pod-a, is using this notebook's checkpoints" in out.text
    assert "This kernel restored the state written by host pod-a at" in out.text
    b.run("second = 2").check()
    save(b, notebook, 2)

    a.run("first = 3").check()
    a.run("%persist save").check()
    seen: list[str] = []
    wait_until(lambda: told(a, seen, "another kernel saves this notebook's state"), 120, "it")
    text = "".join(seen)
    assert "generation 2 there was written by host pod-b" in text
    wait_until(lambda: len(notebook.remote.generations()) == 3, 120, "a's upload")
    a.run("first = 4").check()
    b.run("second = 5").check()
    save(b, notebook, 4)
    save(a, notebook, 5)
    assert "another kernel" not in a.run("pass").text  # told once


# -- 9: planted manifests ---------------------------------------------------------------------


def test_planted_manifests_are_summarised_bounded_and_the_unsigned_cleaned(
    bucket_url: str, tmp_path: Path
) -> None:
    a = BucketStore(bucket_url, cache_root=tmp_path / "node-a").mirror(KEY)
    good = commit(a.local, b"the user's state")
    a.push()
    remote = a.remote.backend
    assert isinstance(remote, ObjectBackend)
    raw = json.loads(remote.read_manifest(good))
    raw.pop("signature")
    unsigned, foreign = range(good + 1, good + 1001), range(good + 1001, good + 2001)

    def plant(generation: int) -> None:
        forged = {**raw, "generation": generation}
        if generation in foreign:
            forged["signature"] = "hmac-sha256:" + secrets.token_hex(32)
        remote.write_manifest(generation, json.dumps(forged).encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(plant, [*unsigned, *foreign]))

    b = BucketStore(bucket_url, cache_root=tmp_path / "node-b").mirror(KEY)
    began = time.monotonic()
    pulled = b.pull()
    elapsed = time.monotonic() - began
    assert pulled.pulled == good and pulled.seen
    # A few lines, not 2000; at most WALK_LIMIT manifests read above the newest upload.
    assert pulled.problems == [
        f"passed over {WALK_LIMIT} manifests that are not this user's (not signed with this "
        "user's checkpoint secret); none was unpickled",
        f"{2000 - WALK_LIMIT} generations were left unread (a walk reads at most "
        f"{WALK_LIMIT} manifests on either side of the newest this user uploaded)",
    ]
    assert elapsed < 30, elapsed

    # The next upload's prune deletes the unsigned ones (provably not the user's) and
    # keeps the rest: those signed with another secret may be the user's of old.
    commit(a.local, b"the user's next state")
    assert a.push(keep=5).generation == good + 2001
    left = a.remote.generations()
    assert left == [good, *foreign, good + 2001]
    c = BucketStore(bucket_url, cache_root=tmp_path / "node-c").mirror(KEY)
    assert c.pull().pulled == good + 2001


def test_a_walk_that_ends_at_its_bound_counts_as_a_bucket_not_read(
    bucket_url: str, tmp_path: Path
) -> None:
    """Without the head (deleted, or a bucket written before there was one), more
    planted manifests than the bound hide the user's: the start says so, and what
    it saves goes to a copy, never over them."""
    a = BucketStore(bucket_url, cache_root=tmp_path / "node-a").mirror(KEY)
    good = commit(a.local, b"the user's state")
    a.push()
    remote = a.remote.backend
    assert isinstance(remote, ObjectBackend)
    remote.delete_file("head.json")
    raw = json.loads(remote.read_manifest(good))
    raw["signature"] = "hmac-sha256:" + "0" * 64
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda g: remote.write_manifest(g, json.dumps({**raw, "generation": g}).encode()),
                range(good + 1, good + WALK_LIMIT + 2),
            )
        )
    b = BucketStore(bucket_url, cache_root=tmp_path / "node-b").mirror(KEY)
    pulled = b.pull()
    assert pulled.pulled is None and pulled.stopped and not pulled.seen
    (notice,) = [n for n in pulled.notices(b.display, None) if "no generation" in n]
    assert "never in place of the state there" in notice
    b.started(pulled.seen)
    commit(b.local, b"made without the user's state")
    pushed = b.push(keep=5)
    assert pushed.copy is not None and pushed.tell
    assert a.remote.generations() == list(range(good, good + WALK_LIMIT + 2))
