"""Checkpoints read back: restore at start, one generation on demand, history.

``restore_checkpoint`` runs in the kernel at start (in a thread beside the
event loop); ``load_generation`` serves ``%persist restore`` and export;
``history`` compares generations from their manifests alone. The manifest
format is :mod:`persistent_kernel.checkpoint`'s. **Unpickling runs code**:
only manifests the store has verified as ours are loaded.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from . import serializer
from .checkpoint import (
    CarriedGroup,
    cell_of,
    environment_info,
    installed_version,
    is_installed,
)
from .content import Content, Group
from .content import parse as parse_content
from .errors import NoCheckpoint, NoSuchVariable, RestoreInterrupted, UnreadableCheckpoint
from .store import HASH, Manifest, SessionStore, chunks


def version_changes(manifest: Manifest) -> list[str]:
    """What differs between the Python that wrote *manifest* and this one:
    Python, dill, and the packages its variables' types come from."""
    saved: dict[str, Any] = {k: manifest.raw.get(k) for k in ("python", "dill")}
    saved.update(parse_content(manifest).packages)
    here = environment_info()
    changes = []
    for name, then in saved.items():
        if not isinstance(then, str):
            continue
        now = here[name] if name in here else installed_version(name)
        if now is None and name not in here and is_installed(name):
            continue  # installed, but of no version we can tell: nothing to warn about
        if now != then:
            changes.append(f"{name} {then} (now {now or 'not installed'})")
    return changes


