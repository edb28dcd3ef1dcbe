"""The machine side of the scoring-speed benchmark: CPU facts, library versions, load, matmul peaks."""

from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("scoring_speed")

MATMUL_SIZES = (2048, 4096)
MATMUL_REPS = 3
MATMUL_MIN_SECONDS = 1.0


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(cpuinfo.split())
    return {
        "cpu_model": _lscpu_field("Model name") or platform.processor(),
        "cpus": os.cpu_count(),
        "cores_per_socket": _lscpu_field("Core(s) per socket"),
        "threads_per_core": _lscpu_field("Thread(s) per core"),
        "hypervisor": _lscpu_field("Hypervisor vendor"),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> float:
    """1-minute load average; other work on the machine skews every figure of the run."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_busy_seconds() -> float:
    """CPU-seconds all processes have been busy since boot (/proc/stat; NaN where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds this process (all its threads) has used."""
    t = os.times()
    return t.user + t.system


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def timed_with_load(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(fn(), wall seconds, other load): other load is the CPU-seconds per second that *other* processes used
    meanwhile (0 on a quiet machine; 1 means a whole core was taken from the measurement)."""
    busy, own, t0 = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    other = (cpu_busy_seconds() - busy) - (own_cpu_seconds() - own)
    return value, seconds, max(other, 0.0) / seconds


def _lscpu_field(name: str) -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "ray", "numpy", "hardfocus"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def inductor_cache() -> dict:
    """Where torch.compile keeps its compiled kernels, and whether anything is there yet (a warm cache
    makes compiling much faster)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        path = Path(cache_dir())
    except Exception:  # a private torch API: tolerate its moving
        return {"path": None, "warm": None}
    return {"path": str(path), "warm": path.is_dir() and any(path.iterdir())}


def matmul_gflops(dtype: torch.dtype, n: int, reps: int, min_seconds: float = MATMUL_MIN_SECONDS) -> float:
    """GFLOP/s of the fastest (n x n) @ (n x n) matmul of at least ``reps`` timed ones, after one warm-up.

    Fast matmuls repeat until ``min_seconds`` have passed, so a short burst of other work does not set the peak.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=out)
    best, spent, done = math.inf, 0.0, 0
    while done < reps or spent < min_seconds:
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        elapsed = time.perf_counter() - t0
        best, spent, done = min(best, elapsed), spent + elapsed, done + 1
    return 2 * n**3 / best / 1e9


def matmul_peak(dtype: torch.dtype) -> dict:
    by_size = {n: matmul_gflops(dtype, n, MATMUL_REPS) for n in MATMUL_SIZES}
    log.info("%s matmul: %s", dtype, ", ".join(f"{n}: {g:.0f} GFLOP/s" for n, g in by_size.items()))
    return {"gflops": max(by_size.values()), "by_size": by_size}


def matmul_peaks() -> dict[str, dict]:
    return {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}


def combine_peaks(start: dict[str, dict], end: dict[str, dict]) -> dict:
    """The peak of each dtype is the better of its two measurements (before and after the arms)."""
    fp32 = max(start["fp32"]["gflops"], end["fp32"]["gflops"])
    bf16 = max(start["bf16"]["gflops"], end["bf16"]["gflops"])
    return {
        "start": start, "end": end, "fp32_peak": fp32, "bf16_peak": bf16, "bf16_over_fp32": bf16 / fp32,
        "sizes": list(MATMUL_SIZES), "reps": MATMUL_REPS, "min_seconds": MATMUL_MIN_SECONDS,
    }
