"""The object-storage backend: a session's bytes in a bucket (S3 and what speaks its API).

A storage URL such as ``s3://bucket/prefix`` (or ``gs://``, ``az://``: what
obstore reads; :func:`.where.open_store` tells one from a path) names the
bucket; query parameters are passed to obstore as store configuration,
``endpoint`` (or ``endpoint_url``) being the one an S3-compatible server
(MinIO, Ceph, R2, a test server) needs::

    s3://checkpoints/users/ada?endpoint=http://minio.svc:9000

Credentials come the usual way for obstore: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``,
``AWS_REGION``, web identity (EKS service accounts) and instance or task
roles. A session lives under ``<prefix>/sessions/<slug>-<hash>/`` with the
local layout's names: ``generations/00000042.json``, ``objects/<hash>``,
``settings.json``.

What makes a commit safe here:

* blobs are content-addressed and written by one PUT (multipart for large
  ones, which S3 makes visible only when complete), so a half-written blob
  is never seen and writing one twice is harmless;
* a manifest is created with ``If-None-Match: *`` (obstore's
  ``mode="create"``): if another kernel, on this node or another, already
  made that generation, the write fails with :class:`GenerationTaken` and
  nothing is overwritten, so two kernels never interleave a generation;
* nothing here trusts the bucket: :class:`~.sessions.SessionStore` checks
  the manifest's signature and every blob's content address before
  anything is unpickled, so a bucket that others can write cannot inject code.

Limits: there is no ownership to check on an object, so trust rests on the
signature alone (the per-user secret must be kept from whoever can write
the bucket). :meth:`ObjectBackend.blobs` lists only blobs older than
:data:`SETTLE` seconds, so that a prune never deletes a blob another
kernel has just uploaded for a manifest it has not written yet.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..errors import (
    BucketUnreachable,
    CorruptCheckpoint,
    GenerationTaken,
    MissingExtra,
    NoCheckpoint,
    PersistentKernelError,
)
from .backend import Backend, Digest
from .fs import TMP

#: Seconds a blob must have existed before a prune may delete it.
SETTLE = 3600.0
#: Parts of a multipart upload, and how many go at once.
PART_SIZE = 16 << 20
CONCURRENCY = 8
_ALIASES = {"endpoint_url": "endpoint"}
_MANIFEST = re.compile(r"^(\d+)\.json$")


def _lib() -> Any:
    """obstore, or :class:`MissingExtra` saying what to install."""
    try:
        import obstore
    except ImportError as exc:
        raise MissingExtra(
            "checkpoints in a bucket need obstore: pip install 'persistent-kernel[s3]'"
        ) from exc
    return obstore


@dataclass(frozen=True)
class Location:
    """A parsed storage URL: the bucket's URL, the key prefix, obstore options."""

    url: str  # scheme://bucket, no prefix, no query
    prefix: str  # "" or "a/b" (no slashes at the ends)
    options: dict[str, str]

    @classmethod
    def parse(cls, location: str) -> Location:
        parts = urlsplit(location)
        if not parts.netloc:
            raise ValueError(f"{location!r} names no bucket (expected s3://bucket/prefix)")
        options = {_ALIASES.get(k, k): v for k, v in parse_qsl(parts.query)}
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path.strip("/"), options)

    @property
    def display(self) -> str:
        """The URL as users write it, without options (which may hold keys)."""
        return self.url + (f"/{self.prefix}" if self.prefix else "")

    def key(self, *names: str) -> str:
        return "/".join(p for p in (self.prefix, *names) if p)

    def cache_name(self) -> str:
        """A directory name for this location's local tier."""
        digest = hashlib.sha256(self.display.encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.display.split("://", 1)[1])[:48]
        return f"{slug}-{digest}"


