"""Share a checkpoint as one file that plain dill loads, and load such files.

:func:`export_generation` writes one generation of a session as a single
file in the format of ``dill.dump_module``: anyone with Python, dill and the
libraries the variables come from gets the variables back with::

    import dill
    dill.load_module("state.pkl")      # into __main__, as a notebook cell would
    ns = dill.load_module_asdict("state.pkl")   # or into a dict

without this package. Functions and classes defined in the notebook come
back by value and see the loaded globals; modules bound to names come back
as imports. :func:`import_file` is the other way round: it loads such a file
(made here, or by ``dill.dump_module`` anywhere) into a namespace.

Pure functions: no kernel, nothing printed.

Limits:

* **Loading a file runs code** (it is unpickling). Exporting loads only
  checkpoints signed with this user's secret; :func:`import_file` loads any
  file it is given, so calling it is an explicit act of trust.
* A loader needs every library the variables come from, at a compatible
  version: one missing makes the whole load fail (dill loads a module file
  all or nothing, unlike a restore, which skips what it cannot load).
* dill's ``refimported`` heuristics decide what is saved as an import: a
  value that *is* an attribute of an imported module, by the same name, is
  saved as a reference to it.
* Exporting some *names* only leaves the rest out: a function that reads
  another global needs that one exported too.
* Everything is loaded into memory, then written out; the file holds the
  data uncompressed, in-band (no out-of-band buffers).
* Functions loaded by :func:`import_file` keep the file's namespace as
  their globals: they see the file's values, not names bound later in
  *into* (``dill.load_module_asdict`` works that way).
* While the file is written, ``sys.modules["__main__"]`` is the module
  being written (dill needs that to save functions' globals by reference;
  ``dill.load_module_asdict`` swaps it the same way to load). Code running
  meanwhile in another thread of the same process sees that module.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from . import namespace, restore, serializer
from .content import parse as parse_content
from .errors import (
    CorruptCheckpoint,
    ExportFailed,
    NoCheckpoint,
    NoSuchVariable,
)
from .store import Manifest, SessionStore
from .store.fs import atomic_file

#: Names a fresh module has that are no variables of the notebook.
_MODULE_DUNDERS = ("__doc__", "__package__", "__loader__", "__spec__")


@dataclass
class ExportResult:
    """What :func:`export_generation` wrote. Plain data (``to_dict`` is JSON-able)."""

    path: str
    generation: int
    created: float
    written: list[str] = field(default_factory=list)  # the variables in the file
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not in the file
    problems: list[str] = field(default_factory=list)  # newer generations passed over, and why
    size: int = 0  # bytes of the file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportResult:
    """What :func:`import_file` put into the namespace."""

    path: str
    imported: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # of those, names that were bound before
    dropped: list[str] = field(default_factory=list)  # dunders and IPython internals left out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- export ---------------------------------------------------------------------------


def export_generation(
    session: SessionStore,
    path: str | os.PathLike[str],
    generation: int | None = None,
    names: Sequence[str] | None = None,
) -> ExportResult:
    """Write one generation of *session* to *path* as a ``dill.dump_module`` file.

    *generation* ``None`` takes the newest one whose data is intact, passing
    over damaged ones as a restore does (``problems`` says why); a number
    takes that generation or fails. *names* limits the file to those
    variables. The file is written whole or not at all (a temp file beside
    it, renamed over *path*), mode 0600; an existing file at *path* is
    replaced. A variable that cannot be loaded here, or written by dill, is
    left out and named in ``skipped`` with the reason; the rest are written.

    Raises :class:`NoCheckpoint` (no checkpoint, or no such generation),
    :class:`NoSuchVariable` (a name the generation never held),
    :class:`CorruptCheckpoint` / :class:`UntrustedCheckpoint` (the chosen
    generation, or every one, is damaged or not ours), :class:`ExportFailed`
    (dill could not write the file) or :class:`OSError`; *path* is then
    untouched.
    **Loads the checkpoint, which runs code**; see the module docstring.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(target.parent))
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
    wanted = None if names is None else list(dict.fromkeys(names))
    module = types.ModuleType("__main__")
    manifest, values, report, problems = _load(session, generation, wanted, module)
    skipped = dict(report.skipped)
    skipped.update(_not_saved(manifest, wanted))
    if wanted is not None:  # a group's other variables came along; leave them out
        values = {n: v for n, v in values.items() if n in wanted}
        skipped = {n: r for n, r in skipped.items() if n in wanted}
    module.__dict__.update(values)
    skipped.update(_write_module(module, target))
    return ExportResult(
        path=str(target),
        generation=manifest.generation,
        created=manifest.created,
        written=sorted(n for n in values if n not in skipped),
        skipped=dict(sorted(skipped.items())),
        problems=problems,
        size=target.stat().st_size,
    )


def _load(
    session: SessionStore,
    generation: int | None,
    names: list[str] | None,
    module: types.ModuleType,
) -> tuple[Manifest, dict[str, Any], restore.RestoreReport, list[str]]:
    """Load a generation into a dict whose notebook functions see *module*'s globals."""
    if generation is not None:
        manifest = session.read_manifest(generation)
        values, report = _load_one(session, manifest, names, module)
        return manifest, values, report, []
    problems: list[str] = []
    try:
        manifest, (values, report) = session.newest(
            lambda m: _load_one(session, m, names, module), problems
        )
    except NoCheckpoint:
        if problems:
            raise CorruptCheckpoint(f"no generation is intact ({'; '.join(problems)})") from None
        raise NoCheckpoint("there is no checkpoint") from None
    return manifest, values, report, problems


