"""Real kernels checkpointing to a bucket on a real S3 server (moto, 127.0.0.1).

A "node" is a Jupyter data directory: wiping it, or giving a kernel another
one, is what a pod rescheduled onto a new machine sees (an empty local disk,
the same bucket, the same secret).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from persistent_kernel.session import session_key
from persistent_kernel.store import blob_hash
from persistent_kernel.store.objects import Location, ObjectBackend
from persistent_kernel.store.tiers import LEASE_TTL, BucketStore, Mirror

from .harness import Kernel, KernelHarness
from .helpers import wait_until
from .s3server import S3Server

NOTEBOOK = "notebook.ipynb"


def key_of(kernels: KernelHarness, notebook: str = NOTEBOOK) -> str:
    return session_key(kernels.env(notebook), str(kernels.cwd))[0]


def start(
    kernels: KernelHarness,
    url: str,
    node: Path | None = None,
    interval: float = 0,
    notebook: str = NOTEBOOK,
) -> Kernel:
    env = {"JUPYTER_DATA_DIR": str(node)} if node is not None else None
    args = [
        f"--PersistentKernel.checkpoint_dir={url}",
        f"--PersistentKernel.checkpoint_interval={interval}",
    ]
    return kernels.start(notebook, args=args, env=env)


def tier(kernels: KernelHarness, url: str, node: Path, notebook: str = NOTEBOOK) -> Mirror:
    """The session as the kernel whose Jupyter data directory is *node* sees it."""
    cache = node / "persistent_kernel" / "tiers" / Location.parse(url).cache_name()
    return BucketStore(url, cache_root=cache).mirror(key_of(kernels, notebook))


def bucket_generations(session: Mirror) -> list[int]:
    return session.remote.generations()


def uploaders(session: Mirror) -> list[psutil.Process]:
    """The upload processes of *session*'s writers (they name its local tier)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(session.local.root) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def settle(session: Mirror) -> None:
    """Wait until no writer of *session* is alive on its node."""
    assert session.local.locks.wait_for_writers(120)[1] == 0


def test_a_new_node_restores_from_the_bucket(
    kernels: KernelHarness, bucket_url: str, jupyter_env: dict[str, Path]
) -> None:
    node = jupyter_env["JUPYTER_DATA_DIR"]
    k = start(kernels, bucket_url)
    k.run("import numpy as np\nx = list(range(1000))\na = np.arange(300_000.0)").check()
    k.run("%persist save").check()
    k.shutdown()
    session = tier(kernels, bucket_url, node)
    settle(session)
    assert bucket_generations(session)
    shutil.rmtree(node / "persistent_kernel")  # a new pod: the local disk is empty

    k2 = start(kernels, bucket_url)
    assert k2.value("(len(x), float(a.sum()))") == repr((1000, float(sum(range(300_000)))))
    assert session.local.generations()  # the local tier holds it again, for the next start


