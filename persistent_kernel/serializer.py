"""Bytes from a namespace, and a namespace from bytes.

The namespace is cut into *groups*: variables that share a mutable object
(``l2 = l1``, an instance and its notebook-defined class) are pickled
together so the sharing survives; every other variable is pickled alone, so
one object that cannot be pickled never sinks the rest, and an unchanged
variable yields the same bytes as last time (the store then skips it).

Each variable is first pickled with the C pickler at protocol 5, with
out-of-band buffers, so numpy arrays and pandas blocks are never copied.
Anything defined in the notebook itself (``__main__`` functions, classes,
lambdas) makes the C pickler give up and dill takes over for that variable:
dill pickles those by value, and their globals as a reference to
``__main__.__dict__``, so a restored function sees the restored namespace.

dill is imported on first use, never at import time: dill binds
``__main__`` when it is first imported, and the kernel imports this module
before IPython has put the notebook's namespace in ``sys.modules["__main__"]``
(``dill.dump_module()`` in a notebook would then save the launcher instead).
The kernel imports dill once its shell exists (:func:`import_dill`).

**Saved means restorable.** What either pickler would save *by name* from
``__main__`` (which a fresh ``__main__`` lacks) is pickled by value through
:mod:`persistent_kernel.reducers`, or refused: the variable is skipped with
the reason, never reported saved. dill's warnings that it fell back to a
name are checked against the stream (:func:`check_by_name`).

A structure nested deeper than the recursion limit is pickled again in a
thread with a large stack (:func:`deeply`); the background writer is where
that runs, so a stack that still runs out kills the writer, not the kernel.

Limits: sharing is detected through the picklers' memo, i.e. between
objects that pickle reaches. Immutable values (str, bytes, numbers, tuples,
frozensets) and objects imported from modules are not counted as sharing:
their identity carries no meaning. numpy views are pickled with the array
owning their memory, so they share it after a restore (see reducers).
"""

from __future__ import annotations

import importlib
import io
import itertools
import pickle
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import (
    BuiltinFunctionType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import IO, Any, TypeVar

from .reducers import (
    NotRestorable,
    Reductions,
    is_from_main,
    main_references,
    register_with_dill,
)

PROTOCOL = 5

#: A structure nested deeper than the default recursion limit allows is pickled
#: again in a thread with this much stack and this recursion limit (a pickler
#: recurses once per level, in C and in Python).
DEEP_STACK = 512 * 1024 * 1024
DEEP_RECURSION_LIMIT = 200_000

#: Types whose identity carries no meaning; sharing one is not sharing.
_VALUE_TYPES: frozenset[type] = frozenset(
    {str, bytes, int, float, complex, bool, type(None), tuple, frozenset, range, slice,
     type(Ellipsis), type(NotImplemented), pickle.PickleBuffer}
)  # fmt: skip
_GLOBAL_TYPES = (
    type,
    FunctionType,
    BuiltinFunctionType,
    MethodType,
    ModuleType,
    MethodDescriptorType,
    WrapperDescriptorType,
)


class _NeedsDill(Exception):
    """The C pickler met something only dill pickles correctly."""


def _defined_in_main(obj: Any) -> bool:
    return getattr(obj, "__module__", None) == "__main__"


class _FastPickler(pickle.Pickler):
    """The C pickler, refusing what it would pickle *wrongly*.

    The stdlib pickler saves a function or class of ``__main__`` by reference
    (``__main__.f``), which succeeds now and fails at restore time, when the
    name does not exist yet; so does anything else whose ``__module__`` is
    ``__main__`` (an ``lru_cache`` wrapper, a ``TypeVar``). Those are dill's
    job. (The C pickler does not call this for ints, strings, lists, dicts...)
    """

    def __init__(self, out: Any, reductions: Reductions, **kwargs: Any) -> None:
        super().__init__(out, **kwargs)
        self.reductions = reductions

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, FunctionType)) and _defined_in_main(obj):
            raise _NeedsDill
        reduced = self.reductions.reduce(obj)
        if reduced is NotImplemented and is_from_main(obj):
            raise _NeedsDill
        return reduced


