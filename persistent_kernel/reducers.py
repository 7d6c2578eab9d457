"""How objects that pickle gets wrong are pickled instead.

The stdlib pickler and dill save some notebook objects *by name*
(``__main__.Color``), which succeeds while the kernel runs and fails in the
fresh ``__main__`` of a restore, where that name does not exist yet. This
module gives those objects reductions that rebuild them by value, made only
of callables that exist wherever the checkpoint is loaded (the standard
library, dill, numpy): a checkpoint never names this package, so a file made
by ``%persist export`` loads with plain dill.

* **Enum classes** of the notebook (``Enum``, ``IntEnum``, ``Flag``...) are
  rebuilt as their class statement would: ``types.new_class`` with the
  enum's own metaclass, its methods first, then its members with their
  values. Members pickle as ``Color(1)``, so identity survives
  (``Color(1) is Color.RED``). An enum with its own ``__new__`` cannot be
  rebuilt (its members' original arguments are not kept) and is refused.
* **Classes of the notebook** (of metaclass ``type`` or ``ABCMeta``) are
  created with their methods, then given their data attributes, then their
  own ``__init_subclass__`` (:func:`save_class`): a registry of subclasses in
  a class attribute comes back holding the restored subclasses, once each.
* **Classes and functions a module file no longer defines** (a module beside
  the notebook edited since its import, or removed: :func:`lost`) are pickled
  by value as the notebook's are, where dill would save a name the next
  process cannot find; a class of another metaclass is refused.
* **``functools.lru_cache`` / ``functools.cache`` wrappers** of notebook
  functions: the wrapped function by value, wrapped again with the same
  ``maxsize`` and ``typed``. The cache starts empty.
* **``typing.TypeVar``** of the notebook: rebuilt with its name, bound,
  constraints and variance (a ``Generic`` class then pickles by value).
* **``numpy.memmap``** mapping a whole file: re-opened on that file, in its
  mode (``w+`` becomes ``r+``: re-opening must never truncate), instead of
  copying the file's content into the checkpoint. The file, its size and
  modification time are recorded (:attr:`Reductions.files`) so that a
  restore can check it first. A copy-on-write (``c``) map or a view into a
  map is pickled as an in-memory copy, with a note.
* **Functions whose globals are no module's** (``sympy.lambdify`` makes
  them, and so does ``exec`` with a dict): rebuilt from their code with only
  the globals their code reads, where dill would copy the whole dict (for
  lambdify, every numpy and scipy function, some of which cannot be pickled).
* **numpy views** (``b = a[::2]``, a column of a matrix, a DataFrame made on
  an array without a copy) are pickled as a view into the array that owns the
  memory (``numpy.ndarray(shape, dtype, owner, offset, strides)``): pickled
  with the owner, they come back sharing it, so memory does not double and an
  in-place change to one is seen in the other. The whole owner is saved even
  if only a small view of it is bound to a name, as it is held in memory.
* **Resources, where that is safe**: an unlocked ``threading.Lock`` or
  ``RLock`` comes back as a new unlocked one (a held lock is refused: the
  thread holding it is gone); a file opened for reading (``"r"``, ``"rb"``)
  is re-opened at its old position, only if the file is unchanged (size and
  modification time, checked by the restore: :attr:`Reductions.opened`); an
  ``sqlite3`` connection to a database file is connected again (the file must
  still exist; a connection with uncommitted changes, or to an in-memory
  database, is refused). A file opened for writing is never re-opened: its
  mode could truncate it (:mod:`persistent_kernel.namespace` leaves it out).
* **matplotlib figures** are pickled without their place in pyplot's list of
  open figures: a restored figure is not shown again by the next cell.

dill's reducers (:func:`register_with_dill`) are registered in dill's own
table, so ``dill.dump_module`` (used by export) pickles these objects the
same way as a checkpoint does.
"""

from __future__ import annotations

import abc
import ast
import enum
import functools
import io
import os
import pickle
import sqlite3
import sys
import sysconfig
import threading
import types
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import NotRestorable

#: Enum bookkeeping the metaclass computes again from the members.
_ENUM_DERIVED = frozenset({"__dict__", "__weakref__", "__module__", "__qualname__", "__new__"})
#: ``_sunder_`` names a user may define in an enum's body.
_ENUM_USER_SUNDERS = frozenset({"_generate_next_value_", "_missing_", "_order_", "_ignore_"})


