"""The neural cache pointer (Grave, Joulin, Usunier, *Improving Neural Language Models with
a Continuous Cache*, ICLR 2017), applied to a trained AWD-LSTM at test time as in Merity
et al. 2018, Sec. 5.

The split is read as one stream (batch 1, the LSTM state carried through, as the paper
evaluates). At position t the model has read x_t; h_t is the last LSTM layer's output (in
eval mode the raw output is what the decoder sees) and the target is x_{t+1}. The cache
for that prediction holds the pairs (h_i, x_{i+1}) of the previous W positions,
i in [t - W, t - 1] and i >= 0: each x_{i+1} is known by time t. Then

    p_cache(w) = sum over cached i with x_{i+1} = w of softmax_i(theta * h_i . h_t)
    p(w)       = lambda * p_cache(w) + (1 - lambda) * p_model(w)

At t = 0 the cache is empty and p = p_model. Perplexity needs only p(x_{t+1}), so no
vocabulary-sized vector is ever built: per chunk of C positions we take one (C, W) band of
dot products, a softmax over it, and sum the weights of the positions whose next word is
the target. Hidden states and model log-probabilities are computed once; any number of
(theta, lambda) pairs then cost one pass over the bands per window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .errors import ConfigError, DataError
from .loading import load_with_corpus
from .model import AWDLSTM
from .runtime import pick_device


@dataclass(frozen=True)
class CacheParams:
    window: int
    """W: how many previous positions the cache holds."""
    theta: float
    """Flatness of the cache's softmax over dot products (0: uniform over the window)."""
    lam: float
    """Weight of the cache in the mixture (the original's ``lambdah``)."""

    def validate(self) -> CacheParams:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"--window must be an integer >= 1, got {self.window}")
        if not (math.isfinite(self.theta) and self.theta >= 0):
            raise ConfigError(f"--theta must be >= 0, got {self.theta}")
        if not 0 <= self.lam <= 1:
            raise ConfigError(f"--lambda must be in [0, 1], got {self.lam}")
        return self


# The original code's README; the paper tunes them on the validation split.
PRESETS = {"ptb": CacheParams(500, 1.0, 0.1), "wt2": CacheParams(3785, 0.662, 0.1279)}


def preset_for(corpus: str) -> str:
    return "wt2" if Path(corpus).name.lower() in ("wikitext-2", "wt2", "wikitext2") else "ptb"


@dataclass
class SearchGrid:
    thetas: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5])
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
    windows: list[int] | None = None
    """None: only the window given with --window (or the preset's)."""

    def validate(self, window: int) -> SearchGrid:
        for w in self.windows or [window]:
            for t in self.thetas:
                for lam in self.lambdas:
                    CacheParams(w, t, lam).validate()
        if not self.thetas or not self.lambdas:
            raise ConfigError("--thetas and --lambdas need at least one value each")
        return self


@dataclass
class Trace:
    """What the model computes once for a split; the cache only reads it."""

    hidden: Tensor
    """(T, H) the last LSTM layer's output h_t after reading x_t."""
    targets: Tensor
    """(T,) x_{t+1}, the word h_t predicts."""
    model_log_probs: Tensor
    """(T,) float64 log p_model(x_{t+1})."""


@torch.no_grad()
def model_trace(model: AWDLSTM, ids: Tensor, *, seq_len: int = 256) -> Trace:
    """Run over ids (N,) as one stream, the state carried; T = N - 1 predictions, the same
    tokens ``awdlstm evaluate`` counts at batch 1."""
    model.eval()
    device = model.encoder.weight.device
    n = ids.numel() - 1
    if n < 1:
        raise DataError(f"the cache needs at least 2 tokens, got {ids.numel()}")
    ids = ids.to(device, torch.long)  # corpus splits are int32; gather wants int64
    hidden = torch.empty(n, model.layer_sizes[-1], device=device)
    log_probs = torch.empty(n, dtype=torch.float64, device=device)
    state = model.init_state(1)
    for s in range(0, n, seq_len):
        e = min(s + seq_len, n)
        out = model(ids[s:e, None], state)
        state = out.state
        hidden[s:e] = out.raw_output[:, 0].float()
        log_probs[s:e] = -model.token_nll(out, ids[s + 1 : e + 1, None])[:, 0].double()
    return Trace(hidden, ids[1:].clone(), log_probs)


