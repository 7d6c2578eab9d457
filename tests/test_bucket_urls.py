"""Storage URLs, deadlines, secrets and the names of a bucket's failures.

Against real servers: moto on 127.0.0.1 (:mod:`.s3server`), a port nobody
listens on, a host name that does not resolve, and a TCP listener that
accepts connections and never answers (:func:`silent_endpoint`), which is
what a hung endpoint or a black-holing proxy looks like to a client.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import obstore
import psutil
import pytest

from persistent_kernel.errors import BadLocation, BucketMissing, BucketUnreachable
from persistent_kernel.session import session_key
from persistent_kernel.store.objects import READ_TIMEOUT, Location, failure_cause
from persistent_kernel.store.tiers import SECRET_ENV, BucketStore, Mirror, upload_in_child
from persistent_kernel.store.where import Unusable, open_store

from .harness import Kernel, KernelHarness
from .helpers import INFO, KEY, wait_until
from .s3server import CREDENTIALS, S3Server, free_port

#: Seconds a silent endpoint may cost one operation: the read deadline, and the
#: time to start a process and connect, with room for a loaded machine.
BOUND = READ_TIMEOUT + 15


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """An ``http://`` endpoint that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # held open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        listener.close()
        for conn in held:
            conn.close()


@pytest.fixture
def creds(jupyter_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's credentials and a shared secret in the environment."""
    for var, value in CREDENTIALS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv(SECRET_ENV, secrets.token_hex(32))
    for var in ("AWS_ENDPOINT_URL", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST"):
        monkeypatch.delenv(var, raising=False)


def tiered(url: str, node: Path) -> Mirror:
    return BucketStore(url, cache_root=node).mirror(KEY)


def commit(mirror: Mirror, payload: bytes = b"state") -> int:
    session = mirror.local
    with session.locks.locked(10):
        ref = session.write_blob([payload])
        content = {"groups": [{"hash": ref.hash, "parts": list(ref.parts)}]}
        return session.commit(content, [ref], INFO).generation


def keys_in(server: S3Server, bucket: str) -> list[str]:
    """Every key in *bucket*, read with a client of its own."""
    store = obstore.store.from_url(
        f"s3://{bucket}",
        config={"endpoint": server.url, "region": "us-east-1"},
        client_options={"allow_http": True},
    )
    return sorted(str(m["path"]) for batch in obstore.list(store) for m in batch)


def new_bucket(server: S3Server) -> str:
    name = f"b{secrets.token_hex(6)}"
    server.create_bucket(name)
    return name


# -- item: what a URL means, one way only -----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "s3://bkt/users/jo#hn?endpoint=http://h:1",  # '#' cut the prefix and the options
        "s3://bkt/users/ada#",
        "s3://bkt/users/jo?hn",  # '?' cut the prefix
        "s3://bkt/users/jo?hn?endpoint=http://h:1",
        "s3://bkt/p?endpoint=http://h:1&endpoint=http://i:2",
        "s3://bkt/p?endpoint=http://h:1&endpoint_url=http://i:2",
        "s3://bkt/p?region=",
        "s3://bkt/p?",
        "s3:///users/ada",
        "s3://?endpoint=http://h:1",
        "s3://key:s3cr3t@bkt/p",
        "s3://bkt:9000/p",
        "s3://bkt/a//b",
        "s3://bkt/a/../b",
        "s3://bkt/a/./b",
        "s3://bkt/a%2Fb/c",
        "s3://bkt/a b",
    ],
)
def test_a_url_that_reads_more_than_one_way_is_refused(url: str) -> None:
    with pytest.raises(BadLocation) as caught:
        Location.parse(url)
    text = str(caught.value)
    assert "\n" not in text and "s3cr3t" not in text  # one sentence, no keys
    assert isinstance(open_store(url), Unusable)


