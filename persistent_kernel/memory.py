"""How much more memory this process may take before something is killed, and
how many cores it may use.

A kernel that restarts while the previous kernel's writer is still writing
may unpickle the checkpoint already on disk meanwhile (see
:mod:`persistent_kernel.restore`). For that time the machine holds the
state twice: in the writer, which now owns the exited kernel's pages, and in
the new kernel. That overlap is worth it only where the memory is there: on a
JupyterHub server the container's limit is often far below the machine's,
and an out-of-memory kill during a restore would cost more than the wait.

Linux only: the smaller of ``MemAvailable`` and what this process's memory
cgroup (v2, or v1) still allows. ``None`` where neither can be read, which
callers treat as "not enough".
"""

from __future__ import annotations

import os
from pathlib import Path

#: A cgroup limit at or above this is "no limit" (cgroup v1 writes a huge number).
_UNLIMITED = 1 << 60


def available(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process can still allocate, or ``None`` if that cannot be told."""
    found = [n for n in (_mem_available(proc), _cgroup_room(proc, cgroups)) if n is not None]
    return min(found) if found else None


def enough_for(nbytes: int, room: int | None, factor: float = 2.0) -> bool:
    """Is there room for *factor* times *nbytes* (what is loaded ahead, and what
    changed loaded on top of it), with 256 MiB to spare? ``room`` None: no."""
    return room is not None and room >= factor * nbytes + (256 << 20)


def _mem_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room(proc: Path, cgroups: Path) -> int | None:
    """Limit minus usage of this process's memory cgroup; ``None`` if unlimited or unknown."""
    found = _cgroup_dir(proc, cgroups, "memory")
    if found is None:
        return None
    directory, v2 = found
    if v2:
        return _room(directory, "memory.max", "memory.current")
    return _room(directory, "memory.limit_in_bytes", "memory.usage_in_bytes")


def _cgroup_dir(proc: Path, cgroups: Path, controller: str) -> tuple[Path, bool] | None:
    """The directory of this process's cgroup for *controller*, and whether it is v2.

    Inside a container the process's own group is often the mount's root (v1).
    """
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2: one hierarchy
            directory = cgroups / relative
            if (directory / f"{controller}.max").exists():
                return directory, True
        elif controller in controllers.split(","):  # cgroup v1: one mount per controller
            base = cgroups / controllers
            if not base.is_dir():
                base = cgroups / controller
            return (base / relative if (base / relative).is_dir() else base), False
    return None


def cores(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use at once: the CPUs it may run on, capped by its
    cgroup's CPU quota (a JupyterHub container limited to one CPU has one, whatever
    the machine has). At least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    found = _cgroup_dir(proc, cgroups, "cpu")
    if found is not None:
        directory, v2 = found
        try:
            if v2:
                quota_text, period_text = (directory / "cpu.max").read_text().split()[:2]
            else:
                quota_text = (directory / "cpu.cfs_quota_us").read_text().strip()
                period_text = (directory / "cpu.cfs_period_us").read_text().strip()
            if quota_text not in ("max", "-1"):
                count = min(count, int(int(quota_text) / int(period_text)))
        except (OSError, ValueError, ZeroDivisionError):
            pass
    return max(1, count)


def _room(directory: Path, limit_file: str, usage_file: str) -> int | None:
    try:
        limit_text = (directory / limit_file).read_text().strip()
        usage = int((directory / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    if limit_text == "max":
        return None
    try:
        limit = int(limit_text)
    except ValueError:
        return None
    if limit >= _UNLIMITED:
        return None
    return max(0, limit - usage)
