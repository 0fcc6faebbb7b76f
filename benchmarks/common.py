"""Measurement helpers shared by the benchmarks: clocks that also say how much CPU we got,
the machine and library description, FLOP counts and the matrix-multiply peak."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# A CPU run whose process got less than this fraction of its threads' worth of CPU time
# per wall-second is flagged as contended (another process, or the hypervisor, took cores).
CONTENDED_FRACTION = 0.75
# Another process using more than this many cores during a run also flags it.
OTHERS_CORES_LIMIT = 0.25


# ---------------------------------------------------------------------------- clocks


def _proc_stat() -> tuple[int, int] | None:
    """(busy, steal) jiffies over all CPUs of this machine, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    vals = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    # already counted in user, so it is left out of the sum.
    user, nice, system, idle, iowait, irq, softirq = vals[:7]
    steal = vals[7] if len(vals) > 7 else 0
    return user + nice + system + irq + softirq, steal


@dataclass
class Snapshot:
    wall: float
    cpu: float
    stat: tuple[int, int] | None

    @classmethod
    def now(cls) -> "Snapshot":
        return cls(time.perf_counter(), time.process_time(), _proc_stat())


@dataclass
class Interval:
    wall: float
    """Seconds of wall time."""
    cpu: float
    """CPU seconds of this process (all threads)."""
    others_cpu: float | None
    """CPU seconds that every other process on the machine used meanwhile (/proc/stat)."""
    steal: float | None
    """CPU seconds the hypervisor took from this virtual machine meanwhile."""

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> "Interval":
        others = steal = None
        if a.stat is not None and b.stat is not None:
            busy = (b.stat[0] - a.stat[0]) / CLK_TCK
            cpu = b.cpu - a.cpu
            others = max(0.0, busy - cpu)
            steal = (b.stat[1] - a.stat[1]) / CLK_TCK
        return cls(b.wall - a.wall, b.cpu - a.cpu, others, steal)

    @property
    def cpu_per_wall(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0

    def as_dict(self) -> dict:
        d = {"wall_s": round(self.wall, 4), "cpu_s": round(self.cpu, 4),
             "cpu_per_wall": round(self.cpu_per_wall, 3)}
        if self.others_cpu is not None:
            d["others_cores"] = round(self.others_cpu / self.wall, 3) if self.wall > 0 else 0.0
            d["steal_cores"] = round(self.steal / self.wall, 3) if self.wall > 0 else 0.0
        return d


def contention(intervals: list[Interval], threads: int, device: str, *, own_use: bool = True) -> dict:
    """Summarise the CPU we got over a contender's timed rounds and flag contention.

    On the CPU a process that keeps ``threads`` threads busy gets about ``threads``
    CPU-seconds per wall-second; much less means other processes (or the hypervisor) took
    the cores, and the timing is not the machine's speed. On CUDA the host mostly waits,
    so only other processes' use is looked at; likewise with ``own_use=False``, for work
    that is partly single-threaded by nature.
    """
    wall = sum(i.wall for i in intervals)
    cpu = sum(i.cpu for i in intervals)
    ratio = cpu / wall if wall > 0 else 0.0
    others = [i.others_cpu for i in intervals if i.others_cpu is not None]
    steal = [i.steal for i in intervals if i.steal is not None]
    others_cores = sum(others) / wall if others and wall > 0 else None
    steal_cores = sum(steal) / wall if steal and wall > 0 else None
    reasons = []
    if own_use and device == "cpu" and ratio < CONTENDED_FRACTION * threads:
        reasons.append(f"cpu_per_wall {ratio:.2f} < {CONTENDED_FRACTION} x {threads} threads")
    if others_cores is not None and others_cores > OTHERS_CORES_LIMIT:
        reasons.append(f"other processes used {others_cores:.2f} cores")
    if steal_cores is not None and steal_cores > OTHERS_CORES_LIMIT:
        reasons.append(f"hypervisor steal {steal_cores:.2f} cores")
    return {
        "cpu_per_wall": round(ratio, 3),
        "cpu_per_wall_rounds": [round(i.cpu_per_wall, 3) for i in intervals],
        "others_cores": None if others_cores is None else round(others_cores, 3),
        "steal_cores": None if steal_cores is None else round(steal_cores, 3),
        "contended": bool(reasons),
        "contended_why": reasons,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- statistics


def summarize_times(times: list[float], tokens_per_step: int, flops_per_step: float) -> dict:
    """ms/batch (median, with quartiles), tokens/s and GFLOP/s from the median step."""
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) >= 2 else [med, med, med]
    return {
        "steps": len(times),
        "ms_per_batch": round(1000 * med, 3),
        "ms_per_batch_q1": round(1000 * q[0], 3),
        "ms_per_batch_q3": round(1000 * q[2], 3),
        "ms_per_batch_min": round(1000 * min(times), 3),
        "tokens_per_s": round(tokens_per_step / med, 1),
        "tokens_per_s_mean": round(tokens_per_step * len(times) / sum(times), 1),
        "gflops_per_s": round(flops_per_step / med / 1e9, 2),
        "step_ms": [round(1000 * t, 3) for t in times],
    }


# ---------------------------------------------------------------------------- FLOPs


def lstm_lm_forward_flops(input_sizes: list[int], hidden_sizes: list[int], decoder_in: int,
                          vocab: int, tokens: int) -> float:
    """Matrix-multiply FLOPs of one forward pass over ``tokens`` (= T * B) positions.

    Each LSTM layer does x_t W_ih^T (in -> 4h) and h_{t-1} W_hh^T (h -> 4h) per position;
    the decoder does h W_dec^T (E -> V). A product of (m x k) by (k x n) counts 2 m n k;
    element-wise gate arithmetic, the embedding lookup and the softmax are not counted.
    """
    per_token = sum(2 * 4 * h * (i + h) for i, h in zip(input_sizes, hidden_sizes))
    per_token += 2 * decoder_in * vocab
    return float(per_token) * tokens


def train_flops(forward: float) -> float:
    """Forward plus backward, the backward counted as twice the forward."""
    return 3.0 * forward


# ---------------------------------------------------------------------------- peak


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> dict:
    """GFLOP/s of a large square torch.mm: best and median of ``reps`` timed products."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.mm(a, b)  # warm-up (library initialisation, thread pool start)
    sync(device)
    times, snaps = [], [Snapshot.now()]
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        times.append(time.perf_counter() - t0)
    snaps.append(Snapshot.now())
    flops = 2.0 * n ** 3
    iv = Interval.between(*snaps)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "n": n,
        "reps": reps,
        "gflops_per_s_best": round(flops / min(times) / 1e9, 2),
        "gflops_per_s_median": round(flops / statistics.median(times) / 1e9, 2),
        **iv.as_dict(),
    }


# ---------------------------------------------------------------------------- memory


def max_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def hwm_rss_mib() -> float | None:
    """Peak RSS since the process started or since the last ``reset_peak_rss``."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Release freed heap to the system and reset the kernel's peak-RSS mark to the
    current RSS (Linux >= 4.0: writing 5 to /proc/self/clear_refs). False if unsupported."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


# ---------------------------------------------------------------------------- description


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-instruction flags that decide CPU matmul speed (AVX-512, AMX, bf16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                keep = ("avx", "amx", "fma", "f16c", "bf16", "vnni")
                return sorted(f for f in flags if any(k in f for k in keep))
    except OSError:
        pass
    return []


def hardware(device: torch.device) -> dict:
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count()
    info = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": allowed,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": _cpu_capability(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "mkl_available": torch.backends.mkl.is_available(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_gib": _mem_total_gib(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_count=torch.cuda.device_count(),
            cudnn_enabled=torch.backends.cudnn.enabled,
        )
    else:
        info["gpu_name"] = None
    return info


def _cpu_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        return None


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def thread_env() -> dict:
    """Environment variables that change how the CPU thread pools behave."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
            "OMP_PROC_BIND", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA")
    return {k: os.environ.get(k) for k in keys}


def versions() -> dict:
    import numpy

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        from importlib.metadata import version

        out["awdlstm"] = version("awdlstm")
    except Exception:
        out["awdlstm"] = None
    try:
        import fastai

        out["fastai"] = fastai.__version__
    except Exception:
        out["fastai"] = None
    return out


def git_commit(repo: Path) -> str | None:
    """The checked-out commit (read from .git, no git command), or None."""
    head = repo / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            path = repo / ".git" / ref[5:]
            if path.is_file():
                return path.read_text().strip()
            packed = repo / ".git" / "packed-refs"
            for line in packed.read_text().splitlines():
                if line.endswith(ref[5:]):
                    return line.split()[0]
            return None
        return ref
    except OSError:
        return None
