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

How sharing is found, with each object pickled once: before anything is
pickled, a cheap look (C loops over the top level of each variable) foresees
the groups: two variables holding one object at the top (``l2 = l1``,
``a = [x]; b = {'k': x}``), and instances of a notebook class with the
class's name (:func:`_predict`). Each foreseen group is pickled once, noting
every object its pickler meets (through ``persistent_id``); groups that met
the same object are joined and only those are pickled again, together. A
plain tree of dicts, lists and tuples whose inner containers are each
referenced once, by their container (``[{'id': 1, ...}, ...]``), can share
nothing but its root: it is recognised by reference counts, in C loops, and
pickled without noting anything (:func:`_private_tree`).

Limits: sharing is detected between objects that pickle reaches. Immutable
values (str, bytes, numbers, tuples, frozensets) and objects imported from
modules are not counted as sharing: their identity carries no meaning.
Sharing found only deeper than the top level (``a = [[x]]; b = [[x]]``)
costs those variables a second pickling, together (as does an instance
whose class reduces it itself). A reduction that pickles the contents
of a private tree without the tree's root (``__reduce__`` returning
``list(self.rows)``) makes a copy, not counted as sharing it. numpy
views are pickled with the array owning their memory, so they share it
after a restore (see reducers).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import pickle
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, compress
from types import (
    BuiltinFunctionType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import IO, Any, TypeVar

from . import memory, offload
from .errors import NotRestorable, _NeedsDill
from .reducers import (
    CLASS_SAVERS,
    Reductions,
    is_from_main,
    lost,
    main_references,
    module_gone,
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


def _defined_in_main(obj: Any) -> bool:
    return getattr(obj, "__module__", None) == "__main__"


def _rebuilt(obj: Any) -> bool:
    """Is the class or function *obj* pickled by value: defined in the notebook, or
    no longer defined by its module's file (:func:`~.reducers.lost`)?"""
    return _defined_in_main(obj) or lost(obj) is not None


class _FastPickler(pickle.Pickler):
    """The C pickler, refusing what it would pickle *wrongly*.

    The stdlib pickler saves a function or class of ``__main__`` by reference
    (``__main__.f``), which succeeds now and fails at restore time, when the
    name does not exist yet; so does anything else whose ``__module__`` is
    ``__main__`` (an ``lru_cache`` wrapper, a ``TypeVar``), and a class or
    function of a module file edited since its import that no longer defines
    it. Those are dill's job. (The C pickler does not call this for ints,
    strings, lists, dicts...)
    """

    def __init__(self, out: Any, reductions: Reductions, **kwargs: Any) -> None:
        super().__init__(out, **kwargs)
        self.reductions = reductions

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, FunctionType)) and _rebuilt(obj):
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
        if isinstance(obj, type) and type(obj) not in CLASS_SAVERS:
            why = lost(obj)
            if why is not None:  # dill would save it by name
                raise NotRestorable(
                    f"{obj.__qualname__} would be saved by its name, but {why}; a class "
                    f"of metaclass {type(obj).__qualname__} cannot be saved by value"
                )
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

    hooks: list[tuple[type, Any]] = []

    def save_namespace(obj: Any, save_persistent_id: bool = True) -> None:
        """Save the top-level object, then set the ``__init_subclass__`` hooks of the
        notebook classes in it (:func:`~.reducers.save_class`): no class made while
        loading the stream runs one."""
        del pickler.save  # what it holds is saved as usual
        pickler.save(obj, save_persistent_id)
        for cls, hook in hooks:
            pickler.save_reduce(setattr, (cls, "__init_subclass__", hook))
            pickler.write(pickle.POP)

    pickler.reducer_override = reducer_override
    pickler.save_global = save_global
    pickler.init_subclass_hooks = hooks
    pickler.save = save_namespace
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
    #: Variables shared with a helper process (whichever process pickled them).
    second_core: list[str] = field(default_factory=list)


def type_name(value: Any) -> str:
    """``module.QualName`` of *value*'s type, as shown to users."""
    tp = type(value)
    module = getattr(tp, "__module__", "") or ""
    qualname = getattr(tp, "__qualname__", tp.__name__)
    return qualname if module == "builtins" else f"{module}.{qualname}"


