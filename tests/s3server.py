"""A real S3 server for tests and benchmarks: moto's server mode on 127.0.0.1.

:class:`S3Server` starts ``moto_server`` as a child process on a free port
and stops it (SIGTERM, then SIGKILL) when asked. moto keeps its objects in
memory, so stopping it loses the bucket: tests that stop the endpoint start
it again on the same port and recreate the bucket, which is what a node sees
when an endpoint comes back with data it has not got yet.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Credentials moto accepts; any value works, but boto3 insists on some.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """``moto_server`` on 127.0.0.1:*port*; :meth:`start` waits until it answers."""

    def __init__(self, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> S3Server:
        out = open(self.log, "ab") if self.log else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out or subprocess.DEVNULL,
                stderr=out or subprocess.DEVNULL,
                env={**os.environ, **CREDENTIALS},
            )
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:  # an HTTP answer from our own child, not whatever else took the port
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2) as response:
                    response.read()
                return self
            except OSError:
                time.sleep(0.1)
            except http.client.HTTPException:
                break
        self.stop()
        raise RuntimeError(f"moto_server did not answer on port {self.port} in {timeout} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def create_bucket(self, name: str) -> None:
        """Create bucket *name* (moto takes an unsigned request on its own endpoint)."""
        request = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


# -- fixtures (imported by the test modules that use them) -------------------------


@pytest.fixture(scope="module")
def s3server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    for _ in range(2):  # a free port can be taken between choosing it and binding it
        try:
            server = S3Server(log=log).start()
            break
        except RuntimeError:
            continue
    else:
        server = S3Server(log=log).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket_url(
    s3server: S3Server, jupyter_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> str:
    """A fresh bucket, credentials and a shared secret in the environment; its URL."""
    name = f"b{secrets.token_hex(6)}"
    s3server.create_bucket(name)
    from persistent_kernel.store.tiers import SECRET_ENV

    for var, value in CREDENTIALS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv(SECRET_ENV, secrets.token_hex(32))
    return f"s3://{name}/users/ada?endpoint={s3server.url}"
