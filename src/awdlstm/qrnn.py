"""The quasi-recurrent layer (QRNN) of Bradbury, Merity, Xiong, Socher, *Quasi-Recurrent
Neural Networks* (ICLR 2017), as the AWD-LSTM code runs it next to the LSTM (``--model QRNN``).

A QRNN layer replaces the LSTM's recurrent matrix products with one matrix product over a
window of inputs, done for all time steps at once, and keeps only an element-wise
recurrence (Sec. 2 of the paper, "fo-pooling")::

    [Z; F; O] = W [x_{t-k+1}, ..., x_t] + b          one nn.Linear, (window * I) -> 3H
    z_t = tanh(Z_t)   f_t = sigmoid(F_t)   o_t = sigmoid(O_t)
    c_t = f_t * z_t + (1 - f_t) * c_{t-1}            "ForgetMult", ``forget_mult``
    h_t = o_t * c_t

How the AWD-LSTM code uses it, and what this module does the same way:

- The first layer of the model has window 2 (it sees ``[x_{t-1}, x_t]``); the later layers
  have window 1 (``x_t`` only).
- Weight drop is DropConnect on the input-to-gates matrix ``linear.weight`` (there is no
  hidden-to-hidden matrix), one mask per forward call (``regularize.drop_connect``). Here
  the dropped matrix goes to ``F.linear``; no parameter is deleted or swapped, so the state
  dict holds just ``linear.weight`` and ``linear.bias``.
- The last ``window - 1`` inputs of one BPTT window are carried into the next one, so the
  first step of a window sees the true previous word. The original keeps them on the
  module and clears them at the start of each epoch; here they are part of the layer's
  state ``(c, x_prev)``, which the caller resets (a fresh ``init_state``) at the start of
  each epoch and of each evaluation, and detaches between windows like the LSTM's (h, c).
- Zoneout on the forget gate (off by default, as in the original): in training each f_t
  is set to 0 with probability ``zoneout_p``, so that unit keeps c_{t-1}; no rescaling.

``forget_mult`` is the recurrence, vectorised over batch and hidden: a custom autograd
function that loops over time with two fused ops per step (``sub``, ``addcmul`` into a
preallocated output) and computes its gradient by the reverse recurrence, also step by
step, so autograd records one node instead of T small graphs. On the CPU this is the fastest of the ways measured in
``benchmarks/forget_mult.py`` (see there); it has not yet been measured on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .errors import ConfigError
from .regularize import batch_mask, drop_connect

QRNNState = tuple[Tensor, Tensor]
"""(c, x_prev): c (1, B, H), the last memory; x_prev (window - 1, B, I), the last inputs."""


class _ForgetMult(torch.autograd.Function):
    """c_t = f_t z_t + (1 - f_t) c_{t-1} over (T, B, H) tensors, c_{-1} = c0 (B, H).

    Forward, per step: c_t = c_{t-1} + f_t (z_t - c_{t-1}), two fused ops into the output.
    Backward, with d_t the gradient reaching c_t (from the output at t and from c_{t+1}):
        d_t = grad_t + (1 - f_{t+1}) d_{t+1}
        dL/df_t = d_t (z_t - c_{t-1}),  dL/dz_t = d_t f_t,  dL/dc0 = (1 - f_0) d_0
    Everything is done step by step on (B, H) slices, which stay in cache between the ops of
    a step: each (T, B, H) tensor is read or written once per pass, not once per op.
    """

    @staticmethod
    def forward(ctx, f: Tensor, z: Tensor, c0: Tensor) -> Tensor:
        out = torch.empty_like(z)  # (T, B, H)
        diff = torch.empty_like(c0)  # (B, H): z_t - c_{t-1}
        prev = c0
        for t in range(out.size(0)):
            torch.sub(z[t], prev, out=diff)
            prev = torch.addcmul(prev, f[t], diff, out=out[t])
        ctx.save_for_backward(f, z, c0, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        f, z, c0, out = ctx.saved_tensors
        need_f, need_z, need_c0 = ctx.needs_input_grad
        grad_f = torch.empty_like(f) if need_f else None
        grad_z = torch.empty_like(z) if need_z else None
        d, d_next = torch.empty_like(c0), torch.zeros_like(c0)  # (B, H): d_t and d_{t+1}
        for t in range(f.size(0) - 1, -1, -1):
            torch.add(grad_out[t], d_next, out=d)
            if t + 1 < f.size(0):
                d.addcmul_(f[t + 1], d_next, value=-1)  # + (1 - f_{t+1}) d_{t+1}
            if need_f:
                torch.sub(z[t], out[t - 1] if t > 0 else c0, out=grad_f[t]).mul_(d)
            if need_z:
                torch.mul(d, f[t], out=grad_z[t])
            d, d_next = d_next, d
        grad_c0 = d_next - f[0] * d_next if need_c0 else None
        return grad_f, grad_z, grad_c0


def forget_mult(f: Tensor, z: Tensor, c0: Tensor | None = None) -> Tensor:
    """c_t = f_t * z_t + (1 - f_t) * c_{t-1} for t = 0..T-1, with c_{-1} = c0 (zeros if None).

    f, z: (T, B, H); c0: (B, H) or None. Returns c: (T, B, H) in the dtype of f and z
    (promoted). Half-precision inputs (bf16/fp16, e.g. under autocast) are computed in
    fp32, since a long product of gates in bf16 drifts; the result is cast back.
    """
    if f.shape != z.shape or f.dim() != 3:
        raise ValueError(f"forget_mult takes f and z of one shape (T, B, H), got {tuple(f.shape)} and {tuple(z.shape)}")
    if c0 is not None and c0.shape != f.shape[1:]:
        raise ValueError(f"forget_mult takes c0 of shape (B, H) = {tuple(f.shape[1:])}, got {tuple(c0.shape)}")
    dtype = torch.promote_types(f.dtype, z.dtype)
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if c0 is None:
        c0 = f.new_zeros(f.shape[1:], dtype=work)
    with torch.autocast(f.device.type, enabled=False):
        c = _ForgetMult.apply(f.contiguous().to(work), z.contiguous().to(work), c0.contiguous().to(work))
    return c.to(dtype)


class QRNNLayer(nn.Module):
    """One QRNN layer: ``forward(x (T, B, I), state) -> (y (T, B, H), new state)``.

    ``window``: how many inputs each step sees (2 on the model's first layer, 1 after).
    ``weight_p``: DropConnect on ``linear.weight`` in training. ``zoneout_p``: probability
    of zeroing each forget-gate value in training. The parameters keep ``nn.Linear``'s
    default initialisation, as the original does.
    """

    def __init__(self, input_size: int, hidden_size: int, window: int = 1,
                 weight_p: float = 0.0, zoneout_p: float = 0.0) -> None:
        super().__init__()
        for name, value in (("input size", input_size), ("hidden size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"QRNN {name} must be an integer >= 1, got {value!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"model.qrnn_window must be an integer >= 1, got {window!r}")
        for name, value in (("model.weight_p", weight_p), ("model.zoneout_p", zoneout_p)):
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.window = window
        self.weight_p = weight_p
        self.zoneout_p = zoneout_p
        self.linear = nn.Linear(window * input_size, 3 * hidden_size)

    def init_state(self, batch_size: int, like: Tensor) -> QRNNState:
        """Zeros on ``like``'s device and dtype: c (1, B, H), x_prev (window - 1, B, I)."""
        c = like.new_zeros(1, batch_size, self.hidden_size)
        x_prev = like.new_zeros(self.window - 1, batch_size, self.input_size)
        return c, x_prev

    def forward(self, x: Tensor, state: QRNNState | None = None) -> tuple[Tensor, QRNNState]:
        if x.dim() != 3 or x.size(0) < 1 or x.size(2) != self.input_size:
            raise ValueError(f"QRNNLayer takes (T >= 1, B, {self.input_size}) input, got shape {tuple(x.shape)}")
        steps, batch = x.size(0), x.size(1)
        c0, x_prev = self.init_state(batch, x) if state is None else state
        if c0.shape != (1, batch, self.hidden_size) or x_prev.shape != (self.window - 1, batch, self.input_size):
            raise ValueError(f"QRNNLayer state for batch {batch} must be c {(1, batch, self.hidden_size)} and "
                             f"x_prev {(self.window - 1, batch, self.input_size)}, got {tuple(c0.shape)} "
                             f"and {tuple(x_prev.shape)}")
        seq = torch.cat([x_prev, x]) if self.window > 1 else x  # (window - 1 + T, B, I)
        # Step t sees [x_{t-window+1}, ..., x_t], oldest first: (T, B, window * I).
        source = torch.cat([seq[k:k + steps] for k in range(self.window)], dim=2) if self.window > 1 else x
        weight = drop_connect(self.linear.weight, self.weight_p, self.training)
        gates = F.linear(source, weight, self.linear.bias)  # (T, B, 3H)
        z, f, o = gates.chunk(3, dim=2)
        z, f, o = torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)
        if self.training and self.zoneout_p > 0:
            keep = batch_mask(f, tuple(f.shape), lambda t, sh: t.new_empty(sh).bernoulli_(1 - self.zoneout_p))
            f = f * keep  # a zeroed f_t keeps c_{t-1}
        c = forget_mult(f, z, c0[0])  # (T, B, H)
        y = o * c
        new_x_prev = seq[seq.size(0) - (self.window - 1):]  # the last window - 1 inputs
        return y, (c[-1:], new_x_prev)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, weight_p={self.weight_p}, "
                f"zoneout_p={self.zoneout_p}")
