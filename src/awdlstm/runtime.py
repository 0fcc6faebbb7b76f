"""Device, precision and ranks: decided once, then passed to the loop, which never
branches on the device.

Ranks come from the environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR/PORT). With more than one, ``make_runtime`` joins the process
group (NCCL on CUDA, Gloo on the CPU) and puts each process on its ``LOCAL_RANK`` GPU; the
Runtime then offers the few collectives training needs: an agreed flag, a sum, a barrier and
a gather of picklable values.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .config import TrainConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    scaler: torch.amp.GradScaler = field(init=False)
    owns_group: bool = False
    """True when make_runtime started the process group (and ``close`` ends it)."""

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def is_main(self) -> bool:
        """Only this process logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def agree(self, *flags: int) -> list[int]:
        """Each flag's largest value over all ranks (one small all_reduce); the flags as
        they are in a single process. Every rank must call it at the same point."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor(flags, dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all ranks, in place (a no-op in a single process)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable; tensors on the CPU), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self, *, wait: bool = False) -> None:
        """Leave the process group this Runtime joined; with ``wait``, once every rank is
        here (after an error, without waiting: a rank that waited on the others could hang)."""
        if self.owns_group and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()
        self.owns_group = False
        self.world_size = 1  # no more collectives; the rank stays (only rank 0 writes)

    def autocast(self):
        """Mixed precision for the forward pass; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])


def pick_device(name: str | None) -> torch.device:
    """auto (CUDA when there is one), cpu, cuda or cuda:N, checked; changes nothing in the
    process (loading a model for inference goes through here)."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is visible; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def inference_runtime(cfg: TrainConfig, device: str | None = None) -> Runtime:
    """A Runtime for evaluation in the caller's process: the device and precision, and no
    process-wide setting changed (threads, cuDNN flags, malloc are left as they are)."""
    dev = pick_device(device or cfg.device)
    return Runtime(dev, _check_precision(cfg.precision, dev))


def _check_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and precision != "fp32":
        # On the AVX2 CPU we develop on, oneDNN has no bf16 LSTM ("could not create a primitive
        # descriptor") and without oneDNN a bf16 step is much slower than fp32 (benchmarks/README.md).
        raise ConfigError(f"train.precision={precision} is for CUDA; use fp32 on the CPU")
    return precision


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def env_ranks() -> Ranks:
    """The ranks torchrun put in the environment; a clear error when they make no sense."""
    values = {}
    for name in _RANK_VARS:
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"the environment variable {name}={raw!r} is not an integer; "
                              "launch data-parallel training with torchrun") from None
    world = values.get("WORLD_SIZE", 1)
    rank = values.get("RANK", 0)
    local_world = values.get("LOCAL_WORLD_SIZE", world)
    local_rank = values.get("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(1, local_world):
        raise ConfigError(f"RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world} are not a valid rank set; "
                          "launch data-parallel training with torchrun")
    return Ranks(rank, world, local_rank, local_world)


def rank_env_names() -> tuple[str, ...]:
    """The variables that make a process a rank of a torchrun job (a sweep's runs drop them)."""
    return (*_RANK_VARS, "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "GROUP_WORLD_SIZE")


def make_runtime(cfg: TrainConfig) -> Runtime:
    """The training process's Runtime: also sets the process's thread count and lets cuDNN
    pick its fastest kernels (training owns its process; inference uses inference_runtime).
    Under torchrun with several ranks it joins the process group: NCCL on CUDA (each rank
    on its LOCAL_RANK GPU), Gloo on the CPU."""
    ranks = env_ranks()
    device = pick_device(cfg.device)
    if ranks.world_size > 1 and device.type == "cuda" and device.index is None:
        if ranks.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {ranks.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                              "start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", ranks.local_rank)
    precision = _check_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    torch.set_num_threads(cfg.threads or _default_threads(ranks.local_world_size))
    runtime = Runtime(device, precision, ranks.rank, ranks.world_size)
    if ranks.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        except ValueError as err:  # MASTER_ADDR or MASTER_PORT missing: not started by torchrun
            raise ConfigError(f"WORLD_SIZE is {ranks.world_size} but the process group cannot start ({err}); "
                              "launch data-parallel training with torchrun") from None
        runtime.owns_group = True
    return runtime


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for the next allocation.

    PyTorch allocates every CPU tensor with malloc and frees it when the last reference
    goes. By default glibc serves a large block with mmap and hands it back to the kernel on
    free, so the next step's tensors of the same size come back as fresh pages: ~100,000 page
    faults (~400 MB of zeroed pages) in each training step of the PTB model. With no mmap
    and no trimming, a step reuses the memory of the last one (what that gains is measured in
    benchmarks/README.md), the resident size staying at the peak it reaches anyway.
    Training calls it on the CPU (it changes malloc for the whole process, so the library's
    other entry points, such as ``LanguageModel.load``, leave it alone). Linux with glibc only; ``AWDLSTM_MALLOC=system`` leaves malloc as it is. Returns True
    when the setting is in effect.
    """
    global _kept
    if _kept:
        return True
    if os.environ.get("AWDLSTM_MALLOC", "") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    if _kept:
        log.debug("malloc: freed memory is kept for reuse (AWDLSTM_MALLOC=system to turn off)")
    return _kept


def available_cores() -> int:
    """The number of cores this process may run on: its CPU affinity where the OS has one
    (a container or ``taskset`` limited to fewer cores than the machine has), else all of
    the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _default_threads(processes: int = 1) -> int:
    """The cores we may run on shared among this machine's ``processes`` ranks, but no more
    threads than PyTorch's own choice (torchrun sets OMP_NUM_THREADS=1 for several ranks)."""
    return max(1, min(available_cores() // max(1, processes), torch.get_num_threads()))