class _Call:
    """Pickles as ``func(*args)``: a callable made by a call at load time."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*self.args)(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def is_from_main(obj: Any) -> bool:
    """True for an object whose ``__module__`` is the notebook's."""
    try:
        return getattr(obj, "__module__", None) == "__main__"
    except Exception:  # a proxy whose attribute lookup fails
        return False


def located(obj: Any) -> bool:
    """Would a fresh process find *obj* by its module and qualified name?

    ``__main__`` never counts: a fresh ``__main__`` is empty; nor does a
    module file that no longer defines the name (:func:`lost`).
    """
    module_name = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(module_name, str) or not isinstance(name, str) or module_name == "__main__":
        return False
    found: Any = sys.modules.get(module_name)
    for part in name.split("."):
        found = getattr(found, part, None)
    return found is obj and not lost(obj)


# -- classes and functions a module file no longer defines -------------------------------

#: Where packages are installed and the standard library lives: their files are not
#: edited under a running kernel, so their names are never looked for in the source.
_INSTALLED = tuple(
    {
        os.path.join(os.path.realpath(path), "")
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_paths().get(key))
    }
)
#: module name -> its source file, if it is a ``.py`` file of the user's own
#: (``None``: installed, built in or compiled: never looked at).
_SOURCE_OF: dict[str, str | None] = {}
#: source file -> (size, mtime_ns, the names its top level binds, or ``None``: cannot tell).
_BOUND: dict[str, tuple[int, int, frozenset[str] | None]] = {}


def _source_of(module_name: str) -> str | None:
    if module_name in _SOURCE_OF:
        return _SOURCE_OF[module_name]
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None) if module is not None else None
    local = (
        isinstance(path, str)
        and path.endswith(".py")
        and "site-packages" not in path
        and "dist-packages" not in path
        and not os.path.realpath(path).startswith(_INSTALLED)
    )
    _SOURCE_OF[module_name] = found = os.path.abspath(path) if local and path else None
    return found


def _bound_by(path: str) -> frozenset[str] | None:
    """The names the top level of the file *path* binds now (empty if it is gone);
    ``None`` when its source cannot tell (it does not parse, binds names with
    ``import *``, or has a module ``__getattr__``). Parsed once per version of
    the file (its size and modification time)."""
    from .namespace import bound_in

    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return frozenset()
    except OSError:
        return None
    known = _BOUND.get(path)
    if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
        return known[2]
    names: frozenset[str] | None = None
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError, RecursionError):
        pass
    else:
        found = bound_in(tree)
        names = None if {"*", "__getattr__"} & found else frozenset(found)
    _BOUND[path] = (stat.st_size, stat.st_mtime_ns, names)
    return names


def lost(obj: Any) -> str | None:
    """Why a fresh process would not find the class or function *obj* by name
    though this one does, or ``None``: its module is a ``.py`` file of the
    user's (not installed, not the standard library) whose top level no longer
    binds *obj*'s name (edited since the import without a reload, or reloaded:
    a reload keeps the names the new source dropped), or whose file is gone.

    Cheap: a dict look-up for any other module, and for the user's own a
    ``stat`` and, once per version of the file, a parse (the kernel looks at
    the variables' classes before it forks a writer, so writers find those
    files parsed: :func:`~.namespace.select`). Limits: only the first part of
    a qualified name is looked for (a nested class whose outer class is still
    there counts as found); a name bound some other way than a statement
    (``globals()[name] = ...``) counts as gone, and is pickled by value.
    """
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if (
        not isinstance(module_name, str)
        or module_name == "__main__"
        or not isinstance(qualname, str)
        or "<locals>" in qualname
    ):
        return None
    path = _source_of(module_name)
    if path is None:
        return None
    names = _bound_by(path)
    if names is None or qualname.partition(".")[0] in names:
        return None
    if not os.path.exists(path):
        return f"its module's file {path} is gone"
    return f"{os.path.basename(path)} no longer defines {qualname.partition('.')[0]}"


# -- enums ---------------------------------------------------------------------------