#: What pickle's "cannot pickle 'X' object" means, for the kinds users meet.
_UNPICKLABLE = {
    "generator": "cannot pickle a generator's frame (a generator part-way through)",
    "async_generator": "cannot pickle an async generator's frame",
    "coroutine": "cannot pickle a coroutine's frame",
    "frame": "cannot pickle a stack frame",
    "traceback": "cannot pickle a traceback: it holds stack frames",
    "socket": "cannot pickle a socket: its connection lives in this process only",
}
_CANNOT_PICKLE = re.compile(r"cannot pickle '([\w.]+)' object")


def describe_error(exc: BaseException) -> str:
    """One readable reason for *exc*, raised while pickling or unpickling: its
    first line, with its type, or a sentence for the kinds pickle refuses."""
    if isinstance(exc, RecursionError):
        return "too deeply nested to pickle"
    if isinstance(exc, NotRestorable):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    refused = _CANNOT_PICKLE.fullmatch(text) if isinstance(exc, TypeError) else None
    if refused is not None:
        kind = refused.group(1)
        return _UNPICKLABLE.get(kind, f"cannot pickle objects of type {kind}")
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

    The cyclic garbage collector is off meanwhile: pickling makes no cycles
    to collect, but the objects it allocates (dill's reductions, the noted
    objects kept alive) trigger collections that walk everything alive, a
    quarter of the time of pickling 300,000 notebook instances with dill.
    (:func:`serialize` keeps it off throughout, for the same reason.)
    """
    with _collector_paused():
        try:
            return _dump_once(obj, use_dill, track)
        except RecursionError:
            return deeply(lambda: _dump_once(obj, use_dill, track))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the duration (if it was on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


#: Could sharing an object of this type be sharing? (Not for immutable values, nor
#: for the markers dill writes in every class whose methods call ``super()``.)
_IDENTITY_MATTERS = _TypeFlags(
    lambda tp: tp not in _VALUE_TYPES and getattr(tp, "__module__", None) != "dill._shims"
)
#: Must an object of this type be looked at one by one? Functions and classes
#: count only when defined in the notebook; numpy shares one dtype object among
#: all arrays of a type, which is no sharing.
_NEEDS_A_LOOK = _TypeFlags(lambda tp: issubclass(tp, _GLOBAL_TYPES) or _is_numpy_dtype(tp))


#: Values that hold no reference to another object.
_ATOMS: frozenset[type] = frozenset({str, bytes, int, float, complex, bool, type(None)})
#: Containers a private tree may hold below its root. None of them can be weakly
#: referenced, so a reference count of one means: one container holds it, and
#: nothing else can reach it but through that container.
_NODES: frozenset[type] = frozenset({dict, list, tuple})
_ATOMS_OR_NODES = _ATOMS | _NODES
_MUTABLE_NODES: frozenset[type] = frozenset({dict, list})
_DICTS: frozenset[type] = frozenset({dict})
_LISTS: frozenset[type] = frozenset({list})
_TUPLES: frozenset[type] = frozenset({tuple})
#: ``sys.getrefcount`` of an object held by one container, read while iterating
#: that container (the container's reference, plus the one passed to the call).
_HELD_ONCE = max(map(sys.getrefcount, [[]]))

#: A way to iterate a level of a tree again (each pass over a level is one C loop).
_Stream = Callable[[], Iterable[Any]]


def _private_tree(value: Any) -> bool:
    """True if *value* is a dict, list, set or tuple whose contents nothing
    else can reach: then only *value* itself can be shared with another
    variable, and it is pickled without tracking the objects in it.

    That holds for a tree of dicts, lists and tuples with atoms (numbers,
    strings, bytes, None) as leaves, in which every dict and list below the
    root is referenced exactly once: by its container in the tree. An object
    with one reference can only be reached through the object holding it, and
    following the holders up leads to the root; so another variable that
    reaches anything in the tree reaches the root, which is the one object
    tracked. Tuples have no identity of their own, so one whose reference
    count was not checked may hold atoms only, as may a tuple or frozenset at
    the root; sets below the root (they can be weakly referenced) and any
    other type make the answer False, and the variable is tracked object by
    object as before.

    Decided level by level, each level in a few C loops (``map`` over
    ``type``, ``sys.getrefcount``), never a Python loop over the
    items: a dict of a million ``str -> tuple`` takes about a sixth of the time
    pickling it takes (each object is visited, which is as far as
    reference counts can go).

    Limit: a reduction that pickles the contents of a container it holds
    without the container (``__reduce__`` returning ``list(self.rows)``)
    reaches the tree without passing its root; such a copy is not counted as
    sharing.
    """
    try:
        return _scan(value)
    except RecursionError:  # each level's stream is made from the one above
        return False  # deeper than the recursion limit: tracked, in a deep thread


def _scan(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        streams: list[tuple[_Stream, bool]] = [(value.keys, True), (value.values, True)]
    elif kind in (list, set, tuple, frozenset):
        # the items of a tuple or frozenset root are shared by whoever shares it
        streams = [(lambda: value, kind in (list, set))]
    else:
        return False
    while streams:
        level: list[tuple[_Stream, bool]] = []
        for stream, held in streams:
            if _ATOMS.issuperset(map(type, stream())):  # stops at the first non-atom
                continue
            kinds = set(map(type, stream()))
            if not held or not kinds <= _ATOMS_OR_NODES:
                return False
            mutable = kinds & _MUTABLE_NODES
            if mutable:
                nodes, extra = _only(stream, kinds, mutable)
                if max(map(sys.getrefcount, nodes())) > _HELD_ONCE + extra:
                    return False
                level.extend((items, True) for items in _items(nodes, mutable))
            if tuple in kinds:
                # A tuple's count is not checked (a constant tuple is held by the code
                # that made it too): what it holds must be atoms, or this falls back.
                tuples, _ = _only(stream, kinds, _TUPLES)
                level.append((_contents(tuples), False))
        streams = level
    return True


def _only(
    stream: _Stream, kinds: AbstractSet[type], wanted: AbstractSet[type]
) -> tuple[_Stream, int]:
    """The items of *stream* of a type in *wanted*, and the references this adds
    to each (a list is made, unless every item is of a wanted type)."""
    if kinds <= wanted:
        return stream, 0
    kept = list(compress(stream(), map(wanted.__contains__, map(type, stream()))))
    return (lambda: kept), 1


def _contents(nodes: _Stream) -> _Stream:
    """A stream over the items of the lists or tuples of *nodes*."""
    return lambda: chain.from_iterable(nodes())


def _items(nodes: _Stream, kinds: AbstractSet[type]) -> list[_Stream]:
    """Streams over what the dicts and lists of *nodes* hold (dicts: keys, values)."""
    if dict not in kinds:
        return [_contents(nodes)]
    dicts, _ = _only(nodes, kinds, _DICTS)
    streams: list[_Stream] = [
        lambda: chain.from_iterable(dicts()),  # a dict iterates over its keys
        lambda: chain.from_iterable(map(dict.values, dicts())),
    ]
    if list in kinds:
        lists, _ = _only(nodes, kinds, _LISTS)
        streams.append(_contents(lists))
    return streams


def _shared_candidates(seen: list[Any], ignore: set[int]) -> dict[int, Any]:
    """The objects pickled whose identity matters, keyed by id.

    The objects are kept (not just their ids) so that an id cannot be reused
    by a temporary of another variable while the groups are being formed.
    Everything runs at C speed (``compress`` over per-type flags, ``dict(zip)``)
    except a look at the few functions, classes and dtypes met.
    """
    kept = list(compress(seen, map(_IDENTITY_MATTERS.__getitem__, map(type, seen))))
    keep: dict[int, Any] = dict(zip(map(id, kept), kept, strict=True))
    for key in ignore & keep.keys():
        del keep[key]
    for obj in compress(kept, map(_NEEDS_A_LOOK.__getitem__, map(type, kept))):
        if _is_numpy_dtype(type(obj)) or not _rebuilt(obj):
            keep.pop(id(obj), None)
    return keep


@dataclass
class _Unit:
    """Variables pickled together in one stream, and what they could share."""

    names: list[str]
    pickler: str
    data: memoryview
    buffers: list[pickle.PickleBuffer]
    shared: dict[int, Any]
    reductions: Reductions

    def payload(self) -> Payload:
        done = self.reductions
        return Payload(self.names, self.pickler, self.data, self.buffers, done.files, done.opened)


def _pickle_unit(
    names: list[str], values: Mapping[str, Any], ignore: set[int], private: bool = False
) -> _Unit | str:
    """Pickle ``{name: value}`` for *names*; return the result or the reason it
    failed. *private*: the one variable is a :func:`_private_tree`."""
    wrapper = {name: values[name] for name in names}
    try:
        if any(_defined_in_main(type(v)) for v in wrapper.values()):
            raise _NeedsDill  # an instance of a notebook class: dill, without a wasted try
        dumped = _dump(wrapper, use_dill=False, track=not private)
        if private:
            dumped.seen = list(wrapper.values())  # the container itself is all it could share
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
    return _Unit(names, pickler, dumped.data, dumped.buffers, shared, dumped.reductions)


class _Groups:
    """Union-find over names (or any hashable keys)."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, name: Any) -> Any:
        root = self.parent.setdefault(name, name)
        while root != self.parent[root]:
            root = self.parent[root]
        self.parent[name] = root
        return root

    def union(self, a: Any, b: Any) -> None:
        self.parent[self.find(a)] = self.find(b)

    def link(self, key: Any, shared: Mapping[int, Any], owner: dict[int, Any]) -> None:
        """Join *key* with every earlier key that *shared* objects belong to."""
        self.find(key)
        found = shared.keys()
        for obj_id in found & owner.keys():  # set operations: C speed for big variables
            self.union(key, owner[obj_id])
        owner.update(dict.fromkeys(found, key))

    def members(self, keys: Iterable[Any]) -> list[list[Any]]:
        """*keys* by group, groups in the order of their first key."""
        out: dict[Any, list[Any]] = {}
        for key in keys:
            out.setdefault(self.find(key), []).append(key)
        return list(out.values())