@torch.no_grad()
def cache_log_probs(hidden: Tensor, targets: Tensor, window: int, thetas: list[float], *,
                    chunk: int = 512, block: int = 64) -> Tensor:
    """(len(thetas), T) log p_cache(x_{t+1}) for every position; -inf where the target is
    not in the cache (and at t = 0, where the cache is empty).

    Chunks of ``chunk`` positions share one (chunk, W) band of dot products; it is filled
    ``block`` rows at a time, each a plain matrix product with the W + block - 1 keys those
    rows need, so little is computed outside the band.
    """
    n, dim = hidden.shape
    w = window
    out = hidden.new_full((len(thetas), n), -math.inf)
    # Left-pad by W so that the W cached positions of any t are one contiguous slice:
    # padded index j holds position j - W.
    keys = torch.cat([hidden.new_zeros(w, dim), hidden])  # (W + T, H)
    nexts = torch.cat([targets.new_full((w,), -1), targets])  # (W + T,) x_{i+1}, -1 for padding
    band = hidden.new_empty(min(chunk, n), w)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        c = e - s
        for b in range(s, e, block):
            rows = min(block, e - b)
            span = rows + w - 1
            # Row r (t = b + r) needs padded keys b + r .. b + r + W - 1, i.e. i in [t - W, t - 1]:
            # the band of this (rows, span) product that starts at (r, r), read with row stride span + 1.
            dots = (hidden[b : b + rows] @ keys[b : b + span].T).contiguous()  # (rows, span)
            band[b - s : b - s + rows] = dots.as_strided((rows, w), (span + 1, 1))  # h_t . h_{t - W + k}
        hit = nexts[s : s + c + w - 1].unfold(0, w, 1) == targets[s:e, None]  # (C, W): x_{i+1} == x_{t+1}
        valid = None
        if s < w:  # positions before 0 are padding, not history
            valid = (torch.arange(s, e, device=hidden.device)[:, None] - w
                     + torch.arange(w, device=hidden.device)) >= 0
        for j, theta in enumerate(thetas):
            scores = band[:c] * theta
            if valid is not None:
                scores.masked_fill_(~valid, -math.inf)
            probs = torch.softmax(scores, dim=1)  # (C, W); NaN only in the row t = 0
            out[j, s:e] = torch.log(torch.where(hit, probs, 0.0).sum(1))
    out[:, :1] = -math.inf
    return out


def mix(model_lp: Tensor, cache_lp: Tensor, lam: float) -> Tensor:
    """(T,) float64 log(lambda * p_cache + (1 - lambda) * p_model) from the two (T,)
    log-probabilities; at t = 0, where nothing is cached, the model's."""
    model_lp, cache_lp = model_lp.double(), cache_lp.double()
    if lam == 0:
        mixed = model_lp.clone()
    elif lam == 1:
        mixed = cache_lp.clone()
    else:
        mixed = torch.logaddexp(cache_lp + math.log(lam), model_lp + math.log1p(-lam))
    mixed[:1] = model_lp[:1]
    return mixed


def cache_loss(trace: Trace, params: CacheParams, *, chunk: int = 512) -> float:
    """Mean cross-entropy (nats) of the mixture over the trace."""
    cache_lp = cache_log_probs(trace.hidden, trace.targets, params.window, [params.theta], chunk=chunk)[0]
    return -mix(trace.model_log_probs, cache_lp, params.lam).mean().item()


