"""Output heads: -log p(word | hidden) without building (T, B, V) unless asked.

The model owns the decoder ``nn.Linear(H, V)`` (its weight tied to the embedding when
``tie_weights``); a head borrows it and turns hidden states (N, H) into

- ``nll(hidden, targets) -> (N,)``: -log p(target), fp32, differentiable;
- ``log_probs(hidden) -> (N, V)``: the exact normalised log-distribution, fp32.

Three heads:

- ``FullHead``: the full softmax over the vocabulary, what release 0.1 computes.
- ``SplitHead``: the split softmax of the original AWD-LSTM code (its
  ``SplitCrossEntropyLoss``, used there for WikiText-103): a softmax over the most frequent
  words plus one row per tail cluster, then a softmax inside the target's cluster. Exact,
  and it keeps the tie with the embedding, since every word's score is still its decoder
  (= embedding) row.
- ``SampledHead``: sampled softmax (Jean et al. 2015, "On Using Very Large Target
  Vocabulary for Neural Machine Translation"; the TensorFlow ``sampled_softmax_loss`` form
  with log-uniform candidates, which NVIDIA OpenSeq2Seq's language model trains with 8,192
  samples) for training; exact softmax in evaluation.

Why not ``nn.AdaptiveLogSoftmaxWithLoss`` (Grave et al. 2017, adaptive softmax): it owns
its own head and tail projections, and its tail clusters score words through a reduced
projection (H -> H / div_value^k -> cluster size), so words have no single H-sized output
row that could be the embedding row; the weight tying of AWD-LSTM (paper Sec. 4.5) would be
lost, along with the decoder keys of existing checkpoints.

The decoder is held in a plain list, not as a submodule, so its parameters appear once in
``model.parameters()`` and ``model.state_dict()`` (under ``decoder.*``). The head must
therefore live in the same module tree as its decoder: ``copy.deepcopy(model)`` then keeps
the head pointing at the copied decoder (one memo for the whole tree) and ``model.to()``
moves the decoder that the head sees. Moving a head alone moves only its own parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

HEADS = ("full", "split", "sampled")

# The original code's cutoffs: WikiText-103 (267,735 words) above 75,000 words, the One
# Billion Word benchmark (793,471) above 500,000; below 75,000 a full softmax.
_CUTOFF_TABLE = ((500_000, [4200, 35_000, 180_000]), (75_000, [2800, 20_000, 76_000]))


def default_cutoffs(vocab_size: int) -> list[int]:
    """The split-softmax cluster boundaries the original AWD-LSTM code uses for a vocabulary
    of this size; [] (one cluster: a full softmax) at 75,000 words or fewer."""
    for above, cutoffs in _CUTOFF_TABLE:
        if vocab_size > above:
            return list(cutoffs)
    return []


def check_cutoffs(cutoffs: list[int], vocab_size: int) -> list[int]:
    """``cutoffs`` as a list of ints, or a one-line ConfigError: each must be an integer
    above 0 and below the vocabulary size, in strictly increasing order."""
    where = f"model.split_cutoffs={list(cutoffs)!r}"
    if any(isinstance(c, bool) or not isinstance(c, int) for c in cutoffs):
        raise ConfigError(f"{where}: cutoffs must be integers")
    if any(c <= 0 or c >= vocab_size for c in cutoffs):
        raise ConfigError(f"{where}: each cutoff must be > 0 and < the vocabulary size {vocab_size}")
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ConfigError(f"{where}: cutoffs must be strictly increasing")
    return list(cutoffs)


class _Head(nn.Module):
    """Holds the borrowed decoder outside the module tree (see the module docstring)."""

    def __init__(self, decoder: nn.Linear) -> None:
        super().__init__()
        if decoder.bias is None:
            raise ConfigError("model.head: the decoder must have a bias")
        self._borrowed = [decoder]

    @property
    def decoder(self) -> nn.Linear:
        return self._borrowed[0]

    @property
    def vocab_size(self) -> int:
        return self.decoder.out_features

    def full_logits(self, hidden: Tensor) -> Tensor:
        """(N, H) -> (N, V) fp32 scores over the whole vocabulary."""
        return self.decoder(hidden).float()

    def log_probs(self, hidden: Tensor) -> Tensor:
        """(N, H) -> (N, V) fp32 exact log-probabilities."""
        return F.log_softmax(self.full_logits(hidden), dim=-1)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """(N, H), (N,) -> (N,) fp32 -log p(target) under the full softmax."""
        return F.cross_entropy(self.full_logits(hidden), targets, reduction="none")

    def loss(self, hidden: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """The cross-entropy over the N positions, ``mean`` or ``sum``."""
        nll = self.nll(hidden, targets)
        return nll.sum() if reduction == "sum" else nll.mean()

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}"


class FullHead(_Head):
    """The full softmax: the same operations as release 0.1 (decoder, then fp32 cross-entropy),
    so its losses are bit for bit those of before. Builds (N, V)."""

    def loss(self, hidden: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        return F.cross_entropy(self.full_logits(hidden), targets, reduction=reduction)


class SplitHead(_Head):
    """Split softmax over a frequency-ordered vocabulary (the original AWD-LSTM code's
    SplitCrossEntropyLoss idea), keeping the decoder tied.

    With ``splits = [0] + cutoffs + [V]``, the head softmax covers words [0, cutoffs[0]) and
    one extra row per tail cluster k = 1..K (``tail_weight[k-1]``, ``tail_bias[k-1]``). A
    word w in tail cluster k has

        log p(w) = log p_head(row of cluster k) + log_softmax over words [splits[k], splits[k+1])

    where the cluster's softmax uses the decoder's rows and bias for those words. ``nll``
    computes cluster k's softmax only for the positions whose target lies in it, so a
    batch costs about N x cutoffs[0] + sum_k n_k x |cluster k| instead of N x V.

    The tail rows start like the decoder's rows under the paper's initialisation: weight
    uniform(-0.1, 0.1), bias 0 (the original code starts both at 0). With no cutoffs the head
    is the full softmax.
    """

    def __init__(self, decoder: nn.Linear, cutoffs: list[int]) -> None:
        super().__init__(decoder)
        vocab = decoder.out_features
        self.cutoffs = check_cutoffs(list(cutoffs), vocab)
        self.splits = [0] + self.cutoffs + [vocab]
        w = decoder.weight
        n_tails = len(self.cutoffs)
        self.tail_weight = nn.Parameter(torch.empty(n_tails, w.size(1), device=w.device, dtype=w.dtype))
        self.tail_bias = nn.Parameter(torch.empty(n_tails, device=w.device, dtype=w.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.tail_weight, -0.1, 0.1)
        nn.init.zeros_(self.tail_bias)

    @property
    def head_size(self) -> int:
        """Words scored by the head softmax (the most frequent ones)."""
        return self.splits[1]

    def _pieces(self) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        # log_probs goes through autograd (the tests hold nll's written-out backward to it).
        sizes = [b - a for a, b in zip(self.splits, self.splits[1:])]
        return self.decoder.weight.split(sizes), self.decoder.bias.split(sizes)

    def _head_log_probs(self, hidden: Tensor, weights, biases) -> Tensor:
        """(N, H) -> (N, head_size + K) fp32 log-probabilities of the head softmax."""
        if not self.cutoffs:
            return F.log_softmax(self.decoder(hidden).float(), dim=-1)
        w = torch.cat([weights[0], self.tail_weight])
        b = torch.cat([biases[0], self.tail_bias])
        return F.log_softmax(F.linear(hidden, w, b).float(), dim=-1)

    def log_probs(self, hidden: Tensor) -> Tensor:
        weights, biases = self._pieces()
        head = self._head_log_probs(hidden, weights, biases)  # (N, C + K)
        c = self.head_size
        parts = [head[:, :c]]
        for k in range(1, len(self.splits) - 1):
            within = F.log_softmax(F.linear(hidden, weights[k], biases[k]).float(), dim=-1)
            parts.append(head[:, c + k - 1 : c + k] + within)
        return torch.cat(parts, dim=1)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        if not self.cutoffs:
            return F.cross_entropy(self.decoder(hidden).float(), targets, reduction="none")
        return _SplitNLL.apply(hidden, self.decoder.weight, self.decoder.bias, self.tail_weight, self.tail_bias,
                               targets, self.splits)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, cutoffs={self.cutoffs}"


class _SplitNLL(torch.autograd.Function):
    """-log p(target) under the split softmax, with a written-out backward.

    The backward writes the decoder's gradient into one (V, H) tensor. Autograd through the
    K + 1 pieces of the weight would hold the pieces' gradients and their concatenation at
    the same time: twice the memory of the gradient itself, which at WikiText-103's size is
    the largest tensor of the step. Matrix products run in the dtype autocast chose in the
    forward (that of the hidden-by-weight product), softmax and sums in fp32. Not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, tail_weight, tail_bias, targets, splits):
        c = splits[1]
        head_logits = F.linear(hidden, torch.cat([weight[:c], tail_weight]), torch.cat([bias[:c], tail_bias]))
        ctx.mm_dtype = head_logits.dtype
        head_lp = F.log_softmax(head_logits.float(), dim=-1)  # (N, C + K)
        boundaries = torch.tensor(splits[1:-1], device=targets.device, dtype=targets.dtype)
        cluster = torch.bucketize(targets, boundaries, right=True)  # (N,) 0 = head, k = tail k
        # Head words read their own column; tail words read their cluster's row.
        column = torch.where(cluster == 0, targets, c + cluster - 1)
        nll = -head_lp.gather(1, column.unsqueeze(1)).squeeze(1)
        tails = []
        for k in range(1, len(splits) - 1):
            rows = (cluster == k).nonzero().squeeze(1)  # (n_k,); on CUDA a sync per cluster
            if rows.numel() == 0:
                continue
            a, b = splits[k], splits[k + 1]
            lp = F.log_softmax(F.linear(hidden.index_select(0, rows), weight[a:b], bias[a:b]).float(), dim=-1)
            local = targets.index_select(0, rows) - a
            nll.index_add_(0, rows, -lp.gather(1, local.unsqueeze(1)).squeeze(1))
            tails.append((a, b, rows, lp.exp_(), local))  # (n_k, |k|) probabilities
        ctx.save_for_backward(hidden, weight, tail_weight)
        ctx.head_p, ctx.column, ctx.tails, ctx.bias_dtype = head_lp.exp_(), column, tails, bias.dtype
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_nll):
        hidden, weight, tail_weight = ctx.saved_tensors
        dt, c = ctx.mm_dtype, ctx.head_p.size(1) - tail_weight.size(0)
        with torch.autocast(hidden.device.type, enabled=False):
            g = grad_nll.float().unsqueeze(1)
            # d nll / d logits = softmax - one-hot(target), per softmax, times the incoming gradient.
            g_head = ctx.head_p.scatter_add_(1, ctx.column.unsqueeze(1), -torch.ones_like(g)).mul_(g)
            h, gh = hidden.to(dt), g_head.to(dt)
            grad_w = torch.zeros_like(weight)
            grad_b = torch.zeros(weight.size(0), device=weight.device, dtype=ctx.bias_dtype)
            _mm_into(grad_w[:c], gh[:, :c].t(), h)
            grad_b[:c] = g_head[:, :c].sum(0)
            grad_tw = (gh[:, c:].t() @ h).to(tail_weight.dtype)
            grad_tb = g_head[:, c:].sum(0).to(ctx.bias_dtype)
            grad_h = None
            if ctx.needs_input_grad[0]:
                grad_h = (gh[:, :c] @ weight[:c].to(dt)).float() + (gh[:, c:] @ tail_weight.to(dt)).float()
            for a, b, rows, p, local in ctx.tails:
                g_k = p.scatter_add_(1, local.unsqueeze(1), -torch.ones_like(p[:, :1])).mul_(g.index_select(0, rows))
                gk = g_k.to(dt)
                _mm_into(grad_w[a:b], gk.t(), h.index_select(0, rows))
                grad_b[a:b] = g_k.sum(0)
                if grad_h is not None:
                    grad_h.index_add_(0, rows, (gk @ weight[a:b].to(dt)).float())
        ctx.head_p = ctx.tails = None
        grad_h = None if grad_h is None else grad_h.to(hidden.dtype)
        return grad_h, grad_w, grad_b, grad_tw, grad_tb, None, None


