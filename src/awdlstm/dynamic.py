"""Dynamic evaluation (Krause, Kahembwe, Murray, Renals, *Dynamic Evaluation of Neural
Sequence Models*, ICML 2018): the model keeps learning from the text it is scored on.

The split is read in order as one stream (batch 1, the recurrent state carried), in
segments of ``bptt`` tokens. Each segment is scored first, then its mean token loss gives
a gradient g and every parameter tensor takes one step of RMS-normalised SGD pulled back
towards the trained weights theta_0 (the paper's Sec. 6, "RMS with a global prior"):

    theta <- theta - lr * g / (rms + eps) + lambda * decay_rate * (theta_0 - theta)

rms = sqrt(MS), MS the mean over the batches of one pass over training text of the squared
gradient (measured once, ``gradient_stats``), and per tensor

    decay_rate = rms / (sum over parameter tensors of mean(rms)),  clipped at 1 / lambda.

A segment's score never depends on the text after it, and with lr = 0 the weights never
move, so the loss is static evaluation's. Defaults are the authors' (lr 5e-5, lambda
0.002, eps 2e-5, segments of 5; statistics at batch 100).

The model is adapted as a copy with every dropout probability at 0, in train mode: cuDNN
refuses the RNN backward pass in eval mode, and with all dropouts at 0 train mode computes
exactly what eval mode does. The caller's model is never modified.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .cache import PRESETS, CacheParams, Trace, cache_loss, model_trace, preset_for
from .errors import ConfigError, DataError
from .loading import load_with_corpus
from .model import AWDLSTM, detach_state
from .runtime import pick_device

DEFAULT_LRS = [3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 1e-4]
DEFAULT_LAMBDAS = [1e-3, 2e-3, 3e-3, 5e-3]


@dataclass(frozen=True)
class DynamicParams:
    lr: float = 5e-5
    """Step size of the RMS-normalised gradient step."""
    lam: float = 0.002
    """Decay towards the trained weights (the authors' ``lamb``)."""
    eps: float = 2e-5
    """Added to rms before dividing by it."""
    bptt: int = 5
    """Tokens per segment: one update after each."""

    def validate(self) -> DynamicParams:
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ConfigError(f"--lr must be >= 0, got {self.lr}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"--lambda must be >= 0, got {self.lam}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"--eps must be > 0, got {self.eps}")
        if isinstance(self.bptt, bool) or not isinstance(self.bptt, int) or self.bptt < 1:
            raise ConfigError(f"--bptt must be an integer >= 1, got {self.bptt}")
        return self


@dataclass
class GradStats:
    """Root mean squared gradient of every parameter tensor, measured on training text."""

    rms: dict[str, Tensor]
    """Parameter name (as ``named_parameters`` gives it, a tied matrix once) -> sqrt(MS)."""
    tokens: int
    """Training tokens read."""
    batches: int
    """Gradients averaged."""

    def decay_rates(self, lam: float) -> dict[str, Tensor]:
        """rms / (sum over tensors of mean(rms)), clipped at 1 / lambda (no clip at lambda 0)."""
        total = sum(r.double().mean().item() for r in self.rms.values())
        if not total > 0:
            raise DataError("the gradient statistics are all zero; measure them on more training text")
        rates = {n: r / total for n, r in self.rms.items()}
        return {n: r.clamp(max=1 / lam) for n, r in rates.items()} if lam > 0 else rates

    def to_dict(self) -> dict:
        return {"rms": {n: r.cpu() for n, r in self.rms.items()}, "tokens": self.tokens, "batches": self.batches}

    @classmethod
    def from_dict(cls, d: dict) -> GradStats:
        return cls(dict(d["rms"]), int(d["tokens"]), int(d["batches"]))


# ---------------------------------------------------------------------------- the model's side


def without_dropout(model: AWDLSTM) -> AWDLSTM:
    """A copy of ``model`` with every ``*_p`` field of its config at 0 and the same weights,
    on the same device, in train mode (see the module docstring for why)."""
    cfg = model.cfg
    quiet = dataclasses.replace(cfg, **{f.name: 0.0 for f in dataclasses.fields(cfg) if f.name.endswith("_p")})
    copy = type(model)(quiet, model.vocab_size)
    copy.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    copy = copy.to(device).train()  # .to() lays the LSTM weights out for cuDNN again
    copy.head.eval()  # the exact softmax, also for a head that samples in training
    return copy


class Segment(NamedTuple):
    nll: Tensor
    """(T * B,) -log p(target) of every token, float32, with its graph."""
    hidden: Tensor
    """(T * B, H) the last layer's output h_t that predicts each target."""
    state: object
    """The recurrent state after the segment (opaque; not detached)."""


def segment_scores(model: nn.Module, inputs: Tensor, targets: Tensor, state) -> Segment:
    """The one place that reads the model's output: per-token losses of a (T, B) segment.
    targets: (T, B) or (T * B,)."""
    out = model(inputs, state)
    nll = model.token_nll(out, targets.view(inputs.shape)).reshape(-1)
    return Segment(nll, out.raw_output.reshape(nll.numel(), -1), out.state)


def _gradients(loss: Tensor, params: list[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# ---------------------------------------------------------------------------- statistics


def gradient_stats(model: AWDLSTM, ids: Tensor, *, batch_size: int = 100, bptt: int = 5,
                   max_tokens: int | None = None, progress: bool = False) -> GradStats:
    """MS = mean over the batches of grad^2 in one pass over ``ids`` (training text), in
    ``batch_size`` streams and windows of ``bptt``, the state carried (the authors' setting:
    batch 100, bptt 5). The gradient of a batch is that of its mean token loss."""
    if batch_size < 1:
        raise ConfigError(f"--gradstat-batch must be >= 1, got {batch_size}")
    if max_tokens is not None:
        if max_tokens < 2:
            raise ConfigError(f"--gradstat-tokens must be >= 2, got {max_tokens}")
        ids = ids[:max_tokens]
    rows = ids.numel() // batch_size
    if rows < 2:
        raise DataError(f"the gradient statistics need 2 tokens or more per stream: {ids.numel()} training tokens "
                        f"in {batch_size} streams; lower --gradstat-batch or read more training text")
    work = without_dropout(model)
    device = next(work.parameters()).device
    source = ids[: rows * batch_size].view(batch_size, rows).t().to(device, torch.long)  # (rows, B), as batchify
    names, params = zip(*work.named_parameters())
    squares = [torch.zeros_like(p) for p in params]
    state = work.init_state(batch_size)
    starts = range(0, rows - 1, bptt)
    for s in _bar(starts, progress, "gradient statistics"):
        e = min(s + bptt, rows - 1)
        seg = segment_scores(work, source[s:e], source[s + 1 : e + 1], state)
        grads = _gradients(seg.nll.mean(), list(params))
        torch._foreach_addcmul_(squares, grads, grads)
        state = detach_state(seg.state)
    n = len(starts)
    rms = torch._foreach_sqrt(torch._foreach_div(squares, float(n)))
    return GradStats(dict(zip(names, rms)), (rows - 1) * batch_size, n)


# ---------------------------------------------------------------------------- the update


class RMSDecayStep:
    """theta <- theta - lr * g / (rms + eps) + lambda * decay_rate * (theta_0 - theta) on a
    list of parameter tensors, theta_0 being their values when this is made.

    Per segment two fused passes over all the weights: ``lerp`` towards theta_0 (exact: at
    theta = theta_0 it leaves theta unchanged bit for bit) and ``addcmul`` of the scaled
    gradient; the per-element factors are computed once here.
    """

    def __init__(self, params: list[Tensor], rms: list[Tensor], decay: list[Tensor], lr: float, lam: float,
                 eps: float) -> None:
        self.params = params
        with torch.no_grad():
            self.theta0 = [p.detach().clone() for p in params]
            self.pull = [(lam * d).clamp(max=1.0).to(p) for d, p in zip(decay, params)]  # lambda * decay_rate
            self.scale = [(lr / (r + eps)).to(p) for r, p in zip(rms, params)]  # lr / (rms + eps)
        self.lr, self.lam = lr, lam

    @torch.no_grad()
    def __call__(self, grads: list[Tensor]) -> None:
        if self.lam > 0:
            torch._foreach_lerp_(self.params, self.theta0, self.pull)
        if self.lr > 0:
            torch._foreach_addcmul_(self.params, self.scale, grads, value=-1.0)


def make_step(model: nn.Module, stats: GradStats, params: DynamicParams) -> tuple[list[Tensor], RMSDecayStep]:
    names, tensors = zip(*model.named_parameters())  # a tied matrix appears once
    missing = [n for n in names if n not in stats.rms]
    if missing or len(stats.rms) != len(names):
        raise DataError(f"the gradient statistics do not fit this model (parameters {', '.join(missing) or '?'}); "
                        "measure them with this model")
    decay = stats.decay_rates(params.lam)
    device = tensors[0].device
    step = RMSDecayStep(list(tensors), [stats.rms[n].to(device) for n in names], [decay[n].to(device) for n in names],
                        params.lr, params.lam, params.eps)
    return list(tensors), step


# ---------------------------------------------------------------------------- reading a text


def dynamic_trace(model: AWDLSTM, ids: Tensor, stats: GradStats, params: DynamicParams = DynamicParams(), *,
                  keep_hidden: bool = False, progress: bool = False) -> Trace:
    """Read ids (N,) as one stream with dynamic evaluation: T = N - 1 predictions, each
    segment scored before the update that uses it. The trace holds the adapted model's
    log p(target) and, with ``keep_hidden``, its h_t (else a (T, 0) tensor) for the cache.
    ``model`` is left as it was."""
    params.validate()
    n = ids.numel() - 1
    if n < 1:
        raise DataError(f"dynamic evaluation needs at least 2 tokens, got {ids.numel()}")
    work = without_dropout(model)
    tensors, step = make_step(work, stats, params)
    device = tensors[0].device
    ids = ids.to(device, torch.long)  # corpus splits are int32
    log_probs = torch.empty(n, dtype=torch.float64, device=device)
    hidden = torch.empty(n, work.layer_sizes[-1] if keep_hidden else 0, device=device)
    state = work.init_state(1)
    for s in _bar(range(0, n, params.bptt), progress, "dynamic evaluation"):
        e = min(s + params.bptt, n)
        seg = segment_scores(work, ids[s:e, None], ids[s + 1 : e + 1], state)
        log_probs[s:e] = -seg.nll.detach().double()  # scored before the update below
        if keep_hidden:
            hidden[s:e] = seg.hidden.detach().float()
        if e < n:  # the update after the last segment would change nothing scored
            step(_gradients(seg.nll.mean(), tensors))
        state = detach_state(seg.state)
    return Trace(hidden, ids[1:].clone(), log_probs)


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True, disable=None)


# ---------------------------------------------------------------------------- the command


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def _loss(trace: Trace) -> float:
    return -trace.model_log_probs.mean().item()


def check_grid(lrs: list[float], lambdas: list[float], eps: float, bptt: int) -> None:
    if not lrs or not lambdas:
        raise ConfigError("--lrs and --lambdas need at least one value each")
    for lr in lrs:
        for lam in lambdas:
            DynamicParams(lr, lam, eps, bptt).validate()


def evaluate_dynamic(path, split: str = "test", *, lr: float = 5e-5, lam: float = 0.002, eps: float = 2e-5,
                     bptt: int = 5, search: tuple[list[float], list[float]] | None = None, cache: bool = False,
                     window: int | None = None, theta: float | None = None, lam_cache: float | None = None,
                     gradstat_tokens: int | None = None, gradstat_batch: int = 100, device: str | None = None,
                     data: str | None = None, data_root: str | None = None, limit: int | None = None,
                     search_limit: int | None = None, progress: bool = False) -> dict:
    """Perplexity of ``split`` without and with dynamic evaluation (and with the cache on
    top of each, with ``cache``). With ``search`` = (lrs, lambdas), lr and lambda are first
    chosen on the validation split by the dynamic perplexity. ``limit`` keeps the first N
    tokens of every split read, the training text of the statistics included; ``search_limit``
    keeps the first N tokens of the validation split for the search only."""
    chosen = DynamicParams(lr, lam, eps, bptt).validate()
    if search is not None:
        check_grid(*search, eps, bptt)
    if limit is not None and limit < 2:
        raise ConfigError(f"--limit must be >= 2 tokens, got {limit}")
    if search_limit is not None and (search is None or search_limit < 2):
        raise ConfigError(f"--search-limit takes a number of tokens >= 2 with --search, got {search_limit}")
    if gradstat_tokens is not None and gradstat_tokens < 2:
        raise ConfigError(f"--gradstat-tokens must be >= 2, got {gradstat_tokens}")
    if gradstat_batch < 1:
        raise ConfigError(f"--gradstat-batch must be >= 1, got {gradstat_batch}")
    if not cache and (window, theta, lam_cache) != (None, None, None):
        raise ConfigError("--window, --theta and --lambda-cache set the cache; add --cache")
    CacheParams(1 if window is None else window, 0.0 if theta is None else theta,
                0.0 if lam_cache is None else lam_cache).validate()
    model, cfg, corpus, info = load_with_corpus(path, data=data, data_root=data_root)
    model.to(pick_device(device))

    def ids_of(name: str) -> Tensor:
        ids = corpus.split(name)
        return ids if limit is None else ids[:limit]

    t0 = time.perf_counter()
    cap = min(x for x in (gradstat_tokens, limit, corpus.train.numel()) if x is not None)
    stats = gradient_stats(model, corpus.train, batch_size=gradstat_batch, bptt=bptt, max_tokens=cap,
                           progress=progress)
    result: dict = {"gradstat": {"tokens": stats.tokens, "batches": stats.batches, "batch_size": gradstat_batch,
                                 "bptt": bptt, "seconds": round(time.perf_counter() - t0, 2)}}
    if search is not None:
        t0 = time.perf_counter()
        valid = ids_of("valid")
        if search_limit is not None:
            valid = valid[:search_limit]
        rows = []
        for lr_ in search[0]:
            for lam_ in search[1]:
                loss = _loss(dynamic_trace(model, valid, stats, DynamicParams(lr_, lam_, eps, bptt), progress=progress))
                rows.append({"lr": lr_, "lambda": lam_, "loss": loss, "perplexity": _ppl(loss)})
        best = min(rows, key=lambda r: r["loss"])
        chosen = DynamicParams(best["lr"], best["lambda"], eps, bptt)
        result["search"] = {"split": "valid", "tokens": valid.numel() - 1, "best": best, "grid": rows,
                            "model_perplexity": _ppl(_loss(model_trace(model, valid))),
                            "seconds": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    ids = ids_of(split)
    static = model_trace(model, ids)
    dynamic = dynamic_trace(model, ids, stats, chosen, keep_hidden=cache, progress=progress)
    result.update({"split": split, "tokens": dynamic.targets.numel(), "lr": chosen.lr, "lambda": chosen.lam,
                   "eps": chosen.eps, "bptt": chosen.bptt, "loss": _loss(dynamic), "perplexity": _ppl(_loss(dynamic)),
                   "model_loss": _loss(static), "model_perplexity": _ppl(_loss(static)),
                   "checkpoint": info.get("checkpoint", info["path"])})
    if cache:
        base = PRESETS[preset_for(cfg.data.name)]
        params = CacheParams(base.window if window is None else window, base.theta if theta is None else theta,
                             base.lam if lam_cache is None else lam_cache)
        result.update({"window": params.window, "theta": params.theta, "lambda_cache": params.lam,
                       "cache_perplexity": _ppl(cache_loss(static, params)),
                       "dynamic_cache_perplexity": _ppl(cache_loss(dynamic, params))})
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result
