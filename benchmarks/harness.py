"""The machinery of ``benchmarks.run`` (and ``benchmarks.concurrent``): the contenders, fed
the same windows of token ids, their setup, warm-up, timing in interleaved rounds, and a
peak-memory probe in a child process each.

What is timed: our model through the real ``Trainer.train_step``, a plain ``nn.LSTM``
stack (the ceiling), and fastai's ``AWD_LSTM`` when fastai is importable. Every contender
exposes ``train_step(i)`` and ``eval_step(i)``; neither synchronises the device (the caller
does, to time).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awdlstm.config import Config
from awdlstm.data import Corpus, Vocab, Window, batchify, load_corpus
from awdlstm.errors import cause_of
from awdlstm.model import detach_state
from awdlstm.optim import make_optimizer
from awdlstm.presets import get_preset
from awdlstm.regularize import activation_reg, temporal_activation_reg
from awdlstm.runtime import Runtime, keep_freed_memory
from awdlstm.train import Trainer

from .common import (
    REPO,
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

# Vocabulary sizes of the paper's corpora (used with synthetic token ids).
VOCAB_SIZES = {"ptb": 10000, "wikitext-2": 33278, "ptb-char": 50}


# ---------------------------------------------------------------------------- data


def synthetic_corpus(vocab_size: int, train_tokens: int, valid_tokens: int, seed: int = 0) -> Corpus:
    """Uniformly random token ids with the right vocabulary size. Speed depends on the
    shapes only, not on which words occur."""
    gen = torch.Generator().manual_seed(seed)
    words = ["<eos>", "<unk>"] + [f"w{i}" for i in range(2, vocab_size)]

    def ids(n: int) -> Tensor:
        return torch.randint(vocab_size, (n,), generator=gen, dtype=torch.long)

    return Corpus(Vocab(words), ids(train_tokens), ids(valid_tokens), ids(valid_tokens),
                  Path("<synthetic>"), {"train": 0, "valid": 0, "test": 0})


@dataclass
class Batches:
    """Fixed-length windows, shared by all contenders."""

    train: list[Window]
    """On the device (the Trainer keeps the training split there)."""
    eval: list[Window]
    """On the host, moved per window like ``evaluate`` does."""
    batch_size: int
    eval_batch_size: int
    bptt: int


def make_batches(train_data: Tensor, valid: Tensor, eval_batch_size: int, bptt: int) -> Batches:
    """train_data: the Trainer's batchified training split (device); valid: 1-D ids."""
    def windows(source: Tensor) -> list[Window]:
        out = []
        for i in range(0, source.size(0) - 1 - bptt + 1, bptt):
            out.append(Window(source[i:i + bptt], source[i + 1:i + 1 + bptt], 1.0, i + bptt))
        return out

    eval_source = batchify(valid, eval_batch_size, what="validation")
    return Batches(windows(train_data), windows(eval_source), train_data.size(1), eval_batch_size, bptt)


def tokens_needed(batch_size: int, bptt: int, windows: int) -> int:
    return (windows * bptt + 1) * batch_size


# ---------------------------------------------------------------------------- contenders


class Contender:
    name: str
    label: str
    """One line saying what this is."""
    model: nn.Module
    input_sizes: list[int]
    hidden_sizes: list[int]
    decoder_in: int

    def __init__(self, batches: Batches, runtime: Runtime) -> None:
        self.batches = batches
        self.rt = runtime
        self.eval_state = None
        self.last_loss: Tensor | None = None

    def train_step(self, i: int) -> None:
        raise NotImplementedError

    def eval_step(self, i: int) -> None:
        raise NotImplementedError

    def _train_window(self, i: int) -> Window:
        w = self.batches.train
        return w[i % len(w)]

    def _eval_window(self, i: int) -> tuple[Tensor, Tensor]:
        w = self.batches.eval[i % len(self.batches.eval)]
        dev = self.rt.device
        return w.inputs.to(dev, non_blocking=True), w.targets.to(dev, non_blocking=True)


