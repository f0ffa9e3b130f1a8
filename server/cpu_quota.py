"""How many cores this process may use, and the onnxruntime threads that fit in them.

    usable cores = min(CPUs in the affinity mask, ceil(cgroup CPU quota))

onnxruntime sizes its intra-op pool from the host's cores; in a container limited to two
CPUs on a 64-core host that is 64 threads time-sliced onto two cores. The quota is read from
cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000") or cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: no quota).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    """The cores this process may use, and where the figure comes from."""

    affinity: int  # CPUs in the scheduler's affinity mask
    quota: float | None  # cgroup CPU quota in cores; None: no quota

    @property
    def cores(self) -> int:
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.quota)))

    def describe(self) -> str:
        quota = "no CPU quota" if self.quota is None else f"CPU quota {self.quota:g}"
        return f"{self.cores} usable core(s) ({self.affinity} in the affinity mask, {quota})"


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in cores (v2 first, then v1); None when there is none or it is unreadable."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            return _ratio(parts[0], parts[1])
        return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)
    return None


def cpu_budget(root: Path = CGROUP_ROOT, affinity: int | None = None) -> CpuBudget:
    """This process's CpuBudget (``root`` and ``affinity`` are for tests)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return CpuBudget(affinity=affinity, quota=cgroup_quota(root))


@dataclass(frozen=True)
class ThreadPlan:
    """onnxruntime threads for one model: per instance, and whether its pools spin."""

    intra_op_threads: int
    inter_op_threads: int
    allow_spinning: bool
    reason: str


def plan_threads(cores: int, instances: int, *, intra_op_threads: int = 0,
                 inter_op_threads: int = 1, parallel: bool = False,
                 allow_spinning: bool | None = None) -> ThreadPlan:
    """Threads per instance; 0 intra-op threads means ``max(1, cores // instances)``.

    Spinning (a pool busy-waiting for work between runs) is on only while the model's threads
    (instances x (intra + inter in parallel mode)) leave at least one usable core free: a
    spinning thread takes a core the event loop and the codec need. Measured on 2 cores
    (docs-threads.md), 2 spinning threads cost throughput against 2 that sleep, so "fit
    exactly" is not enough. ``allow_spinning`` overrides the rule.
    """
    intra = intra_op_threads or max(1, cores // instances)
    inter = max(1, inter_op_threads)
    total = instances * (intra + (inter if parallel else 0))
    spin = total < cores if allow_spinning is None else allow_spinning
    why = ("set" if allow_spinning is not None
           else f"{total} thread(s) {'leave' if spin else 'leave no'} core of {cores} for the "
           "event loop")
    source = "set" if intra_op_threads else f"{cores} core(s) // {instances} instance(s)"
    return ThreadPlan(intra, inter, spin,
                      f"intra-op {intra} ({source}), spinning {'on' if spin else 'off'} ({why})")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
