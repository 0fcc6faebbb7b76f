"""The machinery of ``benchmarks.run``: build the contenders, warm them up, time them in
interleaved rounds, and probe their peak memory in a child process each."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from awdlstm.config import Config
from awdlstm.data import batchify
from awdlstm.presets import get_preset
from awdlstm.errors import cause_of
from awdlstm.runtime import Runtime, keep_freed_memory

from .common import (
    Interval,
    Snapshot,
    contention,
    current_rss_mib,
    hwm_rss_mib,
    lstm_lm_forward_flops,
    max_rss_mib,
    reset_peak_rss,
    summarize_times,
    sync,
    train_flops,
)
from .contenders import Contender, FastAI, Ours, Plain, bench_config, fastai_available, make_batches, make_corpus

REPO = Path(__file__).resolve().parent.parent


def default_threads() -> int:
    """As training chooses (awdlstm.runtime): one per allowed core, at most torch's default."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    return max(1, min(allowed, torch.get_num_threads()))


def layer_sizes(cfg: Config) -> list[int]:
    m = cfg.model
    return [m.hidden_size] * (m.num_layers - 1) + [m.emb_size if m.tie_weights else m.hidden_size]


# ---------------------------------------------------------------------------- setup


class Setup:
    """Config, corpus, shared windows and the contenders, built the same way in the main
    process and in a memory probe."""

    def __init__(self, args: argparse.Namespace, only: str | None = None) -> None:
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as awdlstm.runtime.make_runtime
        # As training does on the CPU, unless --system-malloc; it applies to every contender.
        self.malloc = "system"
        if self.device.type == "cpu" and not args.system_malloc and keep_freed_memory():
            self.malloc = "freed memory kept (awdlstm.runtime.keep_freed_memory)"
        self.threads = args.threads or default_threads()
        torch.set_num_threads(self.threads)
        self.cfg = bench_config(get_preset(args.preset), args.batch_size, args.bptt, args.eval_batch_size,
                                self.threads, args.device, args.precision).validate()
        d = self.cfg.data
        self.corpus, self.data_source = make_corpus(self.cfg, args.data, args.warmup + args.steps,
                                                    args.warmup + args.eval_steps)
        self.vocab = len(self.corpus.vocab)
        self.notes: list[str] = []
        self.contenders: list[Contender] = []
        self.failures: dict[str, dict] = {}
        want = set(self.names()) if only is None else {only}

        def rt(precision: str) -> Runtime:
            return Runtime(self.device, precision)  # each contender its own GradScaler

        first: Ours | None = None
        if "ours" in want:
            first = Ours("ours", self.cfg, self.corpus, rt(args.precision))
            self.contenders.append(first)
            self.batches = first.batches
        else:
            torch.manual_seed(self.cfg.train.seed)
            train = batchify(self.corpus.train, d.batch_size, what="training").to(self.device)
            self.batches = make_batches(train, self.corpus.valid, d.eval_batch_size, d.bptt)
        if "plain" in want:
            self.contenders.append(Plain("plain", self.cfg, self.vocab, rt(args.precision), self.batches,
                                         layer_sizes(self.cfg)))
        if "fastai" in want:
            ok, why = fastai_available()
            if ok:
                try:
                    self.contenders.append(FastAI("fastai", self.cfg, self.vocab, rt(args.precision), self.batches))
                except Exception as err:
                    self.notes.append(f"fastai AWD_LSTM could not be built: {type(err).__name__}: {err}")
            else:
                self.notes.append(why)
        if "ours-fp32" in want:
            cfg32 = bench_config(self.cfg, None, None, None, self.threads, args.device, "fp32")
            self.contenders.append(Ours("ours-fp32", cfg32, self.corpus, rt("fp32"), self.batches))
        if "ours-no-onednn" in want:
            self.contenders.append(Ours("ours-no-onednn", self.cfg, self.corpus, rt(args.precision), self.batches,
                                        onednn=False))
        if "ours-compiled" in want:
            if args.compile_allow_rnn:
                from torch import _dynamo

                _dynamo.config.allow_rnn = True
            self.contenders.append(Ours("ours-compiled", self.cfg, self.corpus, rt(args.precision), self.batches,
                                        compile=True))

    def names(self) -> list[str]:
        a = self.args
        names = ["ours", "plain"]
        if a.fastai:
            names.append("fastai")
        if a.precision != "fp32":
            names.append("ours-fp32")
            if a.device == "cpu":
                # oneDNN's LSTM may have no reduced-precision kernel for this CPU; the
                # fallback path is timed too, so there is a bf16 number either way.
                names.append("ours-no-onednn")
        if a.compile:
            names.append("ours-compiled")
        return names

    def tokens(self, phase: str) -> int:
        b = self.batches
        return (b.batch_size if phase == "train" else b.eval_batch_size) * b.bptt

    def flops(self, c: Contender, phase: str) -> float:
        fwd = lstm_lm_forward_flops(c.input_sizes, c.hidden_sizes, c.decoder_in, self.vocab, self.tokens(phase))
        return train_flops(fwd) if phase == "train" else fwd


