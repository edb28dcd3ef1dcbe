"""What every benchmark shares: the machine it ran on, how much CPU other processes took meanwhile, timing
(in-process and of a child process), matmul peaks, and the report files (Markdown, JSON beside it).

Each benchmark keeps only what it measures and how it reads; this module is the rest. The machine is shared:
"other load" (CPU-seconds per second that *other* processes used while a figure was measured, from
/proc/stat less this process) goes with every figure, so a reader can tell a slow run from a busy machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

log = logging.getLogger("harness")

GB = 1e9  # reports give memory in GB (10^9 bytes)
# Above this many CPU-seconds per second taken by other processes, a figure is not reliable: on 2 cores one busy
# neighbour slowed a 2-thread fp32 run 8x.
CONTENDED_OTHER_LOAD = 0.2
QUIET_PROBE_S = 1.0
MATMUL_SIZES = (2048, 4096)
MATMUL_REPS = 3
MATMUL_MIN_SECONDS = 1.0


# ---- the machine -----------------------------------------------------------------------------


def machine_info() -> dict:
    """CPU facts, memory, torch's threads and the load average now."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(cpuinfo.split())
    lscpu = _lscpu()
    info = {
        "cpu_model": lscpu.get("Model name") or platform.processor(),
        "cpus": os.cpu_count(),
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    meminfo = Path("/proc/meminfo")
    for line in meminfo.read_text().splitlines() if meminfo.is_file() else []:
        if line.startswith(("MemTotal:", "MemAvailable:")):
            key, value = line.split(":")
            info[key.strip().lower() + "_gb"] = int(value.split()[0]) * 1024 / GB
    return info


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def library_versions(names: Sequence[str] = ("torch", "transformers", "ray", "numpy", "hardfocus")) -> dict[str, str]:
    from hardfocus.versions import library_versions as versions

    return versions(tuple(names))


def code_version(paths: Sequence[str] = ("hardfocus", "scoring", "selection", "training", "exporting", "pipelines")) -> str:
    """The commit measured, and which of ``paths`` differ from it (a figure of uncommitted code says so)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = _git(root, "rev-parse", "--short", "HEAD").strip()
        dirty = _git(root, "status", "--porcelain", *paths).split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


# ---- load and timing -------------------------------------------------------------------------


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
    """CPU-seconds this process (all its threads) has used; its children's are not in it."""
    t = os.times()
    return t.user + t.system


class TreeCpu:
    """CPU-seconds this process's descendants (Ray's processes, say) use while it runs, sampled every
    ``interval`` s from a thread: a descendant that starts meanwhile counts whole, one that ends loses at most
    its last interval."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._me, self._interval = psutil.Process(), interval
        self._cpu: dict[tuple[int, float], list[float]] = {}  # (pid, start time) -> [at first sight, latest]
        self._sample(born_before=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self, born_before: bool = False) -> None:
        import psutil

        for child in self._me.children(recursive=True):
            try:
                with child.oneshot():
                    key, times = (child.pid, child.create_time()), child.cpu_times()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            self._cpu.setdefault(key, [cpu if born_before else 0.0, cpu])[1] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def stop(self) -> float:
        """Stop sampling; the descendants' CPU-seconds since construction."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(last - first for first, last in self._cpu.values())


class OtherLoad:
    """CPU-seconds per second other processes use from construction to :meth:`rate` (0 on a quiet machine; 1
    means a whole core was taken from the measurement). ``tree``: this process's descendants are not "other"
    (a measured job that runs in worker processes, as Ray's does)."""

    def __init__(self, tree: bool = False) -> None:
        self.busy, self.own, self.t0 = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        self.tree = TreeCpu() if tree else None

    def rate(self, exclude_cpu_s: float = 0.0) -> float:
        """``exclude_cpu_s``: CPU-seconds of a measured child process, to leave out as well."""
        seconds = time.perf_counter() - self.t0
        if self.tree is not None:
            exclude_cpu_s += self.tree.stop()
        other = (cpu_busy_seconds() - self.busy) - (own_cpu_seconds() - self.own) - exclude_cpu_s
        return max(other, 0.0) / seconds if seconds > 0 else 0.0


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def timed_with_load(fn: Callable[[], object], tree: bool = False) -> tuple[object, float, float]:
    """(fn(), wall seconds, other load while it ran); ``tree``: see :class:`OtherLoad`."""
    meter, t0 = OtherLoad(tree), time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    return value, seconds, meter.rate()


def other_load_now(seconds: float = QUIET_PROBE_S) -> float:
    """Other processes' CPU-seconds per second, sampled over ``seconds`` while this process sleeps."""
    meter = OtherLoad()
    time.sleep(seconds)
    return meter.rate()


def wait_for_quiet(max_wait_s: float, threshold: float) -> float:
    """Wait (up to ``max_wait_s``) until other processes take at most ``threshold``; returns the seconds waited.

    With torch's threads on every core, work that shares the CPUs is not a bit slower but several times slower
    (the threads wait for each other at every parallel region), so a measurement starts on a quiet machine
    where it can."""
    t0 = time.perf_counter()
    while other_load_now() > threshold and time.perf_counter() - t0 < max_wait_s:
        pass
    waited = time.perf_counter() - t0
    if waited > 2 * QUIET_PROBE_S:
        log.info("waited %.0f s for other processes to leave the CPUs", waited)
    return waited


def run_measured(cmd: list[str], log_path: Path, mem_limit_bytes: float) -> dict:
    """Run ``cmd`` in a fresh process group: wall seconds, peak RSS (``ru_maxrss`` of that child from ``wait4``:
    the kernel's own high-water mark, not sampled), CPU seconds and other load; a watchdog kills it (its whole
    group) once the RSS of its process tree passes ``mem_limit_bytes`` (``oom`` in the result).

    ``ru_maxrss`` also counts the pages a forked child shared with this process before ``exec``: call it from
    a small process (a benchmark script), or the peak reads at least this process's own RSS."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    killed, done = threading.Event(), threading.Event()
    with open(log_path, "wb") as logf:
        meter = OtherLoad()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

        def watchdog() -> None:
            while not done.wait(0.05):
                if _tree_rss(proc.pid) > mem_limit_bytes:
                    killed.set()
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return

        thread = threading.Thread(target=watchdog, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        cpu = usage.ru_utime + usage.ru_stime
        other = meter.rate(exclude_cpu_s=cpu)
        done.set()
        thread.join()
        returncode = os.waitstatus_to_exitcode(status)
    return {
        "cmd": cmd, "returncode": returncode, "seconds": seconds, "peak_rss_gb": usage.ru_maxrss * 1024 / GB,
        "cpu_seconds": cpu, "other_load": other, "oom": killed.is_set() or returncode == -9,
        "log": str(log_path), "log_tail": log_path.read_text(errors="replace")[-1500:],
    }


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


# ---- matmul peaks ----------------------------------------------------------------------------


def matmul_gflops(dtype, n: int, reps: int, min_seconds: float = MATMUL_MIN_SECONDS) -> float:
    """GFLOP/s of the fastest (n x n) @ (n x n) matmul of at least ``reps`` timed ones, after one warm-up.

    Fast matmuls repeat until ``min_seconds`` have passed, so a short burst of other work does not set the peak.
    """
    import torch

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


def matmul_peaks() -> dict[str, dict]:
    """fp32 and bf16 matmul GFLOP/s: the best over :data:`MATMUL_SIZES`, and each size's."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        by_size = {n: matmul_gflops(dtype, n, MATMUL_REPS) for n in MATMUL_SIZES}
        log.info("%s matmul: %s", name, ", ".join(f"{n}: {g:.0f} GFLOP/s" for n, g in by_size.items()))
        peaks[name] = {"gflops": max(by_size.values()), "by_size": by_size}
    return peaks


def combine_peaks(start: dict[str, dict], end: dict[str, dict]) -> dict:
    """The peak of each dtype is the better of its two measurements (before and after the arms)."""
    fp32 = max(start["fp32"]["gflops"], end["fp32"]["gflops"])
    bf16 = max(start["bf16"]["gflops"], end["bf16"]["gflops"])
    return {
        "start": start, "end": end, "fp32_peak": fp32, "bf16_peak": bf16, "bf16_over_fp32": bf16 / fp32,
        "sizes": list(MATMUL_SIZES), "reps": MATMUL_REPS, "min_seconds": MATMUL_MIN_SECONDS,
    }


# ---- reports ---------------------------------------------------------------------------------


def command_line(script_argv: Sequence[str] | None = None) -> str:
    """The command as a user would type it again: ``python -m benchmarks.<name> <args>``."""
    script = Path(sys.argv[0])
    head = ["-m", f"benchmarks.{script.stem}"] if script.resolve().parent == Path(__file__).resolve().parent else [sys.argv[0]]
    return shlex.join(["python", *head, *(sys.argv[1:] if script_argv is None else script_argv)])


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]], align: str = "l") -> str:
    """A Markdown table of ``str(cell)``s. ``align``: a letter per column, ``l`` (left) or ``r`` (right), the last one
    standing for every column after it (``"lr"``: the first column left, the others right)."""
    align = align.ljust(len(header), align[-1])
    lines = [_table_row(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    return "\n".join(lines + [_table_row(row) for row in rows])


def _table_row(cells: Sequence[object]) -> str:
    return "".join(f"| {c} " if str(c) else "| " for c in cells) + "|"


def fmt(value: float | None, spec: str = "", missing: str = "n/a") -> str:
    """``value`` formatted by ``spec``; ``missing`` where it is None or NaN."""
    return missing if value is None or value != value else format(value, spec)


def met(flag: bool | None) -> str:
    """A target's verdict: met, not met, or not measured (None)."""
    return {True: "**met**", False: "**NOT met**", None: "not measured"}[flag]


def ratio(value: float | None, base: float | None, digits: int = 2) -> str:
    """``value / base`` as ``1.23x``; ``n/a`` where either is missing, NaN or the base is 0."""
    if value is None or base is None or value != value or base != base or base == 0:
        return "n/a"
    return f"{value / base:.{digits}f}x"


def load_cell(other_load: float | None) -> str:
    """An other-load figure for a table: ``n/a`` where unknown, flagged where above :data:`CONTENDED_OTHER_LOAD`."""
    return fmt(other_load, ".2f") + (" (contended)" if (other_load or 0) > CONTENDED_OTHER_LOAD else "")


def machine_lines(m: dict, versions: dict[str, str]) -> list[str]:
    """The machine as Markdown bullets: CPU, bf16 support, torch's threads and the other libraries' versions."""
    return [
        f"- CPU: {m['cpu_model']}, {m['cpus']} logical CPUs ({m['cores_per_socket']} cores/socket, "
        f"{m['threads_per_core']} thread/core), hypervisor: {m['hypervisor'] or 'none'}",
        f"- /proc/cpuinfo: avx512_bf16 {'yes' if m['avx512_bf16'] else 'no'}, amx_bf16 {'yes' if m['amx_bf16'] else 'no'}",
        f"- torch {m['torch']}, torch.get_num_threads() = {m['torch_threads']}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "torch"),
    ]


def write_report(out: Path, report: dict, markdown: str) -> None:
    """``out`` (Markdown) and the raw report as JSON beside it (numpy values as numbers, other objects as text)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    log.info("wrote %s and %s", out, out.with_suffix(".json"))


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)  # paths, dates, enums: as their text