_CONTAINERS: frozenset[type] = frozenset({dict, list, tuple, set, frozenset})


#: Does pickling an instance of this type pickle the type? Yes, unless the type
#: reduces its instances itself (``__reduce__`` may name any function instead).
_CARRIES_ITS_CLASS = _TypeFlags(
    lambda tp: (
        getattr(tp, "__reduce_ex__", None) is object.__reduce_ex__
        and getattr(tp, "__reduce__", None) is object.__reduce__
    )
)


def _first_links(value: Any, ignore: set[int]) -> dict[int, Any]:
    """What *value* will surely share if another variable has it too: itself,
    the items of a dict, list, tuple or set, and the notebook classes of
    *value* and of those items (unless they reduce their instances
    themselves). A cheap look, in C loops, before anything is pickled."""
    kind = type(value)
    near: list[Any] = [value]
    kinds = {kind}
    if kind in _CONTAINERS:
        items = list(chain(value.keys(), value.values()) if kind is dict else value)
        near.extend(items)
        kinds.update(map(type, items))
    near.extend(filter(_CARRIES_ITS_CLASS.__getitem__, kinds))
    return _shared_candidates(near, ignore)


def _predict(
    names: list[str],
    values: Mapping[str, Any],
    ignore: set[int],
    deferred: AbstractSet[str] = frozenset(),
) -> tuple[list[list[str]], set[str]]:
    """Groups foreseen before pickling, and the names that are private trees.

    A variable is joined with another when they hold the same object at the
    top (``l2 = l1``, ``a = [x]; b = {'k': x}``), or when its value, or an
    item of it, is an instance of a notebook class bound to a name (its
    pickle carries the class, unless the class has its own ``__reduce__``).
    Each of these is sharing the pickled result would show too, so nothing
    is grouped that pickling each alone would not have grouped; deeper
    sharing is found when pickling.

    The *deferred* are not looked into now (a helper process may do it): only
    the object itself counts. That is all a private tree could share; for any
    other, sharing below the top is found when pickling, as deeper sharing is.
    """
    groups = _Groups()
    owner: dict[int, Any] = {}
    private: set[str] = set()
    for name in names:
        value = values[name]
        if name in deferred:
            groups.link(name, _shared_candidates([value], ignore), owner)
            continue
        try:
            if _private_tree(value):
                private.add(name)
                links = _shared_candidates([value], ignore)
            else:
                links = _first_links(value, ignore)
        except Exception:  # (a dict changed by another thread) pickling will tell
            private.discard(name)
            links = _shared_candidates([value], ignore)
        groups.link(name, links, owner)
    return groups.members(names), private


