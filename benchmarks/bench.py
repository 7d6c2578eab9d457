#!/usr/bin/env python
"""Benchmark the persistent kernel against dill and raw I/O, in real kernels.

    .venv/bin/python benchmarks/bench.py            # full run (~1 GiB state, 3 repeats)
    .venv/bin/python benchmarks/bench.py --quick    # smoke run, small sizes, 1 repeat
    .venv/bin/python benchmarks/bench.py --gib 2 --repeat 5
    .venv/bin/python benchmarks/bench.py --large 1,4,8  # fork pause, writer memory and
                                                        # one-element changes by size

Every workload is built in real kernels started through jupyter_client: ours
(``python-persistent``) and the stock ``python3`` kernel (ipykernel), with
every Jupyter and IPython directory and the checkpoint directory in one temp
dir under /tmp, removed at the end. The peers run in the stock kernel,
timed inside it (see ``_pkbench_kernel.py``):

* ``dill.dump_module`` / ``dill.load_module`` of the notebook's ``__main__``
  (the file fsynced); dill blocks the kernel for the whole dump;
* raw bytes: ``ndarray.tofile`` + flush + fsync and ``np.fromfile`` for
  arrays; for other state, plain ``pickle`` (dumps + write + fsync, read +
  loads), since objects have no raw form.

Per workload and repeat, in this order (one kernel alive at a time, each
workload and repeat with a checkpoint dir of its own):

1. ours: build, ``%persist save`` (writer time, kernel pause, bytes written,
   the writer's private memory), [latency of ``pass``], [``x = 1`` and a
   second save], then a timed shutdown of the now clean session;
2. ours again, same session (``autosave=False``, so reading the report does
   not trigger a final checkpoint): ``restore_report`` from the first cell
   (which waits for the restore), and the restored values are compared with
   the originals;
3. stock: build, dill dump (with its peak RSS growth), raw write, [latency],
   timed shutdown;
4. stock, fresh: ``dill.load_module`` (values compared with the originals);
5. stock, fresh: raw read.

After every kernel, the harness waits until no process carrying that
kernel's connection file is left (a detached writer is a fork of the kernel
and keeps its command line), and kills by pid any that outlives 600 s.

The kernels that restore or read (2, 4, 5) pre-import numpy, pandas and
dill (``IPKernelApp.exec_lines``; IPython hides those names, so they are
not part of any namespace), so no restore or read time includes importing
them. Our package is byte-compiled first, as pip does at install (see
``compile_package``). Page cache is warm: everything is read right after it was written.
Every timed step that takes memory is preceded, within milliseconds, by a
touch of that much fresh memory (see ``Bench.prefault``). Reads (2, 4, 5)
are preceded by one in the reading kernel itself: a cell just before the
timed one in 4 and 5, and in 2 one more ``exec_lines`` entry, which runs just
before the restore starts (a restore starts with its kernel, so a touch
before the kernel's start-up would be a second old by then, and partly
given back to the host). Writes are preceded by one in the harness.
Results: medians over ``--repeat`` runs; a Markdown table on stdout,
everything as JSON in ``benchmarks/results.json``, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _pkbench_kernel import MARK  # noqa: E402

OURS, STOCK = "python-persistent", "python3"
PREIMPORT = "--IPKernelApp.exec_lines=import numpy, pandas, dill"


def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Return as soon as *process* has exited (not yet reaped).

    ``Popen.wait(timeout=...)`` polls with sleeps growing to 50 ms, which
    would round a 20 ms exit up to as much as 70 ms; a pidfd becomes
    readable the moment the process exits.
    """
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already reaped
        process.wait(timeout=timeout)
        return
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(process.args, timeout)
    finally:
        os.close(fd)


def prefault_code(nbytes: float) -> str:
    """:meth:`Bench.prefault`, done by a kernel (with numpy imported) in its own process.

    Its value is None, so nothing stays behind in the namespace.
    """
    return f"numpy.ones({max(1, int(nbytes)) // 8 + 1}).fill(0)"


def prefault_line(nbytes: float) -> str:
    """``exec_lines`` entry running :func:`prefault_code` at the kernel's start-up.

    ``exec_lines`` run before the kernel's ``start()``, where the restore begins.
    """
    return f"--IPKernelApp.exec_lines={prefault_code(nbytes)}"


MiB, GiB = 1 << 20, 1 << 30
CELL_TIMEOUT = 1800.0
LATENCY_CELLS = 50
#: A cell that changes the namespace (each run binds a new value): the standby's cost.
CHANGE_CELL = "x = {i}"
#: Restarts of each kind per run (and fresh stock kernels reading the raw file).
RESTARTS = 3

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# -- workloads ------------------------------------------------------------------------


@dataclass
class Workload:
    key: str
    title: str
    setup: list[str]  # cells run before the memory baseline (imports)
    build: list[str]  # cells that create the state
    names: list[str]  # the state's variables
    raw_kind: str  # "arrays" or "pickle"
    raw_names: list[str]  # what the raw peer writes (pickle cannot take modules)
    latency: bool = False  # also measure per-cell latency and the incremental checkpoint


def workloads(gib: float, objects_scale: float) -> list[Workload]:
    n = max(1, int(gib * GiB / 4 / 8))  # float64 elements per array, 4 arrays
    rows = max(1, int(gib * 50e6 / 80))  # ~50 MB DataFrame: 10 columns of 8 bytes
    n_table = max(1, int(1_000_000 * objects_scale))
    n_records = max(1, int(500_000 * objects_scale))
    arrays = "\n".join(f"arr{i} = np.random.default_rng({i}).random({n})" for i in range(4))
    frame = (
        f"frame = pd.DataFrame({{f'c{{i}}': np.random.default_rng(10 + i).random({rows}) "
        f"for i in range(9)}} | {{'id': np.arange({rows})}})"
    )
    return [
        Workload(
            key="seed",
            title="W1 seed session",
            setup=["import numpy as np\nimport pandas as pd"],
            build=[
                "a = [100, 'aa']\n"
                'b = {"x": 100, "y": \'200\'}\n'
                "df1 = pd.DataFrame({'id': np.arange(999), 'value': np.linspace(0, 1, 999), "
                "'label': [f'row{i}' for i in range(999)]})"
            ],
            names=["a", "b", "df1", "np", "pd"],
            raw_kind="pickle",
            raw_names=["a", "b", "df1"],
        ),
        Workload(
            key="arrays",
            title=f"W2 {_size(4 * n * 8)} arrays + {_size(rows * 80)} DataFrame",
            setup=["import numpy as np\nimport pandas as pd"],
            build=[arrays + "\n" + frame],
            names=["arr0", "arr1", "arr2", "arr3", "frame", "np", "pd"],
            raw_kind="arrays",
            raw_names=["arr0", "arr1", "arr2", "arr3", "frame"],
            latency=True,
        ),
        Workload(
            key="objects",
            title=f"W3 {n_table:,} str->tuple + {n_records:,} dicts",
            setup=[],
            build=[
                f"table = {{f'key{{i:07d}}': (i, f'value-{{i}}', i * 0.5) "
                f"for i in range({n_table})}}\n"
                f"records = [{{'id': i, 'name': f'name-{{i}}', 'score': i / 7}} "
                f"for i in range({n_records})]"
            ],
            names=["table", "records"],
            raw_kind="pickle",
            raw_names=["table", "records"],
        ),
    ]


