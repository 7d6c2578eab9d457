"""What a manifest's ``content`` says, as typed objects, parsed and checked once.

The store (:mod:`persistent_kernel.store`) keeps ``content`` as opaque JSON;
this module is the one place that reads it. Every reader (restore, export,
the CLI, ``%persist``) takes a :class:`Content` from :func:`parse`, so a
malformed field is found in one place and reported as one
:class:`CorruptCheckpoint` naming the field, before anything is read or
unpickled. The schema (format 1 and 2 alike)::

    {"variables": {name: {"type": "pandas.core.frame.DataFrame",
                          "group": 0 | null, "module": "numpy" | null,
                          "carried": true (optional)}},
     "groups":    [{"parts": [[blob, size] | {"size": n, "chunks": [[blob, size], ...]}, ...],
                    "size": total,
                    "pickler": "pickle" | "dill" | ..., "names": [...],
                    "files": [[path, size, mtime_ns], ...] (optional)}],
     "skipped":   {name: reason},
     "skipped_types": {name: type} (optional),
     "notes":     [...],
     "packages":  {top-level module: version} (optional)}

A variable has a group (its pickled bytes) or a module (it is re-imported),
never both. A group's parts are the pickle stream then its out-of-band
buffers, each a blob the manifest lists with the same size, or (format 3) a
large buffer stored as chunks, each such a blob (:mod:`.store.chunks`). Unknown keys
are kept (in :attr:`Group.record`) so that data carried into a later
generation keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptCheckpoint, _Malformed
from .store import BlobRef, Manifest


@dataclass(frozen=True)
class Part:
    """One part of a group: a blob, or a large buffer stored as chunks (blob, size)."""

    blob: str | None  # None: chunked
    size: int
    chunks: tuple[tuple[str, int], ...] = ()

    def refs(self) -> list[BlobRef]:
        """The blobs that hold the part, in order."""
        pieces = self.chunks if self.blob is None else ((self.blob, self.size),)
        return [BlobRef(blob, size, (size,)) for blob, size in pieces]


@dataclass(frozen=True)
class Group:
    """Variables pickled together (they share objects), and where their bytes are."""

    index: int
    parts: tuple[Part, ...]  # the stream, then the buffers
    size: int
    pickler: str
    names: tuple[str, ...]
    files: tuple[tuple[str, int, int], ...] = ()  # memmaps: (path, size, mtime_ns)
    record: Mapping[str, Any] = field(default_factory=dict, compare=False)  # as stored

    @property
    def id(self) -> str:
        """A stable name for the group: the hash of its pickle stream."""
        return self.parts[0].blob or ""

    def refs(self) -> list[BlobRef]:
        """Every blob of the group, in order (a chunked part's chunks in turn)."""
        return [ref for part in self.parts for ref in part.refs()]

    def fingerprint(self) -> str:
        """What identifies the group's saved bytes, to compare generations."""
        return ",".join(ref.hash for ref in self.refs())


@dataclass(frozen=True)
class Variable:
    """One saved name: pickled in a group, or a module re-imported by name."""

    name: str
    type: str
    group: int | None
    module: str | None
    carried: bool = False  # kept unloaded from an earlier generation


@dataclass(frozen=True)
class Content:
    """A manifest's content, checked: every index in range, every part a listed blob."""

    generation: int
    hash: str  # what names the blobs of its generation (Manifest.hash)
    variables: dict[str, Variable]
    groups: tuple[Group, ...]
    skipped: dict[str, str]
    notes: tuple[str, ...]
    packages: dict[str, str]
    #: the type of each variable not saved, where the writer knew it
    skipped_types: dict[str, str] = field(default_factory=dict)

    def group_of(self, name: str) -> Group | None:
        """The group holding variable *name* (``None`` for a module or an unknown name)."""
        variable = self.variables.get(name)
        if variable is None or variable.group is None:
            return None
        return self.groups[variable.group]

    def size_of(self, name: str) -> int | None:
        """Bytes of *name*'s group; 0 for a module; ``None`` for an unknown name."""
        if name not in self.variables:
            return None
        group = self.group_of(name)
        return group.size if group is not None else 0

    def fingerprints(self) -> dict[str, str]:
        """name -> what identifies its saved bytes (its group's blobs, or its module)."""
        prints: dict[str, str] = {}
        for name, variable in self.variables.items():
            if variable.module:
                prints[name] = f"module:{variable.module}"
            else:
                group = self.group_of(name)
                assert group is not None
                prints[name] = group.fingerprint()
        return prints


def parse(manifest: Manifest) -> Content:
    """The content of *manifest*, checked; :class:`CorruptCheckpoint` naming a bad field."""
    try:
        return _parse(manifest.content, manifest.blobs, manifest.generation, manifest.hash)
    except _Malformed as exc:
        raise CorruptCheckpoint(
            f"the manifest of generation {manifest.generation} is malformed: {exc}"
        ) from None


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Malformed(f"{what} is {type(value).__name__}, not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = _expect(value, list, what)
    return tuple(_expect(item, str, f"an entry of {what}") for item in items)


def _string_map(value: Any, what: str) -> dict[str, str]:
    items = _expect(value, dict, what)
    return {str(k): _expect(v, str, f"{what}[{k!r}]") for k, v in items.items()}


def _parse(raw: Mapping[str, Any], blobs: Mapping[str, int], generation: int, hash: str) -> Content:
    groups = tuple(
        _group(index, entry, blobs)
        for index, entry in enumerate(_expect(raw.get("groups"), list, "groups"))
    )
    variables: dict[str, Variable] = {}
    for name, entry in _expect(raw.get("variables"), dict, "variables").items():
        what = f"variable {name!r}"
        _expect(entry, dict, what)
        index, module = entry.get("group"), entry.get("module")
        if module is not None:
            _expect(module, str, f"the module of {what}")
        if (index is None) == (not module):
            raise _Malformed(f"{what} must have a group or a module, not both or neither")
        if index is not None:
            _expect(index, int, f"the group of {what}")
            if not 0 <= index < len(groups):
                raise _Malformed(f"{what} names group {index}, of {len(groups)}")
            if name not in groups[index].names:
                raise _Malformed(f"{what} is not among the names of group {index}")
        variables[name] = Variable(
            name=str(name),
            type=_expect(entry.get("type", "?"), str, f"the type of {what}"),
            group=index,
            module=module or None,
            carried=bool(entry.get("carried", False)),
        )
    return Content(
        generation=generation,
        hash=hash,
        variables=variables,
        groups=groups,
        skipped=_string_map(raw.get("skipped", {}), "skipped"),
        notes=_strings(raw.get("notes", []), "notes"),
        packages=_string_map(raw.get("packages") or {}, "packages"),
        skipped_types=_string_map(raw.get("skipped_types") or {}, "skipped_types"),
    )


def _blob(part: Any, blobs: Mapping[str, int], what: str) -> tuple[str, int]:
    """A ``[blob, size]`` pair the manifest lists."""
    if not (isinstance(part, list) and len(part) == 2):
        raise _Malformed(f"a part of {what} is not a [blob, size] pair")
    blob = _expect(part[0], str, f"a blob name of {what}")
    size = _expect(part[1], int, f"a part size of {what}")
    if blobs.get(blob) != size:
        raise _Malformed(f"{what} names blob {blob}, which the manifest does not list")
    return blob, size


def _group(index: int, entry: Any, blobs: Mapping[str, int]) -> Group:
    what = f"group {index}"
    _expect(entry, dict, what)
    parts: list[Part] = []
    for index_in_group, part in enumerate(
        _expect(entry.get("parts"), list, f"the parts of {what}")
    ):
        if isinstance(part, dict) and index_in_group > 0:
            chunks = tuple(
                _blob(c, blobs, what)
                for c in _expect(part.get("chunks"), list, f"the chunks of {what}")
            )
            total = _expect(part.get("size"), int, f"a part size of {what}")
            if not chunks or total != sum(n for _, n in chunks):
                raise _Malformed(f"the chunks of a part of {what} do not add up to its size")
            parts.append(Part(None, total, chunks))
        else:
            blob, size = _blob(part, blobs, what)
            parts.append(Part(blob, size))
    if not parts:
        raise _Malformed(f"{what} has no parts")
    size = _expect(entry.get("size", sum(p.size for p in parts)), int, f"the size of {what}")
    if size != sum(p.size for p in parts):
        raise _Malformed(f"the size of {what} is not the sum of its parts")
    files: list[tuple[str, int, int]] = []
    for item in _expect(entry.get("files", []), list, f"the files of {what}"):
        if not (isinstance(item, list) and len(item) == 3):
            raise _Malformed(f"a file of {what} is not a [path, size, mtime] triple")
        files.append(
            (
                _expect(item[0], str, f"a file path of {what}"),
                _expect(item[1], int, f"a file size of {what}"),
                _expect(item[2], int, f"a file time of {what}"),
            )
        )
    return Group(
        index=index,
        parts=tuple(parts),
        size=size,
        pickler=_expect(entry.get("pickler"), str, f"the pickler of {what}"),
        names=_strings(entry.get("names"), f"the names of {what}"),
        files=tuple(files),
        record=dict(entry),
    )
