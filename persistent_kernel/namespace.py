"""Which names of the user namespace are saved.

A pure filter: it looks at names, identities and types, never pickles.
Everything it leaves out is either something IPython rebuilds by itself
(history, ``get_ipython``), something that belongs to the running kernel
(objects of ipykernel, IPython, zmq, tornado or jupyter_client types), a
user exclude, or an object whose restored copy would mislead (files open
for writing, threads).
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import io
import re
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import FunctionType, ModuleType
from typing import Any

from .reducers import lost, note_position

#: Names IPython and ipykernel put into every namespace, and Python's record of the
#: warnings a cell has shown (``__warningregistry__``: restored, it would keep them
#: from being shown again).
INTERNAL_NAMES = frozenset(
    {
        "In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh",
        "get_ipython", "exit", "quit", "__session__", "__builtins__", "__builtin__",
        "__name__", "__doc__", "__package__", "__loader__", "__spec__", "__file__",
        "__cached__", "__annotations__", "__warningregistry__",
    }
)  # fmt: skip

#: Output and input history: ``_12`` and ``_i12``.
_HISTORY = re.compile(r"_i?\d+\Z")

#: Top-level packages whose objects belong to the running kernel.
KERNEL_PACKAGES = frozenset(
    {"ipykernel", "IPython", "zmq", "tornado", "jupyter_client", "persistent_kernel"}
)


def unsaveable_reason(value: Any) -> str | None:
    """Why *value* must not be saved even if it could be pickled, or ``None``.

    Files open for writing: re-opening a file in its old mode (``"w"``) would
    truncate it. (A file open for reading is re-opened where it was, if it
    is unchanged: :mod:`persistent_kernel.reducers`.) Threads: a restored
    copy would not run. Locks come back unlocked, if they were.
    """
    if isinstance(value, io.IOBase) and not isinstance(value, (io.StringIO, io.BytesIO)):
        mode = str(getattr(value, "mode", "") or "")
        if not mode or set(mode) - set("rbt"):
            return "a file open for writing: re-opening it on restore could truncate it"
        if not value.closed:
            note_position(value)  # the forked writer cannot ask the descriptor
    if isinstance(value, threading.Thread):
        return "a thread: it does not run after a restart"
    return None


#: Modules of IPython whose objects a user makes to keep: ``HTML(...)``,
#: ``Markdown(...)``, ``Image(data=...)``, ``Audio``, ``IFrame``...
USER_DISPLAY_MODULES = frozenset({"IPython.core.display", "IPython.lib.display"})


def _kernel_owned(value: Any) -> bool:
    # A module the user imported (``import zmq``) comes back as an import;
    # only instances of the kernel's own types are left out. Display objects
    # are the user's own, though their types are IPython's.
    if isinstance(value, ModuleType):
        return False
    module = getattr(type(value), "__module__", None) or ""
    if module in USER_DISPLAY_MODULES:
        return False
    return module.partition(".")[0] in KERNEL_PACKAGES


def is_internal(name: str, value: Any, hidden: Mapping[str, Any]) -> bool:
    """True for names that belong to IPython or the kernel, not to the user."""
    if name in INTERNAL_NAMES or _HISTORY.match(name):
        return True
    if name in hidden and hidden[name] is value:
        return True
    return _kernel_owned(value)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if *name* matches one of the glob *patterns* (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


#: Why a name is not saved, by who excluded it: the kernel's configuration
#: (``PersistentKernel.exclude``) or the notebook's own ``%persist exclude``.
EXCLUDED_BY_CONFIG = "excluded by configuration"
EXCLUDED_BY_NOTEBOOK = "excluded by %persist exclude"


def select(
    user_ns: Mapping[str, Any],
    hidden: Mapping[str, Any],
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    notebook_exclude: Iterable[str] = (),
) -> tuple[dict[str, Any], dict[str, str]]:
    """Split *user_ns* into what to save and what to skip.

    A name matching an *exclude* glob (the configuration's) or a
    *notebook_exclude* glob (the notebook's ``%persist exclude``) is skipped
    unless it also matches an *include* glob (``%persist include`` overrides
    both); the reason says which excluded it, the notebook's first.

    Returns ``(to_save, skipped)``: ``to_save`` maps names to values;
    ``skipped`` maps the names a user would expect to see saved but that are
    not (excluded, open files, locks) to a one-line reason. Internals are
    left out silently: nobody expects ``_i3`` back.
    """
    patterns, overrides, own = list(exclude), list(include), list(notebook_exclude)
    looked: set[int] = set()
    to_save: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, value in list(user_ns.items()):
        if is_internal(name, value, hidden):
            continue
        if matches_any(name, [*own, *patterns]) and not matches_any(name, overrides):
            by_notebook = matches_any(name, own)
            skipped[name] = EXCLUDED_BY_NOTEBOOK if by_notebook else EXCLUDED_BY_CONFIG
            continue
        reason = unsaveable_reason(value)
        if reason is not None:
            skipped[name] = reason
            continue
        _look_up(value, looked)
        to_save[name] = value
    return to_save, skipped


def _look_up(value: Any, looked: set[int]) -> None:
    """Find out, here in the kernel, whether the class of *value* (or *value*, a class
    or function) is one its module's file no longer defines (:func:`.reducers.lost`):
    the writers the kernel forks then find each file of the user's own modules
    parsed already (once per version), rather than parsing it again each time.
    Each class once per call of :func:`select`."""
    key = value if isinstance(value, (type, FunctionType)) else type(value)
    if id(key) in looked:
        return
    looked.add(id(key))
    with contextlib.suppress(Exception):  # the writer meets it too, and names it
        lost(key)


def bound_names(source: str) -> set[str]:
    """The names a cell's code binds at its top level (assignments, ``def``,
    ``class``, ``import``, ``for``/``with`` targets, also inside ``if``,
    ``for``, ``while``, ``with`` and ``try`` blocks; not inside functions).
    Code that does not parse binds nothing."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    return _bound_in(tree.body)


def looks_only(source: str) -> bool:
    """Whether a cell's code can change no variable: only ``pass``, constants and
    bare names (``df`` to show it). Anything else, even ``df.shape`` (a property
    runs code), or code that does not parse as Python (magics), may change one.

    Showing a value binds IPython's ``_`` and ``Out``, which are never saved.
    """
    if len(source) > 1000:
        return False  # not worth parsing: no look-only cell is that long
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return all(
        isinstance(node, ast.Pass)
        or (isinstance(node, ast.Expr) and isinstance(node.value, (ast.Constant, ast.Name)))
        for node in tree.body
    )


def bound_in(tree: ast.Module) -> set[str]:
    """The names the top level of a parsed module binds, as :func:`bound_names` counts."""
    return _bound_in(tree.body)


def binding_line(source: str, name: str) -> int | None:
    """The line (from 1) where the last top-level statement of the cell *source*
    that binds *name* starts (as :func:`bound_names` counts bindings); None if
    none does or the code does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    found = [stmt.lineno for stmt in tree.body if name in _bound_in([stmt])]
    return found[-1] if found else None


def _bound_in(nodes: Iterable[ast.AST]) -> set[str]:
    names: set[str] = set()
    todo: list[ast.AST] = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
            continue
        if isinstance(
            node, (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)
        ):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return names


#: Cells longer than this are not kept for ``%persist rerun`` (a cell holding
#: data inline would bloat every manifest); their variables get no cell.
MAX_CELL = 64 * 1024


def last_assignments(
    inputs: Sequence[str], names: Collection[str], too_long: set[str] | None = None
) -> dict[str, str]:
    """name -> the source of the newest cell in *inputs* (IPython's ``In``) that
    binds it, for the *names* some cell binds. What ``%persist rerun`` runs.
    A name whose newest binding cell is over :data:`MAX_CELL` gets none (and is
    added to *too_long*, if given)."""
    wanted = set(names)
    found: dict[str, str] = {}
    for source in reversed(inputs):
        if not wanted:
            break
        if not isinstance(source, str) or not source.strip():
            continue
        if len(source) > MAX_CELL:
            dropped = wanted & bound_names(source)
            wanted -= dropped
            if too_long is not None:
                too_long |= dropped
            continue
        for name in bound_names(source) & wanted:
            found[name] = source
            wanted.discard(name)
    return found
