"""One checkpoint written: what a manifest's ``content`` means.

``write_checkpoint`` runs in the background writer (a forked child) or
inline; it returns a plain, JSON-able :class:`CheckpointResult` so the
writer can report it through a pipe. It knows nothing of kernels or
messages. Reading checkpoints back is :mod:`persistent_kernel.restore`.

What a manifest's ``content`` holds, and its checks: :mod:`persistent_kernel.content`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from . import namespace, pagewrites, serializer
from ._version import __version__
from .errors import CorruptCheckpoint, NoCheckpoint, UnreadableCheckpoint
from .store import HASH, BlobRef, Manifest, SessionStore, chunks
from .store.sessions import host_name


def environment_info() -> dict[str, Any]:
    """What a manifest records about the Python that wrote it."""
    import dill

    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "dill": dill.__version__,
        "persistent_kernel": __version__,
        "host": host_name(),  # which machine: a restore from a bucket names it
    }


def package_versions(type_names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the packages that *type_names* come from.

    ``{"pandas": "2.2.3", "numpy": "2.1.0"}`` for ``pandas.core.frame.DataFrame``
    and friends; built-in and notebook types have no package and are left out.
    """
    versions: dict[str, str] = {}
    for name in type_names:
        top = name.partition(".")[0]
        if "." not in name or top in versions or top in ("__main__", "builtins"):
            continue
        version = installed_version(top)
        if version is not None:
            versions[top] = version
    return dict(sorted(versions.items()))


def installed_version(top_level: str) -> str | None:
    """The version of the package that provides the module *top_level*.

    The module's name is not always its distribution's (``sklearn`` comes
    from scikit-learn, ``PIL`` from Pillow, ``yaml`` from PyYAML): the
    distribution is found through ``importlib.metadata``, and the module's
    ``__version__`` is the last resort. ``None``: no version can be told.
    """
    module = sys.modules.get(top_level)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    for dist in _distributions_of(top_level):
        try:
            return importlib.metadata.version(dist)
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    return None


