"""How much memory a restart may take ahead of the previous writer, and how many
cores a writer may use: real files."""

from __future__ import annotations

import os
from pathlib import Path

from persistent_kernel import memory

GiB = 1 << 30


def fake_proc(tmp_path: Path, available_kib: int, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        "MemTotal:       32000000 kB\nMemFree:         1000 kB\n"
        f"MemAvailable:   {available_kib} kB\n"
    )
    (proc / "self" / "cgroup").write_text(cgroup)
    return proc


def test_the_machine_this_runs_on_has_some_room() -> None:
    room = memory.available()
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert room is not None and 0 < room <= total


def test_a_cgroup_v2_limit_is_the_room_when_it_is_smaller(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GiB // 1024, "0::/user/jovyan\n")
    group = tmp_path / "cg" / "user" / "jovyan"
    group.mkdir(parents=True)
    (group / "memory.max").write_text(f"{4 * GiB}\n")
    (group / "memory.current").write_text(f"{3 * GiB}\n")
    assert memory.available(proc, tmp_path / "cg") == 1 * GiB
    (group / "memory.max").write_text("max\n")  # no limit: the machine's room
    assert memory.available(proc, tmp_path / "cg") == 20 * GiB


def test_a_cgroup_v1_limit_at_the_mount_root_counts(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GiB // 1024, "4:memory:/docker/abc\n1:cpu:/\n")
    base = tmp_path / "cg" / "memory"  # the container sees its own group as the root
    base.mkdir(parents=True)
    (base / "memory.limit_in_bytes").write_text(f"{2 * GiB}\n")
    (base / "memory.usage_in_bytes").write_text(f"{GiB // 2}\n")
    assert memory.available(proc, tmp_path / "cg") == GiB + GiB // 2
    (base / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited
    assert memory.available(proc, tmp_path / "cg") == 20 * GiB


def test_nothing_readable_means_no_room(tmp_path: Path) -> None:
    assert memory.available(tmp_path / "nothing", tmp_path / "nothing") is None
    assert not memory.enough_for(1, None)


def test_room_for_the_state_twice_and_a_margin() -> None:
    assert memory.enough_for(GiB, 3 * GiB)
    assert not memory.enough_for(GiB, 2 * GiB)  # twice, but nothing to spare
    assert not memory.enough_for(4 * GiB, 5 * GiB)


def test_cores_are_capped_by_a_cgroup_v2_cpu_quota(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, GiB // 1024, "0::/user/jovyan\n")
    group = tmp_path / "cg" / "user" / "jovyan"
    group.mkdir(parents=True)
    machine = len(os.sched_getaffinity(0))
    (group / "cpu.max").write_text("100000 100000\n")  # one CPU's worth
    assert memory.cores(proc, tmp_path / "cg") == 1
    (group / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one core
    assert memory.cores(proc, tmp_path / "cg") == 1
    (group / "cpu.max").write_text("max 100000\n")
    assert memory.cores(proc, tmp_path / "cg") == machine


def test_cores_are_capped_by_a_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, GiB // 1024, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    base = tmp_path / "cg" / "cpu,cpuacct"
    base.mkdir(parents=True)  # the container's own group is the mount's root
    machine = len(os.sched_getaffinity(0))
    (base / "cpu.cfs_period_us").write_text("100000\n")
    (base / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert memory.cores(proc, tmp_path / "cg") == machine
    (base / "cpu.cfs_quota_us").write_text("150000\n")
    assert memory.cores(proc, tmp_path / "cg") == min(machine, 1)


def test_cores_without_cgroups_are_the_cpus_this_process_may_run_on(tmp_path: Path) -> None:
    assert memory.cores(tmp_path / "nothing", tmp_path / "nothing") == len(os.sched_getaffinity(0))
