"""A cell-level LSTM layer, for the LSTM variants a fused kernel cannot run: recurrent
dropout on the candidate (Semeniuta, Severyn, Barth 2016, *Recurrent Dropout without Memory
Loss*) and layer normalisation (Ba, Kiros, Hinton 2016, *Layer Normalization*, Sec. 3.1), as
NVIDIA OpenSeq2Seq's WikiText-103 language model uses them, next to DropConnect on both weight
matrices. ``layers.py`` registers it as ``model.rnn=lstm-cell``.

The step, with PyTorch's gate order i, f, g, o and x_t W^T computed for all T at once::

    a_t = x_t W^T + h_{t-1} U^T + b                        (B, 4H); b = b_ih + b_hh
    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o)     g = tanh(a_g)
    c_t = f c_{t-1} + i d(g)                               d: recurrent dropout on g only
    h_t = o tanh(c_t)

With every option off this is ``nn.LSTM`` exactly (same parameter names without ``_l0``,
same initialisation uniform(-1/sqrt(H), 1/sqrt(H))).

- ``weight_p``: DropConnect on U (``weight_hh``), as the fused layer; ``input_weight_p``: on
  W (``weight_ih``). One mask per forward call (``regularize.drop_connect``), the same at
  every step.
- ``recurrent_p``: dropout on the candidate g_t before it enters the cell, in training only,
  survivors scaled by 1/(1-p). A fresh mask per step by default (Semeniuta et al.; OpenSeq2Seq's
  ``recurrent_keep_prob``); ``recurrent_per_sequence=True`` keeps one mask per sequence.
  The memory c_{t-1} itself is never dropped, so no information is lost from it.
- ``layer_norm``: the normalisation of TensorFlow's ``LayerNormBasicLSTMCell``, which
  OpenSeq2Seq's cell extends: each gate's pre-activation, the sum x W_k^T + h U_k^T of gate k,
  is normalised over its H units with its own gain and shift (four normalisations), and so is
  the new cell state (a fifth), before the tanh:

      a_k = LN_k(x_t W_k^T + h_{t-1} U_k^T)                 k in i, f, g, o; no bias b
      c_t = LN_c(f c_{t-1} + i d(g))                        carried to the next step
      h_t = o tanh(c_t)

  LN(v) = gain * (v - mean(v)) / sqrt(var(v) + eps) + shift over the H units, eps = 1e-5
  (TensorFlow uses 1e-12; 1e-5 keeps a constant vector finite in fp32). As in TensorFlow the
  layer then has no ``bias_ih``/``bias_hh``: the shifts are the biases. TensorFlow adds a fixed
  forget bias of 1 after the forget gate's normalisation; here the forget gate's shift starts
  at 1 instead (the same function and gradient; the shift can move). Gains start at 1, the
  other shifts at 0. Note the two departures from Ba et al.: they normalise x W^T and h U^T
  separately, and pass on the unnormalised c_t (normalising only the tanh's input).

Speed: without layer norm the recurrence is one autograd function (``_LSTMRecurrence``) that
loops over time with one ``addmm`` (h U^T) and a few element-wise ops into preallocated
buffers per step, and computes its gradient by the reverse recurrence, with the weight
gradient of U as one matrix product over all steps; autograd records one node, not T small
graphs. With layer norm the steps are plain autograd ops. Measured against the fused layer in
``benchmarks/cell_lstm.py``; not yet measured on a GPU, where a per-step Python loop will
be far slower than cuDNN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .errors import ConfigError
from .regularize import drop_connect, keep_mask

CellState = tuple[Tensor, Tensor]
"""(h, c), each (1, B, H), as the fused layer's."""

LN_EPS = 1e-5