def grid_search(trace: Trace, windows: list[int], thetas: list[float], lambdas: list[float], *,
                chunk: int = 512) -> list[dict]:
    """Loss for every (window, theta, lambda); the dot products are computed once per window."""
    rows = []
    for w in windows:
        cache_lp = cache_log_probs(trace.hidden, trace.targets, w, thetas, chunk=chunk)
        for theta, lp in zip(thetas, cache_lp):
            for lam in lambdas:
                loss = -mix(trace.model_log_probs, lp, lam).mean().item()
                rows.append({"window": w, "theta": theta, "lambda": lam, "loss": loss, "perplexity": _ppl(loss)})
    return rows


def naive_cache_log_probs(hidden: Tensor, targets: Tensor, model_log_probs: Tensor, window: int,
                          theta: float, lam: float, *, start: int = 0) -> Tensor:
    """Reference for tests and the benchmark: a Python loop over tokens that builds the
    cache's and the mixture's distributions over the whole vocabulary. model_log_probs is
    (n, V), the model's full distributions at positions start .. start + n - 1."""
    vocab = model_log_probs.size(1)
    out = []
    for r in range(model_log_probs.size(0)):
        t = start + r
        p = model_log_probs[r].exp()  # (V,)
        lo = max(0, t - window)
        if t > lo:
            attn = torch.softmax(theta * (hidden[lo:t] @ hidden[t]), dim=0)  # (t - lo,)
            p_cache = torch.zeros(vocab, dtype=attn.dtype, device=attn.device).index_add_(0, targets[lo:t], attn)
            p = lam * p_cache + (1 - lam) * p
        out.append(torch.log(p[targets[t]]))
    return torch.stack(out)


# ---------------------------------------------------------------------------- the command


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def evaluate_cache(path: Path | str, split: str, *, window: int | None = None, theta: float | None = None,
                   lam: float | None = None, preset: str | None = None, search: SearchGrid | None = None,
                   device: str | None = None, data: str | None = None, data_root: str | None = None,
                   limit: int | None = None) -> dict:
    """Perplexity of ``split`` with and without the cache. Values not given come from
    ``preset`` (default: ``wt2`` for WikiText-2, else ``ptb``). With ``search``, theta and
    lambda (and the window, if the grid has windows) are chosen on the validation split."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown cache preset {preset!r}; valid: {', '.join(PRESETS)}")
    # Check what was given before the (slow) loading; placeholders stand for the rest.
    CacheParams(1 if window is None else window, 0.0 if theta is None else theta,
                0.0 if lam is None else lam).validate()
    if search is not None:
        search.validate(1 if window is None else window)
    if limit is not None and limit < 2:
        raise ConfigError(f"--limit must be >= 2 tokens, got {limit}")
    model, cfg, corpus, _ = load_with_corpus(path, data=data, data_root=data_root)
    base = PRESETS[preset or preset_for(cfg.data.name)]
    params = CacheParams(base.window if window is None else window, base.theta if theta is None else theta,
                         base.lam if lam is None else lam)
    model.to(pick_device(device))

    def trace_of(name: str) -> Trace:
        ids = corpus.split(name)
        return model_trace(model, ids if limit is None else ids[:limit])

    result: dict = {}
    if search is not None:
        t0 = time.perf_counter()
        rows = grid_search(trace_of("valid"), search.windows or [params.window], search.thetas, search.lambdas)
        best = min(rows, key=lambda r: r["loss"])
        params = CacheParams(best["window"], best["theta"], best["lambda"])
        model_row = next((r for r in rows if r["lambda"] == 0), None)
        result["search"] = {"split": "valid", "best": best, "settings": len(rows), "grid": rows,
                            "model_perplexity": model_row["perplexity"] if model_row else None,
                            "seconds": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    trace = trace_of(split)
    model_loss = -trace.model_log_probs.mean().item()
    loss = cache_loss(trace, params)
    result.update({"split": split, "tokens": trace.targets.numel(), "window": params.window, "theta": params.theta,
                   "lambda": params.lam, "loss": loss, "perplexity": _ppl(loss), "model_loss": model_loss,
                   "model_perplexity": _ppl(model_loss), "checkpoint": str(path),
                   "seconds": round(time.perf_counter() - t0, 2)})
    return result
