"""Which store a ``checkpoint_dir`` names, and which session a user's argument names.

A registry of backends by URL scheme, as restic's location registry and
joblib's ``register_store_backend``: :func:`register_scheme` maps schemes to
a factory, :func:`open_store` calls the factory of a location's scheme, and
anything else (a plain path) is the local disk (:class:`.sessions.Store`).
Registered here: the object-storage schemes (``s3://``, ``gs://``, ``az://``,
...: :class:`.tiers.BucketStore`) and ``memory://`` (:mod:`.memory`).

The factories import their modules when called, not before: a kernel whose
checkpoints live on the local disk (the default) never imports the
object-storage modules (nor obstore), which would only add to every
kernel's start. "Local or bucket" is decided here and nowhere else: callers
ask the store (:meth:`~.sessions.Store.local`,
:meth:`~.sessions.Store.mirror`, :meth:`~.sessions.Store.adopt`).

:func:`find_session` turns what a user typed (a notebook path, a session key
or a session directory's name) into a session: the command line and
``%persist restore --from`` both use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from ..errors import BadLocation, NoCheckpoint
from ..session import resolve_session_arg
from .sessions import SessionStore, Store

if TYPE_CHECKING:
    from .tiers import Mirror

#: Makes the store a location of its scheme names (the location is passed whole).
Factory = Callable[[str], Store]

#: URL schemes read as object storage (obstore's).
SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "r2")

_FACTORIES: dict[str, Factory] = {}


def register_scheme(schemes: str | Iterable[str], factory: Factory) -> None:
    """Make :func:`open_store` call ``factory(location)`` for a location of any of *schemes*.

    Schemes are case-insensitive; a later registration replaces an earlier
    one. A factory should import its backend only when called, so that
    registering costs nothing to a process that never uses it.
    """
    for scheme in [schemes] if isinstance(schemes, str) else schemes:
        _FACTORIES[scheme.lower()] = factory


def registered_scheme(location: str | os.PathLike[str]) -> str | None:
    """The registered scheme of *location*, or None for a path on the local disk."""
    scheme = urlsplit(os.fspath(location)).scheme.lower()
    return scheme if scheme in _FACTORIES else None


def open_store(location: str | os.PathLike[str]) -> Store:
    """The store *location* names: the factory of its scheme, else the local directory.

    A URL that cannot be read one way only gives an :class:`Unusable` store, so
    that opening never raises and a kernel still starts: every use of the store
    raises the :class:`BadLocation` that says why, and nothing is written.
    """
    scheme = registered_scheme(location)
    if scheme is None:
        return Store(os.fspath(location))
    try:
        return _FACTORIES[scheme](os.fspath(location))
    except BadLocation as exc:
        from .objects import shown_url

        return Unusable(shown_url(os.fspath(location)), exc)


class Unusable(Store):
    """A ``checkpoint_dir`` that names no one place (see :meth:`.objects.Location.parse`).

    Every method that would read or write raises its :class:`BadLocation`: a
    kernel restores nothing and saves nothing, rather than use a place the user
    did not mean (a prefix cut at a ``#``, the bucket's default endpoint instead
    of the one the options named), and says why in that one sentence.
    """

    def __init__(self, location: str, error: BadLocation) -> None:
        super().__init__(Path(os.devnull) / "unusable")  # under a file: never made
        self.error = error
        self.display = location

    def _refuse(self) -> NoReturn:
        raise self.error

    def local(self) -> Store:
        self._refuse()

    def mirror(self, key: str) -> Mirror | None:
        self._refuse()

    def adopt(self, old_key: str, new_key: str) -> SessionStore:
        self._refuse()

    def session(self, key: str) -> SessionStore:
        self._refuse()

    def session_at(self, path: Path) -> SessionStore:
        self._refuse()

    def check(self) -> None:
        self._refuse()

    def sessions(self) -> list[SessionStore]:
        self._refuse()

    def ensure(self) -> None:
        self._refuse()


def find_session(store: Store, arg: str, cwd: str | None = None) -> SessionStore:
    """The session of *store* that *arg* names: a session key, a notebook or folder path
    (relative to *cwd*, default the working directory), or a session directory name.

    Raises :class:`NoCheckpoint` if *store* holds nothing under any of them.
    """
    here = os.getcwd() if cwd is None else cwd
    absolute = os.path.normpath(os.path.join(here, os.path.expanduser(arg)))
    for key in dict.fromkeys([resolve_session_arg(arg, here), absolute]):
        session = store.session(key)
        if session.backend.exists():
            return session
    if arg and "/" not in arg and arg not in (".", ".."):
        named = store.session_at(store.sessions_dir / arg)
        if named.backend.exists():
            return named
    raise NoCheckpoint(f"there are no checkpoints of {arg} in {store.display}")


# -- the schemes known from the start ----------------------------------------------------


def _bucket(location: str) -> Store:
    from .tiers import BucketStore  # object storage only: see the module's docstring

    return BucketStore(location)


def _memory(location: str) -> Store:
    from .memory import MemoryStore

    return MemoryStore.at(location)


register_scheme(SCHEMES, _bucket)
register_scheme("memory", _memory)