def _distributions_of(top_level: str) -> list[str]:
    """Distribution names that may provide *top_level*: its own name first
    (cheap, and right for numpy or pandas), then the installed ones that
    list it as a top-level module (which means reading every installed
    distribution's metadata, so it is done only when the name did not fit)."""
    try:
        importlib.metadata.distribution(top_level)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return list(_packages_distributions().get(top_level, []))
    return [top_level]


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def is_installed(top_level: str) -> bool:
    """Can the module *top_level* be imported here (without importing it)?"""
    if top_level in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top_level) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class CheckpointResult:
    """What one checkpoint did. Plain data, so a writer process can send it."""

    ok: bool
    generation: int | None = None
    created: float | None = None
    size: int = 0  # bytes of state the generation holds
    written: int = 0  # bytes written to disk for it
    saved: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unchanged: bool = False  # nothing differed from the previous generation
    elapsed: float = 0.0
    error: str | None = None
    disk_error: bool = False
    pause: float = 0.0  # seconds the kernel stopped for (filter + fork, or all if inline)
    writer_private_bytes: int | None = None  # memory the forked writer did not share
    second_core: list[str] = field(default_factory=list)  # shared with a helper process
    #: [address, size, chunk names, written, hashed] of each chunked buffer (see pagewrites)
    buffers: list[list[Any]] = field(default_factory=list, repr=False)
    hashed: int = 0  # bytes of chunked buffers hashed (the rest no write had touched)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def write_checkpoint(
    session: SessionStore,
    values: Mapping[str, Any],
    skipped: Mapping[str, str],
    info: Mapping[str, Any],
    keep: int,
    lock_timeout: float = 600.0,
    carried: Sequence[CarriedGroup] = (),
    on_variable: Callable[[str], None] | None = None,
    inputs: Sequence[str] = (),
    on_bytes: Callable[[int, int], None] | None = None,
    second_core: bool = False,
    urgent: bool = False,
    known: Mapping[tuple[int, int], Sequence[str | None]] | None = None,
    skipped_types: Mapping[str, str] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> CheckpointResult:
    """Serialise *values* and commit them as a new generation of *session*.

    *inputs* are the cells run so far (IPython's ``In``): the manifest keeps,
    for every variable, the source of the cell that last bound it, so that a
    variable that does not come back can be re-made on request.

    *skipped* are names the namespace filter already left out, with reasons;
    *skipped_types* their types (the manifest keeps the type of every variable
    not saved, for the restore report).
    *carried* are groups an earlier restore could not load (an interrupt, a
    class that is missing here): they are kept in the new generation as they
    were, byte for byte, unless one of their names has been bound again.
    A namespace identical to the newest generation's commits nothing.
    *on_bytes*: called with the bytes stored so far and in all, after each part.
    *second_core*, *urgent*: let a helper process pickle some variables
    meanwhile, at a lower priority unless urgent (see :func:`serializer.serialize`);
    only in a process that may fork, a writer.
    *known*: names of chunks of large buffers, by the buffer's (address,
    size), that no write has touched since they were hashed (see
    :mod:`.pagewrites`); None where a chunk must be hashed.
    *before_commit*: called once everything is stored, before the commit; it
    raises if what was read cannot be trusted (see ``lazypages.PageServer.serving``),
    and nothing is committed.
    Raises only for storage failures (the previous generation is intact).
    """
    start = time.monotonic()
    ser = serializer.serialize(values, on_variable, second_core, urgent)
    if on_variable is not None:
        on_variable("")
    all_skipped = {**skipped, **ser.skipped}
    notes = list(ser.notes)
    with session.locks.locked(lock_timeout):
        # One blob per part, large buffers in chunks: a changed array rewrites
        # the chunks of it that changed only.
        # The stream (part 0) stays one blob: a group is named by its stream's hash.
        buffers: list[list[Any]] = []
        names = known or {}
        progress = _Progress(sum(part.nbytes for p in ser.payloads for part in p.parts()), on_bytes)
        stored = [
            [
                _write_part(session, part, i > 0, names, buffers, progress.stored)
                for i, part in enumerate(p.parts())
            ]
            for p in ser.payloads
        ]
        content = _content(ser, stored, all_skipped, {**(skipped_types or {}), **ser.types})
        refs = [[ref for part in parts for ref in _blobs_of(part)] for parts in stored]
        try:
            previous: Manifest | None = session.latest()[0]
        except NoCheckpoint:
            previous = None
        for group in carried:
            names = group.record["names"]
            carried_refs = group.refs()
            if any(n in values or n in all_skipped for n in names):
                continue  # the user has bound the name again: the new value wins
            if any(session.backend.blob_size(r.hash) is None for r in carried_refs):
                continue  # gone (the restore said so): naming it would damage the generation
            record = group.record
            if group.hash != HASH:  # named by an older format's hash: store it anew
                try:
                    carried_refs = [session.migrate_blob(r, group.hash) for r in carried_refs]
                except UnreadableCheckpoint:
                    continue
                record = {**record, "parts": [[r.hash, r.size] for r in carried_refs]}
            content["groups"].append(record)
            refs.append(carried_refs)
            index = len(content["groups"]) - 1
            for name in names:
                entry = dict(group.variables.get(name, {"type": "?", "module": None}))
                content["variables"][name] = {**entry, "group": index, "carried": True}
        content["variables"] = dict(sorted(content["variables"].items()))
        before = previous.content if previous is not None else None
        content.update(_cells(inputs, [*content["variables"], *all_skipped], before))
        written = sum(r.written for parts in refs for r in parts)
        if previous is not None and _same(previous.content, content):
            manifest, unchanged = previous, True
        elif previous is None and not content["variables"] and not content["skipped"]:
            # An empty namespace with nothing before it: nothing worth a generation.
            return CheckpointResult(ok=True, unchanged=True, elapsed=time.monotonic() - start)
        else:
            blobs = [r for parts in refs for r in parts]
            chunked = any(isinstance(p, dict) for g in content["groups"] for p in g["parts"])
            if before_commit is not None:
                before_commit()
            manifest = session.commit(content, blobs, {**environment_info(), **info}, chunked)
            pruned = session.prune(keep)
            notes.extend(pruned.notes())
            unchanged = False
    return CheckpointResult(
        ok=True,
        generation=manifest.generation,
        created=manifest.created,
        size=manifest.size,
        written=written,
        saved=sorted(content["variables"]),
        skipped=dict(all_skipped),
        notes=notes,
        unchanged=unchanged,
        elapsed=time.monotonic() - start,
        second_core=ser.second_core,
        buffers=buffers,
        hashed=sum(b[4] for b in buffers),
    )


def _write_part(
    session: SessionStore,
    part: memoryview,
    chunk: bool,
    known: Mapping[tuple[int, int], Sequence[str | None]],
    buffers: list[list[Any]],
    on_stored: Callable[[int], None] | None = None,
) -> BlobRef | chunks.Chunked:
    """Store *part* (see :func:`chunks.write_part`); list each chunked buffer in *buffers*:
    ``[address, size, chunk names, bytes written, bytes hashed]``."""
    if not chunk or part.nbytes < chunks.THRESHOLD:
        return chunks.write_part(session, part, chunk, on_stored=on_stored)
    address = pagewrites.address_of(part)
    named = known.get((address, part.nbytes), ())
    stored = chunks.write_part(session, part, chunk, named, on_stored)
    if isinstance(stored, chunks.Chunked):
        names = [c.hash for c in stored.chunks]
        buffers.append([address, part.nbytes, names, stored.written, stored.hashed])
    return stored