def test_percent_encoded_characters_round_trip(
    s3server: S3Server, creds: None, tmp_path: Path
) -> None:
    bucket = new_bucket(s3server)
    url = f"s3://{bucket}/users/jo%23hn%3Fx%25y%20z?endpoint={s3server.url}"
    location = Location.parse(url)
    assert location.prefix == "users/jo#hn?x%y z"
    assert location.display == f"s3://{bucket}/users/jo%23hn%3Fx%25y%20z"
    assert Location.parse(location.display).prefix == location.prefix
    mirror = tiered(url, tmp_path / "node")
    commit(mirror)
    mirror.push()
    keys = keys_in(s3server, bucket)
    assert keys and all(k.startswith("users/jo#hn?x%y z/sessions/") for k in keys)
    # Another node reads it back under the same URL.
    pulled = tiered(url, tmp_path / "other").pull()
    assert pulled.pulled == 1 and pulled.unreachable is None


def test_two_users_with_a_hash_in_their_names_never_share_a_prefix(
    s3server: S3Server, creds: None, tmp_path: Path
) -> None:
    bucket = new_bucket(s3server)
    for user in ("jo%23a", "jo%23b"):
        mirror = tiered(f"s3://{bucket}/users/{user}?endpoint={s3server.url}", tmp_path / user)
        commit(mirror, user.encode())
        mirror.push()
    keys = keys_in(s3server, bucket)
    assert {k.split("/sessions/")[0] for k in keys} == {"users/jo#a", "users/jo#b"}


