"""What a kernel loads before its first cell: only what that cell may need.

Every module imported at start is paid for by every start and every restart.
These tests hold out what a kernel on the local disk never uses before its
first cell: the object-storage modules (and obstore, which they load), the
CLI and the export code. They check which modules are loaded, not how long
anything takes (timing belongs to benchmarks/bench.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

from .harness import KernelHarness

#: Never imported by a kernel whose checkpoint_dir is a local directory.
NOT_AT_START = (
    "obstore",
    "persistent_kernel.store.objects",
    "persistent_kernel.store.tiers",
    "persistent_kernel.cli",
    "persistent_kernel.exchange",
)

LOADED = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def test_importing_the_kernel_leaves_object_storage_and_the_cli_out() -> None:
    code = f"import persistent_kernel.kernelapp; {LOADED}"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "persistent_kernel.kernel" in loaded and "persistent_kernel.store.where" in loaded
    assert sorted(loaded.intersection(NOT_AT_START)) == []


def test_a_restart_on_the_local_disk_loads_no_object_storage(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=0"])
    kernel.run("x = 41").check()
    kernels.wait_generations(kernels.session(), 1)
    kernel.run("x += 1").check()
    kernel.restart()  # the final checkpoint, then a new kernel restores the newest
    out = kernel.run(f"assert x == 42, x\n{LOADED}").check()
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "persistent_kernel.store.where" in loaded
    assert sorted(loaded.intersection(NOT_AT_START)) == []
    # a checkpoint written after the first cell (standby, writer) needs none of them either
    before = len(kernels.session().generations())
    kernel.run("y = 1").check()
    kernels.wait_generations(kernels.session(), before + 1)
    kernel.run("z = 1").check()
    out = kernel.run(LOADED).check()
    assert sorted(set(json.loads(out.stdout.strip())).intersection(NOT_AT_START)) == []