class Pending:
    """The names a restore is still to bind, for cells that wait only for theirs.

    Nothing is known until the restore has chosen its generation
    (:meth:`choose`): every name that generation will bind is pending from
    then on, and a group's names stop being pending once the group is bound,
    skipped or carried (:meth:`settled`). :meth:`finish` ends it (the restore
    ended, or never began): nothing is pending any more. Thread-safe: the
    restoring thread writes, the kernel reads and waits.

    A cell that waits for names asks for them (:meth:`wait_for`); the
    restore loads a group holding one of them next (:meth:`wanted`).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._chosen = False
        self._done = False
        self._names: set[str] = set()
        self._bytes = 0
        self._waiting: list[set[str]] = []  # the names each waiting cell waits for

    @property
    def chosen(self) -> bool:
        """Whether the names to come are known (the generation is chosen, or it ended)."""
        return self._chosen

    @property
    def done(self) -> bool:
        """Whether the restore ended: nothing more will be bound."""
        return self._done

    @property
    def bytes_left(self) -> int:
        """The stored size of the groups still to be bound (0 before the choice)."""
        return self._bytes

    def choose(self, names: Iterable[str], nbytes: int = 0) -> None:
        """The generation is chosen: *names* are to come, in groups of *nbytes* in all."""
        with self._changed:
            if not self._done:
                self._names, self._bytes = set(names), nbytes
                self._chosen = True
            self._changed.notify_all()

    def settled(self, names: Iterable[str], nbytes: int = 0) -> None:
        """*names* (of a group of *nbytes*) are bound, skipped or carried."""
        with self._changed:
            self._names.difference_update(names)
            self._bytes = max(0, self._bytes - nbytes)
            self._changed.notify_all()

    def finish(self) -> None:
        """The restore ended (or never began): nothing is pending, no one waits."""
        with self._changed:
            self._names.clear()
            self._bytes = 0
            self._chosen = self._done = True
            self._changed.notify_all()

    def pending(self, names: Iterable[str]) -> set[str]:
        """Those of *names* still to be bound (none before the generation is chosen:
        ask :attr:`chosen` first)."""
        with self._changed:
            return self._names.intersection(names)

    def wait_for(self, names: Iterable[str] | None, timeout: float | None) -> bool:
        """Wait until none of *names* is pending (None: until the restore ended), at
        most *timeout* seconds; True if so. Before the generation is chosen, every
        name counts as pending. The names are loaded first (see :meth:`wanted`)."""
        wanted = None if names is None else set(names)

        def ready() -> bool:
            if self._done:
                return True
            return wanted is not None and self._chosen and not self._names & wanted

        with self._changed:
            if wanted is not None:
                self._waiting.append(wanted)
            try:
                return self._changed.wait_for(ready, timeout)
            finally:
                if wanted is not None:
                    self._waiting.remove(wanted)

    def wanted(self) -> set[str]:
        """The pending names a cell waits for now."""
        with self._changed:
            return {n for n in self._names if any(n in w for w in self._waiting)}


class RestoreProgress:
    """Shared between a restoring thread and the kernel that waits for it.

    The restoring side adds to :attr:`done`; the kernel reads it and may set
    :attr:`stop` (an interrupt), which ends the restore at the next chunk read
    or before the next group is unpickled. Plain attributes: one writer each.
    :attr:`names` says which names are still to come (see :class:`Pending`).
    """

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.generation: int | None = None
        self.stop = threading.Event()
        self.names = Pending()
        #: Called with each chunked buffer once read and checked, and its chunks' (name,
        #: size) (the kernel watches its memory from then on: see pagewrites).
        self.on_chunked: Callable[[Any, list[tuple[str, int]]], None] | None = None
        #: Where large chunked buffers are mapped to be read on first touch, or None:
        #: read at once (see lazypages).
        self.pages: chunks.Pages | None = None

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.stop.is_set():
            raise RestoreInterrupted

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass
class RestoreReport:
    """What a restore brought back, and what it did not."""

    generation: int | None = None
    created: float | None = None
    size: int = 0
    restored: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # generations passed over, and why
    waited: float = 0.0  # seconds spent waiting for a previous writer
    elapsed: float = 0.0
    interrupted: bool = False
    versions: list[str] = field(default_factory=list)  # "pandas 2.2.0 (now 3.1.1)"
    # name -> {"type": ..., "size": bytes of its group or None, "group": its index or None},
    # from the manifest
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    renamed_from: str | None = None  # the notebook's old path, if it was renamed
    carried: list[CarriedGroup] = field(default_factory=list)  # groups not loaded, intact
    # name -> source of the cell that last bound it (for `%persist rerun NAME`)
    cells: dict[str, str] = field(default_factory=dict)
    # names whose group was unpickled ahead of time, from the same bytes (see Preloaded)
    reused: list[str] = field(default_factory=list)
    # how the kernel that wrote the generation ended, when its standby wrote it:
    # {"how": "killed" | "stopped", "at": time, "cell": first line or None}
    ended: dict[str, Any] | None = None


GroupKey = tuple[str, str, str]


@dataclass(frozen=True)
class Unread:
    """A group whose files are there but could not be read now (see :func:`_read_groups`)."""

    reason: str


Parts = list[Any] | None | Unread  # a group's buffers; None: damaged (already reported)


def group_key(content: Content, group: Group) -> GroupKey:
    """What makes two groups unpickle to the same values: the hash that names
    their blobs, their pickler and every blob's hash (stream, buffers, chunks)."""
    return (content.hash, group.pickler, group.fingerprint())


class Preloaded:
    """Groups unpickled ahead of a restore, by the bytes they came from.

    A kernel that starts while the previous kernel's writer is still writing
    (its final checkpoint) unpickles the newest generation already on disk
    meanwhile (:func:`preload`); the restore that follows the wait takes from
    here every group whose bytes are unchanged (:func:`group_key`) and reads
    and unpickles only the rest. The restored state is still the newest
    generation's: a value is taken only where its bytes are that
    generation's, byte for byte. Each value is taken once; what is left is
    dropped with this object.

    Limits: a restore drops the values of the groups that changed before it
    reads their new data (:meth:`keep_only`), yet while the writer runs the
    machine holds the state twice, in the writer and here: the kernel
    preloads only when there is room for it (:mod:`persistent_kernel.memory`).
    """

    def __init__(self, key: str) -> None:
        self.key = key  # the session it was loaded from
        self.generation: int | None = None
        self._values: dict[GroupKey, dict[str, Any]] = {}

    def put(self, key: GroupKey, values: dict[str, Any]) -> None:
        self._values[key] = values

    def take(self, key: GroupKey) -> dict[str, Any] | None:
        """The values of the group with *key*, once; ``None`` if not preloaded."""
        return self._values.pop(key, None)

    def keep_only(self, keys: set[GroupKey]) -> None:
        """Drop (and so free) every value whose group is not among *keys*: done before
        a generation's data is read, so that the values it replaced are gone first."""
        for key in self._values.keys() - keys:
            del self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)