def enum_class_reduce(cls: type[enum.Enum]) -> tuple[Any, ...]:
    """Rebuild *cls* by value: ``types.new_class`` with its body, members last."""
    from dill._dill import _setitems  # dill's own helper: whoever loads this has dill

    members = dict(cls.__members__)
    new_member = cls.__dict__.get("_new_member_")
    if new_member is not None and is_from_main(new_member):
        raise NotRestorable(
            f"enum {cls.__qualname__} has its own __new__, so its members cannot be rebuilt"
        )
    body: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    for key, value in cls.__dict__.items():
        if key in members or key in _ENUM_DERIVED:
            continue
        sunder = key.startswith("_") and key.endswith("_") and not key.startswith("__")
        if sunder and key not in _ENUM_USER_SUNDERS:
            continue
        body[key] = value
    body.update((name, member._value_) for name, member in members.items())
    exec_body = functools.partial(_setitems, source=body)
    return types.new_class, (cls.__name__, cls.__bases__, {"metaclass": type(cls)}, exec_body)


# -- functools.lru_cache ---------------------------------------------------------------


def lru_cache_reduce(wrapper: Any) -> tuple[Any, ...]:
    """``lru_cache(maxsize, typed)(function)``, the function by value; an empty cache."""
    params = wrapper.cache_parameters()
    decorator = _Call(functools.lru_cache, params["maxsize"], params["typed"])
    return decorator, (wrapper.__wrapped__,)


# -- typing.TypeVar ----------------------------------------------------------------------


def typevar_reduce(tv: Any) -> tuple[Any, ...]:
    """``TypeVar(name, *constraints, bound=, covariant=, contravariant=)``, in ``__main__``."""
    make = functools.partial(
        typing.TypeVar,
        tv.__name__,
        *tv.__constraints__,
        bound=tv.__bound__,
        covariant=tv.__covariant__,
        contravariant=tv.__contravariant__,
    )
    # (dict state, slot state): the slot state is applied with setattr.
    return make, (), (None, {"__module__": tv.__module__})


# -- numpy.memmap and matplotlib figures ------------------------------------------------


