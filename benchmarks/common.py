"""What every benchmark shares: clocks that also say how much CPU we got, the machine and
library description, FLOP counts, the peak a step is compared with, and ``write_result``,
the one function that writes a result file.

A new benchmark ``benchmarks/NAME.py`` (run as ``python -m benchmarks.NAME``) times its work
and ends with::

    from .common import write_result
    path = write_result("NAME", {"figures": ...}, config=cfg.to_dict(), device=device, out=args.out)

See ``write_result`` and benchmarks/README.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

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
    def now(cls) -> Snapshot:
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
    def between(cls, a: Snapshot, b: Snapshot) -> Interval:
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


def _best_of(fn, reps: int, device: torch.device, min_seconds: float = 0.002) -> tuple[float, float]:
    """(best, median) seconds per call of ``fn`` over ``reps`` timed repetitions, after one
    untimed call; a repetition calls ``fn`` often enough to last ``min_seconds`` (so the
    clock's resolution does not decide a small kernel's speed)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    inner = min(1000, max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-9))))
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return min(times), statistics.median(times)


def _kernel_row(name: str, flops: float, fn, reps: int, device: torch.device) -> dict:
    row: dict = {"kernel": name, "gflop": round(flops / 1e9, 6)}
    try:
        best, med = _best_of(fn, reps, device)
        row.update(gflops_per_s_best=round(flops / best / 1e9, 2), gflops_per_s_median=round(flops / med / 1e9, 2))
    except Exception as err:  # a precision the device's kernels lack (bf16 LSTM on an AVX2 CPU)
        text = str(err).strip()
        row["error"] = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]
    return row


def step_gemms(input_sizes: list[int], hidden_sizes: list[int], decoder_in: int, vocab: int, bptt: int,
               batch_sizes: list[int]) -> list[tuple[int, int, int]]:
    """The (m, k, n) matrix products a language-model step runs, for each batch size: every
    layer's input projection (T*B, in) x (in, 4H), its recurrent product (B, H) x (H, 4H) at
    each time step, and the decoder (T*B, E) x (E, V)."""
    shapes = set()
    for b in batch_sizes:
        for i, h in zip(input_sizes, hidden_sizes):
            shapes.add((bptt * b, i, 4 * h))
            shapes.add((b, h, 4 * h))
        shapes.add((bptt * b, decoder_in, vocab))
    return sorted(shapes)


def step_lstms(input_sizes: list[int], hidden_sizes: list[int], bptt: int,
               phases: dict[str, int]) -> list[tuple[str, int, int, int, int]]:
    """(phase, T, B, in, H) of every distinct LSTM layer call, per phase and its batch size."""
    return sorted({(phase, bptt, b, i, h) for phase, b in phases.items() for i, h in zip(input_sizes, hidden_sizes)})


