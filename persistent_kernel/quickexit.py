"""End a cleanly stopped kernel without tearing the interpreter down object by object.

After a shutdown request Python spends most of the exit freeing what the
notebook built: IPython's exit handler clears the namespace (and runs a full
garbage collection), then the interpreter tears every module down. With a
million small objects that is 200-400 ms, and after a forked checkpoint every
page it writes to takes a copy-on-write fault first. None of it is needed: the
checkpoint is on disk and the process is about to vanish.

So the launcher registers :func:`_finish` before anything else, which makes it
the *last* exit handler to run. Once the kernel has stopped cleanly,
:func:`arm` keeps a reference to every namespace value (so that clearing the
namespace frees nothing) and freezes the garbage collector. Everything Python
does at exit still happens in its usual order: non-daemon threads are joined,
and every other ``atexit`` handler runs (IPython's history, ipykernel's sockets,
``logging``, ``multiprocessing``, ``tempfile`` and ``weakref.finalize``
cleanups). Then :func:`_finish` flushes every open Python file, so that bytes a
cell wrote without closing its file still reach the disk, and calls the C
library's ``exit``: the exit handlers of C extensions run, the interpreter's
own teardown does not.

Finding the open files means walking every object the collector tracks, which
writes to each one (a reference count): just after the final checkpoint's
``fork()`` that costs a copy-on-write fault per page of objects, tens of
milliseconds, enough to make a client that polls the process every 100 ms
wait one more poll. So the kernel calls :func:`note_files` before that fork:
it walks every object once, keeps the open files it finds, and freezes the
collector; :func:`arm` and :func:`_finish` then walk only the objects made
since (the collector's ``get_objects`` leaves frozen ones out).

Most often no walk is needed at all: a file object can hold bytes for a file
only while its descriptor is open, so when every descriptor open for writing
(files, pipes, terminals) points where one already did when the kernel was
made (:func:`mark_start`, before IPython's startup files, ``exec_lines`` and
the cells ran), no file the notebook opened is left open, and the walk of
everything is skipped. Descriptors the kernel opened for itself since, which
no Python file object wraps (a standby's control pipe, open whenever a cell
changed the namespace: :func:`own_descriptor`), do not count: otherwise every
stop after such a cell would walk them all (about 100 ms for a million objects).

Limits: ``__del__`` methods of objects still alive at exit do not run (Python
does not promise that they do), and a buffered writer that is not a Python
file object (a library's own buffer) is not flushed; nor, when no file the
notebook opened is left open, is a second writer it made where the kernel
already writes (``open("/dev/stdout", "w")``), or a writer on a socket
(``socket.makefile``): sockets are left out of the comparison, since the
kernel's messaging opens and closes its own. ``PersistentKernel.fast_exit
= False`` restores the ordinary exit. When something registered an exit handler
before the launcher (a ``sitecustomize`` or ``.pth`` hook, such as coverage's),
:func:`install` does nothing, because that handler would run after ours.
"""

from __future__ import annotations

import atexit
import fcntl
import gc
import io
import itertools
import os
import stat
import sys
from collections.abc import Iterable
from typing import Any

#: Every namespace value, kept alive until the process ends.
_kept: list[Any] = []
#: Open files found among the objects frozen since (see note_files).
_files: list[Any] = []
#: (device, inode) of what was open for writing at mark_start().
_known: frozenset[tuple[int, int]] | None = None
#: The kernel's own descriptors (see own_descriptor): descriptor -> its (device, inode).
_own: dict[int, tuple[int, int]] = {}
_installed = False
_armed = False
_noted = False

#: Text layers first: flushing one pushes its bytes into the binary layer below.
_RANK: dict[type, int] = {io.TextIOWrapper: 0, io.BufferedWriter: 1, io.BufferedRandom: 1}


def install() -> bool:
    """Register the final exit handler; call before anything else registers one.

    Returns whether it was registered.
    """
    global _installed
    count = getattr(atexit, "_ncallbacks", None)
    if _installed or (count is not None and count() > 0):
        return _installed
    atexit.register(_finish)
    _installed = True
    return True