@dataclass
class Reductions:
    """Special reductions for one pickling, and what they met."""

    #: ``[path, size, mtime_ns]`` of each file a memmap will be re-opened on.
    files: list[list[Any]] = field(default_factory=list)
    #: ``[path, size, mtime_ns, rule]`` of files re-opened on load: rule
    #: ``"unchanged"`` (a file read from: size and time must match) or
    #: ``"exists"`` (an sqlite database: it must still be there).
    opened: list[list[Any]] = field(default_factory=list)
    #: One sentence per object that will come back differently (a memmap as a copy).
    notes: list[str] = field(default_factory=list)
    _kinds: dict[type, int] = field(default_factory=dict)
    _module_dicts: set[int] | None = None

    def kind(self, tp: type) -> int:
        """0: nothing special; 1: a numpy.memmap; 2: a matplotlib figure; 3: a function;
        4: a plain numpy array; 5: a lock; 6: a file; 7: an sqlite3 connection."""
        kind = self._kinds.get(tp)
        if kind is None:
            numpy = sys.modules.get("numpy")
            figure = sys.modules.get("matplotlib.figure")
            kind = 0
            if numpy is not None and issubclass(tp, numpy.memmap):
                kind = 1
            elif figure is not None and issubclass(tp, figure.Figure):
                kind = 2
            elif tp is types.FunctionType:
                kind = 3
            elif numpy is not None and tp is numpy.ndarray:
                kind = 4
            elif tp in _LOCK_TYPES:
                kind = 5
            elif tp in (io.TextIOWrapper, io.BufferedReader, io.FileIO):
                kind = 6
            elif tp is sqlite3.Connection:
                kind = 7
            self._kinds[tp] = kind
        return kind

    def reduce(self, obj: Any) -> Any:
        """A reduction for *obj*, or ``NotImplemented`` for the usual one."""
        kind = self.kind(type(obj))
        if kind == 1:
            return self._memmap(obj)
        if kind == 2:
            return self._figure(obj)
        if kind == 3:
            return self._function(obj)
        if kind == 4:
            return _view(obj)
        if kind == 5:
            return _lock(obj)
        if kind == 6:
            return self._file(obj)
        if kind == 7:
            return self._sqlite(obj)
        return NotImplemented

    def _file(self, f: Any) -> Any:
        mode = getattr(f, "mode", "")
        raw = f.buffer.raw if isinstance(f, io.TextIOWrapper) else getattr(f, "raw", f)
        path = getattr(raw, "name", None)
        if f.closed:
            raise NotRestorable("a closed file: there is nothing to re-open")
        if not isinstance(path, str) or set(mode) - set("rbt"):
            raise NotRestorable(
                f"a file open in mode {mode!r}: re-opening it could change or truncate it"
            )
        try:
            position = f.tell()
        except OSError as exc:
            # A forked writer has no descriptors: the kernel noted the position.
            position = FILE_POSITIONS.get(f)
            if position is None:
                raise NotRestorable(f"a file whose position cannot be told ({exc})") from exc
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise NotRestorable(f"a file that is gone ({exc})") from exc
        path = os.path.abspath(path)  # a restore may run elsewhere than the kernel's cwd
        self.opened.append([path, stat.st_size, stat.st_mtime_ns, "unchanged"])
        if isinstance(f, io.TextIOWrapper):
            args: tuple[Any, ...] = (path, mode, -1, f.encoding, f.errors)
        else:
            args = (path, mode, -1 if isinstance(f, io.BufferedReader) else 0)
        # reduce's sixth item calls type(f).seek(new_file, position) once it is open
        return open, args, position, None, None, type(f).seek

    def _sqlite(self, con: Any) -> Any:
        if con.in_transaction:
            raise NotRestorable(
                "an sqlite3 connection with uncommitted changes: a new connection would "
                "silently lack them"
            )
        rows = con.execute("PRAGMA database_list").fetchall()
        path = next((row[2] for row in rows if row[1] == "main"), "")
        if not path:
            raise NotRestorable("a connection to an in-memory sqlite3 database")
        self.opened.append([path, 0, 0, "exists"])
        # created in the restoring thread, used in the notebook's: check_same_thread off
        args = (path, 5.0, 0, con.isolation_level, False)
        settings = {"row_factory": con.row_factory, "text_factory": con.text_factory}
        return sqlite3.connect, args, (None, settings)

    def _function(self, func: types.FunctionType) -> Any:
        if self._module_dicts is None:
            modules = list(sys.modules.values())
            self._module_dicts = {id(getattr(m, "__dict__", None)) for m in modules}
        if id(func.__globals__) in self._module_dicts:
            return NotImplemented  # dill's way: the module's namespace by reference
        return function_reduction(func, _globals_read(func))

    def _memmap(self, arr: Any) -> Any:
        import mmap

        import numpy

        filename, mode = getattr(arr, "filename", None), getattr(arr, "mode", None)
        whole = isinstance(arr.base, mmap.mmap)
        if not whole and mode in ("r", "r+", "w+"):
            view = _view(arr)  # a view into a memmap: a view into the re-opened map
            if view is not NotImplemented:
                return view
        if filename is None or not whole or mode not in ("r", "r+", "w+"):
            why = "a view into a memory map" if filename and not whole else f"mode {mode!r}"
            self.notes.append(
                f"a numpy.memmap on {filename} ({why}) is saved as an in-memory copy: "
                "after a restore, writes to it no longer reach the file"
            )
            return arr.view(numpy.ndarray).__reduce_ex__(5)  # a plain array, as numpy pickles it
        try:
            if mode != "r":
                arr.flush()  # so the modification time recorded is the last one
            stat = os.stat(filename)
        except OSError as exc:
            raise NotRestorable(f"the file of a numpy.memmap is gone ({exc})") from exc
        self.files.append([os.fspath(filename), stat.st_size, stat.st_mtime_ns])
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        args = (filename, arr.dtype, "r+" if mode == "w+" else mode, arr.offset, arr.shape, order)
        return numpy.memmap, args

    def _figure(self, fig: Any) -> Any:
        reduced = fig.__reduce_ex__(5)
        state = reduced[2] if len(reduced) > 2 else None
        if isinstance(state, dict) and state.get("_restore_to_pylab"):
            reduced = (*reduced[:2], {**state, "_restore_to_pylab": False}, *reduced[3:])
        return reduced


