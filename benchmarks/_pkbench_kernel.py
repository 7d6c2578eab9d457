"""Kernel-side half of ``bench.py``: imported *inside* the kernels being measured.

bench.py puts this directory on the kernels' ``PYTHONPATH`` and calls these
functions as ``__import__("_pkbench_kernel").f(...)``, an expression whose
value is ``None``, so nothing is bound in the user namespace (which is what
is being checkpointed) and nothing lands in ``Out``/``_``. Each function
prints one line ``MARK + json`` that bench.py picks out of the cell's stdout.

Only the standard library is imported at module level: numpy, pandas and
dill are imported inside the functions that need them, *before* their
clocks start, so no timing includes an import the other side did not pay.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import pickle
import sys
import threading
import time
from typing import Any

MARK = "@@PKBENCH@@"


def _emit(obj: Any) -> None:
    print(MARK + json.dumps(obj, default=str), flush=True)


def _user_ns() -> dict[str, Any]:
    from IPython import get_ipython

    shell = get_ipython()
    assert shell is not None
    return shell.user_ns  # type: ignore[no-any-return]


def _status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def rss() -> None:
    gc.collect()
    _emit(_status())


class _PeakRSS:
    """Peak RSS growth of this process over a block.

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``,
    Linux >= 4.0) and reads ``VmHWM`` afterwards: exact, no sampling. Where
    that is refused, a thread samples ``VmRSS`` every millisecond instead
    (it gets the GIL at least every ``sys.getswitchinterval()`` = 5 ms).
    """

    def __enter__(self) -> _PeakRSS:
        gc.collect()
        self.base = _status()["VmRSS"]
        self.samples = [self.base]
        self._stop = threading.Event()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.mode = "VmHWM after clear_refs"
            self._thread: threading.Thread | None = None
        except OSError:
            self.mode = "VmRSS sampled every 1 ms"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.samples.append(_status()["VmRSS"])

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            peak = _status()["VmHWM"]
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self.samples)
        self.extra = max(0, peak - self.base)


# -- dill -------------------------------------------------------------------------


def dill_dump(path: str) -> None:
    """``dill.dump_module`` of the notebook's ``__main__``, to *path*, fsynced.

    The whole call blocks the kernel, so its time is also dill's "pause".
    In the stock ``python3`` kernel ``sys.modules["__main__"]`` is IPython's
    user module (its ``__dict__`` is the user namespace) and dump_module
    handles it (it leaves out IPython's own singletons such as ``exit`` and
    ``get_ipython``), so no stand-in module is needed. It is passed
    explicitly because dill's default, ``dill._dill._main_module``, is
    whatever ``__main__`` was when dill was first imported.
    """
    import dill

    main = sys.modules["__main__"]
    assert main.__dict__ is _user_ns(), "__main__ is not the user namespace"
    with _PeakRSS() as peak:
        start = time.perf_counter()
        with open(path, "wb") as f:
            dill.dump_module(f, module=main)
            f.flush()
            os.fsync(f.fileno())
        elapsed = time.perf_counter() - start
    _emit(
        {
            "elapsed": elapsed,
            "size": os.path.getsize(path),
            "extra_rss": peak.extra,
            "peak_mode": peak.mode,
            "protocol": dill.settings["protocol"],
        }
    )


def dill_load(path: str) -> None:
    """``dill.load_module`` of *path* into this (fresh) kernel's ``__main__``."""
    import dill

    start = time.perf_counter()
    with open(path, "rb") as f:
        dill.load_module(f)
    elapsed = time.perf_counter() - start
    _emit({"elapsed": elapsed})


# -- raw bytes --------------------------------------------------------------------