class _LSTMRecurrence(torch.autograd.Function):
    """The LSTM recurrence given the input projections: xw (T, B, 4H) (x W^T + b), U (4H, H),
    h0, c0 (B, H) and an optional candidate mask (T, B, H). Returns y (T, B, H) and c_T.

    Backward, with dh_t the gradient reaching h_t (from y_t and from step t+1) and dc_t the
    one reaching c_t:
        dc_t += dh_t o_t (1 - tanh(c_t)^2)
        da_i = dc_t m_t g_t i(1-i),   da_f = dc_t c_{t-1} f(1-f),
        da_g = dc_t i_t m_t (1-g^2),  da_o = dh_t tanh(c_t) o(1-o)
        dh_{t-1} = da_t U,            dc_{t-1} = dc_t f_t
    and after the loop dU = sum_t da_t^T h_{t-1}, one product over the (T*B) rows.
    """

    @staticmethod
    def forward(ctx, xw: Tensor, U: Tensor, h0: Tensor, c0: Tensor, mask: Tensor | None):
        T, B, H4 = xw.shape
        H = H4 // 4
        act = torch.empty_like(xw)  # (T, B, 4H): i, f, g, o after their nonlinearities
        cs = xw.new_empty(T + 1, B, H)  # c_{-1} .. c_{T-1}
        tanh_c = xw.new_empty(T, B, H)
        y = xw.new_empty(T, B, H)
        cs[0] = c0
        Ut = U.t()
        h = h0
        for t in range(T):
            gates = torch.addmm(xw[t], h, Ut)  # (B, 4H)
            a = act[t]
            torch.sigmoid(gates, out=a)
            torch.tanh(gates[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])
            i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            ig = i * g if mask is None else i * g * mask[t]
            torch.addcmul(ig, f, cs[t], out=cs[t + 1])
            torch.tanh(cs[t + 1], out=tanh_c[t])
            h = torch.mul(o, tanh_c[t], out=y[t])
        ctx.save_for_backward(act, cs, tanh_c, y, U, h0, mask)
        return y, cs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, grad_c: Tensor):
        act, cs, tanh_c, y, U, h0, mask = ctx.saved_tensors
        T, B, H4 = act.shape
        H = H4 // 4
        # Per-step factors that need no gradient, for all steps at once.
        deriv = act * (1 - act)  # sigmoid' for i, f, o
        g_all = act[:, :, 2 * H:3 * H]
        deriv[:, :, 2 * H:3 * H] = 1 - g_all * g_all  # tanh' for g
        o_all = act[:, :, 3 * H:]
        dc_from_h = o_all * (1 - tanh_c * tanh_c)  # (T, B, H): d c_t / d h_t through tanh
        gm = g_all if mask is None else g_all * mask  # the candidate that entered the cell
        im = act[:, :, :H] if mask is None else act[:, :, :H] * mask  # d c_t / d g_t
        da = torch.empty_like(act)  # (T, B, 4H): gradient of the pre-activations
        dc = grad_c.clone() if grad_c is not None else act.new_zeros(B, H)
        dh = act.new_zeros(B, H)
        dh_t = torch.empty_like(dh)
        for t in range(T - 1, -1, -1):
            torch.add(grad_y[t], dh, out=dh_t)
            dc.addcmul_(dh_t, dc_from_h[t])
            d = da[t]
            torch.mul(dc, gm[t], out=d[:, :H])
            torch.mul(dc, cs[t], out=d[:, H:2 * H])
            torch.mul(dc, im[t], out=d[:, 2 * H:3 * H])
            torch.mul(dh_t, tanh_c[t], out=d[:, 3 * H:])
            d.mul_(deriv[t])
            dh = torch.mm(d, U)
            dc.mul_(act[t, :, H:2 * H])
        h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])[:T]  # (T, B, H): h_{t-1}
        grad_U = torch.mm(da.view(T * B, H4).t(), h_prev.view(T * B, H))
        return da, grad_U, dh, dc, None


