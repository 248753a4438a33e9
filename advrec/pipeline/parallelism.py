"""How many steps an in-process run computes at once (``--jobs auto``): measured, not assumed.

Each extra step runs in its own worker process (:func:`advrec.pipeline.executor.run_inprocess`), with
the numbers of a sequential run. Whether a second worker helps depends on what the machine has free
*now*: on an idle 2-core machine two steps at once took the demo from 204 to 121 s, while another
process busy on one core leaves nothing for a second worker. So ``auto`` samples the CPUs' idle time
over a fraction of a second (``/proc/stat``) and the memory available (``/proc/meminfo``), and takes
one job per CPU that was at least 75 % idle, at most one per :data:`WORKER_MEMORY_BYTES` available,
never more than this process may run on: its affinity mask and, in a container, its cgroup's CPU
quota and memory limit (``/sys/fs/cgroup``, v2 or v1: a container sees the host's /proc). On a GPU
one job: steps share the device in one process. Where the measurements are unavailable (not Linux)
it runs one step at a time.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

WORKER_MEMORY_BYTES = 5 * 1024**3 // 2  # peak RSS measured 2026-11-30: 1.4-1.6 GB (demo), 2.4 GB (Lite0 at 224 px)
IDLE_SHARE = 0.75  # a CPU counts as free when at least this share of it was idle during the sample
SAMPLE_S = 0.3
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class JobsChoice:
    """The number of steps to compute at once, and the measurements behind it (printed to the user)."""

    jobs: int
    reason: str


def _cpu_times(stat: str) -> tuple[int, int, int] | None:
    """(idle + iowait ticks, all ticks, number of CPUs) from the text of ``/proc/stat``."""
    lines = stat.splitlines()
    total_line = next((ln for ln in lines if ln.startswith("cpu ")), None)
    if total_line is None:
        return None
    ticks = [int(x) for x in total_line.split()[1:]]
    n_cpus = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return idle, sum(ticks[:8]), n_cpus  # user..steal (guest time is already inside user)


def idle_cpus_between(before: str, after: str) -> float | None:
    """CPUs' worth of idle time between two ``/proc/stat`` snapshots (e.g. 1.9 of 2), None if unreadable."""
    a, b = _cpu_times(before), _cpu_times(after)
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * b[2]


def available_memory(meminfo: str) -> int | None:
    """``MemAvailable`` in bytes from the text of ``/proc/meminfo``."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def choose_jobs(cpus: int, idle_cpus: float | None, mem_available: int | None, device: str) -> JobsChoice:
    """The ``auto`` rule on given measurements (pure: tests feed it hand-made ones)."""
    if device.startswith("cuda"):
        return JobsChoice(1, "a GPU: steps share it in one process")
    if idle_cpus is None:
        return JobsChoice(1, "idle CPUs could not be measured here")
    free = int(math.floor(idle_cpus + (1 - IDLE_SHARE) + 1e-9))
    jobs = max(1, min(cpus, free))
    reason = f"{idle_cpus:.1f} of {cpus} CPUs idle"
    if mem_available is not None:
        by_memory = max(1, mem_available // WORKER_MEMORY_BYTES)
        if by_memory < jobs:
            jobs = int(by_memory)
        reason += f", {mem_available / 1024**3:.1f} GB available ({WORKER_MEMORY_BYTES / 1024**3:.1f} GB per worker)"
    return JobsChoice(jobs, reason)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of the cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None without one."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" or not period else int(quota) / int(period)
    quota_v1, period_v1 = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota_v1 is None or period_v1 is None or int(quota_v1) <= 0:
        return None
    return int(quota_v1) / int(period_v1)


def cgroup_memory_available(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the cgroup may still use (limit - usage; v2 ``memory.max``, v1 ``memory.limit_in_bytes``); None
    without a limit (v1 writes "no limit" as a number near 2^63)."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read(root / limit_file), _read(root / usage_file)
        if limit is None or usage is None:
            continue
        if limit == "max" or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - int(usage))
    return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, within its cgroup's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def auto_jobs(device: str, sample_s: float = SAMPLE_S) -> JobsChoice:
    """Measure the machine now and apply :func:`choose_jobs`."""
    stat, meminfo = Path("/proc/stat"), Path("/proc/meminfo")
    idle = mem = None
    try:
        before = stat.read_text()
        time.sleep(sample_s)
        idle = idle_cpus_between(before, stat.read_text())
        mem = available_memory(meminfo.read_text())
        in_cgroup = cgroup_memory_available()
        if in_cgroup is not None:
            mem = in_cgroup if mem is None else min(mem, in_cgroup)
        cpus = usable_cpus()
    except (OSError, ValueError, IndexError):
        return choose_jobs(1, None, None, device)
    choice = choose_jobs(cpus, idle, mem, device)
    if choice.jobs > 1 and (why := _no_worker_queue()):
        return JobsChoice(1, f"{choice.reason}, but {why}")
    return choice


def _no_worker_queue() -> str | None:
    """Why worker processes cannot report back here (no POSIX semaphores, e.g. a container without
    /dev/shm), or None when they can."""
    import multiprocessing

    try:
        multiprocessing.get_context("spawn").Queue().close()
    except (OSError, ImportError) as exc:
        return f"worker processes cannot share a queue here ({type(exc).__name__}: {exc})"
    return None
