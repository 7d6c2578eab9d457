"""Large arrays restored lazily: filled from checked chunks on first touch.

In process first (a restore into a dict, as the kernel's restore thread does,
with a real page server process), then with real kernels: a 3 GiB state
restarted with the page cache dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest

from persistent_kernel import lazypages, pagewrites, render
from persistent_kernel.autosave import user_threads
from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.content import parse
from persistent_kernel.lazypages import PageServer
from persistent_kernel.restore import RestoreProgress, restore_checkpoint
from persistent_kernel.store import SessionStore, chunks
from persistent_kernel.store.sessions import BlobRef

from .harness import Kernel, KernelHarness
from .helpers import INFO, flip_a_bit, wait_until
from .test_checkpointer import Rig
from .test_kernel_safety import quiet_value

MB = 1 << 20
GiB = 1 << 30


def lazy_or_skip() -> PageServer:
    """A page server; where this machine cannot have one, lazy restore is off and
    the kernel reads arrays in full (tested by the kernel tests). CI runs as root."""
    pages = PageServer.open()
    if pages is None or not pages.usable():
        assert os.geteuid() != 0, "root, yet no userfaultfd with fork events"
        pytest.skip("no privileged userfaultfd here (not root)")
    return pages


@pytest.fixture
def pages() -> Iterator[PageServer]:
    server = lazy_or_skip()
    try:
        yield server
    finally:
        server.close()


def digest(array: Any) -> str:
    return blake3.blake3(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def saved(session: SessionStore, values: dict[str, Any]) -> None:
    assert write_checkpoint(session, values, {}, INFO, keep=10).ok


def restored(session: SessionStore, pages: PageServer) -> dict[str, Any]:
    into: dict[str, Any] = {}
    progress = RestoreProgress()
    progress.pages = pages
    report = restore_checkpoint(session, into, progress)
    assert not report.problems and not report.skipped, report
    return into


def resident(buffer: Any) -> int:
    """Bytes of *buffer* present in memory (mincore through /proc/self/pagemap)."""
    address = pagewrites.address_of(buffer)
    size = memoryview(buffer).nbytes
    start, end = pagewrites.page_span(address, size)
    present = 0
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(start // pagewrites.PAGE * 8)
        data = f.read((end - start) // pagewrites.PAGE * 8)
    for i in range(0, len(data), 8):
        if int.from_bytes(data[i : i + 8], "little") >> 63:
            present += pagewrites.PAGE
    return present


def arrays(count: int, size: int) -> dict[str, Any]:
    """Distinct arrays of *size* bytes each, every chunk different (fast to make)."""
    return {f"a{i}": np.arange(size // 8, dtype=np.float64) * (i + 1) + 0.5 for i in range(count)}


def test_touched_chunks_come_back_exactly_and_only_they_are_read(
    session: SessionStore, pages: PageServer
) -> None:
    values = {**arrays(2, 64 * MB), "small": {"k": [1, 2, 3]}}
    odd = np.random.default_rng(3).random(3 * MB // 8 * 9 + 123)  # not a whole page
    values["odd"] = odd
    saved(session, values)
    into = restored(session, pages)
    assert into["small"] == {"k": [1, 2, 3]}
    assert pages.mapped_bytes == 2 * 64 * MB + odd.nbytes
    a0 = into["a0"]
    assert resident(a0) == 0  # nothing read yet
    assert a0[12345] == values["a0"][12345]
    step = chunks.chunk_size(a0.nbytes)
    assert resident(a0) == step  # the touched chunk, whole
    assert digest(a0) == digest(values["a0"])
    assert digest(into["odd"]) == digest(odd)
    assert resident(into["a1"]) == 0  # never touched, never read


def test_a_forked_process_and_a_system_call_read_untouched_chunks(
    session: SessionStore, pages: PageServer, tmp_path: Path
) -> None:
    values = arrays(1, 32 * MB)
    saved(session, values)
    into = restored(session, pages)
    a0 = into["a0"]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the checkpoint writer and multiprocessing fork like this
        try:
            os.write(write_end, digest(a0).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read().decode() == digest(values["a0"])
    os.waitpid(child, 0)
    assert resident(a0) == 0  # the child's reads filled the child's memory only
    out = tmp_path / "out.raw"
    with open(out, "wb") as f:  # write() reads the untouched buffer inside the kernel
        f.write(memoryview(a0).cast("B"))
    assert digest(np.fromfile(out, dtype=np.float64)) == digest(values["a0"])


def test_a_damaged_chunk_is_never_seen_and_is_told(
    session: SessionStore, pages: PageServer
) -> None:
    values = arrays(1, 32 * MB)
    saved(session, values)
    step = chunks.chunk_size(32 * MB)
    told: list[tuple[str, str, int]] = []
    pages.on_damaged = lambda label, name, size: told.append((label, name, size))
    into = restored(session, pages)
    manifest = session.read_manifest(session.generations()[-1])
    (part,) = [p for g in parse(manifest).groups for p in g.parts if p.blob is None]
    names = [ref.hash for ref in part.refs()]
    flip_a_bit(session.objects_dir / names[2])  # after the restore: found on touch
    a0 = into["a0"]
    assert a0[0] == values["a0"][0]
    bad = slice(2 * step // 8, 3 * step // 8)
    assert not a0[bad].any()  # zeros, never the damaged bytes
    wait_until(lambda: told, 10, "the damage to be told")
    assert told == [("a0", "its bytes do not match their hash", step)]
    assert not (session.objects_dir / names[2]).exists()  # quarantined: never named again
    good = np.r_[0 : 2 * step // 8, 3 * step // 8 : a0.size]
    assert np.array_equal(a0[good], values["a0"][good])


def test_a_chunk_pruned_after_the_restore_still_serves(
    session: SessionStore, pages: PageServer
) -> None:
    values = arrays(1, 32 * MB)
    saved(session, values)
    into = restored(session, pages)
    chunk_files = {str(p) for p in session.objects_dir.iterdir()}

    def held() -> bool:  # the server opens a buffer's files as soon as it arrives
        opened = set()
        for fd in Path(f"/proc/{pages.pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                opened.add(os.readlink(fd))
        small = {p for p in chunk_files if os.path.getsize(p) < MB}  # the pickles
        return chunk_files <= opened | small

    wait_until(held, 10, "the page server to open the chunk files")
    for path in session.objects_dir.iterdir():  # pruned, or replaced by a later writer
        path.unlink()
    assert digest(into["a0"]) == digest(values["a0"])


def test_writes_to_a_lazy_array_are_tracked(session: SessionStore, pages: PageServer) -> None:
    watcher = pagewrites.Watcher.open()
    assert watcher is not None
    saved(session, arrays(1, 32 * MB))
    into = restored(session, pages)
    a0 = into["a0"]
    start, end = pagewrites.page_span(pagewrites.address_of(a0), a0.nbytes)
    assert watcher.watch(start, end)  # adopted: the page server registered it
    assert a0[0] == 0.5 and watcher.written(start, end) == []  # filled, not written
    a0[MB] = -1.0
    written = watcher.written(start, end)
    assert written == [pagewrites.page_span(pagewrites.address_of(a0) + MB * 8, 8)]
    watcher.close()


# -- real kernels -------------------------------------------------------------------------

STATE_GIB = 3
BLOCK = 256 * MB


def drop_page_cache() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def rss(kernel: Any) -> int:
    status = kernel.run("print(open('/proc/self/status').read())").check().stdout
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) * 1024


def first_cell(kernels: KernelHarness) -> tuple[Kernel, str]:
    """Start a kernel of ours; what its first cell printed."""
    kernel = kernels.start()
    return kernel, kernel.run("print(small)").stdout


def test_a_large_state_resumes_unread_and_grows_with_what_is_touched(
    kernels: KernelHarness,
) -> None:
    lazy_or_skip().close()
    kernel = kernels.start()
    count = STATE_GIB * GiB // BLOCK
    kernel.run(
        "import numpy as np, blake3\n"
        f"big = [np.arange({BLOCK // 8}, dtype=np.float64) * (i + 1) + 0.5\n"
        f"       for i in range({count})]\n"
        "sums = [blake3.blake3(memoryview(b).cast('B')).hexdigest() for b in big]\n"
        "small = {'rows': 12}"
    ).check()
    kernel.run("%persist save").check()
    kernel.shutdown()
    kernel.wait_dead()
    session = kernels.session()
    blobs = {p.name for p in session.objects_dir.iterdir()}

    # The state is not read before the first cell, cold: memory holds a fraction of it.
    drop_page_cache()
    kernel, text = first_cell(kernels)
    assert "{'rows': 12}" in text
    assert rss(kernel) < STATE_GIB * GiB / 4
    kernel.shutdown()
    kernel.wait_dead()
    session.locks.wait_for_writers(120)  # its cells ran beside the restore: it saves
    # Warm, the same. How soon the first cell comes, against a stock kernel, is the
    # benchmark's to measure (bench.py --resume): timed here, on a shared machine, it
    # was a flaky test.
    kernel, text = first_cell(kernels)
    assert "{'rows': 12}" in text
    assert rss(kernel) < STATE_GIB * GiB / 4

    touched = kernel.run(
        "print(blake3.blake3(memoryview(big[0]).cast('B')).hexdigest() == sums[0], big[1][7])"
    ).check()
    assert touched.stdout.split() == ["True", "14.5"]  # exact where touched
    grown = rss(kernel)
    assert BLOCK < grown < STATE_GIB * GiB / 4 + BLOCK  # big[0] and one chunk of big[1]

    kernel.run("big[2][5] = -1.0").check()
    kernel.run("%persist save").check()
    new = {p.name for p in session.objects_dir.iterdir()} - blobs
    chunk = chunks.chunk_size(BLOCK)
    written = sum((session.objects_dir / n).stat().st_size for n in new)
    assert written < 2 * chunk  # the written chunk and the small pickles, nothing else
    kernel.shutdown()
    kernel.wait_dead()

    kernel = kernels.start()
    check = kernel.run(
        "print(big[2][5], all(blake3.blake3(memoryview(b).cast('B')).hexdigest() == s "
        "for i, (b, s) in enumerate(zip(big, sums)) if i != 2))"
    ).check()
    assert check.stdout.split() == ["-1.0", "True"]
    kernel.shutdown()
    kernel.wait_dead()
    session.locks.wait_for_writers(120)
    shutil.rmtree(kernels.root)  # 3 GiB of chunks: the suite's disk is not endless


def test_lazy_restore_off_reads_every_array(kernels: KernelHarness) -> None:
    saved_by_a_kernel(
        kernels, "import numpy as np\nbig = np.arange(8 << 20, dtype=np.float64)\nsmall = 1"
    )
    kernel = kernels.start(args=["--PersistentKernel.lazy_restore=False"])
    assert kernel.value("small") == "1"
    assert rss(kernel) > 64 * MB  # read in full at the restore
    assert kernel.value("int(big[-1])") == str((8 << 20) - 1)


def saved_by_a_kernel(kernels: KernelHarness, code: str) -> None:
    """Run *code* in a kernel, save, and stop it."""
    kernel = kernels.start()
    kernel.run(code).check()
    kernel.run("%persist save").check()
    kernel.shutdown()
    kernel.wait_dead()


def test_the_page_server_outlives_a_killed_kernel_only_while_its_children_live(
    kernels: KernelHarness,
) -> None:
    lazy_or_skip().close()
    saved_by_a_kernel(kernels, "import numpy as np\nbig = np.arange(8 << 20, dtype=np.float64)")
    kernel = kernels.start()
    server = int(kernel.value("get_ipython().kernel.startup.progress.pages.pid"))
    os.kill(kernel.pid, signal.SIGKILL)
    kernel.wait_dead()

    def gone() -> bool:
        try:
            os.kill(server, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{server}/stat").read_text().split()[2] == "Z"

    wait_until(gone, 30, "the page server to end with its kernel")


def chunk_names(session: SessionStore) -> list[str]:
    """The chunks of the newest generation's one chunked buffer, in order."""
    manifest = session.read_manifest(session.generations()[-1])
    (part,) = [p for g in parse(manifest).groups for p in g.parts if p.blob is None]
    return [ref.hash for ref in part.refs()]


