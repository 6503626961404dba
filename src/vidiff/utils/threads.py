"""The default CPU thread count: the cores that are idle now, not every core.

PyTorch's CPU kernels split each operation across their threads and wait for the slowest one. When another process
keeps one of the cores busy, the thread that shares that core gets a slice of it only every few milliseconds, and every
one of the thousands of parallel regions in a sampling run waits for it: on a 2-core machine with one core loaded, two
threads made generation 30x slower than one (``benchmarks/threads_under_load.py`` measures it). So the default is the
number of cores this process may use minus the ones that were busy over a short look at ``/proc/stat``, at least one.
"""

from __future__ import annotations

import os
import time

SAMPLE_SECONDS = 0.1  # long enough to see a busy core, short enough not to be noticed before a run
BUSY_THRESHOLD = 0.5  # a core busy more than half of the sample counts as taken


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cpu_times() -> dict[str, tuple[int, int]] | None:
    """``{cpuN: (busy, total)}`` jiffies from /proc/stat, or None where it cannot be read (not Linux)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name != "cpu") or len(fields) < 5:
            continue
        values = [int(v) for v in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        times[name] = (sum(values) - idle, sum(values))
    return times


def busy_cores(seconds: float = SAMPLE_SECONDS, cores: set[int] | None = None) -> int | None:
    """How many of ``cores`` (default: this process's) another process kept busy over the next ``seconds``.

    This process sleeps meanwhile, so its own work is not counted. None where /proc/stat is not available.
    """
    if cores is None:
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times() or {}
    busy = 0
    for name, (b0, t0) in before.items():
        if cores is not None and int(name[3:]) not in cores:
            continue
        b1, t1 = after.get(name, (b0, t0))
        if t1 > t0 and (b1 - b0) / (t1 - t0) > BUSY_THRESHOLD:
            busy += 1
    return busy


def default_threads() -> int:
    """Threads for torch's CPU kernels: the usable cores that are idle now (at least one)."""
    cores = usable_cores()
    if cores == 1:
        return 1
    busy = busy_cores()
    if busy is None:  # no way to look: leave a core for the rest of the machine
        return max(1, cores - 1)
    return max(1, cores - busy)