def preload(session: SessionStore, key: str, progress: RestoreProgress | None = None) -> Preloaded:
    """Unpickle the newest intact generation of *session* into a :class:`Preloaded`.

    Never raises for what it cannot read or load: a group it cannot load is
    left out, and the restore after it reads that group again (and reports
    it). Stops early when *progress* is stopped. It reads while a writer may
    be committing and pruning: what it reads is verified by hash as ever,
    and a generation pruned under it is passed over.
    **Unpickling runs code**, as a restore does; crash markers are left as in
    a restore, so a group that kills the kernel is skipped at its next start.
    """
    found = Preloaded(key)
    try:
        manifest, blobs = session.newest(lambda m: _read_groups(session, m, progress))
    except (NoCheckpoint, RestoreInterrupted, OSError):
        return found
    content = parse_content(manifest)
    found.generation = manifest.generation
    poisoned = session.poisoned()
    for group, parts in zip(content.groups, blobs, strict=True):
        if progress is not None and progress.stop.is_set():
            break
        if not isinstance(parts, list) or group.id in poisoned or _missing_file(group):
            continue
        try:
            values = _unpickle(session, group, parts)
        except Exception:
            continue  # the restore tries again, and says why
        found.put(group_key(content, group), values)
    return found


def _read_group(
    session: SessionStore, manifest: Manifest, group: Group, progress: RestoreProgress | None
) -> list[Any]:
    buffers = []
    on_read = progress.advance if progress is not None else None
    for part in group.parts:  # each blob listed by the manifest: checked by content.parse
        if part.blob is None:
            refs = part.refs()
            pages = progress.pages if progress is not None else None
            mapped = None
            if pages is not None:
                label = ", ".join(group.names)
                mapped = chunks.map_chunked(session, refs, pages, manifest.hash, label)
            if mapped is None:
                mapped = chunks.read_chunked(session, refs, manifest.hash, on_read)
            elif on_read is not None:
                on_read(sum(ref.size for ref in refs))
            buffers.append(mapped)
            if progress is not None and progress.on_chunked and manifest.hash == HASH:
                progress.on_chunked(buffers[-1], [(ref.hash, ref.size) for ref in refs])
        else:
            (ref,) = part.refs()
            buffers.extend(session.read_blob(ref, on_read, hash=manifest.hash))
    return buffers


def _read_groups(
    session: SessionStore,
    manifest: Manifest,
    progress: RestoreProgress | None,
    partial: RestoreReport | None = None,
    reuse: Preloaded | None = None,
) -> list[Parts]:
    """Every group's parts; with *partial*, a damaged group is ``None`` and noted.
    A group in *reuse* is not read (its parts are an empty list).

    A group whose files fail to read (EIO, EACCES, a folder in a file's place,
    a bucket that stops answering) is :class:`Unread`: that is no proof of
    damage, and passing the generation over for an older one would cost every
    other group of it. The restore loads the rest and carries the group
    forward as it is, so it comes back once its files can be read again.
    """
    parts: list[Parts] = []
    if progress is not None:
        progress.generation, progress.total, progress.done = manifest.generation, manifest.size, 0
    content = parse_content(manifest)
    for group in content.groups:
        if reuse is not None and group_key(content, group) in reuse:
            parts.append([])
            if progress is not None:
                progress.done += group.size
            continue
        try:
            parts.append(_read_group(session, manifest, group, progress))
        except UnreadableCheckpoint as exc:
            if partial is None:
                raise
            partial.skipped.update(dict.fromkeys(group.names, f"its data is damaged ({exc})"))
            parts.append(None)
        except OSError as exc:
            parts.append(Unread(f"its data could not be read ({exc.strerror or exc})"))
    return parts