class CellLSTM(nn.Module):
    """One LSTM layer run step by step: ``forward(x (T, B, I), state) -> (y (T, B, H), (h, c))``.

    See the module docstring for the step and the options; all probabilities in [0, 1).
    """

    def __init__(self, input_size: int, hidden_size: int, *, weight_p: float = 0.0,
                 input_weight_p: float = 0.0, recurrent_p: float = 0.0, layer_norm: bool = False,
                 recurrent_per_sequence: bool = False) -> None:
        super().__init__()
        for name, value in (("input size", input_size), ("hidden size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LSTM cell {name} must be an integer >= 1, got {value!r}")
        for name, value in (("model.weight_p", weight_p), ("model.input_weight_p", input_weight_p),
                            ("model.recurrent_p", recurrent_p)):
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_p = weight_p
        self.input_weight_p = input_weight_p
        self.recurrent_p = recurrent_p
        self.layer_norm = layer_norm
        self.recurrent_per_sequence = recurrent_per_sequence
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        if layer_norm:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
            self.ln_gates_weight = nn.Parameter(torch.empty(4 * H))  # gains of LN_i, LN_f, LN_g, LN_o
            self.ln_gates_bias = nn.Parameter(torch.empty(4 * H))
            self.ln_cell_weight = nn.Parameter(torch.empty(H))
            self.ln_cell_bias = nn.Parameter(torch.empty(H))
        else:
            self.bias_ih = nn.Parameter(torch.empty(4 * H))
            self.bias_hh = nn.Parameter(torch.empty(4 * H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)
        for w in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if w is not None:
                nn.init.uniform_(w, -bound, bound)
        if self.layer_norm:
            H = self.hidden_size
            nn.init.ones_(self.ln_gates_weight)
            nn.init.zeros_(self.ln_gates_bias)
            with torch.no_grad():
                self.ln_gates_bias[H:2 * H] = 1.0  # TensorFlow's forget bias of 1
            nn.init.ones_(self.ln_cell_weight)
            nn.init.zeros_(self.ln_cell_bias)

    def init_state(self, batch_size: int, like: Tensor) -> CellState:
        """(h, c), each (1, B, H) zeros."""
        zeros = like.new_zeros(1, batch_size, self.hidden_size)
        return zeros, zeros.clone()

    def candidate_mask(self, T: int, B: int, like: Tensor) -> Tensor | None:
        """The recurrent-dropout mask on g: (T, B, H), or (1, B, H) per sequence, scaled by
        1/(1-p); None outside training or at p = 0."""
        if not self.training or self.recurrent_p == 0:
            return None
        steps = 1 if self.recurrent_per_sequence else T
        return keep_mask(like, (steps, B, self.hidden_size), self.recurrent_p)

    def forward(self, x: Tensor, state: CellState | None = None) -> tuple[Tensor, CellState]:
        if x.dim() != 3 or x.size(-1) != self.input_size:
            raise ValueError(f"CellLSTM takes (T, B, {self.input_size}) input, got shape {tuple(x.shape)}")
        T, B, _ = x.shape
        if state is None:
            state = self.init_state(B, x)
        h0, c0 = state[0].reshape(B, -1), state[1].reshape(B, -1)
        W = drop_connect(self.weight_ih, self.input_weight_p, self.training)
        U = drop_connect(self.weight_hh, self.weight_p, self.training)
        dtype = torch.promote_types(x.dtype, W.dtype)
        work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            # Half precision (autocast) runs in fp32: the cell state is a long running sum.
            x, W, U, h0, c0 = (t.to(work) for t in (x, W, U, h0, c0))
            if self.layer_norm:
                xw = torch.mm(x.reshape(T * B, -1), W.t()).view(T, B, -1)
            else:
                bias = (self.bias_ih + self.bias_hh).to(work)
                xw = torch.addmm(bias, x.reshape(T * B, -1), W.t()).view(T, B, -1)  # (T, B, 4H)
            mask = self.candidate_mask(T, B, xw)
            if self.layer_norm:
                y, c = self._layer_norm_steps(xw, U, h0, c0, mask)
            else:
                if mask is not None and mask.size(0) != T:
                    mask = mask.expand(T, -1, -1)
                y, c = _LSTMRecurrence.apply(xw.contiguous(), U, h0, c0, mask)
        y = y.to(dtype)
        return y, (y[-1:].clone() if T else h0.unsqueeze(0).to(dtype), c.unsqueeze(0).to(dtype))

    def _layer_norm_steps(self, xw: Tensor, U: Tensor, h: Tensor, c: Tensor,
                          mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The LayerNormBasicLSTMCell step (module docstring), by autograd ops."""
        T, B, H4 = xw.shape
        H = H4 // 4
        gain = self.ln_gates_weight.to(xw.dtype).view(4, H)
        shift = self.ln_gates_bias.to(xw.dtype).view(4, H)
        ln_w, ln_b = self.ln_cell_weight.to(xw.dtype), self.ln_cell_bias.to(xw.dtype)
        Ut = U.t()
        ys = []
        for t in range(T):
            a = torch.addmm(xw[t], h, Ut).view(B, 4, H)
            a = torch.addcmul(shift, F.layer_norm(a, (H,), eps=LN_EPS), gain)  # (B, 4, H) per gate
            s = torch.sigmoid(a)
            g = torch.tanh(a[:, 2])
            if mask is not None:
                g = g * mask[t if mask.size(0) > 1 else 0]
            c = F.layer_norm(torch.addcmul(s[:, 1] * c, s[:, 0], g), (H,), ln_w, ln_b, LN_EPS)
            h = s[:, 3] * torch.tanh(c)
            ys.append(h)
        y = torch.stack(ys) if ys else xw.new_empty(0, B, H)
        return y, c

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, weight_p={self.weight_p}, "
                f"input_weight_p={self.input_weight_p}, recurrent_p={self.recurrent_p}, "
                f"layer_norm={self.layer_norm}")