def test_options_obstore_cannot_make_a_client_of_are_refused(
    creds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    url = "s3://bkt/p?endpoint=http://127.0.0.1:1&secret_access_key=TOPSECRET"
    with pytest.raises(BadLocation, match="Missing AccessKeyId") as caught:
        BucketStore(url)  # a secret key without its access key
    assert "TOPSECRET" not in str(caught.value)
    assert isinstance(open_store(url), Unusable)


def test_an_option_obstore_does_not_know_is_refused(creds: None) -> None:
    url = "s3://bkt/p?endpoint=http://127.0.0.1:1&regoin=eu-west-1"
    with pytest.raises(BadLocation, match="regoin"):
        BucketStore(url)
    store = open_store(url)
    assert isinstance(store, Unusable)
    with pytest.raises(BadLocation, match="regoin"):
        store.local()
    with pytest.raises(BadLocation):
        store.mirror(KEY)


# -- item: virtual-hosted style ---------------------------------------------------------


def test_virtual_hosted_style_with_an_endpoint_is_refused(
    s3server: S3Server, creds: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3server)
    s3server.create_bucket("users")  # what the prefix's first part would be read as
    url = f"s3://{bucket}/users/ada?endpoint={s3server.url}&virtual_hosted_style_request=true"
    with pytest.raises(BadLocation, match="virtual_hosted_style_request"):
        tiered(url, tmp_path / "node")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true")
    with pytest.raises(BadLocation, match="virtual_hosted_style_request"):
        tiered(f"s3://{bucket}/users/ada?endpoint={s3server.url}", tmp_path / "node")
    assert keys_in(s3server, "users") == [] and keys_in(s3server, bucket) == []
    # Without an endpoint (AWS itself) the bucket is the host's first label: right.
    monkeypatch.delenv("AWS_VIRTUAL_HOSTED_STYLE_REQUEST")
    BucketStore(f"s3://{bucket}/users/ada?virtual_hosted_style_request=true&region=eu-west-1")


# -- item: what a failure is called -----------------------------------------------------


def test_a_missing_bucket_is_called_missing(
    s3server: S3Server, creds: None, tmp_path: Path
) -> None:
    url = f"s3://nosuch-{secrets.token_hex(4)}/users/ada?endpoint={s3server.url}"
    mirror = tiered(url, tmp_path / "node")
    pulled = mirror.pull()
    assert pulled.unreachable == f"the bucket {mirror.display} does not exist"
    commit(mirror)
    with pytest.raises(BucketMissing, match="does not exist"):
        mirror.push()  # its PUT comes back as "object not found": still the bucket's fault


def test_credentials_the_server_does_not_know_are_called_so(
    creds: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "1")  # moto checks keys from then on
    server = S3Server(log=tmp_path / "moto.log").start()
    try:
        server.create_bucket("locked")
        mirror = tiered(f"s3://locked/u?endpoint={server.url}", tmp_path / "node")
        pulled = mirror.pull()
        assert pulled.unreachable is not None
        assert "refused the credentials: the access key is unknown" in pulled.unreachable
        commit(mirror)
        with pytest.raises(PermissionError, match="access key is unknown"):
            mirror.push()
    finally:
        server.stop()


def test_network_failures_are_called_by_their_cause(creds: None, tmp_path: Path) -> None:
    cases = {
        f"http://127.0.0.1:{free_port()}": "could not be reached: its endpoint refused",
        "http://no-such-host.invalid:9000": "host name does not resolve",
    }
    with silent_endpoint() as silent:
        cases[silent] = "is not answering"
        for endpoint, cause in cases.items():
            mirror = tiered(f"s3://bkt/u?endpoint={endpoint}", tmp_path / "node")
            began = time.monotonic()
            pulled = mirror.pull()
            assert time.monotonic() - began < BOUND
            assert pulled.unreachable is not None
            assert pulled.unreachable.startswith(f"the bucket {mirror.display} ")
            assert cause in pulled.unreachable
            assert "Debug" not in pulled.unreachable and "\n" not in pulled.unreachable


def test_no_credentials_and_no_metadata_service_is_called_so(
    creds: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with silent_endpoint() as endpoint, silent_endpoint() as metadata:
        url = f"s3://bkt/u?endpoint={endpoint}&metadata_endpoint={metadata}"
        began = time.monotonic()
        pulled = tiered(url, tmp_path / "node").pull()
        assert time.monotonic() - began < BOUND
    assert pulled.unreachable is not None and "no credentials were given" in pulled.unreachable


def test_the_cause_is_read_from_the_servers_code_first() -> None:
    body = "403 Forbidden: <Error><Code>ExpiredToken</Code><Message>x</Message></Error>"
    assert failure_cause("PermissionDeniedError", body) == (
        "credentials",
        "refused the credentials: they have expired; renew them",
    )
    assert failure_cause("GenericError", "status: 503, body: busy")[0] == "server"
    assert failure_cause("GenericError", "<Code>Weird</Code><Message>odd</Message>") == (
        "other",
        "could not be used: Weird: odd",
    )


# -- item: deadlines --------------------------------------------------------------------


def test_a_silent_endpoint_costs_one_deadline_per_operation(creds: None, tmp_path: Path) -> None:
    with silent_endpoint() as silent:
        mirror = tiered(f"s3://bkt/u?endpoint={silent}", tmp_path / "node")
        commit(mirror)
        began = time.monotonic()
        with pytest.raises(BucketUnreachable, match="is not answering"):
            mirror.push()
        assert time.monotonic() - began < BOUND
        began = time.monotonic()
        outcome = upload_in_child(mirror, keep=0)
        assert time.monotonic() - began < BOUND
        assert outcome["error"] == (
            f"the bucket {mirror.display} is not answering: its endpoint sent nothing back "
            f"within {READ_TIMEOUT} s"
        )
        assert mirror.pending()  # still to be uploaded


# -- item: keys never on a command line -------------------------------------------------


def test_keys_in_the_url_never_reach_a_command_line(creds: None, tmp_path: Path) -> None:
    secret = f"SECRET{secrets.token_hex(8)}"
    with silent_endpoint() as silent:
        url = f"s3://bkt/u?endpoint={silent}&access_key_id=AKIA{secret}&secret_access_key={secret}"
        mirror = tiered(url, tmp_path / "node")
        commit(mirror)
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(upload_in_child(mirror, 0)))
        thread.start()
        root = str(mirror.local.root)
        seen: list[str] = []

        def upload_running() -> bool:
            for proc in psutil.process_iter(["cmdline"]):
                line = " ".join(proc.info["cmdline"] or [])
                seen.append(line)
                if root in line:
                    return True
            return False

        wait_until(upload_running, 30, "the upload process")
        child = [line for line in seen if root in line]
        assert child and all(secret not in line for line in seen)
        thread.join(BOUND + 30)
        assert "is not answering" in outcome["error"] and secret not in outcome["error"]


# -- real kernels -----------------------------------------------------------------------


def start(kernels: KernelHarness, url: str, interval: float = 0, restore: bool = True) -> Kernel:
    args = [
        f"--PersistentKernel.checkpoint_dir={url}",
        f"--PersistentKernel.checkpoint_interval={interval}",
        f"--PersistentKernel.restore={restore}",
    ]
    return kernels.start("notebook.ipynb", args=args)


@pytest.mark.parametrize("restore", [True, False])
def test_a_kernel_given_an_ambiguous_url_says_so_once_and_writes_nowhere(
    kernels: KernelHarness,
    s3server: S3Server,
    creds: None,
    jupyter_env: dict[str, Path],
    restore: bool,
) -> None:
    bucket = new_bucket(s3server)
    k = start(kernels, f"s3://{bucket}/users/jo#hn?endpoint={s3server.url}", restore=restore)
    first = k.run("x = 1")
    assert first.error is None
    assert "%23" in first.text and first.text.count("persistent-kernel:") == 1
    saved = k.run("y = 2\n%persist save")
    assert "checkpoints are off in this kernel" in saved.stderr  # a UsageError's line
    assert "still restoring" not in saved.stderr
    assert "%23" not in k.run("z = 3").text  # said once
    assert k.value("x + y + z") == "6"  # and the kernel works
    assert keys_in(s3server, bucket) == []
    tiers = jupyter_env["JUPYTER_DATA_DIR"] / "persistent_kernel" / "tiers"
    assert not tiers.exists() or not any(tiers.iterdir())


def test_a_kernel_with_a_silent_endpoint_keeps_its_rhythm(
    kernels: KernelHarness, creds: None, jupyter_env: dict[str, Path]
) -> None:
    with silent_endpoint() as silent:
        url = f"s3://bkt/users/ada?endpoint={silent}"
        began = time.monotonic()
        k = start(kernels, url)
        first = k.run("a = 1", timeout=BOUND + 60)
        assert time.monotonic() - began < BOUND + 30  # a start, then one deadline
        assert "is not answering" in first.text and first.error is None
        began = time.monotonic()
        saved = k.run("b = 2\n%persist save", timeout=BOUND + 60)
        assert time.monotonic() - began < BOUND
        assert saved.error is None and "not in the bucket yet" in saved.text
        assert "is not answering" in saved.text
        # Local checkpoints keep coming, a cell apart, while the bucket stays silent: the
        # upload's back-off (5, 10, 20, ... s) holds back only the retries, each carried
        # by one checkpoint, never the checkpoints in between.
        node = jupyter_env["JUPYTER_DATA_DIR"]
        cache = node / "persistent_kernel" / "tiers" / Location.parse(url).cache_name()
        key = session_key(kernels.env("notebook.ipynb"), str(kernels.cwd))[0]
        local = BucketStore(url, cache_root=cache).mirror(key).local

        def newer_than(newest: int) -> Callable[[], bool]:
            return lambda: local.generations()[-1] > newest  # old ones are pruned

        for n in range(4):
            newest = local.generations()[-1]
            k.run(f"c = {n}").check()
            # at most one retry's deadline, and a writer's start
            wait_until(newer_than(newest), READ_TIMEOUT + 8, "a local checkpoint")
        told = k.run("pass").text
        assert "is not answering" not in told  # told once
        assert os.path.isdir(local.path)
