"""Every exception this package raises on purpose, in one place.

Each subclasses the built-in exception a caller would already catch, the way
``jupyter_client.kernelspec.NoSuchKernel`` subclasses ``KeyError``, so code
that knows nothing of this package still handles them sensibly.
"""

from __future__ import annotations


class PersistentKernelError(Exception):
    """Base class of every error raised by persistent-kernel."""


class NoCheckpoint(PersistentKernelError, LookupError):
    """The session has no checkpoint (or none that can be read)."""


class UnreadableCheckpoint(PersistentKernelError):
    """A stored generation that cannot be loaded; a reader passes over it.

    The base of :class:`CorruptCheckpoint`, :class:`UntrustedCheckpoint` and
    :class:`NewerFormat`. Whatever the reason, the store deletes nothing such
    a generation might need: it may be readable later, or by another release.
    """


class CorruptCheckpoint(UnreadableCheckpoint, ValueError):
    """A manifest or payload failed a check before anything was unpickled.

    Raised for garbage or truncated manifests, malformed fields,
    payloads whose size or hash differ from what the manifest recorded, and
    missing payload files.
    """


class UntrustedCheckpoint(UnreadableCheckpoint, PermissionError):
    """A checkpoint that is not provably ours; it is never unpickled.

    Raised for manifests without a valid signature, and for files or
    directories owned by another user or writable by group or others.
    """


class NewerFormat(UnreadableCheckpoint, ValueError):
    """A manifest or storage root written by a newer persistent-kernel.

    It is not damage: it is left exactly as it is (never pruned, never
    overwritten), and the newer release reads it. The message says so.
    """


class StoreBusy(PersistentKernelError, TimeoutError):
    """Another process holds the session lock longer than we may wait."""


class CheckpointFailed(PersistentKernelError, RuntimeError):
    """Writing a checkpoint that was asked for failed; the previous checkpoint is untouched.

    Raised where a caller needs the checkpoint (``%persist export``
    checkpoints first); automatic checkpoints report failures instead.
    """


class PagesLost(PersistentKernelError, RuntimeError):
    """A forked writer's page server ended before it committed: the arrays it read
    may hold zeros where chunks were not placed (see lazypages), so it committed
    nothing."""


class NoSuchVariable(PersistentKernelError, LookupError):
    """A generation was asked for a variable it never held."""


class ExportFailed(PersistentKernelError, RuntimeError):
    """A generation could not be written out as a file; nothing was replaced."""


class UnreadableSettings(PersistentKernelError, ValueError):
    """A notebook's settings (its ``%persist exclude`` list) exist but cannot be read.

    Never read as "no settings": a variable the user excluded would then be
    saved. The kernel writes no checkpoint while this lasts.
    """


class NoSecret(UntrustedCheckpoint):
    """The per-user secret that signs checkpoints in a bucket was not found.

    Never made up on the spot: a node with a secret of its own would sign
    checkpoints no other node trusts. Writes fail, and readers pass every
    generation over, with its sentence (see :mod:`.store.tiers`).
    """


class GenerationTaken(PersistentKernelError, FileExistsError):
    """Another writer created this generation first (a conditional write failed)."""


class MissingExtra(PersistentKernelError, ConnectionError):
    """A storage URL was given but obstore (the ``[s3]`` extra) is not installed."""


class BucketUnreachable(PersistentKernelError, ConnectionError):
    """The object store did not answer, or refused the request."""


class RenameUnsupported(PersistentKernelError, OSError):
    """The store cannot move a session to a new key (a renamed notebook).

    Raised before anything is touched: both sessions stay as they were. A
    bucket cannot rename (objects are copied one by one, never moved at
    once), so renames are followed on the local disk only.
    """


# -- signals inside one module, never raised to a caller ------------------------------
# Defined here so that every exception class lives in one file; each module that
# raises one catches it itself (or, for ShortRead, turns it into CorruptCheckpoint).


class ShortRead(EOFError):
    """A blob's file ended before the part being read did (:mod:`.blobio`)."""


class NotRestorable(Exception):
    """An object would be pickled in a form that cannot be loaded elsewhere (:mod:`.reducers`)."""


class RestoreInterrupted(Exception):
    """Raised inside a restore when its progress's ``stop`` is set (:mod:`.restore`)."""


class _Malformed(Exception):
    """A content field is wrong; turned into one CorruptCheckpoint by :func:`.content.parse`."""


class _NeedsDill(Exception):
    """The C pickler met something only dill pickles correctly (:mod:`.serializer`)."""


def sentence(exc: BaseException) -> str:
    """The one sentence a user sees for *exc*: the CLI, ``%persist`` and notices use it.

    An :class:`OSError` says which file and what went wrong
    (``/x/y.pkl: No such file or directory``); anything else gives its
    message's first line, or its type's name when it has none.
    """
    if isinstance(exc, OSError) and not isinstance(exc, PersistentKernelError):
        if exc.strerror and exc.filename:
            return f"{exc.filename}: {exc.strerror}"
        if exc.strerror:
            return str(exc.strerror)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- object storage: what a URL or a bucket's answer means ----------------------------


class BadLocation(PersistentKernelError, ValueError):
    """A storage URL that cannot be read one way only (see :meth:`.store.objects.Location.parse`).

    Raised before anything is read or written: a kernel given one saves
    nothing rather than write somewhere the user did not mean.
    """


class BucketMissing(BucketUnreachable):
    """The bucket a storage URL names does not exist (its server said so)."""