#: Types the pure-Python dill pickler passes to ``reducer_override`` that are
#: never special: skipped before anything else is looked at.
_PLAIN_TYPES: frozenset[type] = _VALUE_TYPES | {list, dict, set}


def _dill_pickler(out: Any, reductions: Reductions, **kwargs: Any) -> Any:
    """A dill pickler that pickles nothing by a name a restore cannot find.

    The hooks are set on the instance, not in a subclass: dill treats its own
    class specially (it saves ``__main__``'s namespace as a reference that
    the unpickler can point elsewhere, as export needs). What reaches
    ``save_global`` with the module ``__main__`` is refused here; dill's own
    fallbacks to saving by name are caught by :func:`check_by_name`.
    """
    import dill

    register_with_dill()
    pickler = dill.Pickler(out, **kwargs)
    plain_save_global = pickler.save_global

    def reducer_override(obj: Any) -> Any:
        if type(obj) in _PLAIN_TYPES:
            return NotImplemented
        return reductions.reduce(obj)

    def save_global(obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        if module is None:
            module = pickle.whichmodule(obj, name or getattr(obj, "__qualname__", ""))  # type: ignore[attr-defined]
        if module == "__main__":
            label = name or getattr(obj, "__qualname__", None) or type(obj).__name__
            raise NotRestorable(
                f"{label} defined in the notebook would be saved by its name, "
                "which a restarted kernel cannot find"
            )
        plain_save_global(obj, name)

    pickler.reducer_override = reducer_override
    pickler.save_global = save_global
    return pickler


@dataclass
class Payload:
    """One group of variables, pickled: a pickle stream plus its buffers."""

    names: list[str]
    pickler: str  # "pickle" or "dill"
    data: bytes | memoryview
    buffers: list[pickle.PickleBuffer] = field(default_factory=list)
    #: ``[path, size, mtime_ns]`` of files that memmaps in it are re-opened on
    files: list[list[Any]] = field(default_factory=list)
    #: ``[path, size, mtime_ns, rule]`` of files and databases re-opened on load
    opened: list[list[Any]] = field(default_factory=list)

    def parts(self) -> list[memoryview]:
        """The bytes to store, in order: the stream, then each buffer."""
        return [memoryview(self.data), *(buf.raw() for buf in self.buffers)]


@dataclass
class Serialized:
    """The result of :func:`serialize`."""

    payloads: list[Payload]
    modules: dict[str, str]  # variable name -> module name
    types: dict[str, str]  # variable name -> qualified type name
    skipped: dict[str, str]  # variable name -> reason
    notes: list[str] = field(default_factory=list)


def type_name(value: Any) -> str:
    """``module.QualName`` of *value*'s type, as shown to users."""
    tp = type(value)
    module = getattr(tp, "__module__", "") or ""
    qualname = getattr(tp, "__qualname__", tp.__name__)
    return qualname if module == "builtins" else f"{module}.{qualname}"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "too deeply nested to pickle"
    if isinstance(exc, NotRestorable):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Dumped:
    data: memoryview
    buffers: list[pickle.PickleBuffer]
    seen: list[Any]
    reductions: Reductions


def _dump(obj: Any, use_dill: bool, track: bool = True) -> _Dumped:
    """Pickle *obj*; return the stream, its buffers and every object pickled.

    The objects are collected through ``persistent_id``, which both picklers
    call once per object they meet: set to ``list.append`` it costs a C call
    per object, where copying the C pickler's memo afterwards costs several
    times the pickling itself on a million small objects. ``track=False``
    skips that (the list comes back empty).

    A structure too deeply nested for the recursion limit (a linked list of
    10,000 nodes) is pickled again in a thread with a large stack and a high
    recursion limit (see :func:`deeply`).
    """
    try:
        return _dump_once(obj, use_dill, track)
    except RecursionError:
        return deeply(lambda: _dump_once(obj, use_dill, track))


def _dump_once(obj: Any, use_dill: bool, track: bool) -> _Dumped:
    buffers: list[pickle.PickleBuffer] = []
    seen: list[Any] = []
    out = io.BytesIO()
    reductions = Reductions()
    pickler: Any
    kwargs: dict[str, Any] = {"protocol": PROTOCOL, "buffer_callback": buffers.append}
    if use_dill:
        import dill

        pickler = _dill_pickler(out, reductions, **kwargs)
        if track:
            pickler.persistent_id = seen.append  # returns None: nothing is made persistent
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dill.PicklingWarning)
            pickler.dump(obj)
        check_by_name(out.getbuffer(), caught)
    else:
        pickler = _FastPickler(out, reductions, **kwargs)
        if track:
            pickler.persistent_id = seen.append
        pickler.dump(obj)
    return _Dumped(out.getbuffer(), buffers, seen, reductions)


