"""Which store a ``checkpoint_dir`` names: a local directory, or a bucket.

Kept apart from :mod:`.objects` and :mod:`.tiers` so that telling the two
apart costs nothing: a kernel whose checkpoints live on the local disk
(the default) never imports the object-storage modules (nor obstore), which
would only add to every kernel's start. They are imported on first use, for a
storage URL only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .sessions import SessionStore, Store

if TYPE_CHECKING:
    from .tiers import BucketStore

#: URL schemes read as object storage (obstore's).
SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "r2")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True if *location* names object storage rather than a local directory."""
    scheme = urlsplit(os.fspath(location)).scheme.lower()
    return scheme in SCHEMES


def bucket_store(location: str | os.PathLike[str]) -> BucketStore | None:
    """The bucket *location* names (a :class:`.tiers.BucketStore`), or None for a
    local directory."""
    if not is_url(location):
        return None
    from .tiers import BucketStore  # object storage only: see the module's docstring

    return BucketStore(os.fspath(location))


def open_store(location: str | os.PathLike[str]) -> Store:
    """The store *location* names: a local directory, or a bucket (:class:`.tiers.BucketStore`)."""
    bucket = bucket_store(location)
    return bucket if bucket is not None else Store(os.fspath(location))


def open_session(location: str | os.PathLike[str], key: str) -> SessionStore:
    """The session a kernel writes: on the local disk, or tiered over a bucket."""
    bucket = bucket_store(location)
    if bucket is not None:
        return bucket.tiered(key)
    return Store(os.fspath(location)).session(key)