# -- kernels ------------------------------------------------------------------------------


class KernelError(RuntimeError):
    pass


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Kernel:
    """One kernel started through jupyter_client's KernelManager."""

    def __init__(
        self, bench: Bench, name: str, label: str, extra: list[str], session: str, ckdir: Path
    ) -> None:
        from jupyter_client.manager import KernelManager

        self.bench, self.name, self.label = bench, name, label
        self.closed = False
        self.km = KernelManager(kernel_name=name)
        self._log = open(bench.root / "logs" / f"{label}.log", "ab")  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["PERSISTENT_KERNEL_SESSION"] = session
        if name == OURS:
            extra = [
                f"--PersistentKernel.checkpoint_dir={ckdir}",
                "--PersistentKernel.checkpoint_interval=3600",  # no autosave in the way
                *extra,
            ]
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        start = time.perf_counter()
        self.km.start_kernel(
            extra_arguments=extra,
            env=env,
            cwd=str(bench.root / "cwd"),
            stdout=self._log,
            stderr=self._log,
        )
        bench.live.append(self)
        self.connection_file = self.km.connection_file
        self.pid: int = self.km.provisioner.pid  # type: ignore[union-attr]
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=180)
        except RuntimeError as exc:
            raise KernelError(f"{label}: kernel did not start: {exc}\n{self.log_tail()}") from exc
        self.started = start
        self.ready = time.perf_counter() - start

    def since_start(self) -> float:
        return time.perf_counter() - self.started

    def log_tail(self, n: int = 3000) -> str:
        self._log.flush()
        path = self.bench.root / "logs" / f"{self.label}.log"
        return path.read_text(errors="replace")[-n:]

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> list[Any]:
        """Execute *code*; return the objects the cell emitted (see _pkbench_kernel)."""
        out: list[str] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content.get("name") == "stdout":
                out.append(content["text"])
            elif kind == "error":
                errors.append(_ANSI.sub("", "\n".join(content.get("traceback", []))))

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        if reply["content"]["status"] != "ok":
            c = reply["content"]
            raise KernelError(
                f"{self.label}: cell failed: {c.get('ename')}: {c.get('evalue')}\n"
                f"--- cell ---\n{code[:500]}\n--- traceback ---\n{''.join(errors)[-3000:]}"
            )
        text = "".join(out)
        return [
            json.loads(line[len(MARK) :]) for line in text.splitlines() if line.startswith(MARK)
        ]

    def call(self, expr: str, timeout: float = CELL_TIMEOUT) -> Any:
        """Run ``_pkbench_kernel.<expr>`` in the kernel; its one emitted object."""
        got = self.run(f"__import__('_pkbench_kernel').{expr}", timeout)
        if len(got) != 1:
            raise KernelError(f"{self.label}: {expr} emitted {len(got)} results")
        return got[0]

    def latency(self, n: int, code: str = "pass") -> list[float]:
        """Round trips of *code*: execute_request sent -> reply and idle status received."""
        kc = self.kc
        times = []
        for i in range(n):
            start = time.perf_counter()
            msg_id = kc.execute(code.format(i=i), store_history=True)
            while True:
                msg = kc.get_shell_msg(timeout=60)
                if msg["parent_header"].get("msg_id") == msg_id:
                    break
            while True:
                msg = kc.get_iopub_msg(timeout=60)
                if (
                    msg["parent_header"].get("msg_id") == msg_id
                    and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"
                ):
                    break
            times.append(time.perf_counter() - start)
        return times

    def restart(self) -> None:
        """Restart as a client's Restart does (shutdown_request with restart, then the
        same command line, connection file and environment); returns once it answers."""
        self.km.restart_kernel(now=False)
        self.pid = self.km.provisioner.pid  # type: ignore[union-attr]
        self.kc.wait_for_ready(timeout=180)

    def timed_shutdown(self) -> dict[str, float]:
        """shutdown_request on the control channel; time to its reply and to process exit."""
        process = self.km.provisioner.process  # type: ignore[union-attr]
        start = time.perf_counter()
        msg_id = self.kc.shutdown()
        reply_at = None
        with contextlib.suppress(Exception):
            while True:
                msg = self.kc.control_channel.get_msg(timeout=30)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply_at = time.perf_counter() - start
                    break
        _wait_exit(process, timeout=120)
        exit_at = time.perf_counter() - start
        process.wait(timeout=120)  # reap
        # A writer forked by the final checkpoint outlives the kernel and keeps its
        # command line: any process with our connection file now is one.
        left = self.bench.strays(self.connection_file.encode())
        self.close()
        return {
            "reply": reply_at if reply_at is not None else float("nan"),
            "exit": exit_at,
            "writers_left": len(left),
        }

    def close(self) -> None:
        """Stop the kernel (gracefully, then by force) and release everything."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        try:
            if self.km.is_alive():
                self.km.shutdown_kernel(now=False)
            else:
                self.km.shutdown_kernel(now=True)  # reaps and removes the connection file
        except Exception:
            with contextlib.suppress(Exception):
                self.km.shutdown_kernel(now=True)
        with contextlib.suppress(ValueError):
            self.bench.live.remove(self)
        self._log.close()


# -- sampling the forked writer from outside ------------------------------------------


def _private_bytes(pid: int) -> int | None:
    """Private_Clean + Private_Dirty of *pid* (as persistent_kernel.snapshot counts it)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    kib = sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty") if k in fields)
    return kib * 1024


class WriterSampler:
    """Peak private memory of the kernel's forked writer, sampled from outside.

    The package reports ``writer_private_bytes`` once, when the writer's job
    has returned; memory it used and freed before then is not in it, nor the
    memory of the helper process a writer may pickle with. This finds the
    writer and its helper (processes with the kernel's exact command line that
    are not the kernel: fork copies it) and samples their smaps_rollup every
    5 ms; a sample is the sum over the processes found.
    """

    def __init__(self, kernel_pid: int) -> None:
        self.kernel_pid = kernel_pid
        with open(f"/proc/{kernel_pid}/cmdline", "rb") as f:
            self.cmdline = f.read()
        self.peak = 0
        self.samples = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _find(self) -> list[int]:
        """Processes with the kernel's command line that are not the kernel or its children.

        That leaves out the short-lived intermediate child of the double fork
        (its parent is the kernel): reading its smaps while it forks or exits
        would hold its memory map lock and lengthen the kernel's pause.
        """
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.kernel_pid:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                if ppid == self.kernel_pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == self.cmdline:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._find():
                value = _private_bytes(pid)
                if value is not None:
                    self.pids.add(pid)
                    self.samples += 1
                    total += value
            self.peak = max(self.peak, total)
            self._stop.wait(0.005)

    def __enter__(self) -> WriterSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def watched_save(k: Kernel) -> tuple[dict[str, Any], int, int]:
    """``%persist save`` timed with nothing watching, then the same again watched.

    Sampling a writer's smaps_rollup every 5 ms walks its page tables: with a
    million objects that is a core's worth of work beside the writer, which
    would slow what is timed. So the first save is timed (its result is
    returned) and a second one, the same work on the same namespace (nothing
    written), is sampled for the writer's peak memory (with the first's
    reported figure, the larger is returned, and the number of samples).
    """
    got = k.call("persist_save()")
    timed = got["result"]
    if timed is not None:  # what the cell waited for: the fork, the writer, its report
        timed["blocking"] = got["magic_wall"]
    with WriterSampler(k.pid) as sampler:
        watched = k.call("persist_save()")["result"]
    reported = [r.get("writer_private_bytes") or 0 for r in (timed, watched) if r]
    return timed, max([sampler.peak, *reported]), sampler.samples