def _suspects(names: list[str], values: Mapping[str, Any]) -> list[str]:
    """Whom to blame if pickling *names* together kills the writer: not the
    notebook's classes and functions (dill rebuilds those from their code)
    but the values that use them, whose reductions run arbitrary code; so a
    crashing instance leaves its class saved, as when each was pickled alone."""
    used = [
        n
        for n in names
        if not (isinstance(values[n], (type, FunctionType)) and _defined_in_main(values[n]))
    ]
    return used or names


def _pickle_group(
    unit_names: list[str],
    values: Mapping[str, Any],
    ignore: set[int],
    private: AbstractSet[str],
    skipped: dict[str, str],
    on_variable: Callable[[str], None] | None,
) -> list[_Unit]:
    """Pickle one foreseen group; if it fails, each of its variables alone
    (one bad value must not sink the others). Failures land in *skipped*."""
    if on_variable is not None:
        on_variable(",".join(_suspects(unit_names, values)))
    result = _pickle_unit(unit_names, values, ignore, unit_names[0] in private)
    if isinstance(result, _Unit):
        return [result]
    if len(unit_names) == 1:
        skipped[unit_names[0]] = result
        return []
    units: list[_Unit] = []
    for name in unit_names:
        if on_variable is not None:
            on_variable(name)
        one = _pickle_unit([name], values, ignore, name in private)
        if isinstance(one, _Unit):
            units.append(one)
        else:
            skipped[name] = one
    return units