class Ours(Contender):
    """awdlstm.model.AWDLSTM trained by the real ``Trainer.train_step`` (every regularizer,
    cross-entropy + AR + TAR, backward, clipping, SGD with the lr rescale, NT-ASGD hook),
    evaluated by the loop body of ``awdlstm.evaluate.evaluate``."""

    def __init__(self, name: str, cfg: Config, corpus: Corpus, runtime: Runtime,
                 batches: Batches | None = None, compile: bool = False, onednn: bool = True) -> None:
        run_dir = Path(tempfile.gettempdir()) / "awdlstm-bench-unused"  # train_step writes nothing
        if compile:  # as `awdlstm train --compile` does it
            cfg = replace(cfg, train=replace(cfg.train, compile=True))
        self.trainer = Trainer(cfg, corpus, runtime, run_dir)
        if batches is None:
            batches = make_batches(self.trainer.train_data, corpus.valid, cfg.data.eval_batch_size, cfg.data.bptt)
        super().__init__(batches, runtime)
        self.name = name
        self.compiled = compile
        self.onednn = onednn
        self.label = ("awdlstm AWDLSTM via Trainer.train_step" + (" (torch.compile)" if compile else "")
                      + ("" if onednn else " (oneDNN off: torch.backends.mkldnn.flags(enabled=False))"))
        self.model = self.trainer.model
        sizes = list(self.trainer.model.layer_sizes)
        self.hidden_sizes = sizes
        self.input_sizes = [cfg.model.emb_size] + sizes[:-1]
        self.decoder_in = sizes[-1]

    def _backend(self):
        return contextlib.nullcontext() if self.onednn else torch.backends.mkldnn.flags(enabled=False)

    def train_step(self, i: int) -> None:
        with self._backend():
            self.last_loss = self.trainer.train_step(self._train_window(i))

    def eval_step(self, i: int) -> None:
        with self._backend():
            self._eval_step(i)

    @torch.no_grad()
    def _eval_step(self, i: int) -> None:
        # The body of awdlstm.evaluate.evaluate's loop.
        model = self.trainer.ntasgd.eval_model() if not self.compiled else self.trainer.step_model
        model.eval()
        inputs, targets = self._eval_window(i)
        if self.eval_state is None:
            self.eval_state = model.init_state(inputs.size(1))
        with self.rt.autocast():
            out = model(inputs, self.eval_state)
        loss = model.loss(out, targets, reduction="sum")
        self.last_loss = loss.double() / targets.numel()
        self.eval_state = detach_state(out.state)


class PlainLM(nn.Module):
    """Embedding -> stack of single-layer nn.LSTM (same sizes as ours) -> tied decoder.
    No dropout of any kind, no AR/TAR: what the same shapes cost with nothing added."""

    def __init__(self, vocab: int, emb: int, sizes: list[int]) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb)
        ins = [emb] + sizes[:-1]
        self.rnns = nn.ModuleList(nn.LSTM(i, h) for i, h in zip(ins, sizes))
        self.decoder = nn.Linear(sizes[-1], vocab)
        if sizes[-1] == emb:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_state(self, batch: int):
        w = self.encoder.weight
        return [(w.new_zeros(1, batch, r.hidden_size), w.new_zeros(1, batch, r.hidden_size)) for r in self.rnns]

    def forward(self, tokens: Tensor, state):
        x = self.encoder(tokens)
        new = []
        for rnn, s in zip(self.rnns, state):
            x, hc = rnn(x, s)
            new.append(hc)
        return self.decoder(x), new


class Plain(Contender):
    """The ceiling: PlainLM with the same loss (cross-entropy), clipping, SGD and weight
    decay as our step, but no dropout, no AR/TAR."""

    def __init__(self, name: str, cfg: Config, vocab: int, runtime: Runtime, batches: Batches,
                 sizes: list[int]) -> None:
        super().__init__(batches, runtime)
        self.name = name
        self.label = "plain nn.LSTM stack, no dropout, no AR/TAR (ceiling)"
        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)
        self.model = PlainLM(vocab, cfg.model.emb_size, sizes).to(runtime.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.optim)
        self.state = None
        self.hidden_sizes = list(sizes)
        self.input_sizes = [cfg.model.emb_size] + sizes[:-1]
        self.decoder_in = sizes[-1]

    def train_step(self, i: int) -> None:
        win = self._train_window(i)
        model, cfg = self.model, self.cfg
        model.train()
        if self.state is None:
            self.state = model.init_state(win.inputs.size(1))
        with self.rt.autocast():
            logits, state = model(win.inputs, self.state)
        self.state = detach_state(state)
        ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), win.targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        self.rt.scaler.scale(ce).backward()
        if cfg.optim.clip > 0:
            self.rt.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr * win.lr_scale
        self.rt.scaler.step(self.optimizer)
        self.rt.scaler.update()
        self.last_loss = ce.detach()

    @torch.no_grad()
    def eval_step(self, i: int) -> None:
        model = self.model
        model.eval()
        inputs, targets = self._eval_window(i)
        if self.eval_state is None:
            self.eval_state = model.init_state(inputs.size(1))
        with self.rt.autocast():
            logits, state = model(inputs, self.eval_state)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
        self.last_loss = loss.double() / targets.numel()
        self.eval_state = detach_state(state)


def fastai_available() -> tuple[bool, str]:
    try:
        from fastai.text.models.awdlstm import AWD_LSTM, RNNDropout  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        return False, f"fastai not importable ({type(err).__name__}: {err}); skipped"
    return True, ""