def own_descriptor(fd: int) -> None:
    """Note *fd*, opened by the kernel for itself, as one no Python file object wraps
    (so nothing is buffered for it): while it stays open on what it points to now, it
    is left out of :func:`writable_targets`. A descriptor number reused for something
    else after it was closed counts again."""
    try:
        st = os.fstat(fd)
    except OSError:
        return
    _own[fd] = (st.st_dev, st.st_ino)


def writable_targets() -> frozenset[tuple[int, int]] | None:
    """(device, inode) of every file, pipe or terminal this process has open for
    writing, but the kernel's own (:func:`own_descriptor`); None where
    ``/proc/self/fd`` cannot be read (not Linux)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    found = set()
    for name in names:
        fd = int(name)
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                continue
            st = os.fstat(fd)
        except OSError:  # closed since the listing (the listing's own, for one)
            continue
        target = (st.st_dev, st.st_ino)
        if _own.get(fd) == target:
            continue
        if stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
            found.add(target)
    return frozenset(found)


def mark_start() -> None:
    """Note what this process has open for writing; call before the notebook's code
    (IPython's startup files, ``exec_lines``, cells) runs."""
    global _known
    _known = writable_targets()


def needs_walk() -> bool:
    """Whether open files must be looked for among all objects: something is open
    for writing that was not at :func:`mark_start` (or that cannot be told)."""
    if _known is None:
        return True
    now = writable_targets()
    return now is None or not now <= _known


def note_files() -> None:
    """Keep the open files of the whole process, then freeze the collector.

    Call once the kernel has stopped, before the final checkpoint forks (see
    the module's docstring); the exit then walks only the objects made after
    this. Without a prior :func:`install` this does nothing; without a later
    :func:`arm`, the exit unfreezes the collector and is Python's own.
    """
    global _noted
    if not _installed:
        return
    if _noted:
        _note_new_files()
        return
    _noted = True
    if needs_walk():
        gc.unfreeze()  # objects someone froze before: get_objects() would skip them
        _note_new_files()
    else:
        gc.freeze()  # the exit walks only objects made from now on


def _note_new_files() -> None:
    _files.extend(open_files())
    gc.freeze()


def arm(keep: Iterable[Any]) -> None:
    """Make the coming exit quick: keep *keep* alive and stop garbage collection.

    Call once the kernel has stopped and has nothing left to save. Without a
    prior :func:`install` this does nothing.
    """
    global _armed
    if not _installed:
        return
    _kept.extend(keep)
    gc.disable()
    # Exit handlers' gc.collect() then skips everything made so far.
    note_files()
    _armed = True


def arm_namespace(user_ns: dict[str, Any], hidden: dict[str, Any]) -> None:
    """:func:`arm`, keeping the values of the user's namespace and of IPython's
    output history alive, so that IPython's exit handler clears the namespace
    without freeing them."""
    keep: list[Any] = [*user_ns.values(), *hidden.values()]
    outputs = user_ns.get("_oh")
    if isinstance(outputs, dict):
        keep.extend(outputs.values())
    arm(keep)


def armed() -> bool:
    return _armed


def open_files() -> list[Any]:
    """Every open, writable Python file object the collector tracks and has not
    frozen, text layers first."""
    objects = gc.get_objects()
    # C-speed filter: a million tracked objects cost milliseconds, not a Python loop.
    files = list(itertools.compress(objects, map(_RANK.__contains__, map(type, objects))))
    files.sort(key=lambda f: _RANK[type(f)])
    return files


def flush_all() -> None:
    """Flush every open Python file; a file that fails is left as it is."""
    files = [*_files, *open_files()]
    files.sort(key=lambda f: _RANK[type(f)])
    for f in [*files, sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__]:
        try:
            if f is not None and not f.closed:
                f.flush()
        except Exception:  # a broken file must not keep the others unflushed
            continue


def _finish() -> None:
    if not _armed:
        if _noted:
            gc.unfreeze()  # Python's own exit collects what was frozen
        return
    flush_all()
    import ctypes  # here, not at the top: the launcher imports this module first thing

    # The C library's exit, not os._exit: C-level exit handlers still run.
    # PyDLL holds the GIL, so no Python thread wakes up while they do.
    ctypes.PyDLL(None).exit(0)