def measured_peak(device: torch.device, dtype: torch.dtype, gemms: list[tuple[int, int, int]],
                  lstms: list[tuple[str, int, int, int, int]], reps: int) -> dict:
    """The best FLOP/s that the kernels a step uses reach on their own, at the step's shapes.

    Times each matrix product of ``gemms`` (``torch.mm``, 2mnk FLOPs) and the fused LSTM op
    (``nn.LSTM``, the op our layer calls: oneDNN on the CPU, cuDNN on a GPU) at each shape of
    ``lstms``: forward and backward for ``train`` (3 x the forward's 2 * 4H(in + H) per
    position), a no-grad forward for ``eval``. ``gflops_per_s`` is the best of them all (each
    kernel's best repetition): a step built of these kernels cannot be faster on average
    unless it runs a kernel faster than it ran here, which ``raise_peak`` records. A kernel
    that fails (a precision the CPU's LSTM lacks) is listed with its error.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    kernels: list[dict] = []
    snaps = [Snapshot.now()]
    for m, k, n in gemms:
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        kernels.append(_kernel_row(f"mm ({m}, {k}) x ({k}, {n})", 2.0 * m * n * k,
                                   lambda: torch.mm(a, b, out=out), reps, device))
    for phase, t, b, i, h in lstms:
        torch.manual_seed(0)
        lstm = nn.LSTM(i, h).to(device=device, dtype=dtype)
        x = torch.randn(t, b, i, device=device, dtype=dtype, requires_grad=phase == "train")
        fwd = 2.0 * 4 * h * (i + h) * t * b

        def train_fn():
            y, _ = lstm(x)
            y.sum().backward()

        @torch.no_grad()
        def eval_fn():
            lstm(x)

        kernels.append(_kernel_row(f"lstm {phase} T={t} B={b} {i}->{h}", (3 if phase == "train" else 1) * fwd,
                                   train_fn if phase == "train" else eval_fn, max(1, min(reps, 3)), device))
    snaps.append(Snapshot.now())
    ok = [r for r in kernels if "gflops_per_s_best" in r]
    top = max(ok, key=lambda r: r["gflops_per_s_best"]) if ok else None
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "what": "measured: the best FLOP/s of the step's own kernels at the step's shapes (torch.mm, nn.LSTM)",
        "gflops_per_s": top["gflops_per_s_best"] if top else None,
        "kernel": top["kernel"] if top else None,
        "raised": None,
        "reps": reps,
        "kernels": kernels,
        **Interval.between(*snaps).as_dict(),
    }


def raise_peak(peak: dict, gflops_per_s: float, what: str) -> bool:
    """If ``what`` (a timed step) reached more than the measured peak, make that the peak
    and say so in ``peak["raised"]``; True when it did. A fraction of the peak is then never
    above 1, and the report shows that the kernels alone did not reach what the step did."""
    if peak.get("gflops_per_s") is None or gflops_per_s <= peak["gflops_per_s"]:
        return False
    peak["raised"] = {"from": peak["gflops_per_s"], "from_kernel": peak["kernel"], "to": gflops_per_s, "by": what}
    peak["gflops_per_s"], peak["kernel"] = gflops_per_s, what
    return True


# Single-precision FLOPs per cycle of one FMA unit: a fused multiply-add on every lane.
FMA_FLOPS_PER_CYCLE = {"AVX-512 FMA": 32, "AVX2 FMA": 16}


def theoretical_peak(threads: int, fma_units: int = 2) -> dict:
    """The fp32 peak of the CPU cores the run uses, from its vector instructions:
    cores x frequency x FMA units x FLOPs per cycle per unit (AVX-512: 16 lanes x 2 = 32,
    AVX2: 8 x 2 = 16). The unit count is not visible from software: 2 per core (most x86
    cores since 2013) unless ``fma_units`` says otherwise. The frequency is cpufreq's
    maximum where the kernel exposes it, else the clock /proc/cpuinfo reports. Each thread
    counts as one core, up to the physical cores (threads sharing a core share its units)."""
    flags = set(_all_cpu_flags())
    isa = "AVX-512 FMA" if {"avx512f", "fma"} <= flags else "AVX2 FMA" if {"avx2", "fma"} <= flags else None
    out: dict = {"what": "theoretical: cores x frequency x FMA units x fp32 FLOPs per cycle per unit",
                 "dtype": "float32", "isa": isa, "fma_units_per_core": fma_units,
                 "fma_units_source": "assumed (not visible from software; --fma-units to change)"}
    if isa is None:
        return {**out, "gflops_per_s": None, "why_none": "no AVX2/AVX-512 FMA in the CPU flags"}
    ghz, source = _cpu_ghz()
    if ghz is None:
        return {**out, "gflops_per_s": None, "why_none": "no CPU frequency in cpufreq or /proc/cpuinfo"}
    cores = min(threads, _physical_cores())
    per_cycle = FMA_FLOPS_PER_CYCLE[isa]
    out.update(cores=cores, ghz=round(ghz, 3), frequency_source=source, flops_per_cycle_per_unit=per_cycle,
               gflops_per_s=round(cores * ghz * fma_units * per_cycle, 1))
    return out


def _all_cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def _cpu_ghz() -> tuple[float | None, str]:
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000, "/proc/cpuinfo cpu MHz (the clock when read)"
    except (OSError, ValueError):
        pass
    return None, ""


def _physical_cores() -> int:
    """Allowed CPUs divided by hardware threads per core (/proc/cpuinfo siblings / cpu cores)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    siblings = cores = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("siblings"):
                siblings = int(line.split(":", 1)[1])
            elif line.startswith("cpu cores"):
                cores = int(line.split(":", 1)[1])
            if siblings and cores:
                break
    except (OSError, ValueError):
        pass
    per_core = max(1, siblings // cores) if siblings and cores else 1
    return max(1, allowed // per_core)


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


def git_commit(repo: Path = REPO) -> str | None:
    """The checked-out commit (``git rev-parse HEAD``), with ``+dirty`` when tracked files
    have uncommitted changes; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------- the result file

METADATA = ("schema", "kind", "created", "seconds", "command", "git_commit", "hardware", "versions",
            "thread_env", "config")


def write_result(kind: str, figures: dict, *, config: dict | None, device: torch.device | str = "cpu",
                 out: Path | str | None = None, tag: str | None = None, started: dt.datetime | None = None,
                 command: str | None = None) -> Path:
    """Write one benchmark's result file and return its path.

    The file ``<out>/<YYYYmmdd-HHMMSS>_<tag>.json`` (``out`` default benchmarks/results,
    ``tag`` default ``kind``) holds ``schema``, ``kind``, ``created`` (``started``, default
    now), ``seconds`` (since ``started`` when given), ``command`` (default: ``python -m
    benchmarks.<script> <its arguments>``), ``git_commit``, ``hardware`` (of ``device``),
    ``versions``, ``thread_env``, ``config`` (the resolved ``Config.to_dict()``, or None
    where the benchmark has no model config) and then every key of ``figures`` at the top
    level (they may not reuse those names). Non-finite floats are written as null, paths
    and other objects as strings. An existing file is never overwritten.
    """
    clash = sorted(set(figures) & set(METADATA))
    if clash:
        raise ValueError(f"figures may not use the result file's own keys: {', '.join(clash)}")
    now = dt.datetime.now().astimezone()
    created = started or now
    if command is None:
        command = " ".join([f"python -m benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]])
    device = torch.device(device)
    record = {
        "schema": 2,
        "kind": kind,
        "created": created.isoformat(timespec="seconds"),
        "seconds": round((now - created).total_seconds(), 1) if started else None,
        "command": command,
        "git_commit": git_commit(),
        "hardware": hardware(device),
        "versions": versions(),
        "thread_env": thread_env(),
        "config": config,
        **figures,
    }
    folder = Path(out) if out is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{created.strftime('%Y%m%d-%H%M%S')}_{tag or kind}"
    path = folder / f"{stem}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_plain(record), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _plain(value):
    """``value`` as JSON can hold it: non-finite floats None, tensors numbers or lists,
    anything else unknown its string."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    return str(value)
