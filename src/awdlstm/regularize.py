"""The regularizers of AWD-LSTM (Merity, Keskar, Socher 2018, Sec. 3 and 4).

Each one is a pure function of tensors, a probability and ``training``; modules only hold
hyperparameters. Shapes are time-major: ``(T, B, F)``.

- ``locked_dropout``: variational dropout (Gal and Ghahramani), one mask per sequence and
  feature, shared over time (Sec. 4.2); ``step_dropout``: a mask per time step as well.
- ``embedding_dropout``: drops whole rows (words) of the embedding matrix (Sec. 4.3), the
  paper's definition (the reference that ``embed_with_dropout`` is tested against).
- ``embed_with_dropout``: the same, applied to the looked-up vectors (what the model uses).
- ``drop_connect``: DropConnect on a weight matrix, one mask per call (Sec. 2, the
  weight-dropped LSTM); ``layers.WeightDropLSTM`` applies it to the hidden-to-hidden matrices.
- ``activation_reg`` / ``temporal_activation_reg``: AR and TAR (Sec. 4.6; Merity,
  McCann, Socher 2017).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

LANE_LEVELS = 1 << 16
"""Resolution of a drop probability on the CPU: each mask element is one 16-bit lane."""


def lane_probability(p: float) -> float:
    """The drop probability the CPU masks realise: p rounded to a multiple of 1/65536
    (at most 7.6e-6 away; 0.5, 0.25 and every other multiple of 2^-16 exactly)."""
    return min(round(p * LANE_LEVELS), LANE_LEVELS - 1) / LANE_LEVELS


def _keep_mask(like: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """Bernoulli(1 - p) mask scaled by 1 / (1 - p), so the expectation is unchanged.

    On CUDA ``bernoulli_`` is one fused kernel. On the CPU, PyTorch draws uniform floats
    one at a time on one thread, so the mask is made from 64-bit random integers read as
    four 16-bit lanes each: a lane is kept when it is at least p * 65536, which keeps it
    with probability 1 - p' for p' = ``lane_probability(p)``, and the survivors are scaled
    by 1 / (1 - p'). A quarter of the draws; the measured cost of the three ways is in
    benchmarks/README.md.
    """
    if like.is_cuda:
        return like.new_empty(shape).bernoulli_(1 - p).div_(1 - p)
    n = math.prod(shape)
    p_lane = lane_probability(p)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device)
    bits.random_(-(2**63), None)  # every 64-bit pattern equally likely
    lanes = bits.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    keep = lanes >= round(p_lane * LANE_LEVELS) - LANE_LEVELS // 2
    return keep.to(like.dtype).mul_(1 / (1 - p_lane))


_streams: tuple[int, int, int] | None = None
"""(start, stop, total) inside ``streams``: the process computes streams [start, stop) of a
batch of ``total``."""


@contextlib.contextmanager
def streams(start: int, stop: int, total: int):
    """Within: masks with a batch dimension are drawn for the whole batch of ``total`` streams
    (the random numbers one process computing all of them would draw) and the part of
    streams [start, stop) is applied. Data-parallel ranks train this way, so that N ranks
    draw exactly the masks one process does."""
    global _streams
    before, _streams = _streams, (start, stop, total)
    try:
        yield
    finally:
        _streams = before


def batch_mask(like: Tensor, shape: tuple[int, ...], draw) -> Tensor:
    """``draw(like, shape)`` for a mask whose dimension 1 is the batch, drawn for the whole
    batch inside ``streams`` and cut to this process's streams."""
    s = _streams
    if s is None or shape[1] != s[1] - s[0] or s[2] == shape[1]:
        return draw(like, shape)
    full = (shape[0], s[2], *shape[2:])
    return draw(like, full).narrow(1, s[0], s[1] - s[0])


def keep_mask(like: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """A scaled Bernoulli(1 - p) mask whose dimension 1 is the batch (see ``batch_mask``)."""
    return batch_mask(like, shape, lambda t, sh: _keep_mask(t, sh, p))


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per (sequence, feature), the same at every time step.

    x: (T, B, F). The mask is (1, B, F) and broadcasts over T.
    """
    if not training or p == 0:
        return x
    return x * keep_mask(x, (1, x.size(1), x.size(2)), p)


def step_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with a mask per element and time step (x: (T, B, F)): the standard kind, as
    OpenSeq2Seq's layers and its element-wise embedding dropout use it."""
    if not training or p == 0:
        return x
    return x * keep_mask(x, tuple(x.shape), p)


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """Drop whole rows of an embedding matrix (V, E) and rescale the survivors.

    A dropped word is dropped at every position it occurs in the batch; the matrix is
    masked, not the looked-up vectors, so this is the paper's definition exactly.
    """
    if not training or p == 0:
        return weight
    return weight * _keep_mask(weight, (weight.size(0), 1), p)


def embed_with_dropout(tokens: Tensor, weight: Tensor, p: float, training: bool) -> Tensor:
    """``F.embedding(tokens, embedding_dropout(weight, p, training))`` without masking the
    whole (V, E) matrix: the same per-word mask is drawn (same random numbers) but applied
    to the looked-up (T, B, E) vectors, so the cost follows the batch, not the vocabulary."""
    x = F.embedding(tokens, weight)
    if not training or p == 0:
        return x
    return x * F.embedding(tokens, _keep_mask(weight, (weight.size(0), 1), p))


def drop_connect(weight: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect (Wan et al. 2013): drop individual weights, rescale the rest."""
    if not training or p == 0:
        return weight
    if weight.is_cuda:
        return F.dropout(weight, p, training=True)
    return weight * _keep_mask(weight, weight.shape, p)


def activation_reg(dropped_output: Tensor, alpha: float) -> Tensor:
    """AR: alpha * mean of the squared last-layer output after its dropout mask."""
    if alpha == 0:
        return dropped_output.new_zeros(())
    return alpha * dropped_output.float().pow(2).mean()


def temporal_activation_reg(raw_output: Tensor, beta: float) -> Tensor:
    """TAR: beta * mean of (h_t - h_{t-1})^2 on the last layer's output before dropout.

    raw_output: (T, B, H). A window of one step has no difference to penalise and gives 0
    (not a division by zero).
    """
    if beta == 0 or raw_output.size(0) < 2:
        return raw_output.new_zeros(())
    diff = raw_output[1:].float() - raw_output[:-1].float()
    return beta * diff.pow(2).mean()
