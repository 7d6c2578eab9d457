"""Which names of the user namespace a cell may read or bind, before it runs.

While the start-up restore is still binding variables, a cell runs at once
if none of the names it may touch is still to come, and waits for those
that are (see :class:`~persistent_kernel.restore.Pending`). The answer has
to err on one side only: a name the cell may touch and that is left out
would let the cell run on a namespace without it (a ``NameError``, or a
value the restore then overwrites); a name put in needlessly only makes
the cell wait, as every first cell did before.

:func:`names_used` compiles the cell as IPython will run it (after its
input transformations) and collects the names its code objects refer to:
``co_names`` (globals, attributes and imported modules alike: too many,
never too few) of the cell and of every code object nested in it (its
functions, classes, lambdas, comprehensions), and the module-level
``co_varnames``. A function's own ``co_varnames`` are left out: they are
its locals, never globals. Then, transitively and within a bound, the
names read by what the cell names that the notebook defined: its
functions (and their closures and ``__wrapped__``), its classes (their
methods, properties and notebook base classes), the classes of its
instances, bound methods and ``functools.partial`` objects: a cell that
calls ``f()`` where ``f`` reads the global ``big`` needs ``big``.

It cannot know (and says ``None``: wait for everything) when the cell, or
a notebook function it reaches, may look names up by string or walk the
namespace: ``globals``, ``locals``, ``vars``, ``eval``, ``exec``, ``dir``,
``get_ipython`` (every magic and shell escape becomes a call of it),
``__import__``, ``__main__``, ``sys.modules``, frames (``_getframe``,
``currentframe``, ``f_globals``), ``__globals__``, dill's session
functions, ``from x import *``, or more notebook objects than the bound.
A library function that reaches into ``__main__`` by itself is beyond it.

A cell that does not compile needs nothing: it fails whatever is loaded.
Pure: it reads the namespace and calls nothing in it (no property, no
``__getattr__`` of the user's objects runs).
"""

from __future__ import annotations

import ast
import functools
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

#: Names through which code may reach any variable by its name, or all of them.
REFLECTIVE = frozenset(
    {
        "globals", "locals", "vars", "eval", "exec", "dir", "get_ipython", "__import__",
        "__main__", "modules", "_getframe", "currentframe", "f_globals", "__globals__",
        "breakpoint", "dump_session", "load_session", "dump_module", "load_module",
    }
)  # fmt: skip

#: At most this many notebook objects are followed from one cell; past it, wait for all.
LIMIT = 2000

_MAIN = "__main__"


def names_used(
    code: str,
    namespace: Mapping[str, Any],
    transform: Callable[[str], str] | None = None,
    limit: int = LIMIT,
) -> set[str] | None:
    """The names of *namespace* the cell *code* may read or bind; None if it cannot
    tell (see the module's docstring). *transform*: IPython's
    ``shell.transform_cell`` (default: IPython's transformations without a shell)."""
    try:
        source = (transform or _transform)(code)
    except Exception:
        return None  # IPython may still make something of it: do not guess
    try:
        with warnings.catch_warnings():
            # IPython warns when it compiles the cell (an invalid escape): not twice
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
            compiled = compile(
                tree, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
            )
    except (SyntaxError, ValueError):
        return set()  # IPython compiles the same text, and fails the same way
    except Exception:
        return None  # too deep to compile here (RecursionError, MemoryError)
    if any(
        isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names)
        for node in ast.walk(tree)
    ):
        return None  # binds names nobody can list before it runs
    names = set(compiled.co_varnames)
    names.update(_code_names(compiled))
    if names & REFLECTIVE:
        return None
    return _follow(names, namespace, limit)


def _transform(code: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager

    return str(TransformerManager().transform_cell(code))  # type: ignore[no-untyped-call]


def _code_names(code: types.CodeType) -> set[str]:
    """``co_names`` of *code* and of every code object nested in it."""
    names: set[str] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return names


def _follow(names: set[str], namespace: Mapping[str, Any], limit: int) -> set[str] | None:
    """*names* and, transitively, the names read by the notebook's objects they name."""
    seen: set[int] = set()
    todo = [namespace[n] for n in names if n in namespace]
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if len(seen) > limit:
            return None
        for code, more in _parts(value, namespace):
            if code is not None:
                found = _code_names(code)
                if found & REFLECTIVE:
                    return None
                for name in found - names:
                    names.add(name)
                    if name in namespace:
                        todo.append(namespace[name])
            todo.extend(more)
    return names


def _is_notebook(value: Any, namespace: Mapping[str, Any]) -> bool:
    """Whether the function or class *value* was defined in the notebook."""
    if issubclass(type(value), types.FunctionType):
        return bool(value.__globals__ is namespace or value.__module__ == _MAIN)
    if issubclass(type(value), type):
        return bool(_type_attr(value, "__module__") == _MAIN)
    return False


def _type_attr(cls: type, name: str) -> Any:
    try:
        return type.__getattribute__(cls, name)
    except AttributeError:
        return None


def _parts(
    value: Any, namespace: Mapping[str, Any]
) -> Iterator[tuple[types.CodeType | None, list[Any]]]:
    """The code of the notebook object *value*, and the objects it leads to. Types are
    told by ``type()``, not ``isinstance`` (which may ask the object its ``__class__``)."""
    kind = type(value)
    if issubclass(kind, types.FunctionType):
        if not _is_notebook(value, namespace):
            return
        inner = [c.cell_contents for c in value.__closure__ or () if _filled(c)]
        wrapped = value.__dict__.get("__wrapped__")
        yield value.__code__, [*inner, *([wrapped] if wrapped is not None else [])]
    elif issubclass(kind, (types.MethodType, staticmethod, classmethod)):
        yield None, [value.__func__]
    elif kind is functools.partial:
        yield None, [value.func, *value.args, *value.keywords.values()]
    elif issubclass(kind, property):
        yield None, [f for f in (value.fget, value.fset, value.fdel) if f is not None]
    elif issubclass(kind, type):
        if not _is_notebook(value, namespace):
            return
        members = list(_type_attr(value, "__dict__").values())
        bases = [b for b in _type_attr(value, "__mro__")[1:] if b is not object]
        yield None, [*members, *bases]
    elif _is_notebook(kind, namespace):
        yield None, [kind]  # an instance: its class's methods may run


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True