def test_kill_9_in_the_middle_of_an_upload_keeps_the_previous_generation(
    kernels: KernelHarness, bucket_url: str, jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    node = jupyter_env["JUPYTER_DATA_DIR"]
    k = start(kernels, bucket_url, interval=3600)
    k.run("small = 'before'").check()
    k.run("%persist save").check()
    session = tier(kernels, bucket_url, node)
    first = bucket_generations(session)
    assert len(first) == 1
    # 256 MiB of random bytes takes moto seconds to take in.
    k.run("import os\nbig = os.urandom(256 << 20)\nsmall = 'after'").check()
    k.run("w = get_ipython().kernel.checkpointer.start_checkpoint()").check()
    wait_until(lambda: uploaders(session), 120, "the upload to start")  # local commit done
    uploader = uploaders(session)[0]
    writer = uploader.parent()
    assert writer is not None and writer.pid != k.pid
    time.sleep(0.5)
    os.kill(writer.pid, signal.SIGKILL)  # mid-upload
    wait_until(lambda: not session.local.locks.running_writers(), 30, "the writer to die")
    psutil.wait_procs([uploader], timeout=30)
    assert not uploader.is_running()  # the upload died with its writer
    assert len(session.local.generations()) == 2
    assert bucket_generations(session) == first

    # Another node sees the previous generation, whole.
    k2 = start(kernels, bucket_url, node=tmp_path / "other-node")
    assert k2.value("small") == "'before'"
    assert k2.run("big").error is not None
    k2.shutdown()
    # This node kept the newer one (its standby adds the cell after it at the kill),
    # restores it, and uploads what the bucket lacks: nothing lost.
    k.kill()
    k3 = start(kernels, bucket_url)
    assert k3.value("(small, len(big))") == repr(("after", 256 << 20))
    wait_until(lambda: len(bucket_generations(session)) >= 2, 120, "the late upload")


def test_the_endpoint_down_during_a_checkpoint_and_during_a_start(
    kernels: KernelHarness, jupyter_env: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import secrets

    from persistent_kernel.store.tiers import SECRET_ENV

    from .s3server import CREDENTIALS

    for var, value in CREDENTIALS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv(SECRET_ENV, secrets.token_hex(32))
    server = S3Server(log=tmp_path / "moto.log").start()
    try:
        server.create_bucket("down")
        url = f"s3://down/u?endpoint={server.url}"
        node = jupyter_env["JUPYTER_DATA_DIR"]
        k = start(kernels, url)
        k.run("v = 1").check()
        k.run("%persist save").check()
        session = tier(kernels, url, node)
        assert bucket_generations(session) == [1]

        # The endpoint goes away in the middle of an upload.
        k.run("import os\nv = 2\nblob = os.urandom(128 << 20)").check()
        k.run("w_ = get_ipython().kernel.checkpointer.start_checkpoint()").check()
        wait_until(lambda: uploaders(session), 120, "the upload to start")
        server.stop()
        told: list[str] = []

        def notice() -> bool:
            told.append(k.run("pass").text)
            return any("could not be uploaded" in t for t in told)

        wait_until(notice, 120, "the notice")
        assert "kept on this machine" in "".join(told)
        assert len(session.local.generations()) == 2  # saved here all the same
        assert "could not be uploaded" not in k.run("v = 3").text  # told once
        k.run("%persist save").check()

        # Down at start, same node: the local tier has the newest, and says so.
        k.shutdown()
        settle(session)
        k2 = start(kernels, url)
        out = k2.run("print(v)")  # needs only v: it may run while `blob` still loads
        assert out.stdout.strip().splitlines()[-1] == "3"
        shown = [out.text]  # the notice comes with the report, when the restore ends

        def reported() -> bool:
            return "could not be reached" in "".join(shown) or bool(
                shown.append(k2.run("pass").text)
            )

        wait_until(reported, 60, "the start's notice")
        assert "this machine's copy" in "".join(shown)
        # Down at start, new node: nothing to restore, said plainly.
        k3 = start(kernels, url, node=tmp_path / "new-node")
        out = k3.run("print('v' in dir())")
        assert out.stdout.strip().splitlines()[-1] == "False"
        assert "has no copy of its checkpoints" in out.text
        k3.shutdown()

        # Back up (empty, as moto restarts): the retry uploads the newest, unasked.
        server.start()
        server.create_bucket("down")
        k2.run("w = 4").check()
        wait_until(lambda: bucket_generations(session), 120, "the retried upload")
        k2.shutdown()
        settle(session)
        k4 = start(kernels, url, node=tmp_path / "newer-node")
        assert k4.value("(v, w)") == "(3, 4)"
    finally:
        server.stop()


def test_two_kernels_racing_on_one_notebook_never_interleave(
    kernels: KernelHarness, bucket_url: str, jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    a = start(kernels, bucket_url, node=tmp_path / "node-a")
    b = start(kernels, bucket_url, node=tmp_path / "node-b")
    for i in range(4):
        # Each kernel's pair always agrees; a mixed generation would not.
        a.run(f"p = q = ('a', {i})\n%persist save").check()
        b.run(f"p = q = ('b', {i})\n%persist save").check()
    a.shutdown()
    b.shutdown()
    for node in ("node-a", "node-b"):
        settle(tier(kernels, bucket_url, tmp_path / node))
    session = tier(kernels, bucket_url, tmp_path / "node-c")
    remote = session.remote
    generations = remote.generations()
    assert len(generations) >= 2
    for generation in generations:
        manifest = remote.read_manifest(generation)  # signed and whole
        assert all(remote.has_blob(h, n) for h, n in manifest.blobs.items())
    c = start(kernels, bucket_url, node=tmp_path / "node-c")
    p, q = c.value("p"), c.value("q")
    assert p == q and p.startswith("(")


def test_a_planted_object_is_never_unpickled(
    kernels: KernelHarness, bucket_url: str, jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    node = jupyter_env["JUPYTER_DATA_DIR"]
    k = start(kernels, bucket_url)
    k.run("mine = 'genuine'\n%persist save").check()
    k.shutdown()
    session = tier(kernels, bucket_url, node)
    settle(session)
    remote = session.remote.backend
    assert isinstance(remote, ObjectBackend)
    witness = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, (f"touch {witness}",))

    evil = pickle.dumps({"mine": Evil()})
    name = blob_hash([evil])
    remote.write_blob(name, [evil])
    (good,) = session.remote.generations()
    raw = json.loads(remote.read_manifest(good))
    raw["generation"] = good + 1
    raw["created"] = time.time()
    raw["blobs"] = {name: len(evil)}
    for group in raw["content"]["groups"]:
        group["parts"] = [[name, len(evil)]]
        group["size"] = len(evil)
    raw["signature"] = "hmac-sha256:" + "0" * 64  # a writer of the bucket cannot sign
    remote.write_manifest(good + 1, json.dumps(raw).encode())

    k2 = start(kernels, bucket_url, node=tmp_path / "fresh-node")
    out = k2.run("print(mine)")
    assert out.stdout.strip().splitlines()[-1] == "genuine"
    assert "passed over" in out.text and "not signed" in out.text
    assert not witness.exists()


def test_the_command_line_on_the_bucket(
    kernels: KernelHarness, bucket_url: str, jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    from persistent_kernel import cli

    node = jupyter_env["JUPYTER_DATA_DIR"]
    k = start(kernels, bucket_url)
    k.run("n = 41\n%persist save").check()
    k.run("n = 42\n%persist save").check()
    k.shutdown()
    settle(tier(kernels, bucket_url, node))
    shutil.rmtree(node / "persistent_kernel")  # the command line reads the bucket itself

    (row,) = cli.list_sessions(bucket_url)
    assert row["generations"] == 2 and row["variables"] == ["n"]
    key = row["session"]
    shown = cli.show_session(bucket_url, key)
    assert [v["name"] for v in shown["variables"]] == ["n"] and shown["generation"] == 2
    assert len(cli.session_history(bucket_url, key)["generations"]) == 2
    exported = tmp_path / "n.pkl"
    cli.export_session(bucket_url, key, str(exported), generation=1)
    import dill

    with open(exported, "rb") as f:
        assert dill.load_module_asdict(f)["n"] == 41
    assert cli.prune_sessions(bucket_url, older_than=3600)["removed"] == []
    # The kernel's lease in the bucket lapses LEASE_TTL after it stopped (see buckets.md).
    later = time.time() + LEASE_TTL + 10
    assert cli.prune_sessions(bucket_url, older_than=0, now=later)["removed"]
    assert cli.list_sessions(bucket_url) == []

    # The command itself, reading the URL from the kernel's configuration file.
    k = start(kernels, bucket_url)
    k.run("n = 43\n%persist save").check()
    k.shutdown()
    settle(tier(kernels, bucket_url, node))
    profile = jupyter_env["IPYTHONDIR"] / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipython_kernel_config.py").write_text(
        f"c.PersistentKernel.checkpoint_dir = {bucket_url!r}\n"
    )
    command = Path(sys.executable).parent / "persistent-kernel"
    done = subprocess.run(
        [str(command), "list", "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (listed,) = json.loads(done.stdout)
    assert listed["variables"] == ["n"] and listed["generations"] == 1
    done = subprocess.run(
        [str(command), "rm", listed["session"]], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert cli.list_sessions(bucket_url) == []


def test_no_secret_saves_nothing_and_says_so(
    kernels: KernelHarness, bucket_url: str, jupyter_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from persistent_kernel.store.tiers import SECRET_ENV

    monkeypatch.delenv(SECRET_ENV)
    k = start(kernels, bucket_url)
    k.run("token = 'abc'").check()
    out = k.run("%persist save")
    assert "PERSISTENT_KERNEL_SECRET" in out.text
    session = tier(kernels, bucket_url, jupyter_env["JUPYTER_DATA_DIR"])
    assert session.local.generations() == [] and bucket_generations(session) == []


def test_restore_from_another_notebook_in_the_bucket(
    kernels: KernelHarness, bucket_url: str, jupyter_env: dict[str, Path]
) -> None:
    """``%persist restore --from`` reads the bucket ``checkpoint_dir`` names (it once
    looked for a local directory named like the URL and found no checkpoints)."""
    node = jupyter_env["JUPYTER_DATA_DIR"]
    first = start(kernels, bucket_url, notebook="first.ipynb")
    first.run("x = 41\n%persist save").check()
    first.shutdown()
    settle(tier(kernels, bucket_url, node, "first.ipynb"))
    second = start(kernels, bucket_url)
    out = second.run(f"%persist restore --from '{key_of(kernels, 'first.ipynb')}'\nprint(x)")
    assert out.error is None, out.error
    assert "Restored 1 variable(s)" in out.text and out.stdout.strip().endswith("41")