def check_by_name(
    data: bytes | memoryview | IO[bytes], caught: list[warnings.WarningMessage]
) -> None:
    """Raise :class:`NotRestorable` if dill, having warned that it fell back to
    saving something by name, saved a name a fresh ``__main__`` lacks.

    dill warns for harmless fallbacks too (a type found under another name of
    an importable module), so a warning alone is no failure: the stream is.
    """
    import dill

    warned = [w for w in caught if issubclass(w.category, dill.PicklingWarning)]
    if not warned:
        return
    missing = main_references(data)
    if missing:
        raise NotRestorable(
            f"{', '.join(dict.fromkeys(missing))} defined in the notebook could only be saved "
            f"by name, which a restarted kernel cannot find ({warned[0].message})"
        )


_T = TypeVar("_T")


def deeply(func: Callable[[], _T]) -> _T:
    """Run *func* in a thread with :data:`DEEP_STACK` of stack and a recursion
    limit of :data:`DEEP_RECURSION_LIMIT`; return its result or raise its error.

    The limit is the interpreter's, so it is raised for the duration only.
    Meant for the background writer: if the stack still ran out, the writer
    would die, not the kernel (the kernel then leaves the variable out).
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def run() -> None:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, DEEP_RECURSION_LIMIT))
        try:
            result.append(func())
        except BaseException as exc:
            error.append(exc)
        finally:
            sys.setrecursionlimit(limit)

    size = threading.stack_size()
    threading.stack_size(DEEP_STACK)
    try:
        thread = threading.Thread(target=run, name="persistent-kernel-deep-pickle")
        thread.start()
    finally:
        threading.stack_size(size)
    thread.join()
    if error:
        raise error[0]
    return result[0]


class _TypeFlags(dict[type, bool]):
    """type -> bool, computed once per type by *rule*; lookups run at C speed."""

    def __init__(self, rule: Callable[[type], bool]) -> None:
        super().__init__()
        self.rule = rule

    def __missing__(self, tp: type) -> bool:
        self[tp] = flag = self.rule(tp)
        return flag


def _is_numpy_dtype(tp: type) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and issubclass(tp, numpy.dtype)


#: Could sharing an object of this type be sharing? (Not for immutable values.)
_IDENTITY_MATTERS = _TypeFlags(lambda tp: tp not in _VALUE_TYPES)
#: Must an object of this type be looked at one by one? Functions and classes
#: count only when defined in the notebook; numpy shares one dtype object among
#: all arrays of a type, which is no sharing.
_NEEDS_A_LOOK = _TypeFlags(lambda tp: issubclass(tp, _GLOBAL_TYPES) or _is_numpy_dtype(tp))


#: Counts as nested: a type whose identity matters, or a tuple (not looked into).
_NESTED = _TypeFlags(lambda tp: tp not in _VALUE_TYPES or tp is tuple)
_IS_TUPLE = _TypeFlags(lambda tp: tp is tuple)


def _flat(value: Any) -> bool:
    """True for a dict, list, set or tuple of values whose identity does not
    matter (numbers, strings, None, ...) and tuples of them.

    Such a container can share nothing with another variable but itself, so
    pickling it needs no tracking: a dict of a million ``str -> tuple`` is
    pickled at the C pickler's full speed. Decided at C speed (``map`` over
    per-type flags), without a Python-level loop over the items.
    """
    tp = type(value)
    if tp is dict:
        sequences: list[Any] = [value.keys(), value.values()]
    elif tp in (list, tuple, set, frozenset):
        sequences = [value]
    else:
        return False
    for items in sequences:
        if any(map(_IDENTITY_MATTERS.__getitem__, map(type, items))):
            return False
        tuples = itertools.compress(items, map(_IS_TUPLE.__getitem__, map(type, items)))
        inner = itertools.chain.from_iterable(tuples)
        if any(map(_NESTED.__getitem__, map(type, inner))):
            return False
    return True


def _shared_candidates(seen: list[Any], ignore: set[int]) -> dict[int, Any]:
    """The objects pickled whose identity matters, keyed by id.

    The objects are kept (not just their ids) so that an id cannot be reused
    by a temporary of another variable while the groups are being formed.
    Everything runs at C speed (``compress`` over per-type flags, ``dict(zip)``)
    except a look at the few functions, classes and dtypes met.
    """
    kept = list(itertools.compress(seen, map(_IDENTITY_MATTERS.__getitem__, map(type, seen))))
    keep: dict[int, Any] = dict(zip(map(id, kept), kept, strict=True))
    for key in ignore & keep.keys():
        del keep[key]
    for obj in itertools.compress(kept, map(_NEEDS_A_LOOK.__getitem__, map(type, kept))):
        if _is_numpy_dtype(type(obj)) or not _defined_in_main(obj):
            keep.pop(id(obj), None)
    return keep


@dataclass
class _Single:
    name: str
    pickler: str
    data: memoryview
    buffers: list[pickle.PickleBuffer]
    shared: dict[int, Any]
    reductions: Reductions


def _pickle_one(name: str, value: Any, ignore: set[int]) -> _Single | str:
    """Pickle ``{name: value}``; return the result or the reason it failed."""
    wrapper = {name: value}
    try:
        if _defined_in_main(type(value)):
            raise _NeedsDill  # an instance of a notebook class: dill, without a wasted try
        flat = _flat(value)
        dumped = _dump(wrapper, use_dill=False, track=not flat)
        if flat:
            dumped.seen = [value]  # the container itself is all it could share
        pickler = "pickle"
    except RecursionError as exc:
        return describe_error(exc)
    except Exception as first:
        try:
            dumped = _dump(wrapper, use_dill=True)
            pickler = "dill"
        except Exception as exc:
            return describe_error(
                exc if isinstance(first, (_NeedsDill, pickle.PicklingError)) else first
            )
    shared = _shared_candidates(dumped.seen, ignore | {id(wrapper)})
    return _Single(name, pickler, dumped.data, dumped.buffers, shared, dumped.reductions)


class _Groups:
    """Union-find over variable names."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        root = self.parent.setdefault(name, name)
        while root != self.parent[root]:
            root = self.parent[root]
        self.parent[name] = root
        return root

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def serialize(
    values: Mapping[str, Any], on_variable: Callable[[str], None] | None = None
) -> Serialized:
    """Pickle *values* into groups; never raises for a bad value.

    Modules bound to names are recorded by name and re-imported on restore.
    Values that cannot be pickled land in ``skipped`` with a reason.
    *on_variable* is told each name (or comma-joined group) before it is
    pickled, so that a process killed while pickling can be blamed on it.
    """
    modules: dict[str, str] = {}
    types: dict[str, str] = {}
    skipped: dict[str, str] = {}
    singles: dict[str, _Single] = {}
    owner: dict[int, str] = {}
    groups = _Groups()
    # A module's globals (``__main__.__dict__`` for every notebook function) are
    # saved by reference: everyone "shares" them, which is no reason to group.
    # Collected once here, not once per variable.
    module_dicts = {id(getattr(m, "__dict__", None)) for m in list(sys.modules.values())}
    for name, value in values.items():
        types[name] = type_name(value)
        if isinstance(value, ModuleType) and sys.modules.get(value.__name__) is value:
            modules[name] = value.__name__
            continue
        if on_variable is not None:
            on_variable(name)
        result = _pickle_one(name, value, module_dicts)
        if isinstance(result, str):
            skipped[name] = result
            continue
        singles[name] = result
        groups.find(name)
        shared = result.shared.keys()
        for key in shared & owner.keys():  # set operations: C speed for big variables
            groups.union(name, owner[key])
        owner.update(dict.fromkeys(shared, name))

    members: dict[str, list[str]] = {}
    for name in singles:
        members.setdefault(groups.find(name), []).append(name)

    payloads: list[Payload] = []
    notes: list[str] = []
    for name, one in singles.items():
        notes.extend(f"{name}: {note}" for note in dict.fromkeys(one.reductions.notes))
    for names in members.values():
        if len(names) == 1:
            payloads.append(_single_payload(singles[names[0]]))
            continue
        use_dill = any(singles[n].pickler == "dill" for n in names)
        if on_variable is not None:
            on_variable(",".join(names))
        try:
            dumped = _dump({n: values[n] for n in names}, use_dill)
        except Exception as exc:
            notes.append(
                f"{', '.join(names)} share objects but could not be pickled together "
                f"({describe_error(exc)}); they were saved one by one and will not share them "
                "after a restore"
            )
            payloads.extend(_single_payload(singles[n]) for n in names)
            continue
        pickler = "dill" if use_dill else "pickle"
        done = dumped.reductions
        payloads.append(
            Payload(names, pickler, dumped.data, dumped.buffers, done.files, done.opened)
        )
    return Serialized(payloads, modules, types, skipped, notes)


