"""Write tracking in real kernels: what a checkpoint holds is always what the arrays
hold, whatever the memory went through, and a small change is hashed small."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from persistent_kernel.restore import load_generation
from persistent_kernel.store import chunks

from .harness import Kernel, KernelHarness

MANUAL = ["--PersistentKernel.autosave=False"]
CHUNK = chunks.CHUNK
#: The chunk sizes of the arrays SETUP makes (a: 3 CHUNK, b: 5 CHUNK and 8000 bytes).
A_CHUNK, B_CHUNK = chunks.chunk_size(3 * CHUNK), chunks.chunk_size(5 * CHUNK + 8000)

SETUP = """
import ctypes, hashlib, json, threading
import numpy as np
_libc = ctypes.CDLL(None)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

def _digests():
    return {n: hashlib.sha256(v.tobytes()).hexdigest()
            for n, v in globals().items() if isinstance(v, np.ndarray) and not n.startswith('_')}

def _save():
    r = get_ipython().kernel.checkpointer.save_now()
    print(json.dumps({'ok': r.ok, 'hashed': r.hashed, 'digests': _digests()}))

def _discard(a, offset):
    '''MADV_DONTNEED one whole page of a's memory: it reads as zeros from then on.'''
    start = (a.ctypes.data + offset + 4095) // 4096 * 4096
    assert _libc.madvise(start, 4096, 4) == 0

def _scribble(a, seconds):
    '''Write into a from another thread for a while (started, not waited for).'''
    import time
    def run():
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            i += 1
            a[(i * 7919) % a.size] = i
    t = threading.Thread(target=run)
    t.start()
    return t

