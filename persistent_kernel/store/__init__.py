"""The on-disk format: generations of small manifests over content-addressed blobs.

Layout under the storage root (directories 0700, files 0600)::

    secret                           32 random bytes: the key manifests are signed with
    sessions/<slug>-<hash>/          one per session key (notebook)
        lock                         flock: one writer at a time
        writers/<pid>-<token>        flock held by each live writer process
        settings.json                %persist exclude / include of this session
        loading, poisoned            crash markers: the blob being unpickled, and those
                                     whose unpickling killed a kernel
        generations/00000042.json    manifest of generation 42
        objects/<blake3 hex>         blob: bytes named by their hash

A blob is a sequence of *parts* (a pickle stream and its out-of-band
buffers) stored back to back; the manifest records each part's size, so a
part can be read straight into its own buffer. Blobs are immutable and
shared between generations: an unchanged group of variables costs nothing
to checkpoint again.

A commit writes blobs first (temp file, fsync, rename), then the manifest
(same), then fsyncs the directories. A crash at any instant leaves the
previous generation whole; a reader only ever sees complete manifests.

The package, by job:

* :mod:`.fs`: private directories, atomic writes, directory fsync;
* :mod:`.trust`: ownership checks and the manifests' signatures;
* :mod:`.locks`: the session lock and the registry of live writers;
* :mod:`.backend` and :mod:`.local`: where the bytes live (the local disk);
* :mod:`.sessions`: the format itself (manifests, blobs, commit, prune).

This package knows nothing of kernels or pickles: the CLI reads it with no
kernel running, and it never unpickles anything. What a manifest's
``content`` means is the business of :mod:`persistent_kernel.checkpoint`.
"""

from __future__ import annotations

from .backend import Backend
from .fs import TMP, fsync_dir, private_dir, write_atomic
from .local import LocalBackend
from .sessions import (
    FORMAT,
    HASH,
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