def restore_checkpoint(
    session: SessionStore,
    into: dict[str, Any],
    progress: RestoreProgress | None = None,
    reuse: Preloaded | None = None,
) -> RestoreReport:
    """Load the newest intact generation of *session* into *into*.

    Groups whose bytes *reuse* has already unpickled (:func:`preload`) are
    taken from it, neither read nor unpickled again.

    Every blob of a generation is read and checked before anything is
    unpickled; a generation with a bad manifest or blob is passed over for
    the next older one, and the report says why. A group that fails to
    unpickle skips its own variables only. **Unpickling runs code.**

    Setting ``progress.stop`` interrupts: while blobs are read nothing has
    been loaded yet and nothing is; once unpickling has begun, the groups
    already loaded stay. Either way the report says so.

    Groups are bound one by one, smallest first, and ``progress.names``
    says which names are still to come (see :class:`Pending`), so that a
    cell that needs none of them can run meanwhile.
    """
    start = time.monotonic()
    report = RestoreReport()
    try:
        _restore(session, into, progress, report, reuse)
    except RestoreInterrupted:
        report.interrupted = True
        report.problems.append(
            "the restore was interrupted"
            + (
                f"; {len(report.restored)} variable(s) were loaded before it stopped"
                if report.restored
                else " before anything was loaded"
            )
        )
    finally:
        if progress is not None:
            progress.names.finish()  # nothing more is bound
    report.elapsed = time.monotonic() - start
    return report


def load_generation(
    session: SessionStore,
    generation: int | None = None,
    names: Sequence[str] | None = None,
    progress: RestoreProgress | None = None,
    main: ModuleType | None = None,
) -> tuple[dict[str, Any], RestoreReport]:
    """Load one generation (default: the newest) into a new dict, nothing else.

    With *names*, only the groups holding those variables are read and
    unpickled (their group-mates come along: they share objects). Raises
    :class:`NoSuchVariable` for a name it never held, :class:`NoCheckpoint`,
    :class:`CorruptCheckpoint` or
    :class:`UntrustedCheckpoint` for a generation that cannot be read whole.
    Notebook functions get *main*'s namespace as their globals (default:
    this process's ``__main__``); put the values into it for them to see
    each other. Unlike a restore it leaves no crash marker, so a load that
    dies outside the kernel does not make the kernel skip that data at its
    next start. **Unpickling runs code.**
    """
    start = time.monotonic()
    if generation is None:
        manifest, _ = session.latest()
    else:
        manifest = session.read_manifest(generation)
    if names is not None:
        wanted = set(names)
        parsed = parse_content(manifest)
        missing = wanted - set(parsed.variables)
        if missing:
            raise NoSuchVariable(
                f"generation {manifest.generation} has no variable {', '.join(sorted(missing))}"
            )
        chosen = [g for g in parsed.groups if wanted & set(g.names)]
        groups = [dict(g.record) for g in chosen]
        index = {g.index: i for i, g in enumerate(chosen)}  # old group number -> new
        variables = {
            n: {**v, "group": index[v["group"]]} if v.get("group") is not None else v
            for n, v in manifest.content["variables"].items()
            if n in wanted or (v.get("group") in index)
        }
        content = {**manifest.content, "groups": groups, "variables": variables, "skipped": {}}
        manifest = replace(manifest, content=content)
    values: dict[str, Any] = {}
    report = RestoreReport()
    blobs = _read_groups(session, manifest, progress)
    _load(session, manifest, blobs, values, report, progress, main=main, markers=False)
    report.elapsed = time.monotonic() - start
    return values, report