# ---------------------------------------------------------------------------- timing


class _Timeout(Exception):
    pass


def _run_step(c: Contender, phase: str, i: int, device: torch.device) -> float:
    t0 = time.perf_counter()
    (c.train_step if phase == "train" else c.eval_step)(i)
    sync(device)
    return time.perf_counter() - t0


def warm_up(setup: Setup, phase: str, compile_timeout: float) -> tuple[list[Contender], dict[str, dict]]:
    """Untimed steps for each contender; the compiled one under a time limit. Returns the
    contenders to time in this phase and, per contender, the first step's seconds (for the
    compiled model, its compilation).

    A contender that fails here (compilation, or a reduced precision the CPU's kernels do
    not support) is recorded in ``setup.failures`` and left out of this phase's timing (a
    compilation that timed out, of every later phase too); a failure of an fp32 eager
    contender is a bug and is raised.
    """
    info: dict[str, dict] = {}
    n = max(1, setup.args.warmup)
    active = []
    for c in list(setup.contenders):
        compiled = getattr(c, "compiled", False)
        may_fail = compiled or c.rt.precision != "fp32"
        old = None
        if compiled and hasattr(signal, "SIGALRM"):
            def _alarm(signum, frame):
                raise _Timeout()
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, compile_timeout)
        try:
            first = _run_step(c, phase, 0, setup.device)
            for i in range(1, n):
                _run_step(c, phase, i, setup.device)
            info[c.name] = {"first_step_s": round(first, 3)}
            active.append(c)
        except Exception as err:
            if cause_of(err, _Timeout) is None:
                if not may_fail:
                    raise
                text = str(err).strip()
                msg = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
                setup.failures.setdefault(c.name, {})[phase] = msg[:2000]
                print(f"  {c.name}: failed ({phase}): {msg[:300]}", flush=True)
                continue
            setup.contenders.remove(c)
            msg = f"compilation took over {compile_timeout:g} s; gave up"
            setup.failures.setdefault(c.name, {})[phase] = msg
            print(f"  {c.name}: {msg} ({phase})", flush=True)
        finally:
            if old is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
    return active, info


def timed_rounds(setup: Setup, phase: str, cs: list[Contender]) -> dict[str, dict]:
    """Interleave the contenders: each round every contender runs its share of steps, the
    starting contender rotating from round to round (A B / B A / A B ...), so a slow spell
    of the machine falls on all of them alike."""
    args = setup.args
    total = args.steps if phase == "train" else args.eval_steps
    rounds = min(args.rounds, total)
    per = [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]
    times: dict[str, list[float]] = {c.name: [] for c in cs}
    intervals: dict[str, list[Interval]] = {c.name: [] for c in cs}
    if not cs:
        return {}
    start = {c.name: max(1, args.warmup) for c in cs}
    for r in range(rounds):
        order = cs[r % len(cs):] + cs[:r % len(cs)]
        for c in order:
            a = Snapshot.now()
            for _ in range(per[r]):
                times[c.name].append(_run_step(c, phase, start[c.name], setup.device))
                start[c.name] += 1
            intervals[c.name].append(Interval.between(a, Snapshot.now()))
        print(f"  {phase} round {r + 1}/{rounds} done", flush=True)
    out = {}
    for c in cs:
        loss = float(c.last_loss.item()) if c.last_loss is not None else None
        res = summarize_times(times[c.name], setup.tokens(phase), setup.flops(c, phase))
        res.update(contention(intervals[c.name], setup.threads, setup.device.type))
        res["rounds"] = [iv.as_dict() for iv in intervals[c.name]]
        res["last_loss"] = loss
        res["loss_finite"] = loss is not None and math.isfinite(loss)
        res["label"] = c.label
        out[c.name] = res
    return out