def connect(location: Location) -> Any:
    """An obstore store for *location*'s bucket (no request is made yet).

    obstore retries a failed request itself (5xx, dropped connections) for at
    most ``retry_timeout``: short here, since the kernel retries a failed
    upload later with its own back-off and a start must not hang on a
    bucket that is down.
    """
    from_url = _lib().store.from_url
    options: dict[str, Any] = dict(location.options)
    endpoint = options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL", "")
    client: Any = {"connect_timeout": "5s", "timeout": "600s"}
    if endpoint.startswith("http://"):
        client["allow_http"] = True
    retry: Any = {
        "max_retries": 3,
        "retry_timeout": datetime.timedelta(seconds=15),
        "backoff": {
            "init_backoff": datetime.timedelta(milliseconds=100),
            "max_backoff": datetime.timedelta(seconds=3),
            "base": 2,
        },
    }
    config: Any = options
    return from_url(location.url, config=config, client_options=client, retry_config=retry)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """obstore's errors as the built-ins the store already handles."""
    from obstore.exceptions import (
        AlreadyExistsError,
        NotFoundError,
        PermissionDeniedError,
        PreconditionError,
        UnauthenticatedError,
    )

    try:
        yield
    except (FileNotFoundError, NotFoundError):
        raise
    except (AlreadyExistsError, PreconditionError) as exc:
        raise GenerationTaken(f"{what} already exists") from exc
    except (PermissionDeniedError, UnauthenticatedError) as exc:
        raise PermissionError(f"{what}: access denied ({_first_line(exc)})") from exc
    except PersistentKernelError:
        raise
    except Exception as exc:  # obstore's GenericError and the like: a network fault
        raise BucketUnreachable(f"{what}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """The part of an obstore error a user can act on (its messages nest every layer)."""
    text = " ".join(str(exc).split())
    if " - " in text:  # "... after 3 retries, ... - HTTP error: error sending request"
        text = text.rsplit(" - ", 1)[1]
    return text[:200] or type(exc).__name__


class ObjectBackend(Backend):
    """One session's objects under ``<prefix>/sessions/<dirname>/`` in a bucket."""

    def __init__(self, connect: Callable[[], Any], location: Location, dirname: str) -> None:
        self._connect = connect
        self.location = location
        self.base = location.key("sessions", dirname)

    def __repr__(self) -> str:
        return f"ObjectBackend({self.location.display}/sessions/{self.base.rsplit('/', 1)[-1]})"

    @property
    def store(self) -> Any:
        """The obstore store (made when first needed; see :meth:`.tiers.BucketStore.bucket`)."""
        return self._connect()

    def _key(self, *names: str) -> str:
        return "/".join((self.base, *names))

    def _list(self, folder: str) -> list[dict[str, Any]]:
        obstore = _lib()

        with _translated(f"listing {self.location.display}"):
            return [
                meta
                for batch in obstore.list(self.store, self._key(folder) + "/")
                for meta in batch
            ]

    def _get(self, key: str) -> bytes:
        obstore = _lib()

        try:
            with _translated(f"reading {key}"):
                return bytes(obstore.get(self.store, key).bytes())
        except Exception as exc:
            from obstore.exceptions import NotFoundError

            if isinstance(exc, (NotFoundError, FileNotFoundError)):
                raise FileNotFoundError(key) from None
            raise

    def _put(self, key: str, data: Any, create: bool = False) -> None:
        obstore = _lib()

        with _translated(key):
            obstore.put(
                self.store,
                key,
                data,
                mode="create" if create else "overwrite",
                chunk_size=PART_SIZE,
                max_concurrency=CONCURRENCY,
            )

    def _delete(self, key: str) -> None:
        obstore = _lib()

        with _translated(f"deleting {key}"), contextlib.suppress(FileNotFoundError):
            obstore.delete(self.store, key)

    def ensure(self) -> None:
        """Nothing to create: a prefix exists once an object is under it."""

    # -- manifests ------------------------------------------------------------------

    def generations(self) -> list[int]:
        found = []
        for meta in self._list("generations"):
            match = _MANIFEST.match(str(meta["path"]).rsplit("/", 1)[-1])
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def read_manifest(self, generation: int) -> bytes:
        try:
            return self._get(self._key("generations", f"{generation:08d}.json"))
        except FileNotFoundError:
            raise NoCheckpoint(f"generation {generation} does not exist") from None

    def write_manifest(self, generation: int, data: bytes) -> None:
        """Create the manifest only if absent: :class:`GenerationTaken` if it exists.

        Every blob PUT before it has completed (S3 acknowledges a PUT only
        once it is durable), so the manifest never names a missing blob.
        """
        self._put(self._key("generations", f"{generation:08d}.json"), data, create=True)

    def delete_manifest(self, generation: int) -> None:
        self._delete(self._key("generations", f"{generation:08d}.json"))

    # -- blobs ----------------------------------------------------------------------

    def blob_size(self, name: str) -> int | None:
        obstore = _lib()

        try:
            with _translated(f"blob {name}"):
                return int(obstore.head(self.store, self._key("objects", name))["size"])
        except Exception as exc:
            from obstore.exceptions import NotFoundError

            if isinstance(exc, (NotFoundError, FileNotFoundError)):
                return None
            raise

    def read_blob_bytes(self, name: str) -> bytes:
        return self._get(self._key("objects", name))

    def read_blob(
        self,
        name: str,
        sizes: Sequence[int],
        digest: Digest,
        on_read: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """Stream the blob into one buffer per part, hashing as it arrives."""
        obstore = _lib()

        key = self._key("objects", name)
        try:
            with _translated(f"blob {name}"):
                result = obstore.get(self.store, key)
                size = int(result.meta["size"])
                if size != sum(sizes):
                    raise CorruptCheckpoint(
                        f"blob {name} is {size} bytes, the manifest says {sum(sizes)}"
                    )
                parts = [bytearray(n) for n in sizes]
                index, filled = 0, 0
                for chunk in result.stream(min_chunk_size=PART_SIZE):
                    view = memoryview(chunk)
                    digest.update(view)
                    if on_read is not None:
                        on_read(len(view))
                    while len(view):
                        while index < len(parts) and filled == len(parts[index]):
                            index, filled = index + 1, 0
                        if index == len(parts):
                            raise CorruptCheckpoint(f"blob {name} is longer than it said")
                        take = min(len(view), len(parts[index]) - filled)
                        parts[index][filled : filled + take] = view[:take]
                        filled += take
                        view = view[take:]
        except Exception as exc:
            from obstore.exceptions import NotFoundError

            if isinstance(exc, (NotFoundError, FileNotFoundError)):
                raise CorruptCheckpoint(f"blob {name} is missing") from None
            raise
        if sum(len(p) for p in parts[:index]) + filled != sum(sizes) and any(sizes):
            raise CorruptCheckpoint(f"blob {name} ended early")
        return parts

    def write_blob(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        data = b"".join(parts) if len(parts) != 1 else parts[0]
        self._put(self._key("objects", name), data)

    def upload_file(self, name: str, path: Path) -> None:
        """Store the local file *path* as blob *name* (multipart, parts in parallel)."""
        with open(path, "rb") as f:
            self._put(self._key("objects", name), f)

    def download_file(self, name: str, path: Path, digest: Digest) -> int:
        """Write blob *name* to the new file *path*, updating *digest*; returns its size."""
        obstore = _lib()

        size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

        def take(chunk: Any) -> None:
            digest.update(chunk)
            out.write(chunk)

        # One chunk is hashed and written (both release the GIL) while the next
        # one downloads: done in turn, they cost a fifth of the transfer rate.
        with open(fd, "wb") as out, ThreadPoolExecutor(1) as pool:
            pending: Future[None] | None = None
            try:
                with _translated(f"blob {name}"):
                    result = obstore.get(self.store, self._key("objects", name))
                    for chunk in result.stream(min_chunk_size=PART_SIZE):
                        if pending is not None:
                            pending.result()
                        pending = pool.submit(take, chunk)
                        size += len(chunk)
                    if pending is not None:
                        pending.result()
            except Exception as exc:
                from obstore.exceptions import NotFoundError

                if isinstance(exc, (NotFoundError, FileNotFoundError)):
                    raise CorruptCheckpoint(f"blob {name} is missing") from None
                raise
            out.flush()
            os.fsync(out.fileno())
        return size

    def blobs(self) -> list[str]:
        """Blobs stored at least :data:`SETTLE` seconds ago (see the module's limits)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        settled = []
        for meta in self._list("objects"):
            modified = meta.get("last_modified")
            if modified is None or (now - modified).total_seconds() >= SETTLE:
                settled.append(str(meta["path"]).rsplit("/", 1)[-1])
        return settled

    def delete_blob(self, name: str) -> None:
        self._delete(self._key("objects", name))

    def quarantine_blob(self, name: str) -> None:
        """Nothing to do: a blob that fails its check is never reused without one.

        Writers only reuse a stored blob whose size matches, and a restore
        checks every byte; renaming is not atomic on object storage, and a
        wrong blob may be someone else's plant, which the next upload of the
        right bytes replaces.
        """

    # -- small files ------------------------------------------------------------------

    def read_file(self, name: str) -> bytes:
        return self._get(self._key(name))

    def write_file(self, name: str, data: bytes, sync: bool = True) -> None:
        self._put(self._key(name), data)

    def delete_file(self, name: str) -> None:
        self._delete(self._key(name))

    # -- housekeeping -----------------------------------------------------------------

    def sweep_temporaries(self) -> None:
        """Nothing to sweep: an interrupted multipart upload is never visible.

        (A bucket lifecycle rule that aborts incomplete multipart uploads
        frees their space; the README says so.)
        """

    def _delete_under(self, prefix: str, keep: Callable[[str], bool]) -> None:
        obstore = _lib()

        with _translated(f"deleting {prefix}"):
            for batch in obstore.list(self.store, prefix):
                paths = [str(m["path"]) for m in batch if not keep(str(m["path"]))]
                if paths:
                    obstore.delete(self.store, paths)

    def exists(self) -> bool:
        obstore = _lib()

        with _translated(f"listing {self.base}"):
            first: list[Any] = next(
                iter(obstore.list(self.store, self.base + "/", chunk_size=1)), []
            )
        return bool(first)

    def remove(self) -> None:
        self._delete_under(self.base + "/", lambda path: False)

    def clear(self) -> None:
        settings = self._key("settings.json")
        self._delete_under(self.base + "/", lambda path: path == settings)

    def disk_usage(self) -> int:
        return sum(int(m["size"]) for f in ("objects", "generations") for m in self._list(f))

    def session_dirnames(self) -> list[str]:
        """The session directories under ``<prefix>/sessions/`` (any backend of this bucket)."""
        obstore = _lib()

        with _translated(f"listing {self.location.display}"):
            found = obstore.list_with_delimiter(self.store, self.location.key("sessions") + "/")
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])


def temp_name(name: str) -> str:
    """A temp file name for a download of blob *name* (swept like any other temp)."""
    return f"{TMP}{os.getpid()}-{threading.get_ident()}-{name}"