def _restore(
    session: SessionStore,
    into: dict[str, Any],
    progress: RestoreProgress | None,
    report: RestoreReport,
    reuse: Preloaded | None = None,
) -> None:
    readable: list[Manifest] = []

    def read(manifest: Manifest) -> list[Parts]:
        # A malformed manifest is passed over, like a damaged one.
        content = parse_content(manifest)
        readable.append(manifest)
        if reuse is not None:
            reuse.keep_only({group_key(content, group) for group in content.groups})
        try:
            return _read_groups(session, manifest, progress, reuse=reuse)
        except RestoreInterrupted:
            # Stopped while reading: nothing is unpickled, all of it stays pending.
            _load(session, manifest, None, into, report, progress)
            raise

    try:
        manifest, blobs = session.newest(read, report.problems)
    except NoCheckpoint:
        if not readable:
            return
        # No generation is whole (they share a damaged blob): bring back
        # what is intact in the newest rather than nothing.
        try:
            blobs = _read_groups(session, readable[0], progress, partial=report)
        except UnreadableCheckpoint:
            return
        report.problems.append(
            f"no generation was intact; restored what is left of generation "
            f"{readable[0].generation}"
        )
        manifest = readable[0]
        reuse = None  # read as it is: nothing was skipped
    pending = progress.names if progress is not None else None
    _load(session, manifest, blobs, into, report, progress, reuse=reuse, pending=pending)


def _load(
    session: SessionStore,
    manifest: Manifest,
    blobs: list[Parts] | None,
    into: dict[str, Any],
    report: RestoreReport,
    progress: RestoreProgress | None,
    main: ModuleType | None = None,
    markers: bool = True,
    reuse: Preloaded | None = None,
    pending: Pending | None = None,
) -> None:
    """Unpickle *blobs* into *into*. *markers*: leave a crash marker while a
    group is unpickled, and skip groups whose unpickling killed a kernel.
    *blobs* None: the read was interrupted; modules are imported, every group
    is carried unchanged. A group in *reuse* is taken from it (its *blobs*
    entry is empty), after the same checks of its files.

    Groups are loaded smallest first (a group a cell waits for in *pending*
    first of all), so that small variables are there soon; *pending* hears
    which names are to come once the generation is known, and each group's
    names once it is bound, skipped or carried."""
    content = parse_content(manifest)
    report.generation, report.created, report.size = (
        manifest.generation,
        manifest.created,
        manifest.size,
    )
    if pending is not None and blobs is not None:
        pending.choose(content.variables, sum(group.size for group in content.groups))
    report.versions = version_changes(manifest)
    ended = manifest.raw.get("ended")
    report.ended = ended if isinstance(ended, dict) and ended.get("how") else None
    for name in [*content.variables, *content.skipped]:
        source = cell_of(manifest.content, name)
        if source is not None:
            report.cells[name] = source
    for name, variable in content.variables.items():
        group = content.group_of(name)
        report.details[name] = {
            "type": variable.type,
            "size": group.size if group else None,
            "group": variable.group,  # variables of one group share its size
        }
    for name, reason in content.skipped.items():
        report.skipped[name] = f"not saved: {reason}"
        report.details[name] = {"type": content.skipped_types.get(name, ""), "size": None}
    modules = {name: v.module for name, v in content.variables.items() if v.module}

    def bind_modules() -> None:
        for name, module in modules.items():
            try:
                into[name] = serializer.import_module(module)
                report.restored.append(name)
            except Exception as exc:
                report.skipped[name] = f"module {module} could not be imported ({exc})"
            if pending is not None:
                pending.settled([name])
        modules.clear()

    if blobs is None:
        bind_modules()
        report.restored.sort()
        report.carried.extend(_carry(content, g) for g in content.groups)
        raise RestoreInterrupted
    poisoned = session.poisoned() if markers else set()
    # sorted is stable: groups of one size keep the manifest's order
    left = sorted(zip(content.groups, blobs, strict=True), key=lambda item: item[0].size)
    try:
        while left:
            index = _next_group(left, pending)
            group, parts = left[index]
            # The modules the namespace holds are imported before the first group
            # that may use them while it is unpickled: one of dill's (a notebook
            # function in a reducer calls `time.sleep` through the namespace). The C
            # pickler's groups name only importable things, so small ones go first:
            # a cold `numpy` import would hold the first cell longer than they all.
            wanted = pending.wanted() if pending is not None else set()
            if modules and (group.pickler != "pickle" or wanted & modules.keys()):
                bind_modules()
                continue  # that took a while: a cell may wait for another group now
            left.pop(index)
            try:
                _load_group(session, content, group, parts, into, report, progress, main,
                            markers, reuse, poisoned, [g for g, _ in left])  # fmt: skip
            finally:
                if pending is not None:
                    pending.settled(group.names, group.size)
    finally:
        bind_modules()  # also when interrupted: a module is no group to carry
    report.restored.sort()
    report.reused.sort()
    if markers and not session.end_loading():  # one removal failed: try once more
        report.problems.append(
            "the marker of the data being loaded could not be removed; the next start may "
            "leave the last group loaded alone, and will say so"
        )


