"""The on-disk format: generations of small manifests over content-addressed blobs.

Layout under the storage root (directories 0700, files 0600; every read
checks the owner and the mode and follows no symlink, see :mod:`.trust`)::

    format                           {"format": 1}: the root's layout; checked before
                                     every write, a newer one is refused (NewerFormat)
    secret                           32 random bytes: the key manifests are signed with
    sessions/<slug>-<hash>/          one per session key (notebook)
        lock                         flock: one writer at a time commits, prunes, clears
        writers/<pid>-<token>        flock held by each live writer process
        settings.json                %persist exclude / include of this session
        key                          the session key, where a renamed notebook took the
                                     directory over (see :mod:`.rename`)
        forward                      the key the notebook was renamed to while a kernel
                                     wrote here; that kernel moves the session (.follow)
        origin                       this key's notebook is a copy of another (.follow)
        uploaded                     manifests the bucket has had under this key (.tiers)
        loading, poisoned            crash markers: the blob being unpickled, and those
                                     whose unpickling killed a kernel
        generations/00000042.json    manifest of generation 42
        objects/<hex digest>         blob: bytes named by their hash

A manifest is one JSON object: ``format`` (2; 1 is still read), ``hash``
(``blake3``; ``xxh3_128`` in format 1), ``generation``, ``created``,
``session``, ``notebook``, the writer's versions, the notebook's cell ids,
``notebook_present`` and ``kernel_id`` (see :mod:`persistent_kernel.identity`),
``blobs`` (every blob it names, with its size), ``content`` (what the
variables are; :mod:`persistent_kernel.content` reads it) and
``signature``, an HMAC-SHA256 of all the rest with the secret. Through the
hash names, the signature covers every byte a generation holds.

A blob is a sequence of *parts* (a pickle stream and its out-of-band
buffers) stored back to back; the manifest records each part's size, so a
part can be read straight into its own buffer. Blobs are immutable and
shared between generations: an unchanged group of variables costs nothing
to checkpoint again.

A commit writes blobs first (temp file, fsync, rename), then the manifest
(same), then fsyncs the directories. A crash at any instant leaves the
previous generation whole; a reader only ever sees complete manifests.
Every reader walks from the newest generation down and passes over one it
cannot read (:meth:`SessionStore.newest`). Prune fails closed: only verified
generations count toward ``keep`` or are deleted, and no blob is deleted that
a manifest it cannot verify may name (see :meth:`SessionStore.prune`).

The package, by job:

* :mod:`.where`: which store a ``checkpoint_dir`` names. A registry of
  backends by URL scheme (:func:`.where.register_scheme`,
  :func:`.where.open_store`): a plain path is the local disk, ``s3://``,
  ``gs://``, ``az://``... a bucket, ``memory://`` this process's memory, each
  module imported only when its scheme is opened. Also which session a user's
  argument names (:func:`.where.find_session`, for the CLI and ``%persist
  restore --from``). "Local or bucket" is decided in this package alone:
  callers ask the store (``store.local()``, ``store.mirror(key)``,
  ``store.adopt(old, new)``);
* :mod:`.sessions`: the format itself (manifests, blobs, commit, newest,
  prune) over any backend (:class:`SessionStore`), and the storage root on
  the local disk (:class:`Store`);
* :mod:`.backend`: what a backend does (move named bytes, nothing more), and
  where the bytes live: :mod:`.local` (the local disk), :mod:`.objects` (the
  same layout in a bucket, ``<prefix>/sessions/<slug>-<hash>/``, manifests
  created only if absent), :mod:`.memory` (a process-wide dict). One
  conformance suite runs on all three (``tests/test_backends.py``);
* :mod:`.tiers`: a bucket with the local disk as its cache tier:
  :class:`.tiers.BucketStore`, whose ``local()`` is the tier a kernel writes
  and whose ``mirror(key)`` is a :class:`.tiers.Mirror`, composed of the local
  session and the bucket's (push after each commit, pull at start);
* :mod:`.rename`: a session moved to a renamed notebook's key, through the
  backend (a rename on the local disk; refused, untouched, in a bucket);
* :mod:`.follow`: what the Jupyter server saw (renames, copies, deletes),
  recorded by its extension and carried out here, by a kernel or at a start;
* :mod:`.locks`: the session lock and the registry of live writers
  (``session.locks``), apart from the format;
* :mod:`.fs`: private directories, atomic writes, directory fsync;
* :mod:`.trust`: ownership checks and the manifests' signatures;
* :mod:`.chunks`: large buffers stored as chunks, so a changed array
  rewrites only the chunks that changed.

This package knows nothing of kernels or pickles: the CLI reads it with no
kernel running, and it never unpickles anything.
"""

from __future__ import annotations

from .backend import Backend
from .fs import TMP, fsync_dir, private_dir, write_atomic
from .local import LocalBackend
from .locks import FileLocks, Locks
from .sessions import (
    FORMAT,
    HASH,
    PLAIN_FORMAT,
    BlobRef,
    Manifest,
    SessionStore,
    Store,
    blob_hash,
    is_disk_error,
    parse_manifest,
)

__all__ = [
    "FORMAT",
    "HASH",
    "PLAIN_FORMAT",
    "TMP",
    "Backend",
    "BlobRef",
    "FileLocks",
    "LocalBackend",
    "Locks",
    "Manifest",
    "SessionStore",
    "Store",
    "blob_hash",
    "fsync_dir",
    "is_disk_error",
    "parse_manifest",
    "private_dir",
    "write_atomic",
]