def _arrays_of(value: Any) -> list[Any]:
    """The contiguous numpy arrays holding *value*'s data (an array, or a DataFrame's columns)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        arrays = [value]
    else:  # a DataFrame: each column is one contiguous row of its 2-D block
        arrays = [value[c].to_numpy() for c in value.columns]
    return [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]


def raw_write(path: str, names: list[str], kind: str) -> None:
    """The floor for writing the state: its raw bytes, written and fsynced.

    kind "arrays": ``ndarray.tofile`` of every array (DataFrames column by
    column), one file, flush + fsync. kind "pickle" (state that is not
    arrays): ``pickle.dumps(protocol=5)`` of the variables, written and
    fsynced; the dumps time is included (and reported apart) because
    objects have no raw form without it.
    """
    ns = _user_ns()
    values = [ns[n] for n in names]
    layout: list[tuple[str, int]] = []
    dumps = 0.0
    cpu: float | None = None
    if kind == "arrays":
        arrays = [a for v in values for a in _arrays_of(v)]
        layout = [(a.dtype.str, int(a.size)) for a in arrays]
        # this thread's CPU: the kernel's own threads do work of theirs meanwhile
        cpu, start = time.thread_time(), time.perf_counter()
        with open(path, "wb") as f:
            for a in arrays:
                a.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        elapsed = time.perf_counter() - start
        cpu = time.thread_time() - cpu
    else:
        start = time.perf_counter()
        data = pickle.dumps(dict(zip(names, values, strict=True)), protocol=5)
        dumps = time.perf_counter() - start
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        elapsed = time.perf_counter() - start
        del data
    size = os.path.getsize(path)
    _emit({"elapsed": elapsed, "dumps": dumps, "size": size, "layout": layout, "cpu": cpu})


def hash_alone(names: list[str]) -> None:
    """The hash a checkpoint of these arrays pays, alone: BLAKE3 of each chunk the
    writer cuts them into (our kernel only), on one thread and on two.

    The floor under a checkpoint of fresh arrays beside ``raw_write``: the
    writer does this and the write too, on this machine's cores.
    """
    from concurrent.futures import ThreadPoolExecutor

    from persistent_kernel.store import blob_hash, chunks

    ns = _user_ns()
    views = [memoryview(a).cast("B") for n in names for a in _arrays_of(ns[n])]
    pieces = [v[s:e] for v in views for s, e in chunks.spans(v.nbytes)]
    out: dict[str, Any] = {"size": sum(v.nbytes for v in views)}
    for threads in (1, 2):
        cpu, start = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda p: blob_hash([p]), pieces))
        out[f"threads{threads}"] = time.perf_counter() - start
        out[f"threads{threads}.cpu"] = time.process_time() - cpu
    _emit(out)


def raw_read(path: str, kind: str, layout: list[tuple[str, int]]) -> None:
    """The floor for reading the state back: ``np.fromfile``, or read + ``pickle.loads``."""
    if kind == "arrays":
        import numpy as np

        start = time.perf_counter()
        with open(path, "rb") as f:
            arrays = [np.fromfile(f, dtype=dtype, count=count) for dtype, count in layout]
        elapsed = time.perf_counter() - start
        got = sum(a.nbytes for a in arrays)
        del arrays
    else:
        start = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        values = pickle.loads(data)
        elapsed = time.perf_counter() - start
        got = len(data)
        del values, data
    _emit({"elapsed": elapsed, "bytes": got, "size": os.path.getsize(path)})


# -- the persistent kernel -----------------------------------------------------------


def persist_save() -> None:
    """``%persist save`` (returns once committed), then the kernel's last_result.

    In one cell, so the namespace stays clean (%persist save marks the cell
    that ran it as already saved).
    """
    from IPython import get_ipython

    shell = get_ipython()
    assert shell is not None
    kernel = shell.kernel  # type: ignore[attr-defined]
    start = time.perf_counter()
    shell.run_line_magic("persist", "save")
    wall = time.perf_counter() - start
    result = kernel.checkpointer.last_result
    data = dataclasses.asdict(result) if result is not None else None
    _emit({"result": data, "magic_wall": wall})


def restore_report() -> None:
    from IPython import get_ipython

    shell = get_ipython()
    assert shell is not None
    report = shell.kernel.restore_report  # type: ignore[attr-defined]
    _emit(dataclasses.asdict(report) if report is not None else None)


# -- checking that what came back is what went out ------------------------------------


def _fingerprint(value: Any) -> Any:
    tp = type(value)
    name = f"{tp.__module__}.{tp.__qualname__}"
    if name == "builtins.module":
        return [name, value.__name__]
    if name == "numpy.ndarray":
        step = max(1, value.size // 4096)
        return [name, list(value.shape), str(value.dtype), float(value.ravel()[::step].sum())]
    if name.endswith("DataFrame"):
        sample = value.iloc[:: max(1, len(value) // 1000)]
        numeric = sample.select_dtypes("number").to_numpy(dtype="float64").sum()
        return [name, list(value.shape), [str(c) for c in value.columns], float(numeric)]
    if isinstance(value, dict):
        items = list(value.items())
        return [name, len(items), repr(items[:2]), repr(items[-2:])]
    if isinstance(value, list):
        return [name, len(value), repr(value[:2]), repr(value[-2:])]
    return [name, repr(value)[:200]]


def fingerprint(names: list[str]) -> None:
    ns = _user_ns()
    _emit({n: _fingerprint(ns[n]) if n in ns else None for n in names})
