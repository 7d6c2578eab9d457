#!/usr/bin/env python
"""Checkpoints in a bucket against obstore's own best transfers, on one moto server.

    .venv/bin/python benchmarks/s3_bench.py             # 1 GiB
    .venv/bin/python benchmarks/s3_bench.py --mib 64    # a smoke run

Side by side, in one run, against one moto server on 127.0.0.1 (started here):

1. **raw upload**: obstore's ``put`` of a file of random bytes, multipart,
   16 MiB parts, 8 at a time (its best settings here; see s3_clients.py);
2. **raw download**: obstore's ``get``, streamed into a file;
3. **checkpoint upload**: a real kernel holding that many random bytes as a
   numpy array runs ``%persist save``; the figure is the upload step the
   forked writer runs after its local commit (``kernel.checkpointer.last_upload``:
   starting the upload process, checking which blobs the bucket has,
   uploading, creating the manifest), and the whole save is given too;
4. **restore download**: a new node (empty local tier) pulls the newest
   generation (what a kernel runs at start: list, verify the signed
   manifest, download every blob checking its BLAKE3 address, commit to
   the local tier), then a kernel restores from there; both timed;
5. **after ``x = 1``**: the bytes the bucket grew by after one more save;
6. **final checkpoint at shutdown**: a new array of the same size is
   assigned, the kernel is asked to shut down, and the seconds until the
   bucket holds the new generation are measured (Kubernetes' default grace
   period is 30 s).

Figures in MiB/s (MiB = 2**20 bytes). Results as Markdown on stdout and
JSON in benchmarks/s3_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import CREDENTIALS, S3Server  # noqa: E402

PART = 16 << 20
THREADS = 8


def raw_transfers(server: S3Server, bucket: str, size: int, tmp: Path) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=server.url,
        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region=CREDENTIALS["AWS_DEFAULT_REGION"],
        # moto joins a large upload's parts slowly: give it the time the backend gives it
        client_options={"allow_http": True, "timeout": "600s"},
    )
    src = tmp / "raw"
    with open(src, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    t0 = time.perf_counter()
    with open(src, "rb") as f:
        obstore.put(store, "raw/object", f, chunk_size=PART, max_concurrency=THREADS)
    t1 = time.perf_counter()
    with open(tmp / "raw-back", "wb") as out:
        for chunk in obstore.get(store, "raw/object").stream(min_chunk_size=PART):
            out.write(chunk)
    t2 = time.perf_counter()
    obstore.delete(store, "raw/object")
    src.unlink()
    (tmp / "raw-back").unlink()
    return {"raw_upload_s": t1 - t0, "raw_download_s": t2 - t1}


def bucket_bytes(url: str) -> int:
    from persistent_kernel.store.tiers import BucketStore

    store = BucketStore(url)
    return sum(s.backend.disk_usage() for s in store.sessions())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    size = args.mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="pk-s3bench-"))
    for name in ("data", "runtime", "config", "ipython", "home", "work"):
        (tmp / name).mkdir()
    os.environ.update(
        {
            "JUPYTER_DATA_DIR": str(tmp / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            "IPYTHONDIR": str(tmp / "ipython"),
            "HOME": str(tmp / "home"),
            **CREDENTIALS,
            "PERSISTENT_KERNEL_SECRET": secrets.token_hex(32),
        }
    )
    os.environ.pop("JPY_SESSION_NAME", None)
    from persistent_kernel.session import session_key
    from persistent_kernel.store.objects import Location
    from persistent_kernel.store.tiers import BucketStore
    from tests.harness import KernelHarness

    server = S3Server(log=tmp / "moto.log").start()
    results: dict[str, Any] = {"mib": args.mib}
    harness = KernelHarness(cwd=tmp / "work", root=tmp / "data" / "persistent_kernel")
    try:
        server.create_bucket("bench")
        print("raw transfers...", file=sys.stderr)
        results.update(raw_transfers(server, "bench", size, tmp))
        url = f"s3://bench/users/ada?endpoint={server.url}"
        argv = [f"--PersistentKernel.checkpoint_dir={url}", "--PersistentKernel.autosave=False"]
        print("checkpoint upload...", file=sys.stderr)
        k = harness.start("notebook.ipynb", args=argv)
        k.run(f"import numpy as np, os\nbig = np.frombuffer(os.urandom({size}), np.uint8)").check()
        t0 = time.perf_counter()
        k.run("%persist save").check()
        results["save_total_s"] = time.perf_counter() - t0
        last_upload = "get_ipython().kernel.checkpointer.last_upload"
        shown = k.run(f"import json\nprint(json.dumps({last_upload}))")
        upload = json.loads(shown.check().stdout.strip().splitlines()[-1])
        assert "error" not in upload, upload
        results["checkpoint_upload_s"] = upload["elapsed"]
        results["checkpoint_uploaded_bytes"] = upload["uploaded"]
        before = bucket_bytes(url)
        k.run("x = 1\n%persist save").check()
        results["after_x1_bytes"] = bucket_bytes(url) - before
        k.shutdown()

        print("restore download...", file=sys.stderr)
        key = session_key(harness.env("notebook.ipynb"), str(tmp / "work"))[0]
        cache = tmp / "new-node" / Location.parse(url).cache_name()
        session = BucketStore(url, cache_root=cache).mirror(key)
        t0 = time.perf_counter()
        pulled = session.pull()
        results["restore_download_s"] = time.perf_counter() - t0
        assert pulled.pulled is not None and pulled.downloaded >= size, pulled
        shutil.rmtree(tmp / "data" / "persistent_kernel")  # the kernel's node is new too
        t0 = time.perf_counter()
        k2 = harness.start("notebook.ipynb", args=argv)
        assert k2.value("big.nbytes") == str(size)
        results["new_node_first_cell_s"] = time.perf_counter() - t0

        print("final checkpoint at shutdown...", file=sys.stderr)
        k2.run(
            f"big2 = np.frombuffer(os.urandom({size}), np.uint8)\n"
            "%config PersistentKernel.checkpoint_interval = 3600\n"
            "%config PersistentKernel.autosave = True"
        ).check()
        remote = session.remote
        generations = len(remote.generations())
        t0 = time.perf_counter()
        k2.shutdown()
        while len(remote.generations()) == generations:
            if time.perf_counter() - t0 > 600:
                raise SystemExit("the final checkpoint never reached the bucket")
            time.sleep(0.1)
        results["shutdown_to_bucket_s"] = time.perf_counter() - t0
    finally:
        harness.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    mib = args.mib
    up_raw, down_raw = mib / results["raw_upload_s"], mib / results["raw_download_s"]
    up, down = mib / results["checkpoint_upload_s"], mib / results["restore_download_s"]
    results.update(
        raw_upload_mib_s=up_raw,
        raw_download_mib_s=down_raw,
        checkpoint_upload_mib_s=up,
        restore_download_mib_s=down,
        upload_ratio=up / up_raw,
        download_ratio=down / down_raw,
    )
    (ROOT / "benchmarks" / "s3_results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"| {mib} MiB on moto, 127.0.0.1 | MiB/s | vs obstore's best |")
    print("|---|---|---|")
    print(f"| obstore put (multipart, 16 MiB x 8) | {up_raw:.0f} | 1.00 |")
    print(f"| checkpoint upload (writer's upload step) | {up:.0f} | {up / up_raw:.2f} |")
    print(f"| obstore get (streamed to a file) | {down_raw:.0f} | 1.00 |")
    print(f"| restore download (new node's pull) | {down:.0f} | {down / down_raw:.2f} |")
    print()
    print(f"- whole `%persist save` (local commit + upload): {results['save_total_s']:.1f} s")
    print(f"- new node, kernel start to first cell: {results['new_node_first_cell_s']:.1f} s")
    print(f"- bucket growth after `x = 1`: {results['after_x1_bytes']} bytes")
    shutdown = results["shutdown_to_bucket_s"]
    print(f"- shutdown request to final generation in the bucket: {shutdown:.1f} s")


if __name__ == "__main__":
    main()
