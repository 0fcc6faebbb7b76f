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

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    the recurrence itself is the stock fused kernel (oneDNN on CPU, cuDNN on GPU). In
    training the functional LSTM op that ``nn.LSTM.forward`` calls runs with the dropped
    matrix in place of ``weight_hh_l0``; no parameter is ever deleted, replaced or swapped,
    so the state-dict keys are those of ``nn.LSTM``, the module survives
    ``train()``/``eval()``, ``.to(device)``, ``deepcopy`` and ``load_state_dict``, and the
    parameters stay where ``flatten_parameters`` put them (swapping them in, as
    ``functional_call`` or the original code's ``setattr`` do, makes ``nn.LSTM`` copy every
    weight into a new cuDNN buffer on each call).

    cuDNN takes its weights without a copy only when they lie in one buffer in its own
    layout. When the parameters are so flattened (on a GPU), the weights of the step are
    written into one new buffer with the same layout (``one_chunk``): one pass over the
    layer's weights, which the dropped matrix needs anyway.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_p: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers=1)
        self.weight_p = weight_p

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):  # type: ignore[override]
        if not self.training or self.weight_p == 0:
            return super().forward(input, hx)
        if input.dim() != 3:
            raise ValueError(f"WeightDropLSTM takes (T, B, F) input in training, got shape {tuple(input.shape)}")
        if hx is None:
            zeros = input.new_zeros(1, input.size(1), self.hidden_size)
            hx = (zeros, zeros)
        self.check_forward_args(input, hx, None)
        self._update_flat_weights()  # as nn.LSTM.forward: a reassigned weight is seen
        names = self._flat_weights_names  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0
        weights = [drop_connect(w, self.weight_p, True) if name == "weight_hh_l0" else w
                   for name, w in zip(names, self._flat_weights)]
        layout = flat_layout(self._flat_weights)
        if layout is not None:
            weights = one_chunk(weights, *layout)
        output, h, c = torch.lstm(input, hx, weights, True, 1, 0.0, True, False, False)
        return output, (h, c)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_p={self.weight_p}"


def flat_layout(params: list[Tensor]) -> tuple[list[int], int] | None:
    """Where ``params`` lie in their common buffer, as ``flatten_parameters`` arranges them
    for cuDNN: (offset of each, size of the buffer), in elements; None unless they all are
    contiguous views of one storage (always None on the CPU, where nothing is flattened)."""
    storage = params[0].untyped_storage()
    if any(p.untyped_storage().data_ptr() != storage.data_ptr() or not p.is_contiguous() for p in params):
        return None
    return [p.storage_offset() for p in params], storage.nbytes() // params[0].element_size()


def one_chunk(tensors: list[Tensor], offsets: list[int], size: int) -> list[Tensor]:
    """Copies of ``tensors`` as views of one new buffer of ``size`` elements, each at its
    offset (gaps zero-filled), differentiable like the tensors themselves."""
    order = sorted(range(len(tensors)), key=offsets.__getitem__)
    pieces, end = [], 0
    for i in order:
        if offsets[i] > end:
            pieces.append(tensors[i].new_zeros(offsets[i] - end))
        pieces.append(tensors[i].reshape(-1))
        end = offsets[i] + tensors[i].numel()
    if size > end:
        pieces.append(tensors[0].new_zeros(size - end))
    flat = torch.cat(pieces)
    return [flat[o:o + t.numel()].view_as(t) for t, o in zip(tensors, offsets)]
