"""The regularizers of AWD-LSTM (Merity, Keskar, Socher 2018, Sec. 3 and 4).

Each one is a pure function of tensors, a probability and ``training``; modules only hold
hyperparameters. Shapes are time-major: ``(T, B, F)``.

- ``locked_dropout``: variational dropout (Gal and Ghahramani), one mask per sequence and
  feature, shared over time (Sec. 4.2).
- ``embedding_dropout``: drops whole rows (words) of the embedding matrix (Sec. 4.3).
- ``drop_connect``: DropConnect on a weight matrix, one mask per call (Sec. 2, the
  weight-dropped LSTM); ``WeightDropLSTM`` applies it to the hidden-to-hidden matrices.
- ``activation_reg`` / ``temporal_activation_reg``: AR and TAR (Sec. 4.6; Merity,
  McCann, Socher 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _keep_mask(like: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """Bernoulli(1 - p) mask scaled by 1 / (1 - p), so the expectation is unchanged.

    On the CPU, comparing uniform numbers with p is 1.7x faster than ``bernoulli_``
    (benchmarks/masks.py); on CUDA ``bernoulli_`` is one fused kernel.
    """
    if like.is_cuda:
        return like.new_empty(shape).bernoulli_(1 - p).div_(1 - p)
    return (torch.rand(shape, dtype=like.dtype, device=like.device) >= p).to(like.dtype).div_(1 - p)


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per (sequence, feature), the same at every time step.

    x: (T, B, F). The mask is (1, B, F) and broadcasts over T.
    """
    if not training or p == 0:
        return x
    return x * _keep_mask(x, (1, x.size(1), x.size(2)), p)


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


class WeightDropLSTM(nn.LSTM):
    """A single-layer ``nn.LSTM`` whose hidden-to-hidden matrix is DropConnect-ed.

    One mask is drawn per forward call and shared by every time step and batch element, so
    the recurrence itself is the stock fused kernel (oneDNN on CPU, cuDNN on GPU). The
    dropped matrix is passed with ``torch.func.functional_call``: no parameter is ever
    deleted or replaced, so the state-dict keys are those of ``nn.LSTM``, and the module
    survives ``train()``/``eval()``, ``.to(device)``, ``deepcopy`` and ``load_state_dict``.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_p: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers=1)
        self.weight_p = weight_p

    def forward(self, input: Tensor, hx=None, *, _dropped: bool = False):  # type: ignore[override]
        if _dropped or not self.training or self.weight_p == 0:
            return super().forward(input, hx)
        dropped = {"weight_hh_l0": drop_connect(self.weight_hh_l0, self.weight_p, True)}
        return torch.func.functional_call(self, dropped, (input, hx), {"_dropped": True}, strict=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_p={self.weight_p}"