#: A variable is shared with a helper process if it is a dict, list, tuple or set
#: of at least this many items (about 2 ms of pickling if it is a private tree).
SHARE_MIN = 2_000


def _candidates(names: list[str], values: Mapping[str, Any]) -> list[str]:
    """The variables worth sharing with a helper process, largest first: large
    containers whose first item is plain data, by a look at that item and
    their length only (whether each is a private tree is found out by
    whoever takes it). Empty unless there are two.

    The first item is looked at so that a list of instances of a notebook
    class keeps being grouped with its class before pickling (see
    :func:`_predict`), not after.
    """
    large = [
        (len(values[n]), n)
        for n in names
        if type(values[n]) in _CONTAINERS
        and len(values[n]) >= SHARE_MIN
        and type(_first_item(values[n])) in _ATOMS_OR_NODES
    ]
    return [n for _, n in sorted(large, reverse=True)] if len(large) > 1 else []


def _first_item(container: Any) -> Any:
    """A dict's first value, another container's first item."""
    return next(iter(container.values() if type(container) is dict else container))


def _pickled(values: Mapping[str, Any], names: list[str], number: int) -> memoryview | None:
    """The stream :func:`_pickle_unit` makes of *names[number]* if it is a private
    tree; ``None`` (left to the writer) if not. Runs in the helper process."""
    name = names[number]
    if not _private_tree(values[name]):
        return None
    unit = _pickle_unit([name], values, set(), private=True)
    if not isinstance(unit, _Unit) or unit.pickler != "pickle" or unit.buffers:
        return None  # not plain after all: the writer's own path says how
    return unit.data


def _with_helper(
    helper: offload.Helper,
    foreseen: list[list[str]],
    shareable: list[str],
    names: list[str],
    here: Callable[[list[str]], list[_Unit]],
    values: Mapping[str, Any],
    ignore: set[int],
) -> tuple[list[list[_Unit]], list[str]]:
    """Pickle the *foreseen* groups, each by *here* or by *helper*: the variables of
    *shareable* that make a group alone go to a queue both take from; the
    rest are pickled here first. Returns the units of each group, in order,
    and the names queued.

    Whatever the helper has not finished when the queue is empty (the job it
    is on, those it declined, all it had left if it died) is pickled here
    rather than waited for: nothing waits on the helper.
    """
    group_of = {g[0]: i for i, g in enumerate(foreseen) if len(g) == 1}
    shared = [group_of[n] for n in shareable if n in group_of]
    number = {name: i for i, name in enumerate(names)}  # jobs by name: forked before groups
    by_job = {number[foreseen[i][0]]: i for i in shared}
    queued = helper.share(list(by_job))
    shared = [by_job[job] for job in queued]
    done: dict[int, list[_Unit]] = {}
    for index in sorted(set(range(len(foreseen))).difference(shared)):
        done[index] = here(foreseen[index])
    while (job := helper.claim()) is not None:
        done[by_job[job]] = here(foreseen[by_job[job]])
    finished = helper.finished()
    for job in helper.unfinished(finished):
        done[by_job[job]] = here(foreseen[by_job[job]])
    for job, data in finished.items():
        index = by_job[job]
        if index not in done:
            name = names[job]
            links = _shared_candidates([values[name]], ignore)
            done[index] = [_Unit([name], "pickle", data, [], links, Reductions())]
    return [done[i] for i in range(len(foreseen))], [foreseen[i][0] for i in shared]