def _mm_into(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out = a @ b, written in place when the dtypes agree (a cluster's gradient at
    WikiText-103's size is a few hundred MB: no temporary copy of it)."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(a @ b)


def log_uniform_log_prob(ids: Tensor, vocab_size: int) -> Tensor:
    """log P(k) of the log-uniform (Zipfian) distribution over ids 0..V-1 ordered by
    frequency: P(k) = (log(k + 2) - log(k + 1)) / log(V + 1). fp32, shape of ``ids``."""
    k = ids.double()
    return (torch.log1p(1.0 / (k + 1.0)) / math.log(vocab_size + 1.0)).log().float()


def log_uniform_sample(num: int, vocab_size: int, *, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """``num`` ids drawn with replacement from the log-uniform distribution (int64): the
    inverse of its distribution function, floor(exp(u log(V + 1))) - 1 for u ~ U[0, 1)."""
    u = torch.rand(num, device=device, generator=generator, dtype=torch.float64)
    ids = torch.exp(u * math.log(vocab_size + 1.0)).floor().long() - 1
    return ids.clamp_(0, vocab_size - 1)  # guards the float edge at u -> 1


class SampledHead(_Head):
    """Sampled softmax for training (Jean et al. 2015, in the TensorFlow
    ``sampled_softmax_loss`` form; NVIDIA OpenSeq2Seq's language model uses 8,192 samples).

    In training, ``nll`` draws ``num_sampled`` candidate ids once per call for the whole
    batch (shared negatives), with replacement, from the log-uniform distribution over
    frequency-ordered ids (``log_uniform_sample``). Each row scores its true word and the
    candidates, each minus log(expected count) = log(num_sampled x P(id)); a candidate equal
    to the row's target is masked to -inf; the loss is the cross-entropy with the true word
    at index 0. This is not -log p(target), only a training signal that costs
    N x num_sampled instead of N x V. In evaluation (``not self.training``) ``nll`` is the
    exact full softmax, and ``log_probs`` always is.

    Draws use ``generator`` when given (on the decoder's device), else the global RNG of
    that device, which training checkpoints save, so a resumed run draws the same ids.
    """

    def __init__(self, decoder: nn.Linear, num_sampled: int = 8192,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(decoder)
        if isinstance(num_sampled, bool) or not isinstance(num_sampled, int) or num_sampled < 1:
            raise ConfigError(f"model.num_sampled={num_sampled!r}: must be an integer >= 1")
        self.num_sampled = num_sampled
        self.generator = generator

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        if not self.training:
            return super().nll(hidden, targets)
        vocab, n = self.vocab_size, targets.numel()
        weight, bias = self.decoder.weight, self.decoder.bias
        sampled = log_uniform_sample(self.num_sampled, vocab, device=weight.device, generator=self.generator)
        # One gather for targets and candidates, so the backward builds one (V, H) gradient.
        ids = torch.cat([targets, sampled])
        w, b = weight.index_select(0, ids), bias.index_select(0, ids)
        true_w, cand_w = w[:n], w[n:]
        true_logit = (hidden.float() * true_w.float()).sum(-1) + b[:n].float()  # (N,)
        cand_logit = F.linear(hidden, cand_w, b[n:]).float()  # (N, S)
        log_expected = log_uniform_log_prob(ids, vocab) + math.log(self.num_sampled)
        true_logit = true_logit - log_expected[:n]
        cand_logit = cand_logit - log_expected[n:]
        hits = sampled.unsqueeze(0) == targets.unsqueeze(1)  # (N, S) accidental hits
        cand_logit = cand_logit.masked_fill(hits, float("-inf"))
        logits = torch.cat([true_logit.unsqueeze(1), cand_logit], dim=1)  # (N, 1 + S)
        return -F.log_softmax(logits, dim=1)[:, 0]

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, num_sampled={self.num_sampled}"


def build_head(kind: str, decoder: nn.Linear, vocab_size: int, cutoffs: list[int] | None,
               num_sampled: int) -> nn.Module:
    """The head named by ``kind`` (``model.head``): full | split | sampled. ``cutoffs`` None
    means ``default_cutoffs(vocab_size)``; ``num_sampled`` is used by the sampled head only."""
    if decoder.out_features != vocab_size:
        raise ConfigError(f"model.head: the decoder scores {decoder.out_features} words, the vocabulary has {vocab_size}")
    if kind == "full":
        return FullHead(decoder)
    if kind == "split":
        return SplitHead(decoder, default_cutoffs(vocab_size) if cutoffs is None else cutoffs)
    if kind == "sampled":
        return SampledHead(decoder, num_sampled)
    raise ConfigError(f"model.head={kind!r}: must be one of {', '.join(HEADS)}")