def _next_group(left: list[tuple[Group, Parts]], pending: Pending | None) -> int:
    """Which of the groups *left* to load next: the first a cell waits for, else the first."""
    wanted = pending.wanted() if pending is not None else set()
    if wanted:
        for index, (group, _) in enumerate(left):
            if wanted.intersection(group.names):
                return index
    return 0


def _load_group(
    session: SessionStore,
    content: Content,
    group: Group,
    parts: Parts,
    into: dict[str, Any],
    report: RestoreReport,
    progress: RestoreProgress | None,
    main: ModuleType | None,
    markers: bool,
    reuse: Preloaded | None,
    poisoned: set[str],
    rest: list[Group],
) -> None:
    """Load one group into *into*, or say why not; *rest*: the groups still to load
    after it, carried with it if the restore is stopped now."""
    if parts is None:  # damaged: already reported
        return
    if isinstance(parts, Unread):
        reason = f"{parts.reason}; it is kept in the checkpoint as it was"
        report.skipped.update(dict.fromkeys(group.names, reason))
        report.carried.append(_carry(content, group))
        return
    if progress is not None and progress.stop.is_set():
        report.restored.sort()
        stopped = sorted([group, *rest], key=lambda g: g.index)
        report.carried.extend(_carry(content, g) for g in stopped)
        raise RestoreInterrupted
    names = list(group.names)
    if group.id in poisoned:
        reason = "loading it crashed the kernel at an earlier start, so it was left alone"
        report.skipped.update(dict.fromkeys(names, reason))
        report.carried.append(_carry(content, group))
        return
    missing = _missing_file(group)
    if missing:
        report.skipped.update(dict.fromkeys(names, missing))
        report.carried.append(_carry(content, group))
        return
    report.problems.extend(_changed_files(group, names))
    preloaded = reuse.take(group_key(content, group)) if reuse is not None else None
    if preloaded is not None:
        into.update(preloaded)
        report.restored.extend(preloaded)
        report.reused.extend(preloaded)
        return
    try:
        values = _unpickle(session, group, parts, main, markers)
    except Exception as exc:
        reason = f"could not be loaded ({serializer.describe_error(exc)})"
        report.skipped.update(dict.fromkeys(names, reason))
        report.carried.append(_carry(content, group))
        return
    into.update(values)
    report.restored.extend(values)


def _unpickle(
    session: SessionStore,
    group: Group,
    parts: list[Any],
    main: ModuleType | None = None,
    markers: bool = True,
) -> dict[str, Any]:
    """Unpickle one group's *parts*; with *markers*, a crash marker names the group
    while it runs, so that a start after a crash here leaves the group alone."""
    if markers:
        session.begin_loading(group.id)
    try:
        return serializer.load_payload(group.pickler, parts[0], parts[1:], main)
    finally:
        if markers:
            session.end_loading()