class _Progress:
    """Bytes stored of *total*, told to *report* as blobs are stored (from any thread)."""

    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.total, self.report = total, report
        self.done = 0
        self._lock = threading.Lock()

    def stored(self, nbytes: int) -> None:
        if self.report is None:
            return
        with self._lock:
            self.done += nbytes
            self.report(self.done, self.total)


def _blobs_of(part: BlobRef | chunks.Chunked) -> tuple[BlobRef, ...]:
    return part.chunks if isinstance(part, chunks.Chunked) else (part,)


def _part_record(part: BlobRef | chunks.Chunked) -> Any:
    return part.record() if isinstance(part, chunks.Chunked) else [part.hash, part.size]


def _content(
    ser: serializer.Serialized,
    refs: list[list[BlobRef | chunks.Chunked]],
    skipped: Mapping[str, str],
    types: Mapping[str, str],
) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    for index, (payload, parts) in enumerate(zip(ser.payloads, refs, strict=True)):
        groups.append(
            {
                "parts": [_part_record(part) for part in parts],
                "size": sum(ref.size for ref in parts),
                "pickler": payload.pickler,
                "names": list(payload.names),
                # memmaps re-opened on load: [path, size, mtime_ns] of their files
                **({"files": payload.files} if payload.files else {}),
                # files read from and databases, re-opened on load: [path, size, mtime_ns, rule]
                **({"opened": payload.opened} if payload.opened else {}),
            }
        )
        for name in payload.names:
            variables[name] = {"type": ser.types[name], "group": index, "module": None}
    for name, module in ser.modules.items():
        variables[name] = {"type": ser.types[name], "group": None, "module": module}
    skipped_types = {name: types[name] for name in sorted(skipped) if name in types}
    return {
        "variables": dict(sorted(variables.items())),
        "groups": groups,
        "skipped": dict(sorted(skipped.items())),
        **({"skipped_types": skipped_types} if skipped_types else {}),
        "notes": list(ser.notes),
        "packages": package_versions(ser.types.values()),
    }


def _same(before: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Is *now* the content *before* was, the cells that made the values aside?
    (A cell that binds a name to the same value again is no change to save.)"""
    strip = ("cells",)
    return {k: v for k, v in before.items() if k not in strip} == {
        k: v for k, v in now.items() if k not in strip
    }


def _cells(
    inputs: Sequence[str], names: Sequence[str], before: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"cells": {"sources": [...], "by_name": {name: index}}}``, or nothing.

    A name no cell of this kernel bound (restored at start, carried unloaded)
    keeps the cell the generation *before* recorded for it: the cell that
    assigned it in an earlier kernel, still what ``%persist rerun`` runs.
    """
    too_long: set[str] = set()
    found = namespace.last_assignments(inputs, names, too_long)
    for name in names:
        if before is not None and name not in found and name not in too_long:
            source = cell_of(before, name)
            if source is not None:
                found[name] = source
    if not found:
        return {}
    sources = list(dict.fromkeys(found.values()))
    index = {source: i for i, source in enumerate(sources)}
    by_name = {name: index[source] for name, source in sorted(found.items())}
    return {"cells": {"sources": sources, "by_name": by_name}}


def cell_of(content: Mapping[str, Any], name: str) -> str | None:
    """The source of the cell that last bound *name*, as a checkpoint recorded it."""
    cells = content.get("cells")
    if not isinstance(cells, dict):
        return None
    sources, by_name = cells.get("sources"), cells.get("by_name")
    if not isinstance(sources, list) or not isinstance(by_name, dict):
        return None
    index = by_name.get(name)
    if isinstance(index, int) and 0 <= index < len(sources) and isinstance(sources[index], str):
        return str(sources[index])
    return None


@dataclass
class CarriedGroup:
    """A group of a manifest that was not loaded, to keep in later generations."""

    record: dict[str, Any]  # the manifest's group entry
    variables: dict[str, Any]  # the manifest's variable entries for its names
    hash: str = HASH  # what names its blobs: an older manifest's may differ

    def refs(self) -> list[BlobRef]:
        return group_refs(self.record)


def group_refs(group: Any) -> list[BlobRef]:
    """The blobs of a manifest's group entry, in order (stream, then buffers, chunks in turn)."""
    try:
        pairs = [
            pair
            for part in group["parts"]
            for pair in (part["chunks"] if isinstance(part, dict) else [part])
        ]
        return [BlobRef(str(h), int(n), (int(n),)) for h, n in pairs]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpoint(f"a group entry is malformed ({exc!r})") from exc


def group_id(group: Any) -> str:
    """A stable name for a group: the hash of its pickle stream."""
    return str(group_refs(group)[0].hash) if group.get("parts") else ""
