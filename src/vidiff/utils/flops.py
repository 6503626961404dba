"""Measuring compute: FLOP counts, a matmul peak to compare against, robust timings and peak memory.

Absolute times say little across machines; the ratio of achieved FLOP/s to the peak a plain large matmul reaches *on the
same machine, in the same run, in the same dtype* says how well a model uses the hardware.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "FlopCount",
    "PeakMemory",
    "Timing",
    "count_flops",
    "measure_matmul_peak",
    "peak_memory",
    "time_function",
]


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    seconds: float = 1.0,
    device: torch.device | str = "cpu",
    windows: int = 4,
) -> float:
    """FLOP/s of repeated ``n × n`` ``torch.matmul`` (2·n³ FLOPs each), after two warm-up calls.

    The time is split into ``windows`` windows and the best window's rate is returned, so a burst of competing load on a
    shared machine lowers the figure less. This is the practical peak for the current thread count and dtype; a model's
    achieved FLOP/s divided by it is its hardware utilisation.
    """
    if n < 1 or seconds <= 0 or windows < 1:
        raise ValueError(f"need n >= 1, seconds > 0 and windows >= 1, got n={n}, seconds={seconds}, windows={windows}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    best = 0.0
    with torch.inference_mode():
        for _ in range(2):
            torch.matmul(a, b)
        _sync(device)
        for _ in range(windows):
            iters, start = 0, time.perf_counter()
            while True:
                torch.matmul(a, b)
                iters += 1
                _sync(device)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / windows:
                    break
            best = max(best, 2.0 * n**3 * iters / elapsed)
    return best


@dataclass
class FlopCount:
    """Total FLOPs (a multiply-add counts 2) and the split by aten operator."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_formulas() -> dict[Any, Callable[..., int]]:
    # torch's registry covers the CUDA SDPA kernels but not the CPU flash kernel, which CPU attention dispatches to.
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_sdpa_flops} if op is not None else {}


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[FlopCount, Any]:
    """Run ``fn(*args, **kwargs)`` once under ``FlopCounterMode`` and return the count and ``fn``'s result.

    Counted: matrix products (mm/addmm/bmm/baddbmm, hence Linear and einsum/matmul), convolutions, and scaled dot-product
    attention (CUDA kernels and the CPU flash kernel). Not counted: element-wise ops, norms, softmax outside SDPA,
    interpolation. These are a few percent of a U-Net's arithmetic but can be a large share of its *time*.
    """
    with FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()) as mode:
        result = fn(*args, **kwargs)
    by_op = {str(op): int(n) for op, n in mode.get_flop_counts().get("Global", {}).items()}
    return FlopCount(total=int(mode.get_total_flops()), by_op=by_op), result


@dataclass
class Timing:
    """Wall-clock seconds of each timed repeat; ``median`` is the robust summary."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def time_function(
    fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: torch.device | str | None = None
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed (allocator, kernel selection, caches), then time ``repeats`` calls.

    On CUDA the device is synchronised around each call so the times cover the kernels, not just their launch.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return Timing(times)


# --------------------------------------------------------------------------------------------------------------------
# peak memory


def _read_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Linux ≥ 4.0 resets VmHWM (the RSS high-water mark) to the current RSS when "5" is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _read_status_kib("VmHWM") is not None


def _ru_maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


@dataclass
class PeakMemory:
    """Peak memory of a code section.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the caching allocator's reserve). CPU: the process's
    peak resident set size during the section, which includes everything already resident (weights, libraries).
    ``method`` says how it was measured; with ``ru_maxrss`` (no /proc) the peak is over the whole process lifetime, so a
    section that stays below an earlier peak reports that earlier peak.
    """

    device: str
    baseline_bytes: int = 0
    peak_bytes: int = 0
    method: str = ""

    @property
    def delta_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)


@contextlib.contextmanager
def peak_memory(device: torch.device | str = "cpu") -> Iterator[PeakMemory]:
    """Context manager filling a :class:`PeakMemory` for the enclosed block (fields are set when the block exits)."""
    dev = torch.device(device)
    stats = PeakMemory(device=str(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        stats.baseline_bytes = torch.cuda.memory_allocated(dev)
        stats.method = "torch.cuda.max_memory_allocated"
        yield stats
        torch.cuda.synchronize(dev)
        stats.peak_bytes = torch.cuda.max_memory_allocated(dev)
        return
    if dev.type != "cpu":
        raise ValueError(f"peak memory is measured for cpu and cuda devices, got {dev}")
    if _reset_rss_peak():
        stats.baseline_bytes = (_read_status_kib("VmRSS") or 0) * 1024
        stats.method = "VmHWM (reset via /proc/self/clear_refs)"
        yield stats
        stats.peak_bytes = (_read_status_kib("VmHWM") or 0) * 1024
        return
    stats.baseline_bytes = _ru_maxrss_bytes()
    stats.method = "ru_maxrss (process lifetime peak)"
    yield stats
    stats.peak_bytes = _ru_maxrss_bytes()