def _view(arr: Any) -> Any:
    """``ndarray(shape, dtype, owner, offset, strides)`` for a view of another
    array; ``NotImplemented`` for an array that owns its memory (or for object
    arrays, which cannot be views made from a buffer)."""
    import numpy

    owner = arr.base
    if not isinstance(owner, numpy.ndarray) or arr.dtype.hasobject:
        return NotImplemented
    while isinstance(owner.base, numpy.ndarray):
        owner = owner.base
    if owner.dtype.hasobject or not (owner.flags.c_contiguous or owner.flags.f_contiguous):
        return NotImplemented
    offset = arr.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
    return numpy.ndarray, (arr.shape, arr.dtype, owner, offset, arr.strides)


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))

#: file object -> its position, noted by the kernel before a forked writer
#: (which closes every descriptor it inherits) pickles it.
FILE_POSITIONS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def note_position(f: Any) -> None:
    """Remember where a file open for reading is, for a writer to pickle."""
    try:
        FILE_POSITIONS[f] = f.tell()
    except (OSError, ValueError, TypeError):
        FILE_POSITIONS.pop(f, None)


def _lock(lock: Any) -> Any:
    """A new unlocked lock of the same kind; a held lock is refused."""
    held = lock.locked() if hasattr(lock, "locked") else repr(lock).startswith("<locked")
    if held:
        raise NotRestorable("a lock that was held: the thread holding it is gone")
    return (threading.Lock if type(lock) is _LOCK_TYPES[0] else threading.RLock), ()


def _global_names(code: types.CodeType) -> set[str]:
    """The global names *code* and the code nested in it may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


# -- what a stream names ----------------------------------------------------------------

_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_GET_OPS = frozenset({"BINGET", "LONG_BINGET", "GET"})
_PUT_OPS = frozenset({"BINPUT", "LONG_BINPUT", "PUT"})


def main_references(data: bytes | memoryview | IO[bytes]) -> list[str]:
    """The names a pickle stream looks up in ``__main__`` (``__main__.__dict__``,
    which a fresh ``__main__`` has, aside): each would fail to load there.

    Follows the string operands of ``STACK_GLOBAL`` through the memo; pure
    Python, about a microsecond per opcode, so it is run only when dill warned
    that it fell back to saving something by name.
    """
    import pickletools

    found: list[str] = []
    memo: dict[int, Any] = {}
    last: list[Any] = [None, None]
    stream: IO[bytes] = io.BytesIO(data) if isinstance(data, (bytes, memoryview)) else data
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in _STRING_OPS:
            last = [last[1], arg]
        elif name in _GET_OPS:
            last = [last[1], memo.get(int(arg or 0))]
        elif name == "MEMOIZE":
            memo[len(memo)] = last[1]
        elif name in _PUT_OPS:
            memo[int(arg or 0)] = last[1]
        elif name == "STACK_GLOBAL":
            module, qualname = last
            if module == "__main__" and qualname != "__dict__":
                found.append(str(qualname))
            last = [None, None]
        elif name == "GLOBAL":
            module, _, qualname = str(arg).partition(" ")
            if module == "__main__" and qualname != "__dict__":
                found.append(qualname)
            last = [last[1], None]
        elif name not in ("FRAME", "PROTO"):
            last = [last[1], None]
    return found


# -- dill --------------------------------------------------------------------------------

_registered: set[str] = set()  # "base", "numpy": the reducers already in dill's table


def register_with_dill() -> None:
    """Put the enum, lru_cache, TypeVar (and, once numpy is imported, memmap)
    reducers in dill's table; each once.

    dill looks reducers up by exact type; objects of these types that a
    fresh process would find by name keep dill's usual handling. A memmap
    is written as its data here (export: the file it maps may not exist
    where the export is loaded); a checkpoint re-opens it instead, through
    :class:`Reductions`, which dill's pickler consults first.
    """
    import dill

    if "base" not in _registered:
        _register_base(dill)
        _registered.add("base")
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" not in _registered:

        def save_memmap(pickler: Any, obj: Any) -> None:
            pickler.save_reduce(*obj.view(numpy.ndarray).__reduce_ex__(pickler.proto), obj=obj)

        dill.register(numpy.memmap)(save_memmap)
        _registered.add("numpy")


# -- classes by value ----------------------------------------------------------------------


def by_value(cls: Any) -> bool:
    """Is *cls* a class dill must rebuild from its body here: one of the notebook's
    (``__main__``), or one its module's file no longer defines (:func:`lost`)?"""
    return isinstance(cls, type) and (is_from_main(cls) or lost(cls) is not None)