def _single_payload(one: _Single) -> Payload:
    done = one.reductions
    return Payload([one.name], one.pickler, one.data, one.buffers, done.files, done.opened)


def load_payload(
    pickler: str, data: Any, buffers: list[Any], main: ModuleType | None = None
) -> dict[str, Any]:
    """Unpickle one group. **This runs code**: load only checkpoints you trust.

    *data* is the pickle stream (any bytes-like object: it is not copied).
    *buffers* must be writable (bytearray, mmap) so restored arrays are too.
    *main* is the module whose namespace notebook functions get as their
    globals (default: this process's ``__main__``, as dill binds it), so a
    namespace can be loaded somewhere other than ``__main__``.
    """
    if pickler == "pickle":
        result = pickle.loads(data, buffers=buffers)
    elif pickler == "dill":
        import dill

        if main is None:
            result = dill.loads(data, buffers=buffers)
        else:
            unpickler = dill.Unpickler(io.BytesIO(data), buffers=buffers)
            unpickler._main = main  # as dill.load_module does: `__main__` globals resolve here
            result = unpickler.load()
    else:
        raise ValueError(f"unknown pickler {pickler!r}")
    if not isinstance(result, dict):
        raise ValueError("payload does not hold a namespace")
    return result


def import_module(name: str) -> ModuleType:
    """Re-import a module that was bound to a variable."""
    return importlib.import_module(name)


def import_dill() -> None:
    """Import dill now that ``sys.modules["__main__"]`` is the notebook's namespace.

    Called by the kernel once its shell exists, so forked writers find dill
    imported and bound to the right ``__main__``; and by export. Registers
    the reducers of :mod:`persistent_kernel.reducers` in dill's table.
    """
    import dill  # noqa: F401

    register_with_dill()
