"""Which S3 client moves large objects fastest: boto3, obstore (and s3fs where installed).

Each client uploads and downloads one object of ``--mib`` MiB, with its own
best settings for large objects (multipart, parallel parts), to a moto
server on 127.0.0.1 started here. Run: ``python benchmarks/s3_clients.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.s3server import CREDENTIALS, S3Server

PART = 16 << 20
THREADS = 8


def boto3_up(server: S3Server, path: str) -> None:
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_chunksize=PART, max_concurrency=THREADS)
    server.client().upload_file(path, "bench", "boto3", Config=cfg)


def boto3_down(server: S3Server, path: str) -> None:
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_chunksize=PART, max_concurrency=THREADS)
    server.client().download_file("bench", "boto3", path, Config=cfg)


def _obstore(server: S3Server) -> Any:
    from obstore.store import S3Store

    return S3Store(
        "bench",
        endpoint=server.url,
        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region=CREDENTIALS["AWS_DEFAULT_REGION"],
        client_options={"allow_http": True},
    )


def obstore_up(server: S3Server, path: str) -> None:
    import obstore

    with open(path, "rb") as f:
        obstore.put(_obstore(server), "obstore", f, chunk_size=PART, max_concurrency=THREADS)


def obstore_down(server: S3Server, path: str) -> None:
    import obstore

    result = obstore.get(_obstore(server), "obstore")
    with open(path, "wb") as f:
        for chunk in result.stream(min_chunk_size=PART):
            f.write(chunk)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    server = S3Server().start()
    try:
        server.create_bucket("bench")
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "src")
            with open(src, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(1 << 20))
            for name, up, down in [
                ("boto3", boto3_up, boto3_down),
                ("obstore", obstore_up, obstore_down),
            ]:
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    up(server, src)
                    t1 = time.perf_counter()
                    down(server, os.path.join(tmp, "dst"))
                    t2 = time.perf_counter()
                    print(
                        f"{name:8s} upload {args.mib / (t1 - t0):7.1f} MiB/s  "
                        f"download {args.mib / (t2 - t1):7.1f} MiB/s",
                        flush=True,
                    )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