def ended(pid: int) -> bool:
    """Whether process *pid* has ended (gone, or a zombie not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_a_server_that_is_killed_is_replaced_and_its_waiting_thread_served(
    session: SessionStore, pages: PageServer, tmp_path: Path
) -> None:
    values = arrays(1, 32 * MB)
    saved(session, values)
    step = chunks.chunk_size(32 * MB)
    path = session.objects_dir / chunk_names(session)[2]
    aside = path.with_name("aside")
    path.rename(aside)
    path.mkdir()  # EISDIR when read: no proof of damage, the touching thread waits
    told: list[str] = []
    replaced: list[int | None] = []
    pages.on_unreadable = lambda label, reason: told.append(reason)
    pages.on_replaced = lambda: replaced.append(pages.pid)
    a0 = restored(session, pages)["a0"]
    wait_until(lambda: pages.spare_pid is not None, 10, "the spare to start")
    first, spare = pages.pid, pages.spare_pid
    assert first is not None and spare is not None
    page = memoryview(a0).cast("B")[2 * step : 2 * step + 4096]
    out = os.open(tmp_path / "page", os.O_WRONLY | os.O_CREAT)
    # write() reads the page inside the system call, with the GIL released: the test
    # goes on while the thread waits (a thread touching it in Python would hold the GIL)
    touching = threading.Thread(target=os.write, args=(out, page))
    touching.start()
    wait_until(lambda: told, 10, "the thread to wait for a chunk it cannot read now")
    os.kill(first, signal.SIGKILL)  # the fault it read is never served by it
    wait_until(lambda: replaced, 10, "the spare to take over")
    assert replaced == [spare] and not pages.lost
    wait_until(lambda: pages.spare_pid not in (None, spare), 10, "a new spare")
    path.rmdir()
    aside.rename(path)
    touching.join(timeout=30)
    assert not touching.is_alive(), "the thread that touched the page still waits"
    os.close(out)
    assert (tmp_path / "page").read_bytes() == values["a0"].tobytes()[2 * step : 2 * step + 4096]
    assert digest(a0) == digest(values["a0"])


def test_a_server_and_its_spare_killed_together_are_replaced(
    session: SessionStore, pages: PageServer, tmp_path: Path
) -> None:
    values = arrays(1, 32 * MB)
    saved(session, values)
    a0 = restored(session, pages)["a0"]
    wait_until(lambda: pages.spare_pid is not None, 10, "the spare to start")
    first, spare = pages.pid, pages.spare_pid
    assert first is not None and spare is not None
    os.kill(first, signal.SIGKILL)
    os.kill(spare, signal.SIGKILL)
    wait_until(lambda: pages.pid not in (first, spare, None), 10, "a new server to serve")
    out = os.open(tmp_path / "all", os.O_WRONLY | os.O_CREAT)
    reading = threading.Thread(target=os.write, args=(out, memoryview(a0).cast("B")))
    reading.start()  # in a system call, GIL released: a wait that never ends fails here
    reading.join(timeout=30)
    assert not reading.is_alive(), "an untouched page was never served"
    os.close(out)
    assert digest(np.fromfile(tmp_path / "all", dtype=np.float64)) == digest(values["a0"])
    assert not pages.lost


def test_a_server_killed_before_its_spare_started_is_replaced(
    session: SessionStore, pages: PageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lazypages, "SPARE_AFTER", 3600.0)  # the spare waits for a quiet start
    values = arrays(1, 32 * MB)
    saved(session, values)
    before = {t.ident for t in threading.enumerate()}
    a0 = restored(session, pages)["a0"]
    # the threads that wait for the spare and listen are the kernel's, not the user's
    # (a user's thread may change the namespace: each cell would fork a standby anew)
    assert user_threads(before) == []
    first = pages.pid
    assert first is not None and pages.spare_pid is None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: pages.pid not in (first, None), 10, "a new server to serve")
    assert digest(a0) == digest(values["a0"])


def test_a_process_forked_before_its_server_ended_is_told_not_to_commit(
    session: SessionStore, pages: PageServer
) -> None:
    """Why a writer checks before it commits: in a process forked while a server
    served, the pages that server had not placed read as zeros once it ends."""
    values = arrays(1, 32 * MB)
    saved(session, values)
    a0 = restored(session, pages)["a0"]
    served_by = pages.current()
    first = pages.pid
    assert first is not None
    go_read, go_write = os.pipe()
    out_read, out_write = os.pipe()
    child = os.fork()
    if child == 0:  # a writer: forked, then reads after the server ended
        try:
            os.read(go_read, 1)
            serving = pages.serving(served_by)
            os.write(out_write, json.dumps([serving, float(a0[-1])]).encode())
        finally:
            os._exit(0)
    os.close(out_write)
    try:
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: ended(first), 10, "the server to end")
        wait_until(lambda: pages.pid != first, 10, "the spare to take over")
        os.write(go_write, b"x")
        with os.fdopen(out_read, "rb") as pipe:
            serving, last = json.loads(pipe.read())
    finally:
        os.waitpid(child, 0)
    assert serving is False
    assert last == 0.0  # the hazard the check guards against
    assert pages.serving(pages.current())  # the kernel itself is served again
    assert float(a0[-1]) == values["a0"][-1]


def test_with_no_server_left_lazy_mapping_and_checkpoints_stop(
    session: SessionStore, pages: PageServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(lazypages, "LAUNCHES", 2)  # the first server and one spare
    values = arrays(1, 32 * MB)
    saved(session, values)
    lost: list[bool] = []
    pages.on_lost = lambda: lost.append(True)
    a0 = restored(session, pages)["a0"]
    assert a0[0] == values["a0"][0]
    wait_until(lambda: pages.spare_pid is not None, 10, "the spare to start")
    first, spare = pages.pid, pages.spare_pid
    assert first is not None and spare is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: pages.pid == spare, 10, "the spare to take over")
    assert pages.spare_pid is None  # no more launches
    assert float(a0[-1]) == values["a0"][-1]
    os.kill(spare, signal.SIGKILL)
    wait_until(lambda: lost, 10, "the loss to be told")
    assert pages.lost and pages.pid is None
    with pytest.raises(OSError):  # a later restore reads its arrays in full
        pages.map(["x"], [8 * MB], ["y"], "blake3")
    # a fork would wait forever for a server to read its event: no checkpoint starts
    rig = Rig(tmp_path / "other", checkpoint_interval=0.0)
    rig.checkpointer.pages = pages
    rig.cell(x=1)
    assert rig.session.generations() == []
    assert rig.checkpointer.last_failure == render.pages_lost_sentence()
    (told,) = rig.host.notices
    assert told.startswith(f"persistent-kernel: {render.pages_lost_sentence()}. ")


BIG = "import numpy as np\nbig = np.arange(8 << 20, dtype=np.float64)"
BIG_SUM = float(np.arange(8 << 20, dtype=np.float64).sum())
SERVER = "get_ipython().kernel.startup.progress.pages.pid"
STANDBY = "getattr(get_ipython().kernel.checkpointer.standby.current, 'pid', None)"


def test_a_kernel_whose_page_server_is_killed_goes_on(kernels: KernelHarness) -> None:
    lazy_or_skip().close()
    saved_by_a_kernel(kernels, BIG)
    kernel = kernels.start()
    first = int(kernel.value(SERVER))
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: int(quiet_value(kernel, SERVER)) != first, 30, "the spare to serve")
    assert float(kernel.value("float(big.sum())")) == BIG_SUM  # every chunk, from the spare
    kernel.run("changed = 1").check()  # forks a standby: the spare reads its fork event
    assert "written" in kernel.run("%persist save").check().stdout
    kernel.shutdown()
    kernel.wait_dead()
    again = kernels.start()
    assert again.value("(changed, float(big.sum()))") == f"(1, {BIG_SUM!r})"


def test_the_standby_forked_before_a_server_ended_is_forked_anew(
    kernels: KernelHarness,
) -> None:
    """A standby forked while the killed server served could not commit (its check
    fails): one is forked anew, and a kill of the kernel still keeps the last change."""
    lazy_or_skip().close()
    saved_by_a_kernel(kernels, BIG)
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    first = int(kernel.value(SERVER))
    kernel.run("changed = 2").check()
    held = quiet_value(kernel, STANDBY)
    assert held != "None"
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: quiet_value(kernel, STANDBY) not in ("None", held), 30, "a new standby")
    session = kernels.session()
    before = session.generations()
    kernel.kill()
    session.locks.wait_for_writers(60)
    assert len(session.generations()) == len(before) + 1  # the new standby wrote
    again = kernels.start()
    assert again.value("(changed, float(big.sum()))") == f"(2, {BIG_SUM!r})"


class Refusing:
    """Pages that must not be asked (a guard is under test)."""

    def map(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("asked to map")


def test_chunks_that_share_a_page_are_read_not_mapped(session: SessionStore) -> None:
    odd = [BlobRef("a" * 64, 5000, (5000,)), BlobRef("b" * 64, 4096, (4096,))]  # older cuts
    assert chunks.map_chunked(session, odd, Refusing()) is None


def test_a_damaged_chunk_is_told_in_the_kernel(kernels: KernelHarness) -> None:
    lazy_or_skip().close()
    saved_by_a_kernel(kernels, "import numpy as np\nbig = np.arange(4 << 20, dtype=np.float64) + 1")
    session = kernels.session()
    (part,) = [
        p
        for g in parse(session.read_manifest(session.generations()[-1])).groups
        for p in g.parts
        if p.blob is None
    ]
    first = part.refs()[0]
    flip_a_bit(session.objects_dir / first.hash)
    kernel = kernels.start()
    shown = [kernel.run("print(float(big[0]))").check().stdout]
    assert shown[0].splitlines()[-1] == "0.0"  # never the damaged bytes
    shown.append(kernel.run("print(float(big[-1]))").check().stdout)
    assert shown[1].splitlines()[-1] == str(float(4 << 20))  # the rest is exact
    sentence = "1.0 MiB of big could not be restored (its bytes do not match their hash)"
    wait_until(
        lambda: sentence in "".join(shown) or shown.append(kernel.run("pass").stdout),
        30, "the damage to be told above a cell",
    )  # fmt: skip
    assert "".join(shown).count(sentence) == 1  # told once
    assert not (session.objects_dir / first.hash).exists()  # quarantined


def test_a_discarded_page_gets_its_bytes_again(session: SessionStore, pages: PageServer) -> None:
    import ctypes

    values = arrays(1, 32 * MB)
    saved(session, values)
    into = restored(session, pages)
    a0 = into["a0"]
    assert a0[1000] == values["a0"][1000]  # placed
    libc = ctypes.CDLL(None, use_errno=True)
    start = pagewrites.address_of(a0) + 2 * pagewrites.PAGE
    assert libc.madvise(ctypes.c_void_p(start), pagewrites.PAGE, 4) == 0  # MADV_DONTNEED
    assert np.array_equal(a0[:8192], values["a0"][:8192])  # the chunk's bytes, not zeros


# -- the page server's bookkeeping, in process (its system calls faked) --------------------


class RecordingIoctl:
    """The userfaultfd calls of a :class:`Server`, recorded; *failing* copies fail once
    with that errno (a fault the real calls cannot be made to produce on demand)."""

    def __init__(self, failing: int = 0) -> None:
        self.copies: list[tuple[int, int, bytes, bool]] = []
        self.wakes: list[tuple[int, int, int]] = []
        self.failing = failing

    def copy(self, fd: int, dst: int, src: int, length: int, protect: bool) -> int:
        import ctypes

        if self.failing:
            error, self.failing = self.failing, 0
            return error
        self.copies.append((fd, dst, ctypes.string_at(src, length), protect))
        return 0

    def wake(self, fd: int, start: int, length: int) -> int:
        self.wakes.append((fd, start, length))
        return 0


def serve_files(tmp_path: Path, blobs: list[bytes], ioctl: Any) -> tuple[Any, Any, list[str]]:
    """A Server over chunk files holding *blobs*, its kernel end of the socket, the names."""
    import socket

    from persistent_kernel.pageserver import Server

    names = [blake3.blake3(b).hexdigest() for b in blobs]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = Server(-1, theirs, ioctl)
    paths = []
    for name, blob in zip(names, blobs, strict=True):
        (tmp_path / name).write_bytes(blob)
        paths.append(str(tmp_path / name))
    header = {"op": "map", "id": 0, "address": 1 << 30, "hash": "blake3", "chunks": len(paths)}
    ours.send(json.dumps(header).encode())
    message = {"op": "chunks", "id": 0, "sizes": [len(b) for b in blobs], "names": names,
               "paths": paths}  # fmt: skip
    ours.send(json.dumps(message).encode())
    return server, ours, names


def test_a_fault_before_its_buffer_is_known_is_served_once_it_is(tmp_path: Path) -> None:
    ioctl = RecordingIoctl()
    blobs = [bytes([1]) * 8192, bytes([2]) * 8192]
    server, ours, _ = serve_files(tmp_path, blobs, ioctl)
    server.fault(7, (1 << 30) + 8192 + 5)  # the map's messages not read yet
    assert server.deferred and not ioctl.copies
    server.receive()
    server.receive()
    server.pool.shutdown(wait=True)
    assert (7, (1 << 30) + 8192, blobs[1], True) in ioctl.copies
    server.close()
    ours.close()


def test_a_failed_copy_wakes_the_thread_to_fault_again(tmp_path: Path) -> None:
    import errno

    ioctl = RecordingIoctl(failing=errno.ENOMEM)
    blobs = [bytes([3]) * 8192]
    server, ours, _ = serve_files(tmp_path, blobs, ioctl)
    server.receive()
    server.receive()
    server.fault(7, 1 << 30)
    server.pool.shutdown(wait=True)
    assert not ioctl.copies and ioctl.wakes == [(7, 1 << 30, 8192)]
    assert (7, 0, 0) not in server.filled  # not taken for placed: the next fault places it
    from concurrent.futures import ThreadPoolExecutor

    server.pool = ThreadPoolExecutor(1)
    server.fault(7, 1 << 30)
    server.pool.shutdown(wait=True)
    assert ioctl.copies == [(7, 1 << 30, blobs[0], True)]
    server.close()
    ours.close()


def test_a_missing_chunk_file_is_told_and_reads_as_zeros(
    session: SessionStore, pages: PageServer
) -> None:
    values = {**arrays(1, 32 * MB), "small": 1}
    saved(session, values)
    manifest = session.read_manifest(session.generations()[-1])
    (part,) = [p for g in parse(manifest).groups for p in g.parts if p.blob is None]
    (session.objects_dir / part.refs()[5].hash).unlink()
    told: list[tuple[str, str, int]] = []
    pages.on_damaged = lambda label, reason, size: told.append((label, reason, size))
    into = restored(session, pages)  # not looked for at the restore: that costs an inode each
    a0 = into["a0"]
    step = chunks.chunk_size(a0.nbytes) // 8
    assert not a0[5 * step : 6 * step].any()
    assert np.array_equal(a0[: 5 * step], values["a0"][: 5 * step])
    wait_until(lambda: told, 10, "the missing file to be told")
    assert told == [("a0", "its file is missing", 8 * step)]


def test_a_chunk_that_cannot_be_read_now_keeps_its_thread_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persistent_kernel import pageserver

    monkeypatch.setattr(pageserver, "RETRY", 0.01)
    ioctl = RecordingIoctl()
    blobs = [bytes([4]) * 8192]
    server, ours, names = serve_files(tmp_path, blobs, ioctl)
    (tmp_path / names[0]).unlink()
    (tmp_path / names[0]).mkdir()  # read() fails with EISDIR: no proof of damage
    server.receive()
    server.receive()
    server.pool.shutdown(wait=True)  # the files opened at once (this one fails when read)
    from concurrent.futures import ThreadPoolExecutor

    server.pool = ThreadPoolExecutor(1)
    server.fault(7, 1 << 30)
    server.pool.shutdown(wait=True)
    assert not ioctl.copies  # never zeros: the thread is woken to fault again
    assert ioctl.wakes == [(7, 1 << 30, 8192)]
    told = json.loads(ours.recv(1 << 16))
    assert told["op"] == "unreadable" and told["reason"] == "it is not a file"
    server.close()
    ours.close()
