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

Limits: ``__del__`` methods of objects still alive at exit do not run (Python
does not promise that they do), and a buffered writer that is not a Python
file object (a library's own buffer) is not flushed. ``PersistentKernel.fast_exit
= False`` restores the ordinary exit. When something registered an exit handler
before the launcher (a ``sitecustomize`` or ``.pth`` hook, such as coverage's),
:func:`install` does nothing, because that handler would run after ours.
"""

from __future__ import annotations

import atexit
import gc
import io
import itertools
import sys
from collections.abc import Iterable
from typing import Any

#: Every namespace value, kept alive until the process ends.
_kept: list[Any] = []
_installed = False
_armed = False

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
    gc.freeze()  # exit handlers' gc.collect() then skips everything made so far
    _armed = True


def armed() -> bool:
    return _armed


def open_files() -> list[Any]:
    """Every open, writable Python file object, text layers first."""
    gc.unfreeze()  # get_objects() does not list frozen objects
    objects = gc.get_objects()
    # C-speed filter: a million tracked objects cost milliseconds, not a Python loop.
    files = list(itertools.compress(objects, map(_RANK.__contains__, map(type, objects))))
    files.sort(key=lambda f: _RANK[type(f)])
    return files


def flush_all() -> None:
    """Flush every open Python file; a file that fails is left as it is."""
    for f in [*open_files(), sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__]:
        try:
            if f is not None and not f.closed:
                f.flush()
        except Exception:  # a broken file must not keep the others unflushed
            continue


def _finish() -> None:
    if not _armed:
        return
    flush_all()
    import ctypes  # here, not at the top: the launcher imports this module first thing

    # The C library's exit, not os._exit: C-level exit handlers still run.
    # PyDLL holds the GIL, so no Python thread wakes up while they do.
    ctypes.PyDLL(None).exit(0)