def _group_files(group: Group) -> list[tuple[str, int, int, os.stat_result | None]]:
    """The files a group's memmaps are re-opened on: path, size, mtime, stat now."""
    found = []
    for path, size, mtime in group.files:  # checked by content.parse
        try:
            stat: os.stat_result | None = os.stat(path)
        except OSError:
            stat = None
        found.append((path, size, mtime, stat))
    return found


def _missing_file(group: Group) -> str | None:
    """Why a group's memmaps, files or databases cannot be re-opened, or None.

    A memmap's file must be there with the same size; a file read from must
    be unchanged (size and modification time), or its old position would
    mean nothing; a database file must still exist (connecting would make an
    empty one)."""
    for entry in group.record.get("opened") or []:
        try:
            path, size, mtime, rule = str(entry[0]), int(entry[1]), int(entry[2]), str(entry[3])
        except (TypeError, ValueError, IndexError):
            continue
        try:
            now = os.stat(path)
        except OSError:
            return f"its file {path} is gone, so it was not re-opened"
        if rule == "unchanged" and (now.st_size, now.st_mtime_ns) != (size, mtime):
            return f"its file {path} changed since the checkpoint, so it was not re-opened"
    for path, size, _, stat in _group_files(group):
        if stat is None:
            return f"its memory-mapped file {path} is gone"
        if stat.st_size != size:
            return (
                f"its memory-mapped file {path} changed size since the checkpoint "
                f"({size} -> {stat.st_size} bytes), so it was not re-opened"
            )
    return None


def _changed_files(group: Group, names: list[str]) -> list[str]:
    """Notes for memmaps re-opened on files modified since the checkpoint."""
    return [
        f"{', '.join(names)}: re-opened on {path}, which was modified after the checkpoint "
        "(the memmap shows the file as it is now)"
        for path, _, mtime, stat in _group_files(group)
        if stat is not None and stat.st_mtime_ns != mtime
    ]


def _carry(content: Content, group: Group) -> CarriedGroup:
    """A group not loaded, to keep byte for byte in the next generation."""
    variables = {
        v.name: {"type": v.type, "group": v.group, "module": v.module}
        for v in (content.variables.get(n) for n in group.names)
        if v is not None
    }
    return CarriedGroup(dict(group.record), variables, content.hash)


def history(session: SessionStore) -> list[dict[str, Any]]:
    """Every generation kept, oldest first, each with the variables added,
    changed and removed since the readable generation before it (``previous``).

    Nothing is unpickled. A variable counts as changed when its group's saved
    bytes differ, so a change to one of several variables sharing objects
    shows on all of them. A variable the generation left out because it was
    excluded (``%persist exclude``, the configuration) is listed as
    ``excluded``, not ``removed``. A generation whose manifest cannot be read
    is listed with ``error`` (the sentence why) and compared with nothing.
    """
    rows: list[dict[str, Any]] = []
    before: dict[str, str] = {}
    previous: int | None = None
    for generation in session.generations():
        try:
            manifest = session.read_manifest(generation)
            content = parse_content(manifest)
        except NoCheckpoint:  # pruned meanwhile
            continue
        except UnreadableCheckpoint as exc:
            rows.append(
                {"generation": generation, "created": None, "size": None, "variables": [],
                 "added": [], "changed": [], "removed": [], "excluded": [], "previous": None,
                 "error": str(exc)}
            )  # fmt: skip
            continue
        now = content.fingerprints()
        gone = set(before) - set(now)
        excluded = {n for n in gone if content.skipped.get(n, "").startswith("excluded by")}
        rows.append(
            {
                "generation": generation,
                "created": manifest.created,
                "size": manifest.size,
                "variables": sorted(now),
                "added": sorted(set(now) - set(before)),
                "changed": sorted(n for n in set(now) & set(before) if now[n] != before[n]),
                "removed": sorted(gone - excluded),
                "excluded": sorted(excluded),
                "previous": previous,
                "error": None,
            }
        )
        before, previous = now, generation
    return rows