def serialize(
    values: Mapping[str, Any],
    on_variable: Callable[[str], None] | None = None,
    second_core: bool = False,
    urgent: bool = False,
) -> Serialized:
    """Pickle *values* into groups; never raises for a bad value.

    Modules bound to names are recorded by name and re-imported on restore.
    Values that cannot be pickled land in ``skipped`` with a reason.
    *on_variable* is told each name (or comma-joined group) before it is
    pickled, so that a process killed while pickling can be blamed on it.

    Groups are foreseen before pickling (:func:`_predict`) and each is
    pickled once; only variables whose sharing shows up deeper than that
    look are pickled again, together.

    *second_core*: where this process has a second core and two large
    containers or more, a helper process (:mod:`persistent_kernel.offload`)
    takes turns with this one at the large containers but the largest, each
    pickled by whichever takes it if it is a private tree (the same bytes
    either way). Only for a process that may fork (a writer). *urgent*: no
    cell can run meanwhile (a kernel's final checkpoint, which the next kernel
    waits for): the helper runs at this process's priority, not below it.
    """
    with _collector_paused():
        return _serialize(values, on_variable, second_core, urgent)


def _serialize(
    values: Mapping[str, Any],
    on_variable: Callable[[str], None] | None,
    second_core: bool = False,
    urgent: bool = False,
) -> Serialized:
    modules: dict[str, str] = {}
    types: dict[str, str] = {}
    skipped: dict[str, str] = {}
    # A module's globals (``__main__.__dict__`` for every notebook function) are
    # saved by reference: everyone "shares" them, which is no reason to group.
    # Collected once here, not once per variable.
    module_dicts = {id(getattr(m, "__dict__", None)) for m in list(sys.modules.values())}
    names: list[str] = []
    for name, value in values.items():
        types[name] = type_name(value)
        if isinstance(value, ModuleType) and sys.modules.get(value.__name__) is value:
            gone = module_gone(value)
            if gone is None:
                modules[name] = value.__name__
            else:
                skipped[name] = gone
        else:
            names.append(name)
    # Forked before anything looks into the values: a look touches every object
    # (reference counts), which a fork after it would make this process copy again.
    candidates = _candidates(names, values) if second_core and memory.cores() > 1 else []
    nice = 0 if urgent else offload.NICENESS
    helper = offload.start(partial(_pickled, values, names), nice) if candidates else None
    helped: list[str] = []
    try:
        deferred = set(candidates) if helper is not None else set()
        foreseen, private = _predict(names, values, module_dicts, deferred)

        def here(group: list[str]) -> list[_Unit]:
            if group[0] in deferred:  # not looked into yet
                deferred.discard(group[0])
                if _private_tree(values[group[0]]):
                    private.add(group[0])
            return _pickle_group(group, values, module_dicts, private, skipped, on_variable)

        if helper is None:
            per_group = [here(group) for group in foreseen]
        else:
            # The largest stays here; the others go to the queue, largest first.
            per_group, helped = _with_helper(
                helper, foreseen, candidates[1:], names, here, values, module_dicts
            )
    finally:
        if helper is not None:
            helper.stop()
    units = [unit for group_units in per_group for unit in group_units]

    groups = _Groups()
    owner: dict[int, Any] = {}
    for index, unit in enumerate(units):
        groups.link(index, unit.shared, owner)

    payloads: list[Payload] = []
    notes: list[str] = []
    for unit in units:
        label = ", ".join(unit.names)
        notes.extend(f"{label}: {note}" for note in dict.fromkeys(unit.reductions.notes))
    order = {name: i for i, name in enumerate(names)}
    for indexes in groups.members(range(len(units))):
        if len(indexes) == 1:
            payloads.append(units[indexes[0]].payload())
            continue
        joined = [units[i] for i in indexes]
        group = sorted((n for unit in joined for n in unit.names), key=order.__getitem__)
        use_dill = any(unit.pickler == "dill" for unit in joined)
        if on_variable is not None:
            on_variable(",".join(_suspects(group, values)))
        try:
            dumped = _dump({n: values[n] for n in group}, use_dill, track=False)
        except Exception as exc:
            notes.append(
                f"{', '.join(group)} share objects but could not be pickled together "
                f"({describe_error(exc)}); they were saved one by one and will not share them "
                "after a restore"
            )
            payloads.extend(unit.payload() for unit in joined)
            continue
        pickler = "dill" if use_dill else "pickle"
        done = dumped.reductions
        payloads.append(
            Payload(group, pickler, dumped.data, dumped.buffers, done.files, done.opened)
        )
    return Serialized(payloads, modules, types, skipped, notes, helped)


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