def _load_one(
    session: SessionStore,
    manifest: Manifest,
    names: list[str] | None,
    module: types.ModuleType,
) -> tuple[dict[str, Any], restore.RestoreReport]:
    content = parse_content(manifest)
    saved = set(content.variables)
    if names is not None:
        known = saved | set(content.skipped)
        missing = [n for n in names if n not in known]
        if missing:
            raise NoSuchVariable(
                f"generation {manifest.generation} has no variable named {', '.join(missing)}"
            )
        names = [n for n in names if n in saved]
        if not names:  # only variables that were never saved: nothing to load
            return {}, restore.RestoreReport()
    return restore.load_generation(session, manifest.generation, names, main=module)


def _not_saved(manifest: Manifest, names: list[str] | None) -> dict[str, str]:
    """The variables the checkpoint itself left out, as a restore words them."""
    return {
        n: f"not saved: {reason}"
        for n, reason in parse_content(manifest).skipped.items()
        if names is None or n in names
    }


@contextmanager
def _as_main(module: types.ModuleType) -> Iterator[None]:
    """Make *module* ``sys.modules["__main__"]`` for the duration.

    dill saves a function's globals as a reference only when they are
    ``__main__``'s namespace (else it copies them, and a loaded function
    would not see the loaded globals); and it names the module in the file
    ``__main__``, so ``dill.load_module`` loads it into the loader's
    ``__main__``. ``dill.load_module_asdict`` swaps ``__main__`` the same way.
    """
    previous = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        yield
    finally:
        if previous is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = previous


def _dump(module: types.ModuleType, file: IO[bytes]) -> None:
    """``dill.dump_module`` into *file* (readable, seekable, at its start), then
    read it back to check it names nothing only the notebook's ``__main__`` had."""
    import dill

    serializer.import_dill()

    def dump() -> list[warnings.WarningMessage]:
        with _as_main(module), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dill.PicklingWarning)
            dill.dump_module(file, module=module, refimported=True)
        return caught

    try:
        caught = dump()
    except RecursionError:  # a deep structure: again, with room to recurse
        file.seek(0)
        file.truncate()
        caught = serializer.deeply(dump)
    # dill's fallback to saving by name can make a file that does not load
    file.flush()
    file.seek(0)
    serializer.check_by_name(file, caught)


def _write_module(module: types.ModuleType, target: Path) -> dict[str, str]:
    """Dump *module* to *target* atomically; return the variables left out, and why.

    When the whole module cannot be dumped, each variable is tried alone
    (in the same module, so functions keep their globals) and the ones that
    fail are left out.
    """
    space = module.__dict__
    for name in _MODULE_DUNDERS:
        space.pop(name, None)
    space["__builtins__"] = builtins
    variables = {n: v for n, v in space.items() if n not in ("__builtins__", "__name__")}
    skipped: dict[str, str] = {}
    with atomic_file(target) as f:
        try:
            _dump(module, f)
        except Exception:
            skipped = _unwritable(module, variables)
            f.seek(0)
            f.truncate()
            try:
                _dump(module, f)
            except Exception as exc:
                raise ExportFailed(
                    f"dill could not write the variables ({serializer.describe_error(exc)})"
                ) from exc
    return skipped


def _unwritable(module: types.ModuleType, variables: Mapping[str, Any]) -> dict[str, str]:
    """Try each variable alone; leave in *module* only those dill can write.

    Each is pickled by dill's pickler with *module* as ``__main__``, as
    ``dump_module`` would pickle it, but without ``dump_module``'s walk over
    every loaded module, which costs a second or more per variable once
    scipy or scikit-learn are imported.
    """
    import dill

    space = module.__dict__
    failed: dict[str, str] = {}
    for name, value in variables.items():
        out = io.BytesIO()
        try:
            with _as_main(module), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", dill.PicklingWarning)
                serializer.deeply(lambda: dill.Pickler(out).dump(value))  # noqa: B023
            serializer.check_by_name(out.getbuffer(), caught)
        except Exception as exc:
            failed[name] = f"could not be written ({serializer.describe_error(exc)})"
    for name in failed:
        space.pop(name, None)
    return failed


# -- import ---------------------------------------------------------------------------


def import_file(path: str | os.PathLike[str], into: dict[str, Any]) -> ImportResult:
    """Load a ``dill.dump_module`` file into *into*; return the names imported.

    Reads files made by :func:`export_generation` or by ``dill.dump_module``
    anywhere, with ``dill.load_module_asdict``. Dunder names and IPython's
    internals (``In``, ``Out``, ``_i3``, ``get_ipython``, ...) are left out;
    every other name replaces what *into* held under it.

    **Loading the file runs code**: it is unpickling, and any code the file
    names runs with your rights. Unlike a restore, nothing checks who made
    the file; calling this is an explicit act of trust. Raises whatever
    unpickling raises (and :class:`OSError`); *into* is then unchanged.
    """
    import dill

    loaded = dill.load_module_asdict(os.fspath(path))
    result = ImportResult(path=os.fspath(path))
    keep: dict[str, Any] = {}
    for name, value in loaded.items():
        if (name.startswith("__") and name.endswith("__")) or namespace.is_internal(
            name, value, {}
        ):
            result.dropped.append(name)
        else:
            keep[name] = value
    result.imported = sorted(keep)
    result.replaced = sorted(n for n in keep if n in into)
    result.dropped.sort()
    into.update(keep)
    return result