def _describes(value: Any) -> bool:
    """Is this class-body value a function or another descriptor (what the class
    statement must have: ``__set_name__``, abstract methods), not data?"""
    return hasattr(type(value), "__get__")


#: Metaclasses whose classes the savers registered here pickle (any other
#: metaclass's are dill's own, by name if a fresh process finds them so).
CLASS_SAVERS: frozenset[type] = frozenset({type, abc.ABCMeta, enum.EnumMeta})

#: Body entries a class must be created with.
_AT_CREATION = frozenset({"__module__", "__doc__", "__slots__"})


def save_class(pickler: Any, cls: type) -> None:
    """Pickle a class dill would rebuild by value, so that what its attributes hold
    may be its own subclasses (a registry filled by ``__init_subclass__``).

    dill passes the whole class body as the arguments of the class's creation:
    a subclass in a list in that body is pickled before the class exists, its
    base is the class being made, and dill falls back to saving it by name.
    Here the class is created with its methods and descriptors only; once it
    exists (and can be referred to) its data attributes are set one by one,
    and its own ``__init_subclass__`` last: the subclasses they hold are
    created before it is in place, so loading does not run it again (it would
    register each twice). Bases and metaclass are pickled before the class,
    so a class is never reached again while its creation is pickled.

    A pickler with an ``init_subclass_hooks`` list (a checkpoint's) collects
    the hooks there instead, to set them at the end of its stream, so no class
    it makes runs one: a registry kept elsewhere (a list in a global variable)
    is not filled twice either, nor looked up before it is loaded. Without it
    (``dill.dump_module``), a subclass reached through something else than its
    bases' attributes is made after their hook is in place, which then runs.
    """
    from dill._dill import (
        _create_type,
        _get_typedict_abc,
        _get_typedict_type,
        _save_with_postproc,
        _setitems,
        save_type,
    )

    if id(cls) in getattr(pickler, "_postproc", {}) and not is_from_main(cls):
        # dill would save it by the name its module lost (a notebook class's name is
        # refused by the checkpoint's pickler and found in the stream by export)
        raise NotRestorable(
            f"{cls.__qualname__} is reached again while it is being made, and {lost(cls)}"
        )
    if getattr(pickler, "_byref", False) or id(cls) in getattr(pickler, "_postproc", {}):
        save_type(pickler, cls)  # dill's own way (and its refusal of the recursion)
        return
    memo = pickler.memo
    for needed in (type(cls), *cls.__bases__):
        if id(needed) not in memo and needed is not cls and by_value(needed):
            pickler.save(needed)
            pickler.write(pickle.POP)
    if id(cls) in memo:  # reached through what a base holds, and made there
        pickler.write(pickler.get(memo[id(cls)][0]))
        return
    body, attrs = _get_typedict_type(cls, dict(cls.__dict__), None, [])
    slots = body.get("__slots__", ())
    for name in (slots,) if isinstance(slots, str) else slots:
        body.pop(name, None)
    registered: list[Any] = []
    if isinstance(cls, abc.ABCMeta):
        body, attrs = _get_typedict_abc(cls, body, attrs, registered)
    later = {
        key: body.pop(key)
        for key in list(body)
        if key not in _AT_CREATION and (key == "__init_subclass__" or not _describes(body[key]))
    }
    hook = later.pop("__init_subclass__", None)
    # dill runs these in reverse order once the class exists
    after: list[Any] = []
    if hook is not None:
        pending = getattr(pickler, "init_subclass_hooks", None)
        if pending is None:
            after.append((setattr, (cls, "__init_subclass__", hook)))
        else:  # set at the end of the stream, after every class in it
            pending.append((cls, hook))
    after.append((setattr, (cls, "__qualname__", cls.__qualname__)))
    after.extend((setattr, (cls, key, value)) for key, value in (attrs or {}).items())
    after.extend(registered)
    after.extend((setattr, (cls, key, value)) for key, value in reversed(later.items()))
    if "__orig_bases__" in cls.__dict__:  # its own, not a Generic base's
        make = functools.partial(_setitems, source=body)
        reduction: tuple[Any, ...] = (
            types.new_class,
            (cls.__name__, cls.__dict__["__orig_bases__"], {"metaclass": type(cls)}, make),
        )
    else:
        reduction = (_create_type, (type(cls), cls.__name__, cls.__bases__, body))
    _save_with_postproc(pickler, reduction, obj=cls, postproc_list=after)