# ---------------------------------------------------------------------------- memory


def memory_probe(args: argparse.Namespace) -> dict:
    """In a fresh process: build one contender, then run evaluation steps and training
    steps, and report how far the peak memory rose above what the built model held."""
    setup = Setup(args, only=args.memory_probe)
    if not setup.contenders:
        return {"error": " / ".join(setup.notes) or "not built"}
    c = setup.contenders[0]
    dev = setup.device
    params_mib = sum(p.numel() * p.element_size() for p in c.model.parameters()) / 2 ** 20
    n = max(2, min(args.warmup, 3))
    out: dict = {"params_mib": round(params_mib, 2), "steps_each": n}
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        for i in range(n):
            _run_step(c, "eval", i, dev)
        out["eval_peak_mib"] = round((torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20, 2)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        for i in range(n):
            _run_step(c, "train", i, dev)
        out["train_peak_mib"] = round((torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20, 2)
        out["what"] = "torch.cuda.max_memory_allocated above the allocation before the steps"
    elif reset_peak_rss():
        out["what"] = "rise of the peak RSS (VmHWM, reset before each phase) above the RSS before it"
        for phase in ("eval", "train"):
            gc.collect()
            reset_peak_rss()
            base = current_rss_mib() or 0.0
            out[f"rss_before_{phase}_mib"] = round(base, 1)
            for i in range(n):
                _run_step(c, phase, i, dev)
            out[f"{phase}_peak_mib"] = round((hwm_rss_mib() or 0.0) - base, 2)
    else:
        # ru_maxrss cannot be reset, so evaluation (the smaller) runs first; the training
        # figure is the peak over both, which training sets.
        base = max_rss_mib()
        out["rss_before_mib"] = round(current_rss_mib() or 0.0, 1)
        for i in range(n):
            _run_step(c, "eval", i, dev)
        out["eval_peak_mib"] = round(max_rss_mib() - base, 2)
        for i in range(n):
            _run_step(c, "train", i, dev)
        out["train_peak_mib"] = round(max_rss_mib() - base, 2)
        out["what"] = "rise of the process's peak RSS (ru_maxrss) over its peak after building"
    return out


def probe_memory(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    res = {}
    for name in names:
        if name == "ours-compiled":
            res[name] = {"skipped": "not probed (compilation in a child would take as long again)"}
            continue
        cmd = [sys.executable, "-m", "benchmarks.run", *probe_argv(args), "--memory-probe", name]
        print(f"  memory probe: {name}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY_PROBE ")]
        if proc.returncode != 0 or not line:
            res[name] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:500]}
        else:
            res[name] = json.loads(line[-1][len("MEMORY_PROBE "):])
    return res


def probe_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--preset", args.preset, "--steps", str(args.steps), "--eval-steps", str(args.eval_steps),
            "--warmup", str(args.warmup), "--device", args.device, "--precision", args.precision,
            "--threads", str(args.threads)]
    for flag, value in (("--batch-size", args.batch_size), ("--eval-batch-size", args.eval_batch_size),
                        ("--bptt", args.bptt), ("--data", args.data)):
        if value is not None:
            argv += [flag, str(value)]
    if args.system_malloc:
        argv.append("--system-malloc")
    return argv