class FastAI(Contender):
    """fastai's AWD_LSTM (batch-first, hidden state kept inside the module) with the same
    sizes and dropouts, an output RNNDropout, a decoder tied to its embedding, and the same
    loss (cross-entropy + AR + TAR), clipping and SGD as our step."""

    def __init__(self, name: str, cfg: Config, vocab: int, runtime: Runtime, batches: Batches) -> None:
        from fastai.text.models.awdlstm import AWD_LSTM, RNNDropout

        super().__init__(batches, runtime)
        self.name = name
        self.label = "fastai.text.models.awdlstm.AWD_LSTM"
        self.cfg = cfg
        m = cfg.model
        torch.manual_seed(cfg.train.seed)
        self.encoder = AWD_LSTM(vocab, m.emb_size, m.hidden_size, m.num_layers, pad_token=1,
                                hidden_p=m.hidden_p, input_p=m.input_p, embed_p=m.embed_p,
                                weight_p=m.weight_p).to(runtime.device)
        self.output_dp = RNNDropout(m.output_p)
        self.bias = nn.Parameter(torch.zeros(vocab, device=runtime.device))
        self.model = nn.ModuleDict({"encoder": self.encoder, "output_dp": self.output_dp})
        self.params = list(self.encoder.parameters()) + [self.bias]
        self.optimizer = make_optimizer(self.params, cfg.optim)
        sizes = [m.hidden_size] * (m.num_layers - 1) + [m.emb_size]
        self.hidden_sizes = sizes
        self.input_sizes = [m.emb_size] + sizes[:-1]
        self.decoder_in = m.emb_size
        # fastai is batch-first: transpose the shared windows once, outside the timing.
        self.train_bt = [(w.inputs.t().contiguous(), w.targets.t().contiguous()) for w in batches.train]
        self.eval_bt = [(w.inputs.t().contiguous(), w.targets.t().contiguous()) for w in batches.eval]
        self._mode = None

    def _set_mode(self, mode: str) -> None:
        if self._mode != mode:  # fastai keeps one hidden state; start it afresh per phase
            self.encoder.reset()
            self._mode = mode

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raw = self.encoder(x)  # (B, T, E), hidden state detached inside
        dropped = self.output_dp(raw)
        return F.linear(dropped, self.encoder.encoder.weight, self.bias), raw, dropped

    def train_step(self, i: int) -> None:
        cfg = self.cfg
        x, y = self.train_bt[i % len(self.train_bt)]
        self._set_mode("train")
        self.model.train()
        with self.rt.autocast():
            logits, raw, dropped = self._logits(x)
        ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss = (ce + activation_reg(dropped, cfg.optim.alpha)
                + temporal_activation_reg(raw.transpose(0, 1), cfg.optim.beta))
        self.optimizer.zero_grad(set_to_none=True)
        self.rt.scaler.scale(loss).backward()
        if cfg.optim.clip > 0:
            self.rt.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.clip)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr
        self.rt.scaler.step(self.optimizer)
        self.rt.scaler.update()
        self.last_loss = ce.detach()

    @torch.no_grad()
    def eval_step(self, i: int) -> None:
        x, y = self.eval_bt[i % len(self.eval_bt)]
        x = x.to(self.rt.device, non_blocking=True)
        y = y.to(self.rt.device, non_blocking=True)
        self._set_mode("eval")
        self.model.eval()
        with self.rt.autocast():
            logits, _, _ = self._logits(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        self.last_loss = loss.double() / y.numel()


# ---------------------------------------------------------------------------- building


def bench_config(cfg: Config, batch_size: int | None, bptt: int | None, eval_batch_size: int | None,
                 threads: int, device: str, precision: str) -> Config:
    data = replace(cfg.data)
    if batch_size is not None:
        data.batch_size = batch_size
    if bptt is not None:
        data.bptt = bptt
    if eval_batch_size is not None:
        data.eval_batch_size = eval_batch_size
    train = replace(cfg.train, threads=threads, device=device, precision=precision)
    return replace(cfg, data=data, model=replace(cfg.model), optim=replace(cfg.optim), train=train)


def make_corpus(cfg: Config, data: str | None, train_windows: int, eval_windows: int) -> tuple[Corpus, str]:
    """A real corpus when ``data`` names one, else synthetic ids with the preset's vocabulary size."""
    if data:
        corpus = load_corpus(replace(cfg.data, name=data))
        return corpus, str(corpus.path)
    vocab = VOCAB_SIZES.get(cfg.data.name, 10000)
    train = tokens_needed(cfg.data.batch_size, cfg.data.bptt, train_windows)
    valid = tokens_needed(cfg.data.eval_batch_size, cfg.data.bptt, eval_windows)
    return synthetic_corpus(vocab, train, valid, seed=cfg.train.seed), "synthetic"


# ---------------------------------------------------------------------------- setup


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
