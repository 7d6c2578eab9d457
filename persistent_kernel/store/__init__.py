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
                                     directory over (see notebook.adopt)
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

* :mod:`.fs`: private directories, atomic writes, directory fsync;
* :mod:`.trust`: ownership checks and the manifests' signatures;
* :mod:`.locks`: the session lock and the registry of live writers;
* :mod:`.backend` and :mod:`.local`: where the bytes live (the local disk);
* :mod:`.objects`: the same layout in a bucket (``<prefix>/sessions/<slug>-<hash>/``),
  manifests created only if absent; :mod:`.tiers`: a bucket with the local
  disk as a cache tier (push after each commit, pull at start);
* :mod:`.where`: :func:`.where.open_store` turns ``checkpoint_dir`` into a store,
  importing the two modules above only for a storage URL;
* :mod:`.sessions`: the format itself (manifests, blobs, commit, prune).

This package knows nothing of kernels or pickles: the CLI reads it with no
kernel running, and it never unpickles anything.
"""

from __future__ import annotations

from .backend import Backend
from .fs import TMP, fsync_dir, private_dir, write_atomic
from .local import LocalBackend
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
    "LocalBackend",
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