def _namedtuple(cls: type) -> bool:
    fields = ("_fields", "_asdict", "_make", "_replace")
    return cls.__bases__ == (tuple,) and all(hasattr(cls, name) for name in fields)


def function_by_value(func: types.FunctionType) -> tuple[Any, ...]:
    """A reduction of a function of a module that no longer defines it (:func:`lost`):
    its code, with the module's namespace as its globals (by reference, as dill
    pickles a module's ``__dict__``) or, if the module's file is gone, only the
    globals its code reads."""
    module = sys.modules.get(func.__module__)
    space: dict[str, Any] = func.__globals__
    if module is None or getattr(module, "__dict__", None) is not space or _gone(module):
        space = _globals_read(func)
    return function_reduction(func, space)


def _globals_read(func: types.FunctionType) -> dict[str, Any]:
    """The globals *func*'s code reads, as it sees them now."""
    names = _global_names(func.__code__)
    return {n: func.__globals__[n] for n in sorted(names) if n in func.__globals__}


def function_reduction(func: types.FunctionType, space: dict[str, Any]) -> tuple[Any, ...]:
    """A reduction that makes *func* again by value, with *space* as its globals."""
    args = (func.__code__, space, func.__name__, func.__defaults__, func.__closure__)
    attrs = {
        "__kwdefaults__": func.__kwdefaults__,
        "__qualname__": func.__qualname__,
        "__module__": func.__module__,
        "__doc__": func.__doc__,
    }
    return types.FunctionType, args, (dict(func.__dict__) or None, attrs)


def _gone(module: types.ModuleType) -> bool:
    return module_gone(module) is not None


def module_gone(module: types.ModuleType) -> str | None:
    """Why a fresh process could not import *module*, one of the user's own
    ``.py`` files, or ``None``: its file is gone."""
    path = _source_of(module.__name__)
    if path is None or os.path.exists(path):
        return None
    return f"a module whose file {path} is gone: a restarted kernel cannot import it"


def _register_base(dill: Any) -> None:
    from dill._dill import save_function, save_type

    def default(pickler: Any, obj: Any) -> None:
        reduced = obj.__reduce_ex__(pickler.proto)
        if isinstance(reduced, str):
            pickler.save_global(obj, reduced)
        else:
            pickler.save_reduce(*reduced, obj=obj)

    def save_enum_class(pickler: Any, obj: Any) -> None:
        if located(obj) or not issubclass(obj, enum.Enum) or obj is enum.Enum:
            save_type(pickler, obj)
        else:
            pickler.save_reduce(*enum_class_reduce(obj), obj=obj)

    def save_lru_cache(pickler: Any, obj: Any) -> None:
        if located(obj) or not hasattr(obj, "__wrapped__"):
            default(pickler, obj)
        else:
            pickler.save_reduce(*lru_cache_reduce(obj), obj=obj)

    def save_typevar(pickler: Any, obj: Any) -> None:
        if located(obj):
            default(pickler, obj)
        else:
            pickler.save_reduce(*typevar_reduce(obj), obj=obj)

    def save_sqlite(pickler: Any, obj: Any) -> None:
        pickler.save_reduce(*Reductions()._sqlite(obj), obj=obj)

    def save_any_class(pickler: Any, obj: type) -> None:
        if by_value(obj) and not _namedtuple(obj):  # dill rebuilds those from their fields
            save_class(pickler, obj)
        else:
            save_type(pickler, obj)

    def save_any_function(pickler: Any, obj: types.FunctionType) -> None:
        if lost(obj) is None:
            save_function(pickler, obj)
        else:
            pickler.save_reduce(*function_by_value(obj), obj=obj)

    dill.register(type)(save_any_class)
    dill.register(abc.ABCMeta)(save_any_class)
    dill.register(types.FunctionType)(save_any_function)
    dill.register(sqlite3.Connection)(save_sqlite)
    dill.register(enum.EnumMeta)(save_enum_class)
    dill.register(functools._lru_cache_wrapper)(save_lru_cache)
    dill.register(typing.TypeVar)(save_typevar)
