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
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ..errors import (
    BadLocation,
    BucketMissing,
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
#: Deadlines of every request to a bucket, in seconds. A connection must be made
#: within CONNECT_TIMEOUT; once made, a response that stalls (no byte for
#: READ_TIMEOUT: an endpoint that accepts connections and never answers) fails;
#: a whole request (a 16 MiB part, a blob's download) ends within REQUEST_TIMEOUT.
#: A request that fails is retried only while RETRY_TIMEOUT has not passed since it
#: began, so a silent endpoint costs one READ_TIMEOUT per operation, not minutes.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 10
REQUEST_TIMEOUT = 3600
RETRY_TIMEOUT = 10
_ALIASES = {"endpoint_url": "endpoint"}
_MANIFEST = re.compile(r"^(\d+)\.json$")
#: Schemes whose bucket is a plain name (Azure's may be ``container@account``).
_PLAIN_BUCKET = {"s3", "s3a", "gs", "r2"}
_S3_LIKE = {"s3", "s3a", "r2"}
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: Characters a prefix shows as they are; any other is shown percent-encoded.
_SHOWN = "/:@!$&'()*+,;=~"
_TRUE = {"true", "1", "yes", "on"}


def _lib() -> Any:
    """obstore, or :class:`MissingExtra` saying what to install."""
    try:
        import obstore
    except ImportError as exc:
        raise MissingExtra(
            "checkpoints in a bucket need obstore: pip install 'persistent-kernel[s3]'"
        ) from exc
    return obstore


def shown_url(location: str) -> str:
    """*location* as an error may show it: without options, fragment or a password
    (options may hold keys; ``user:password@`` may too)."""
    text = re.split(r"[?#]", location, maxsplit=1)[0]
    return re.sub(r"^([^:/]+://[^/@:]*):[^/@]*@", r"\1:***@", text)


@dataclass(frozen=True)
class Location:
    """A parsed storage URL: the bucket's URL, the key prefix, obstore options."""

    url: str  # scheme://bucket, no prefix, no query
    prefix: str  # "" or "a/b" (no slashes at the ends), percent-decoded
    options: dict[str, str]

    @classmethod
    def parse(cls, location: str) -> Location:
        """Read *location* one way only, or raise :class:`BadLocation` saying why.

        Refused, since each could put checkpoints somewhere the user did not
        mean: a ``#`` (a fragment would cut the prefix, and the options after
        it), a ``?`` whose text is not ``name=value`` options, an option given
        twice or empty, an empty bucket, a bucket name with a user, port or
        ``%`` (S3, GCS, R2), an empty, ``.`` or ``..`` part of the prefix, and
        an encoded ``/`` (``%2F``) inside a part. Characters the prefix must
        hold (``#``, ``?``, ``%``, a space) are written percent-encoded
        (``%23``, ``%3F``, ``%25``, ``%20``) and decoded once here; the key
        prefix in the bucket is the decoded text, :attr:`display` encodes it
        again. Option names are checked by obstore when the client is made.
        """
        shown = shown_url(location)
        if "#" in location:
            raise BadLocation(
                f"{shown}: a '#' in a storage URL starts a fragment, which would cut the "
                "prefix; write a '#' in the prefix as %23"
            )
        if any(c.isspace() or ord(c) < 32 for c in location):
            raise BadLocation(f"{shown!r}: a storage URL holds no spaces; write one as %20")
        try:
            parts = urlsplit(location)
        except ValueError as exc:
            raise BadLocation(f"{shown}: not a storage URL ({exc})") from None
        scheme, bucket = parts.scheme.lower(), parts.netloc
        if not bucket:
            raise BadLocation(f"{shown} names no bucket (expected s3://bucket/prefix)")
        if scheme in _PLAIN_BUCKET and not _BUCKET_NAME.match(bucket):
            raise BadLocation(
                f"{shown}: the bucket's name is not one (a user, a password, a port or a '%' "
                "has no place there; an endpoint goes in ?endpoint=)"
            )
        path = parts.path.strip("/")
        raw = path.split("/") if path else []
        if any(part in ("", ".", "..") for part in raw):
            raise BadLocation(f"{shown}: the prefix has an empty, '.' or '..' part")
        decoded = [unquote(part, errors="strict") for part in raw]
        if any("/" in part for part in decoded):
            raise BadLocation(f"{shown}: an encoded '/' (%2F) inside a part of the prefix")
        return cls(f"{parts.scheme}://{bucket}", "/".join(decoded), cls._options(location, shown))

    @staticmethod
    def _options(location: str, shown: str) -> dict[str, str]:
        if "?" not in location:
            return {}
        query = location.split("?", 1)[1]
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            pairs = []
        if not pairs or any(not _OPTION_NAME.match(name) or not value for name, value in pairs):
            raise BadLocation(
                f"{shown}: what follows '?' must be name=value options joined by '&' "
                "(a '?' in the prefix is written %3F)"
            )
        options: dict[str, str] = {}
        for name, value in pairs:
            name = _ALIASES.get(name.lower(), name.lower())
            if name in options:
                raise BadLocation(f"{shown}: the option {name} is given twice")
            options[name] = value
        return options

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def display(self) -> str:
        """The URL as users write it, without options (which may hold keys)."""
        return self.url + (f"/{quote(self.prefix, safe=_SHOWN)}" if self.prefix else "")

    def key(self, *names: str) -> str:
        return "/".join(p for p in (self.prefix, *names) if p)

    def cache_name(self) -> str:
        """A directory name for this location's local tier."""
        digest = hashlib.sha256(self.display.encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.display.split("://", 1)[1])[:48]
        return f"{slug}-{digest}"


def _option(location: Location, environ: Mapping[str, str], name: str) -> str:
    """Option *name* of *location*, else obstore's environment variable for it."""
    for key in (name, f"aws_{name}"):
        if key in location.options:
            return location.options[key]
    return environ.get(f"AWS_{name.upper()}", "")


def check_addressing(location: Location, environ: Mapping[str, str]) -> None:
    """Refuse virtual-hosted-style requests to an endpoint (:class:`BadLocation`).

    With an endpoint, obstore takes the bucket from the endpoint's host name and
    sends the key as the path: the prefix's first part would be read as the
    bucket by a path-style server, and every checkpoint would go to another
    bucket. Path-style requests (the default) reach the same bucket; without an
    endpoint (AWS itself) virtual-hosted style is right and allowed.
    """
    if location.scheme not in _S3_LIKE:
        return
    virtual = _option(location, environ, "virtual_hosted_style_request").lower() in _TRUE
    endpoint = _option(location, environ, "endpoint") or environ.get("AWS_ENDPOINT_URL", "")
    if virtual and endpoint:
        raise BadLocation(
            f"{location.display}: virtual_hosted_style_request with an endpoint would send "
            "checkpoints to a bucket named after the prefix's first part; leave the option "
            "out (path-style requests reach the same bucket)"
        )


def connect(location: Location, environ: Mapping[str, str] | None = None) -> Any:
    """An obstore store for *location*'s bucket (no request is made yet).

    Every request has deadlines (see :data:`CONNECT_TIMEOUT` and the others),
    and obstore retries a failed one (5xx, dropped connections) only within
    :data:`RETRY_TIMEOUT`: the kernel retries a failed upload later with its
    own back-off, and a start must not hang on a bucket that is down or silent.
    Raises :class:`BadLocation` for options obstore does not know and for
    virtual-hosted style with an endpoint (:func:`check_addressing`).
    """
    env = os.environ if environ is None else environ
    check_addressing(location, env)
    obstore = _lib()
    options: dict[str, Any] = dict(location.options)
    endpoint = _option(location, env, "endpoint") or env.get("AWS_ENDPOINT_URL", "")
    client: Any = {
        "connect_timeout": datetime.timedelta(seconds=CONNECT_TIMEOUT),
        "read_timeout": datetime.timedelta(seconds=READ_TIMEOUT),
        "timeout": datetime.timedelta(seconds=REQUEST_TIMEOUT),
    }
    if endpoint.startswith("http://"):
        client["allow_http"] = True
    retry: Any = {
        "max_retries": 3,
        "retry_timeout": datetime.timedelta(seconds=RETRY_TIMEOUT),
        "backoff": {
            "init_backoff": datetime.timedelta(milliseconds=100),
            "max_backoff": datetime.timedelta(seconds=3),
            "base": 2,
        },
    }
    from obstore.exceptions import BaseError, UnknownConfigurationKeyError

    try:
        return obstore.store.from_url(
            location.url, config=options, client_options=client, retry_config=retry
        )
    except UnknownConfigurationKeyError as exc:
        name = re.search(r"key: '([^']*)'", str(exc))
        raise BadLocation(
            f"{location.display}: the option {name.group(1) if name else '?'} is not one "
            f"obstore knows for {location.scheme}:// URLs"
        ) from None
    except (BaseError, ValueError, TypeError) as exc:  # a key without its pair, a bad value
        detail = re.sub(r"^Generic \w+ error: ", "", _first_line(str(exc)))
        raise BadLocation(f"{location.display}: {detail}") from None


# -- what a failure means ------------------------------------------------------------------

#: S3 error codes, and what each says of the bucket (after "the bucket <url> ").
_CODES = {
    "NoSuchBucket": ("missing", "does not exist"),
    "ExpiredToken": ("credentials", "refused the credentials: they have expired; renew them"),
    "TokenRefreshRequired": (
        "credentials",
        "refused the credentials: they have expired; renew them",
    ),
    "InvalidAccessKeyId": (
        "credentials",
        "refused the credentials: the access key is unknown to it",
    ),
    "SignatureDoesNotMatch": (
        "credentials",
        "refused the credentials: the secret key does not match the access key",
    ),
    "InvalidToken": ("credentials", "refused the credentials: the session token is not valid"),
    "RequestTimeTooSkewed": (
        "credentials",
        "refused the requests: this machine's clock is too far off",
    ),
    "AuthorizationHeaderMalformed": (
        "region",
        "refused the requests: they were signed for the wrong region (set ?region=)",
    ),
    "PermanentRedirect": (
        "region",
        "is in another region than the one given (set ?region= to the bucket's)",
    ),
    "AccessDenied": (
        "denied",
        "refused access: these credentials are not allowed to use it",
    ),
}


def failure_cause(kind: str, text: str) -> tuple[str, str]:
    """What an error of obstore's type *kind* with message *text* says of the bucket.

    Returns a category (``missing``, ``credentials``, ``region``, ``denied``,
    ``silent``, ``refused``, ``unresolved``, ``tls``, ``no-credentials``,
    ``server``, ``other``) and the words that follow "the bucket <url>" in the
    one sentence a user reads. Pure: obstore reports the cause only in its
    message (the server's error code, the HTTP status, the network error's
    kind), so that message is read here and nowhere else.
    """
    code = re.search(r"<Code>([^<]+)</Code>", text)
    if code and code.group(1) in _CODES:
        return _CODES[code.group(1)]
    status_match = re.search(r"status(?: code)?: (\d{3})", text)
    status = int(status_match.group(1)) if status_match else None
    # No keys given: obstore asked the instance metadata service (EC2, EKS) for some.
    if any(word in text for word in ("169.254.169.254", "/latest/api/token", "/latest/meta-data")):
        return (
            "no-credentials",
            "could not be used: no credentials were given, and none came from the instance "
            "metadata service (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the "
            "pod a role)",
        )
    if "credential" in text.lower():
        return (
            "no-credentials",
            "could not be used: no credentials were found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or give the pod a role)",
        )
    if kind == "UnauthenticatedError" or status == 401:
        return "credentials", "refused the credentials"
    if kind == "PermissionDeniedError" or status == 403:
        return _CODES["AccessDenied"]
    if "kind: Timeout" in text or "timed out" in text.lower():
        return (
            "silent",
            f"is not answering: its endpoint sent nothing back within {READ_TIMEOUT} s",
        )
    if "ConnectionRefused" in text or "Connection refused" in text:
        return "refused", "could not be reached: its endpoint refused the connection"
    if "dns error" in text or "failed to lookup address" in text:
        return "unresolved", "could not be reached: its endpoint's host name does not resolve"
    if "certificate" in text.lower():
        return "tls", "could not be reached: its endpoint's TLS certificate was not accepted"
    if status is not None and status >= 500:
        return "server", f"could not be used: its server failed (HTTP {status})"
    detail = f"{code.group(1)}" if code else _first_line(text)
    message = re.search(r"<Message>([^<]+)</Message>", text)
    if message:
        detail += f": {message.group(1)}"
    return "other", f"could not be used: {detail or kind}"


def _failure(exc: BaseException, display: str) -> OSError:
    """The error of ours that says what *exc*, raised by obstore, means (one sentence)."""
    category, words = failure_cause(type(exc).__name__, str(exc))
    sentence = f"the bucket {display} {words}"
    if category == "missing":
        return BucketMissing(sentence)
    if category in ("credentials", "denied", "region", "no-credentials"):
        return PermissionError(sentence)
    return BucketUnreachable(sentence)


@contextlib.contextmanager
def _translated(what: str, display: str) -> Iterator[None]:
    """obstore's errors as the built-ins the store already handles, each saying its cause."""
    from obstore.exceptions import (
        AlreadyExistsError,
        NotFoundError,
        PermissionDeniedError,
        PreconditionError,
        UnauthenticatedError,
    )

    try:
        yield
    except (FileNotFoundError, NotFoundError) as exc:
        if "NoSuchBucket" in str(exc):  # obstore's "not found" covers the bucket too
            raise _failure(exc, display) from None
        raise
    except (AlreadyExistsError, PreconditionError) as exc:
        raise GenerationTaken(f"{what} already exists") from exc
    except (PermissionDeniedError, UnauthenticatedError) as exc:
        raise _failure(exc, display) from None
    except PersistentKernelError:
        raise
    except Exception as exc:  # obstore's GenericError and the like: a network fault
        raise _failure(exc, display) from None


def _first_line(text: str) -> str:
    """The part of an obstore message a user can act on (its messages nest every layer)."""
    text = text.split("\n\nDebug source:", 1)[0]
    text = " ".join(text.split())
    if " - " in text:  # "... after 3 retries, ... - HTTP error: error sending request"
        text = text.rsplit(" - ", 1)[1]
    return text


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

    def _translated(self, what: str) -> contextlib.AbstractContextManager[None]:
        return _translated(what, self.location.display)

    def _list(self, folder: str) -> list[dict[str, Any]]:
        obstore = _lib()

        with self._translated(f"listing {self.location.display}"):
            return [
                meta
                for batch in obstore.list(self.store, self._key(folder) + "/")
                for meta in batch
            ]

    def _get(self, key: str) -> bytes:
        obstore = _lib()

        try:
            with self._translated(f"reading {key}"):
                return bytes(obstore.get(self.store, key).bytes())
        except Exception as exc:
            from obstore.exceptions import NotFoundError

            if isinstance(exc, (NotFoundError, FileNotFoundError)):
                raise FileNotFoundError(key) from None
            raise

    def _put(self, key: str, data: Any, create: bool = False) -> None:
        obstore = _lib()

        with self._translated(key):
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

        with self._translated(f"deleting {key}"), contextlib.suppress(FileNotFoundError):
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
            with self._translated(f"blob {name}"):
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
            with self._translated(f"blob {name}"):
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
                with self._translated(f"blob {name}"):
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

        with self._translated(f"deleting {prefix}"):
            for batch in obstore.list(self.store, prefix):
                paths = [str(m["path"]) for m in batch if not keep(str(m["path"]))]
                if paths:
                    obstore.delete(self.store, paths)

    def exists(self) -> bool:
        obstore = _lib()

        with self._translated(f"listing {self.base}"):
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

        with self._translated(f"listing {self.location.display}"):
            found = obstore.list_with_delimiter(self.store, self.location.key("sessions") + "/")
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])


def temp_name(name: str) -> str:
    """A temp file name for a download of blob *name* (swept like any other temp)."""
    return f"{TMP}{os.getpid()}-{threading.get_ident()}-{name}"