# -- the run ------------------------------------------------------------------------------


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns)
    return out


def _written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    """Bytes of files that are new or changed between two _tree snapshots."""
    return sum(v[0] for k, v in after.items() if before.get(k) != v)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="pk-bench-"))
        self.live: list[Kernel] = []
        self.prefault_seconds = 0.0
        for sub in ("jupyter/data", "jupyter/runtime", "jupyter/config", "ipython", "logs"):
            (self.root / sub).mkdir(parents=True)
        for sub in ("cwd", "checkpoints", "files"):
            (self.root / sub).mkdir()
        # Read by jupyter_client here and inherited by the kernels. The data dir
        # is empty, so the kernelspecs come from this environment's share/jupyter.
        os.environ["JUPYTER_DATA_DIR"] = str(self.root / "jupyter/data")
        os.environ["JUPYTER_RUNTIME_DIR"] = str(self.root / "jupyter/runtime")
        os.environ["JUPYTER_CONFIG_DIR"] = str(self.root / "jupyter/config")
        os.environ["IPYTHONDIR"] = str(self.root / "ipython")
        compile_package()

    def prefault(self, nbytes: float) -> None:
        """Touch *nbytes* of fresh memory in this process and free it, just before a timed step.

        This machine is a VM with a free-page-reporting balloon: memory freed
        for ~2 s goes back to the host, and the next touch of it costs a host
        fault (measured here: 2 GiB took 4.3 s to touch the first time, 0.23 s
        right after, 1.0 s after a 2 s pause). Touching the memory a timed
        step is about to take (a restore, a read, the page cache of a write)
        right before it puts every side on the same footing.
        """
        import numpy as np

        start = time.perf_counter()
        chunk = np.ones(max(1, int(nbytes)) // 8 + 1)
        del chunk
        self.prefault_seconds += time.perf_counter() - start

    @contextlib.contextmanager
    def kernel_ctx(
        self, name: str, label: str, session: str, ckdir: Path, extra: list[str] | None = None
    ) -> Iterator[Kernel]:
        k = Kernel(self, name, label, list(extra or []), session, ckdir)
        try:
            yield k
        finally:
            k.close()
            self.wait_for_strays(k.connection_file.encode())

    def strays(self, marker: bytes) -> list[int]:
        """Processes other than this one whose command line contains *marker*.

        A detached checkpoint writer is a fork of its kernel, so it carries the
        kernel's command line, connection file included, for as long as it runs.
        """
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def wait_for_strays(self, marker: bytes, timeout: float = 600) -> None:
        """Wait for writers that outlive their kernel; kill (by pid) any left after *timeout*."""
        deadline = time.monotonic() + timeout
        while (pids := self.strays(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            log(f"warning: killing leftover process {pid}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for k in list(self.live):
            with contextlib.suppress(Exception):
                k.close()
        # Any process still started from our temp dir (a kernel or a detached
        # writer: both carry a connection file path from it).
        self.wait_for_strays(str(self.root).encode(), timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- one workload, one repeat --------------------------------------------------

    def run_workload(self, w: Workload, rep: int) -> dict[str, Any]:
        m: dict[str, Any] = {}
        session = f"bench-{w.key}-{rep}"
        ckdir = store_path = self.root / "checkpoints" / f"{w.key}-{rep}"
        dill_file = self.root / "files" / f"{w.key}-{rep}.dill"
        raw_file = self.root / "files" / f"{w.key}-{rep}.raw"
        tag = f"{w.key} #{rep + 1}"
        try:
            # 1. ours: build, checkpoint, [latency, incremental], clean shutdown
            log(f"{tag}: ours: start + build")
            with self.kernel_ctx(OURS, f"{w.key}-{rep}-ours", session, ckdir) as k:
                original, m["state_rss"] = self._build(k, w)
                log(f"{tag}: ours: %persist save")
                pre = 1.5 * m["state_rss"] + 128 * MiB  # what the next timed step may touch
                self.prefault(pre)
                before = _tree(store_path)
                r, peak, samples = watched_save(k)
                self._check_ok(r, "first checkpoint")
                m["ours.elapsed"], m["ours.pause"] = r["elapsed"], r["pause"]
                m["ours.written"], m["ours.size"] = r["written"], r["size"]
                m["ours.disk_written"] = _written(before, _tree(store_path))
                m["ours.private"] = r["writer_private_bytes"]
                m["ours.private_peak"], m["ours.private_samples"] = peak, samples
                if w.latency:
                    log(f"{tag}: ours: {LATENCY_CELLS} x `pass`")
                    m["ours.latency"] = statistics.median(k.latency(LATENCY_CELLS))
                    log(f"{tag}: ours: {LATENCY_CELLS} x `x = i`")
                    m["ours.latency_change"] = statistics.median(
                        k.latency(LATENCY_CELLS, CHANGE_CELL)
                    )
                    log(f"{tag}: ours: x = 1, %persist save")
                    k.run("x = 1")
                    before = _tree(store_path)
                    r2 = k.call("persist_save()")["result"]
                    self._check_ok(r2, "incremental checkpoint")
                    m["incr.elapsed"], m["incr.written"] = r2["elapsed"], r2["written"]
                    m["incr.pause"] = r2["pause"]
                    m["incr.disk_written"] = _written(before, _tree(store_path))
                    m["incr.unchanged"] = r2["unchanged"]
                log(f"{tag}: ours: clean shutdown")
                before = _tree(store_path)
                sd = k.timed_shutdown()
            after = _tree(store_path)  # the kernel_ctx waited for any writer it left
            m["ours.shutdown"], m["ours.shutdown_reply"] = sd["exit"], sd["reply"]
            m["ours.shutdown_writers"] = sd["writers_left"]
            m["ours.shutdown_written"] = _written(before, after)
            m["ours.shutdown_new_files"] = sorted(k2 for k2 in after if k2 not in before)

            # 2. ours: restart on the same session, read the restore report
            log(f"{tag}: ours: restart + restore")
            # The restore starts with the kernel, so the memory it is about to take
            # is touched inside the kernel, just before (see Bench.prefault).
            extra = ["--PersistentKernel.autosave=False", PREIMPORT, prefault_line(pre)]
            with self.kernel_ctx(OURS, f"{w.key}-{rep}-ours-restore", session, ckdir, extra) as k:
                m["ours.restart_ready"] = k.ready
                # The restore runs in a thread beside the kernel's start-up (kernel_info
                # is answered at once); the first cell waits for it. So "end to end" is
                # kernel start -> first cell done, on both sides.
                rr = k.call("restore_report()")
                m["ours.restart_e2e"] = k.since_start()
                m["ours.restore"], m["ours.restore_waited"] = rr["elapsed"], rr["waited"]
                m["ours.restore_problems"] = rr["problems"]
                m["ours.restore_ok"] = self._same(k, w, original, "ours restore")

            # 2b. ours: restart after a cell that changed nothing, then after one that
            # changed a small variable. The final checkpoint's writer pickles the state
            # again while the new kernel starts and loads what is already on disk.
            log(f"{tag}: ours: restart after a cell that changed nothing / a small change")
            extra = [PREIMPORT, prefault_line(pre)]
            # A single restart varies by a few hundred ms on this VM: RESTARTS of each,
            # in turn, and the median.
            with self.kernel_ctx(OURS, f"{w.key}-{rep}-ours-restart", session, ckdir, extra) as k:
                k.call("restore_report()")
                took: dict[str, list[float]] = {"noop": [], "small": []}
                for turn in range(RESTARTS):
                    for key, cell in (("noop", "pass"), ("small", f"x_small = {turn}")):
                        k.run(cell)
                        start = time.perf_counter()
                        k.restart()
                        rr = k.call("restore_report()")
                        took[key].append(time.perf_counter() - start)
                        m[f"ours.restart_{key}_waited"] = rr["waited"]
                        m[f"ours.restart_{key}_reused"] = len(rr["reused"])
                        m[f"ours.restart_{key}_ok"] = self._same(k, w, original, f"restart ({key})")
                for key, times in took.items():
                    m[f"ours.restart_{key}"] = statistics.median(times)
                    m[f"ours.restart_{key}_all"] = times

            # 3. stock: build, dill dump, raw write, [latency], shutdown
            log(f"{tag}: stock: start + build")
            with self.kernel_ctx(STOCK, f"{w.key}-{rep}-stock", session, ckdir) as k:
                self._build(k, w, original)
                log(f"{tag}: stock: dill.dump_module")
                self.prefault(pre)
                d = k.call(f"dill_dump({str(dill_file)!r})")
                m["dill.dump"], m["dill.size"] = d["elapsed"], d["size"]
                m["dill.extra_rss"], m["dill.peak_mode"] = d["extra_rss"], d["peak_mode"]
                m["dill.protocol"] = d["protocol"]
                log(f"{tag}: stock: raw write")
                self.prefault(pre)
                rw = k.call(f"raw_write({str(raw_file)!r}, {w.raw_names!r}, {w.raw_kind!r})")
                m["raw.write"], m["raw.size"], m["raw.dumps"] = (
                    rw["elapsed"],
                    rw["size"],
                    rw["dumps"],
                )
                layout = rw["layout"]
                if w.latency:
                    log(f"{tag}: stock: {LATENCY_CELLS} x `pass`")
                    m["stock.latency"] = statistics.median(k.latency(LATENCY_CELLS))
                    m["stock.latency_change"] = statistics.median(
                        k.latency(LATENCY_CELLS, CHANGE_CELL)
                    )
                log(f"{tag}: stock: shutdown")
                sd = k.timed_shutdown()
                m["stock.shutdown"], m["stock.shutdown_reply"] = sd["exit"], sd["reply"]

            # 4. stock, fresh: dill.load_module
            log(f"{tag}: stock: fresh kernel + dill.load_module")
            with self.kernel_ctx(
                STOCK, f"{w.key}-{rep}-dill-load", session, ckdir, [PREIMPORT]
            ) as k:
                m["stock.ready"] = k.ready
                k.run(prefault_code(pre))
                m["dill.load"] = k.call(f"dill_load({str(dill_file)!r})")["elapsed"]
                m["dill.restart_e2e"] = k.since_start()
                m["dill.load_ok"] = self._same(k, w, original, "dill.load_module")

            # 5. stock, fresh: raw read (RESTARTS fresh kernels, the median)
            log(f"{tag}: stock: fresh kernel + raw read")
            reads: list[float] = []
            starts: list[float] = []
            for turn in range(RESTARTS):
                with self.kernel_ctx(
                    STOCK, f"{w.key}-{rep}-raw-read-{turn}", session, ckdir, [PREIMPORT]
                ) as k:
                    k.run(prefault_code(pre))
                    rd = k.call(f"raw_read({str(raw_file)!r}, {w.raw_kind!r}, {layout!r})")
                    reads.append(rd["elapsed"])
                    starts.append(k.since_start())  # stock start + the raw read, done
                    if rd["bytes"] != rd["size"]:
                        raise KernelError(f"raw read got {rd['bytes']} of {rd['size']} bytes")
            m["raw.read"], m["raw.start_e2e"] = statistics.median(reads), statistics.median(starts)
            m["raw.start_e2e_all"] = starts
        finally:
            for path in (dill_file, raw_file):
                path.unlink(missing_ok=True)
            shutil.rmtree(store_path, ignore_errors=True)
        return m

    def _build(
        self, k: Kernel, w: Workload, expect: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], int]:
        for cell in w.setup:
            k.run(cell)
        base = k.call("rss()")["VmRSS"]
        for cell in w.build:
            k.run(cell)
        grown = k.call("rss()")["VmRSS"] - base
        fp = k.call(f"fingerprint({w.names!r})")
        if expect is not None and fp != expect:
            raise KernelError(f"{k.label}: the stock kernel built a different state")
        return fp, grown

    def _same(self, k: Kernel, w: Workload, original: dict[str, Any], what: str) -> bool:
        fp = k.call(f"fingerprint({w.names!r})")
        if fp != original:
            bad = [n for n in w.names if fp.get(n) != original.get(n)]
            log(f"warning: {what} did not bring back the same {', '.join(bad)}")
            return False
        return True

    @staticmethod
    def _check_ok(result: dict[str, Any] | None, what: str) -> None:
        if not result or not result.get("ok"):
            raise KernelError(f"{what} failed: {result and result.get('error')}")


# -- report -----------------------------------------------------------------------------


def _size(n: float | None) -> str:
    if n is None or n != n:
        return "n/a"
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _time(s: float | None) -> str:
    if s is None or s != s:
        return "n/a"
    if abs(s) >= 1:
        return f"{s:.2f} s"
    if abs(s) >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _median(runs: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in runs if key in r]
    if not values:
        return None
    if all(isinstance(v, bool) for v in values):
        return all(values)
    if all(isinstance(v, (int, float)) and v is not None for v in values):
        return statistics.median(values)
    return values[-1]


@dataclass
class Row:
    measure: str
    ours: float | None
    peer: float | None
    peer_name: str
    fmt: Callable[[float | None], str]
    target: str = "—"
    check: Callable[[float, float | None], bool] | None = None

    def cells(self) -> dict[str, Any]:
        ratio = (
            self.ours / self.peer
            if self.ours is not None and self.peer not in (None, 0) and self.peer == self.peer
            else None
        )
        met = None
        if self.check is not None and self.ours is not None:
            met = bool(self.check(self.ours, self.peer))
        return {
            "measure": self.measure,
            "ours": self.ours,
            "ours_text": self.fmt(self.ours),
            "peer": self.peer,
            "peer_name": self.peer_name,
            "peer_text": f"{self.fmt(self.peer)} ({self.peer_name})" if self.peer_name else "—",
            "ratio": ratio,
            "ratio_text": f"{ratio:.3g}x" if ratio is not None else "—",
            "target": self.target,
            "met": met,
            "met_text": "—" if met is None else ("met" if met else "**missed**"),
        }


def build_rows(med: dict[str, dict[str, Any]], wls: list[Workload]) -> list[Row]:
    rows: list[Row] = []

    def add(measure: str, ours: Any, peer: Any, peer_name: str, fmt: Any, **target: Any) -> None:
        rows.append(Row(measure, ours, peer, peer_name, fmt, **target))

    for w in wls:
        m = med[w.key]
        t = w.title.split(" ", 1)[0]
        state = m["state_rss"]
        faster5 = {"target": ">= 5x faster", "check": lambda o, p: o * 5 <= p}
        add(
            f"{t}: checkpoint wall time (writer)",
            m["ours.elapsed"],
            m["dill.dump"],
            "dill.dump_module",
            _time,
            **(faster5 if w.key == "objects" else {}),
        )
        raw_name = "tofile+fsync" if w.raw_kind == "arrays" else "pickle.dumps+write+fsync"
        within15 = {"target": "<= 1.5x raw", "check": lambda o, p: o <= 1.5 * p}
        add(
            f"{t}: checkpoint wall time vs raw write",
            m["ours.elapsed"],
            m["raw.write"],
            raw_name,
            _time,
            **(within15 if w.key == "arrays" else {}),
            **(
                {"target": "<= 1.3x raw", "check": lambda o, p: o <= 1.3 * p}
                if w.key == "objects"
                else {}
            ),
        )
        add(
            f"{t}: kernel pause",
            m["ours.pause"],
            m["dill.dump"],
            "dill.dump_module, blocks",
            _time,
            target="<= 3% of dill",
            check=lambda o, p: o <= 0.03 * p,
        )
        add(f"{t}: bytes written", m["ours.disk_written"], m["dill.size"], "dill file", _size)
        mem = {
            "target": f"<= 10% of state ({_size(state)})",
            "check": lambda o, p, s=state: o <= 0.1 * s,
        }
        add(
            f"{t}: extra memory during checkpoint (writer_private_bytes)",
            m["ours.private"],
            m["dill.extra_rss"],
            "dill peak RSS growth",
            _size,
            **mem,
        )
        add(
            f"{t}: extra memory during checkpoint (writer peak, sampled)",
            m["ours.private_peak"],
            m["dill.extra_rss"],
            "dill peak RSS growth",
            _size,
            **mem,
        )
        read_name = "np.fromfile" if w.raw_kind == "arrays" else "read+pickle.loads"
        add(
            f"{t}: restore time vs raw read",
            m["ours.restore"],
            m["raw.read"],
            read_name,
            _time,
            target="<= 1.3x raw",
            check=lambda o, p: o <= 1.3 * p,
        )
        add(
            f"{t}: restore time vs dill",
            m["ours.restore"],
            m["dill.load"],
            "dill.load_module",
            _time,
            target="< dill",
            check=lambda o, p: o < p,
        )
        add(
            f"{t}: kernel start to first cell done, state restored",
            m["ours.restart_e2e"],
            m["dill.restart_e2e"],
            "stock start + dill.load_module cell",
            _time,
        )
        for key, what in (("noop", "changed nothing"), ("small", "changed `x_small`")):
            # Many small objects after an unchanged cell: issue 25 asks for 1.1x.
            limit = 1.1 if (w.key, key) == ("objects", "noop") else 1.2
            add(
                f"{t}: restart after a cell that {what}, to first cell done",
                m.get(f"ours.restart_{key}"),
                m.get("raw.start_e2e"),
                f"stock start + {read_name}",
                _time,
                target=f"<= {limit}x",
                check=lambda o, p, limit=limit: p is not None and o <= limit * p,
            )
        if w.latency:
            add(
                "W4 after `x = 1`: bytes written",
                m["incr.disk_written"],
                m["ours.disk_written"],
                "our full checkpoint",
                _size,
                target="<= 1 MiB",
                check=lambda o, p: o <= MiB,
            )
            add(
                "W4 after `x = 1`: checkpoint wall time",
                m["incr.elapsed"],
                m["ours.elapsed"],
                "our full checkpoint",
                _time,
                target="<= 15% of full",
                check=lambda o, p: o <= 0.15 * p,
            )
            add(
                f"{t}: round trip of `pass` (median of {LATENCY_CELLS})",
                m["ours.latency"],
                m["stock.latency"],
                "stock python3",
                _time,
                target="<= +5 ms over stock",
                check=lambda o, p: o - p <= 0.005,
            )
            add(
                f"{t}: round trip of a change, `x = i` (median of {LATENCY_CELLS})",
                m.get("ours.latency_change"),
                m.get("stock.latency_change"),
                "stock python3",
                _time,
            )
        add(
            f"{t}: clean shutdown, bytes written",
            m["ours.shutdown_written"],
            None,
            "",
            _size,
            target="0 B",
            check=lambda o, p: o == 0,
        )
        add(
            f"{t}: clean shutdown, request to process exit",
            m["ours.shutdown"],
            m["stock.shutdown"],
            "stock python3",
            _time,
            target="< 50 ms",
            check=lambda o, p: o < 0.05,
        )
        add(
            f"{t}: clean shutdown, time added over stock",
            m["ours.shutdown"] - m["stock.shutdown"],
            None,
            "",
            _time,
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| measure | ours | peer | ratio | target | met/missed |\n|---|---:|---:|---:|---|---|\n"
    return head + "\n".join(
        f"| {r['measure']} | {r['ours_text']} | {r['peer_text']} | {r['ratio_text']} "
        f"| {r['target']} | {r['met_text']} |"
        for r in rows
    )


def compile_package() -> None:
    """Byte-compile this package, so that our kernel starts as installed.

    pip byte-compiles a wheel's modules when it installs them, as it did the
    stock kernel's (ipykernel, IPython, ...). An editable install leaves that
    to the first import, which writes nothing under PYTHONDONTWRITEBYTECODE
    (set on this machine): every start of our kernel would then compile the
    package from source, about 0.1 s of this VM's time that neither an
    installed kernel nor the stock one spends. The .pyc files go to the
    package's ``__pycache__`` (git ignores them) and are used only while
    their source is unchanged.
    """
    import compileall

    import persistent_kernel

    compileall.compile_dir(Path(persistent_kernel.__file__).parent, quiet=1)


def environment() -> dict[str, Any]:
    import dill
    import ipykernel
    import jupyter_client
    import numpy
    import pandas

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except Exception:
            return "?"

    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory": mem,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "dill": dill.__version__,
        "ipykernel": ipykernel.__version__,
        "jupyter_client": jupyter_client.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty_files": git("status", "--porcelain", "--", "persistent_kernel").splitlines(),
    }


# -- large state: fork pause, writer memory, chunked small changes ------------------------

BLOCK = 256 * MiB  # the large state is built of random float64 arrays this size


def large_state(bench: Bench, sizes: list[float]) -> list[dict[str, Any]]:
    """Fork pause and writer memory at each size, and what a one-element change costs.

    One kernel of ours (autosave off), whose state grows to each size in
    turn (random 256 MiB arrays ``big_0``, ``big_1``, ...). At each size:

    1. ``%persist save`` of the grown state (only the new arrays' chunks
       are new): the kernel's pause (filter + fork), the writer's private
       memory (reported, and sampled from outside), its time;
    2. one element of ``big_0`` changed, ``%persist save``: bytes written
       and time (the chunked-buffer target: at most 1% of the state, at most
       10% of a full checkpoint's time);
    3. the same with ``gc.freeze()`` run just before (and ``gc.unfreeze()``
       after): does freezing the collector's objects shorten the pause or
       spare the writer copy-on-write pages?
    4. the peer: the same arrays written raw (``tofile`` + fsync) in the
       same kernel, the file removed after; then BLAKE3 of the arrays the
       save of step 1 wrote, alone, on one thread and on two: what the save
       pays beyond the raw write (the blocking save, from the cell's start
       to its end, is compared with the raw write per byte written);
    5. the checkpoint directory's size, every generation kept so far;
    6. once the kernel is gone, a cold restore (page cache dropped) of the
       generation saved at each size, in this process, against a cold
       ``np.fromfile`` of the raw file written at that size.
    """
    rows: list[dict[str, Any]] = []
    ckdir = bench.root / "checkpoints" / "large"
    raw_file = bench.root / "files" / "large.raw"
    extra = ["--PersistentKernel.autosave=False", "--PersistentKernel.keep=100"]
    built = 0
    with bench.kernel_ctx(OURS, "large", "bench-large", ckdir, extra) as k:
        k.run("import numpy as np")
        for gib in sizes:
            m: dict[str, Any] = {"gib": gib}
            new = 0
            while built * BLOCK < gib * GiB:
                k.run(f"big_{built} = np.random.default_rng({built}).random({BLOCK // 8})")
                built, new = built + 1, new + 1
            names = [f"big_{i}" for i in range(built)]
            m["rss"] = k.call("rss()")["VmRSS"]
            log(f"large {gib} GiB: save")

            def save(what: str, m: dict[str, Any] = m) -> None:
                before = _tree(ckdir)
                r, peak, _ = watched_save(k)
                bench._check_ok(r, what)
                m[f"{what}.pause"], m[f"{what}.elapsed"] = r["pause"], r["elapsed"]
                m[f"{what}.blocking"] = r.get("blocking")
                m[f"{what}.written"] = _written(before, _tree(ckdir))
                m[f"{what}.private"] = r["writer_private_bytes"]
                m[f"{what}.hashed"] = r.get("hashed")
                m[f"{what}.private_peak"] = peak

            bench.prefault(1.5 * BLOCK)
            save("save")
            m["save.generation"] = max(int(p.stem) for p in ckdir.glob("**/generations/*.json"))
            k.run("big_0[12345] += 1.0")
            save("change")
            k.run("__import__('gc').freeze(); big_0[23456] += 1.0")
            save("frozen")
            k.run("__import__('gc').unfreeze()")
            log(f"large {gib} GiB: raw write")
            bench.prefault(1.5 * BLOCK)  # as before the save
            raw = k.call(f"raw_write({str(raw_file)!r}, {names!r}, 'arrays')")
            kept = raw_file.with_name(f"large-{gib:g}.raw")  # read back cold below
            raw_file.rename(kept)
            m["raw.elapsed"], m["raw.size"] = raw["elapsed"], raw["size"]
            m["raw.file"], m["raw.layout"] = str(kept), raw["layout"]
            m["raw.cpu"] = raw.get("cpu")
            fresh = [f"big_{i}" for i in range(built - new, built)]  # what the save wrote
            hashed = k.call(f"hash_alone({fresh!r})")
            m["hash.size"] = hashed["size"]
            for threads in (1, 2):
                m[f"hash.threads{threads}"] = hashed[f"threads{threads}"]
                m[f"hash.threads{threads}.cpu"] = hashed[f"threads{threads}.cpu"]
            m["disk"] = sum(size for size, _ in _tree(ckdir).values())
            m["generations"] = len(list((ckdir).glob("**/generations/*.json")))
            rows.append(m)
            log(f"large {gib} GiB: {m}")
    if rows:  # imports and metadata a kernel has at hand before its restore, warm here too
        from persistent_kernel.restore import load_generation
        from persistent_kernel.store import Store

        load_generation(Store(ckdir).session("bench-large"), rows[0]["save.generation"])
    for m in rows:
        log(f"large {m['gib']:g} GiB: cold restore, cold np.fromfile")
        cold_restore(bench, ckdir, m)
        Path(m.pop("raw.file")).unlink()
    return rows


def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only); False if it cannot."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def cold_restore(bench: Bench, ckdir: Path, m: dict[str, Any]) -> None:
    """Restore the generation saved at this size with the page cache dropped, and read
    the raw file the same way: ``load_generation`` (what a restore runs: read, check,
    unpickle) against ``np.fromfile`` of every array, each in this process."""
    import numpy as np

    from persistent_kernel.restore import load_generation
    from persistent_kernel.store import Store

    if not drop_page_cache():
        log("warning: cannot drop the page cache (not root?): no cold figures")
        return
    session = Store(ckdir).session("bench-large")
    bench.prefault(m["raw.size"])
    drop_page_cache()
    start = time.perf_counter()
    values, _ = load_generation(session, m["save.generation"])
    m["cold.restore"] = time.perf_counter() - start
    m["cold.restore_bytes"] = sum(getattr(v, "nbytes", 0) for v in values.values())
    del values
    bench.prefault(m["raw.size"])
    drop_page_cache()
    start = time.perf_counter()
    with open(m["raw.file"], "rb") as f:
        arrays = [np.fromfile(f, dtype=dtype, count=count) for dtype, count in m["raw.layout"]]
    m["cold.fromfile"] = time.perf_counter() - start
    m["cold.fromfile_bytes"] = sum(a.nbytes for a in arrays)
    del arrays


def blocking(m: dict[str, Any]) -> str:
    """The cell's wait for ``%persist save`` of fresh arrays against the raw write, per
    byte (at sizes after the first the save writes only the arrays added)."""
    wall, written = m.get("save.blocking"), m.get("save.written")
    if not wall or not written:
        return "-"
    ratio = (wall / written) / (m["raw.elapsed"] / m["raw.size"])
    verdict = "met" if ratio <= 1.5 else "missed"
    return f"{_time(wall)} for {_size(written)}: {ratio:.2f}x raw ({verdict})"


def large_table(rows: list[dict[str, Any]]) -> str:
    """The large-state measures as a Markdown table, one column per size."""

    def pct(a: Any, b: Any) -> str:
        return f"{100 * a / b:.2f}%" if a is not None and b else "-"

    def cells(m: dict[str, Any]) -> list[str]:
        raw_t, raw_n = m["raw.elapsed"], m["raw.size"]
        return [
            _size(m["rss"]),
            _time(raw_t),
            _time(m["save.elapsed"]),
            blocking(m),
            f"{_time(m.get('hash.threads1'))} / {_time(m.get('hash.threads2'))} "
            f"(of {_size(m.get('hash.size'))}; CPU {_time(m.get('hash.threads1.cpu'))}, "
            f"the raw write's CPU {_time(m.get('raw.cpu'))})",
            f"{_time(m['save.pause'])} ({pct(m['save.pause'], raw_t)} of raw)",
            f"{_time(m['frozen.pause'])} ({pct(m['frozen.pause'], raw_t)} of raw)",
            f"{_size(m['save.private'])} / {_size(m['save.private_peak'])}",
            f"{_size(m['frozen.private'])} / {_size(m['frozen.private_peak'])}",
            f"{_size(m['change.written'])} ({pct(m['change.written'], raw_n)} of the state)",
            f"{_size(m.get('change.hashed'))} ({pct(m.get('change.hashed'), raw_n)} of the state)",
            f"{_time(m['change.elapsed'])} ({pct(m['change.elapsed'], m['save.elapsed'])} of "
            f"our checkpoint above, {pct(m['change.elapsed'], raw_t)} of a raw write)",
            f"{_size(m['disk'])} ({m['disk'] / raw_n:.2f}x the state, "
            f"{m['generations']} generations)",
            f"{_time(m.get('cold.restore'))} / {_time(m.get('cold.fromfile'))} "
            + (
                f"({m['cold.restore'] / m['cold.fromfile']:.2f}x)"
                if m.get("cold.restore") and m.get("cold.fromfile")
                else ""
            ),
        ]

    titles = [
        "state (RSS)",
        "raw write + fsync (peer)",
        "our checkpoint of the grown state (arrays added since the last size)",
        "blocking `%persist save` of those fresh arrays vs raw write + fsync, per byte "
        "(target <= 1.5x)",
        "BLAKE3 of those bytes alone, 1 thread / 2 threads (the hash the save cannot skip)",
        "fork pause",
        "fork pause, gc.freeze() first",
        "writer private memory (reported / sampled peak)",
        "same, gc.freeze() first",
        "one-element change: bytes written",
        "one-element change: bytes hashed",
        "one-element change: writer time",
        "checkpoint dir, all generations so far",
        "cold restore / cold np.fromfile (page cache dropped)",
    ]
    columns = [cells(m) for m in rows]
    out = ["| measure | " + " | ".join(f"{m['gib']:g} GiB" for m in rows) + " |"]
    out.append("|" + "---|" * (len(rows) + 1))
    for i, title in enumerate(titles):
        out.append(f"| {title} | " + " | ".join(c[i] for c in columns) + " |")
    return "\n".join(out)


# -- resuming a large state: first cell and memory after a restart -------------------------

#: A whole-array operation, timed in a kernel: the sum of the first GiB of arrays.
SUM_CELL = """
import time as _t
_s = _t.perf_counter()
_v = float({expr})
print({mark!r} + __import__("json").dumps({{"seconds": _t.perf_counter() - _s, "value": _v}}))
del _s, _v, _t
"""


def resume_state(bench: Bench, sizes: list[float]) -> list[dict[str, Any]]:
    """Time to the first cell after a restart, and memory then, at each size.

    One state of random 256 MiB float64 arrays (``big_0``, ``big_1``, ...)
    and one small dict, grown to each size in turn and saved. At each size:

    1. the page cache dropped, a stock ``python3`` kernel started and its first
       cell (``small = ...``) answered: the peer's time to the first cell;
    2. the page cache dropped, a kernel of ours restoring the state, its first
       cell (``print(small)``) answered; the kernel's RSS then;
    3. in that kernel, the page cache dropped again: the sum of the first GiB of
       arrays (every chunk read, checked and placed on first touch), against a
       stock kernel's ``np.fromfile`` of the same bytes (written raw once) and
       the same sum, cold too;
    4. both starts again, warm (nothing dropped).

    Cold figures need root (``/proc/sys/vm/drop_caches``); without it every
    figure is warm and the table says so.
    """
    rows: list[dict[str, Any]] = []
    ckdir = bench.root / "checkpoints" / "resume"
    raw = bench.root / "files" / "resume.raw"
    session = "bench-resume"
    first = min(4, int(GiB // BLOCK))  # arrays in the first GiB
    names = [f"big_{i}" for i in range(first)]
    built = 0
    cold = drop_page_cache()
    if not cold:
        log("warning: cannot drop the page cache (not root?): every figure is warm")
    for gib in sizes:
        m: dict[str, Any] = {"gib": gib, "cold": cold}
        extra = ["--PersistentKernel.autosave=False"]
        log(f"resume {gib:g} GiB: build and save")
        with bench.kernel_ctx(OURS, f"resume-{gib:g}-build", session, ckdir, extra) as k:
            k.run("import numpy as np\nsmall = {'rows': 12, 'columns': list('abcdef')}")
            while built * BLOCK < gib * GiB:
                k.run(f"big_{built} = np.random.default_rng({built}).random({BLOCK // 8})")
                built += 1
            if not raw.exists():
                k.run(
                    f"with open({str(raw)!r}, 'wb') as _f:\n"
                    + "".join(f"    {n}.tofile(_f)\n" for n in names)
                )
            k.run("%persist save")
        m["state"] = built * BLOCK

        def stock_first(label: str) -> float:
            with bench.kernel_ctx(STOCK, label, session, ckdir) as k:
                k.run("small = {'rows': 12, 'columns': list('abcdef')}")
                return k.since_start()

        for how in ("cold", "warm"):
            if how == "cold":
                drop_page_cache()
            log(f"resume {gib:g} GiB: stock start, {how}")
            m[f"stock.first_{how}"] = stock_first(f"resume-{gib:g}-stock-{how}")
            if how == "cold":
                drop_page_cache()
            log(f"resume {gib:g} GiB: our start, {how}")
            with bench.kernel_ctx(OURS, f"resume-{gib:g}-ours-{how}", session, ckdir) as k:
                k.run("print(small['rows'])")
                m[f"ours.first_{how}"] = k.since_start()
                m[f"ours.rss_{how}"] = k.call("rss()")["VmRSS"]
                if how == "cold":
                    k.run(f"import numpy\n{prefault_code(GiB)}")
                    drop_page_cache()
                    expr = f"sum(_x.sum() for _x in ({', '.join(names)},))"
                    (got,) = k.run(SUM_CELL.format(expr=expr, mark=MARK))
                    m["ours.sum_cold"], m["ours.sum_value"] = got["seconds"], got["value"]
                    m["ours.rss_after_sum"] = k.call("rss()")["VmRSS"]
        log(f"resume {gib:g} GiB: stock np.fromfile + sum, cold")
        with bench.kernel_ctx(STOCK, f"resume-{gib:g}-fromfile", session, ckdir) as k:
            m["stock.rss"] = k.call("rss()")["VmRSS"]
            k.run(f"import numpy, numpy as np\n{prefault_code(GiB)}")
            drop_page_cache()
            whole = f"np.fromfile({str(raw)!r}, dtype=np.float64)"
            expr = f"sum(_x.sum() for _x in np.split({whole}, {first}))"
            (got,) = k.run(SUM_CELL.format(expr=expr, mark=MARK))
            m["stock.sum_cold"], m["stock.sum_value"] = got["seconds"], got["value"]
        if m["stock.sum_value"] != m["ours.sum_value"]:
            raise KernelError(f"the sums differ: {m['stock.sum_value']} {m['ours.sum_value']}")
        rows.append(m)
        log(f"resume {gib:g} GiB: {m}")
    return rows


def resume_table(rows: list[dict[str, Any]]) -> str:
    """The resume measures as a Markdown table, one column per size."""
    head = "| measure | " + " | ".join(f"{r['gib']:g} GiB" for r in rows) + " | target |"
    lines = [head, "|" + "---|" * (len(rows) + 2)]

    def row(name: str, cell: Callable[[dict[str, Any]], str], target: str) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(r) for r in rows) + f" | {target} |")

    def first_cell(how: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            ours, stock = r[f"ours.first_{how}"], r[f"stock.first_{how}"]
            return f"{_time(ours)} / {_time(stock)} ({ours - stock:+.2f} s)"

        return cell

    for how in ("cold", "warm"):
        row(f"first cell after a restart, {how}: ours / stock (difference)",
            first_cell(how), "<= +0.5 s")  # fmt: skip
    row(
        "kernel RSS after the first cell: ours (share of the state) / stock",
        lambda r: (
            f"{_size(r['ours.rss_cold'])} ({r['ours.rss_cold'] / r['state']:.0%}) / "
            f"{_size(r['stock.rss'])}"
        ),
        "<= 25% of the state",
    )
    row(
        "sum of the first GiB, cold: ours (lazy) / np.fromfile + sum (ratio)",
        lambda r: (
            f"{_time(r['ours.sum_cold'])} / {_time(r['stock.sum_cold'])} "
            f"({r['ours.sum_cold'] / r['stock.sum_cold']:.2f}x)"
        ),
        "<= 1.3x",
    )
    row("kernel RSS after that sum", lambda r: _size(r["ours.rss_after_sum"]), "reported")
    return "\n".join(lines)


def main_resume(args: argparse.Namespace, sizes: list[float]) -> int:
    """``--resume``: time to the first cell and memory after a restart, by size."""
    return _by_size(args, sizes, "resume", resume_state, resume_table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (smoke run)")
    parser.add_argument("--gib", type=float, default=None, help="size of the big state (1.0)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per workload (3)")
    parser.add_argument(
        "--json", type=Path, default=HERE / "results.json", help="where to write the JSON"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="run only these workloads (comma-separated keys: seed, arrays, objects)",
    )
    parser.add_argument(
        "--large",
        default=None,
        help="only the large-state measures, at these sizes in GiB (e.g. 1,4,8)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="only the first cell and memory after a restart, at these sizes in GiB (1,4,8)",
    )
    args = parser.parse_args(argv)
    if args.resume:
        return main_resume(args, [float(x) for x in args.resume.split(",")])
    if args.large:
        return main_large(args, [float(x) for x in args.large.split(",")])
    gib = args.gib if args.gib is not None else (0.05 if args.quick else 1.0)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    objects_scale = 0.05 if args.quick else 1.0
    wls = workloads(gib, objects_scale)
    if args.only:
        wls = [w for w in wls if w.key in args.only.split(",")]
    command = shlex.join([sys.executable, *sys.argv])

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args)
    log(f"temp dir {bench.root}; gib={gib} repeat={repeat} objects_scale={objects_scale}")
    runs: dict[str, list[dict[str, Any]]] = {w.key: [] for w in wls}
    try:
        for rep in range(repeat):
            for w in wls:
                runs[w.key].append(bench.run_workload(w, rep))
    finally:
        bench.cleanup()
        log("cleaned up")

    med = {key: {k: _median(rs, k) for k in rs[0]} for key, rs in runs.items()}
    rows = [r.cells() for r in build_rows(med, wls)]
    table = markdown(rows)
    notes = [
        f"Medians over {repeat} run(s). Workloads: " + "; ".join(w.title for w in wls) + ".",
        "Peers run in the stock python3 kernel; restore/read kernels pre-import numpy, "
        "pandas, dill (import time excluded on both sides); page cache warm.",
        "ours = persistent kernel; bytes written = size of new/changed files in the "
        "session's checkpoint dir (manifest included); state = RSS growth of the kernel "
        "while the workload's variables were created.",
        "Extra memory: writer_private_bytes is what the package reports (Private_* of the "
        "writer when its job has returned); 'writer peak, sampled' is the maximum of the same "
        "quantity, summed over the writer and its helper process, sampled every 5 ms from "
        "outside during a second save of the same namespace (sampling walks the writer's page "
        "tables, a core's worth of work for a million objects, so the timed save is not watched).",
        "This machine is a VM whose balloon returns free memory to the host; right before each "
        "timed step that allocates, that much memory is touched and freed (before a read, by the "
        "reading kernel itself; our restore's kernel does it just before the restore starts) so "
        "that no side pays the host's first-touch faults (see Bench.prefault).",
    ]
    verified = all(
        med[w.key].get("ours.restore_ok") and med[w.key].get("dill.load_ok") for w in wls
    )
    if not verified:
        notes.append("WARNING: some restore did not bring back identical values (see JSON).")
    print(table)
    print()
    for note in notes:
        print(f"- {note}")
    result = {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "gib": gib,
            "repeat": repeat,
            "objects_scale": objects_scale,
            "quick": args.quick,
            "latency_cells": LATENCY_CELLS,
            "prefault_seconds": bench.prefault_seconds,
            "workloads": {w.key: w.title for w in wls},
        },
        "environment": environment(),
        "rows": rows,
        "notes": notes,
        "medians": med,
        "runs": runs,
    }
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {args.json}")
    return 0


def main_large(args: argparse.Namespace, sizes: list[float]) -> int:
    """``--large``: the fork pause, writer memory and chunked small changes by size."""
    return _by_size(args, sizes, "large", large_state, large_table)


def _by_size(
    args: argparse.Namespace,
    sizes: list[float],
    what: str,
    measure: Callable[[Bench, list[float]], list[dict[str, Any]]],
    table_of: Callable[[list[dict[str, Any]]], str],
) -> int:
    """Run one by-size section, print its table, keep it in ``<what>_results.json``."""
    bench = Bench(args)
    log(f"temp dir {bench.root}; {what} at {sizes} GiB")
    try:
        rows = measure(bench, sizes)
    finally:
        bench.cleanup()
        log("cleaned up")
    table = table_of(rows)
    print(table)
    path = HERE / f"{what}_results.json"
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "rows": rows,
        "table": table,
    }
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
