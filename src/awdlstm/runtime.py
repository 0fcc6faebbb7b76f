"""Device, precision and ranks: decided once, then passed to the loop, which never
branches on the device."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
from dataclasses import dataclass, field

import torch

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

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def is_main(self) -> bool:
        """Only this process logs, shows progress and writes files."""
        return self.rank == 0

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


def make_runtime(cfg: TrainConfig) -> Runtime:
    """The training process's Runtime: also sets the process's thread count and lets cuDNN
    pick its fastest kernels (training owns its process; inference uses inference_runtime)."""
    device = pick_device(cfg.device)
    precision = _check_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.set_num_threads(cfg.threads or _default_threads())
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Runtime(device, precision, rank, world)


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


def _default_threads() -> int:
    """One thread per core we may run on, but no more than PyTorch's own choice."""
    return max(1, min(available_cores(), torch.get_num_threads()))