a = np.random.default_rng(1).random(3 * {chunk} // 8)
b = np.random.default_rng(2).random(5 * {chunk} // 8 + 1000)
"""


def filled(code: str) -> str:
    return code.replace("{chunk}", str(CHUNK))


def save(kernel: Kernel) -> dict[str, object]:
    out = kernel.run("_save()").check()
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"]
    return result


def saved_digests(kernels: KernelHarness) -> dict[str, str]:
    """The arrays of the newest generation, loaded in this process."""
    values, _ = load_generation(kernels.session())
    return {
        name: hashlib.sha256(value.tobytes()).hexdigest()
        for name, value in values.items()
        if isinstance(value, np.ndarray)
    }


# Each step changes memory in its own way; after each, the checkpoint must hold the
# arrays' bytes exactly.
STEPS = [
    ("one element", "a[12345] += 1"),
    ("one element of the other", "b[-1] = 7.0"),
    ("two chunks apart", f"a[0] = 1.0; a[-1] = 2.0; b[{CHUNK // 8 * 2 + 3}] = 3.0"),
    ("a page discarded (reads as zeros)", f"_discard(b, {CHUNK + 8192})"),
    ("rewritten whole", "a[:] = a[::-1]"),
    ("rewritten again, then one element", "a *= 2\nb[5] = 0.5"),
    ("freed, a new array of the same size", "del a\na = np.zeros(3 * {chunk} // 8)"),
    ("written after the replacement", "a[777] = 4.0"),
    ("a new array, the name bound again", "a = np.full(3 * {chunk} // 8, 2.0)"),
    ("resized in place", "b.resize(6 * {chunk} // 8, refcheck=False); b[-3] = 1.5"),
    ("a thread writes during the save", "_t = _scribble(b, 1.0)"),
    ("after that thread", "_t.join()"),
]


def test_every_checkpoint_holds_the_arrays_bytes(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=MANUAL)
    kernel.run(filled(SETUP)).check()
    save(kernel)
    small = []
    for what, code in STEPS:
        kernel.run(filled(code)).check()
        result = save(kernel)
        if what != "a thread writes during the save":  # the arrays moved on since
            assert saved_digests(kernels) == result["digests"], what
        if what.startswith("one element"):
            small.append(result["hashed"])
    # the tracking is at work: a one-element change hashes one or two chunks
    assert all(0 < int(h) <= 2 * max(A_CHUNK, B_CHUNK) for h in small), small
    before = kernel.run("print(json.dumps(_digests()))").check().stdout.strip()
    kernel.restart()
    kernel.run("import hashlib, json, numpy as np").check()
    after = kernel.run(
        "print(json.dumps({n: hashlib.sha256(v.tobytes()).hexdigest() "
        "for n, v in globals().items() if isinstance(v, np.ndarray) and n[0] != '_'}))"
    ).check()
    assert json.loads(after.stdout.strip()) == json.loads(before)


@pytest.mark.parametrize("track", [True, False])
def test_a_one_element_change_hashes_one_chunk_only_when_tracked(
    kernels: KernelHarness, track: bool
) -> None:
    kernel = kernels.start(args=[*MANUAL, f"--PersistentKernel.track_writes={track}"])
    kernel.run(filled(SETUP)).check()
    save(kernel)
    kernel.run("b[3] += 1").check()
    result = save(kernel)
    assert saved_digests(kernels) == result["digests"]
    size = 3 * CHUNK + 5 * CHUNK + 8000  # a and b
    assert result["hashed"] == (B_CHUNK if track else size)


def test_an_array_inside_a_container_is_tracked_from_the_third_checkpoint(
    kernels: KernelHarness,
) -> None:
    kernel = kernels.start(args=MANUAL)
    kernel.run(filled(SETUP)).check()
    code = "del a, b\nd = {'x': np.random.default_rng(3).random(4 * {chunk} // 8)}"
    kernel.run(filled(code)).check()
    hashed = []
    for i in range(4):
        kernel.run(f"d['x'][{i * 1000}] += 1").check()
        hashed.append(save(kernel)["hashed"])
    assert hashed[:2] == [4 * CHUNK, 4 * CHUNK]  # first seen in a writer's result
    assert hashed[2:] == [chunks.chunk_size(4 * CHUNK)] * 2
    values, _ = load_generation(kernels.session())
    assert values["d"]["x"][3000] == kernel_value(kernel, "d['x'][3000]")


def kernel_value(kernel: Kernel, expression: str) -> float:
    return float(kernel.value(f"float({expression})"))


def test_tracking_turned_off_at_run_time_hashes_everything_again(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=MANUAL)
    kernel.run(filled(SETUP)).check()
    save(kernel)
    kernel.run("a[1] += 1").check()
    assert save(kernel)["hashed"] == A_CHUNK
    kernel.run("%config PersistentKernel.track_writes = False\na[2] += 1").check()
    result = save(kernel)
    assert result["hashed"] == 3 * CHUNK + 5 * CHUNK + 8000
    assert saved_digests(kernels) == result["digests"]


def test_after_a_restart_a_one_element_change_hashes_one_chunk(kernels: KernelHarness) -> None:
    """The restore watches each array's memory as soon as it has read it."""
    kernel = kernels.start(args=MANUAL)
    kernel.run(filled(SETUP)).check()
    save(kernel)
    kernel.restart()
    kernel.run(filled(SETUP.split("\na = ")[0])).check()  # the helpers, not the arrays
    kernel.run("b[3] += 1").check()
    result = save(kernel)
    assert result["hashed"] == B_CHUNK
    assert saved_digests(kernels) == result["digests"]


def userfaultfds(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if "userfaultfd" in os.readlink(fd))


def test_a_kernel_without_large_arrays_never_opens_a_userfaultfd(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=MANUAL)
    code = "_ = get_ipython().kernel.checkpointer.save_now()"
    kernel.run(f"import numpy as np\nsmall = np.zeros(1000)\n{code}")
    assert userfaultfds(kernel.pid) == 0
    kernel.run(filled(SETUP)).check()
    save(kernel)
    assert userfaultfds(kernel.pid) == 1


HALVES = '''
import numpy as np


class Halves:
    """Pickled as a copy of every other element: the writer makes that copy itself."""

    def __init__(self, n):
        self.a = np.zeros(n)

    def __reduce__(self):
        return _halves, (self.a[::2].copy(),)


def _halves(half):
    made = Halves.__new__(Halves)
    made.a = np.repeat(half, 2)
    return made
'''


LOOP = """
_saved = {}
for _step in range(%d):
    c.a[:6] = _step; c.a[-2:] = _step
    _r = get_ipython().kernel.checkpointer.save_now()
    assert _r.ok, _r
    _saved[_r.generation] = _step
print(json.dumps(_saved))
"""


def test_buffers_the_writer_makes_while_pickling_are_never_reused_by_address(
    kernels: KernelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reduction's own copy (20 MiB here) lives at memory that, in the kernel, is free:
    nobody writes it there, so its address says nothing of what the next writer's copy
    holds. Every generation must hold the values the kernel had when it was saved."""
    (kernels.cwd / "halves.py").write_text(HALVES)
    monkeypatch.syspath_prepend(str(kernels.cwd))
    # glibc as many tune it: blocks up to 64 MiB from the heap, which is never trimmed
    heap = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    kernel = kernels.start(args=[*MANUAL, "--PersistentKernel.keep=100"], env=heap)
    n = 5 * CHUNK // 8  # 40 MiB: its copies are 20 MiB
    kernel.run(f"{filled(SETUP)}\ndel a, b\nfrom halves import Halves\nc = Halves({n})").check()
    # a copy like the writer's, made and freed here first: the heap keeps its memory
    kernel.run("_t = c.a[::2].copy()\ndel _t").check()
    out = kernel.run(LOOP % 12).check().stdout
    expected = {int(g): float(v) for g, v in json.loads(out.strip().splitlines()[-1]).items()}
    session = kernels.session()
    for generation, value in expected.items():
        values, report = load_generation(session, generation)
        assert not report.problems
        back = values["c"].a
        assert back.size == n and back[:6].tolist() == [value] * 6, (generation, back[:6])
        assert back[-2:].tolist() == [value] * 2 and not back[6:-2].any(), generation
    kernel.restart()  # the newest generation is what the kernel had
    assert kernel.value("(c.a[:6].tolist(), c.a[-2:].tolist())") == f"({[11.0] * 6}, {[11.0] * 2})"
