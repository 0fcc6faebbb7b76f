"""Recurrent layers by name: the model's layers come from a small registry.

A layer is built by ``build_layer(cfg, input_size, hidden_size, index)`` from the builder
registered under ``cfg.rnn``; it offers ``forward(x (T, B, I), state) -> (y (T, B, H), state)``
and ``init_state(batch_size, like) -> tuple of tensors``. The state is opaque to everything
but the layer: the model and the trainer create, detach, move and save it as a tuple of
tensors per layer without knowing whether it is (h, c) of an LSTM or (c, x_prev) of a QRNN.

``lstm``: ``WeightDropLSTM``, the AWD-LSTM's weight-dropped LSTM (Merity et al. 2018, Sec. 2).
``lstm-cell``: ``cell.CellLSTM``, an LSTM run step by step for what the fused kernel cannot do:
recurrent dropout on the candidate (``model.recurrent_p``) and layer normalisation
(``model.layer_norm``), as OpenSeq2Seq's language models use them; DropConnect on both
matrices like ``lstm``.
``qrnn``: ``qrnn.QRNNLayer`` (Bradbury et al. 2017) as the original code stacks it: window
``model.qrnn_window`` on the first layer and 1 after, DropConnect (``model.weight_p``) on its
input-to-gates matrix, zoneout ``model.zoneout_p`` on its forget gates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .cell import CellLSTM
from .config import ModelConfig
from .errors import ConfigError
from .qrnn import QRNNLayer
from .regularize import drop_connect

LayerState = tuple[Tensor, ...]
LayerBuilder = Callable[[ModelConfig, int, int, int], nn.Module]

RNN_LAYERS: dict[str, LayerBuilder] = {}
"""Builders by the name ``model.rnn`` gives: (config, input size, hidden size, layer index)."""


def register_layer(name: str) -> Callable[[LayerBuilder], LayerBuilder]:
    def add(builder: LayerBuilder) -> LayerBuilder:
        RNN_LAYERS[name] = builder
        return builder

    return add


def build_layer(cfg: ModelConfig, input_size: int, hidden_size: int, index: int) -> nn.Module:
    if cfg.rnn not in RNN_LAYERS:
        raise ConfigError(f"model.rnn must be one of {', '.join(RNN_LAYERS)}; got {cfg.rnn!r}")
    return RNN_LAYERS[cfg.rnn](cfg, input_size, hidden_size, index)


class WeightDropLSTM(nn.LSTM):
    """A single-layer ``nn.LSTM`` whose hidden-to-hidden matrix is DropConnect-ed
    (``weight_p``), and optionally its input-to-hidden matrix too (``input_weight_p``).

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

    def __init__(self, input_size: int, hidden_size: int, weight_p: float = 0.0,
                 input_weight_p: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers=1)
        self.weight_p = weight_p
        self.input_weight_p = input_weight_p

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):  # type: ignore[override]
        if not self.training or (self.weight_p == 0 and self.input_weight_p == 0):
            return super().forward(input, hx)
        if input.dim() != 3:
            raise ValueError(f"WeightDropLSTM takes (T, B, F) input in training, got shape {tuple(input.shape)}")
        if hx is None:
            zeros = input.new_zeros(1, input.size(1), self.hidden_size)
            hx = (zeros, zeros)
        self.check_forward_args(input, hx, None)
        self._update_flat_weights()  # as nn.LSTM.forward: a reassigned weight is seen
        names = self._flat_weights_names  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0
        drop = {"weight_hh_l0": self.weight_p, "weight_ih_l0": self.input_weight_p}
        weights = [drop_connect(w, drop.get(name, 0.0), True) for name, w in zip(names, self._flat_weights)]
        layout = flat_layout(self._flat_weights)
        if layout is not None:
            weights = one_chunk(weights, *layout)
        output, h, c = torch.lstm(input, hx, weights, True, 1, 0.0, True, False, False)
        return output, (h, c)

    def init_state(self, batch_size: int, like: Tensor) -> LayerState:
        """(h, c), each (1, B, H) zeros."""
        zeros = like.new_zeros(1, batch_size, self.hidden_size)
        return zeros, zeros.clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_p={self.weight_p}, input_weight_p={self.input_weight_p}"


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


@register_layer("lstm")
def _lstm(cfg: ModelConfig, input_size: int, hidden_size: int, index: int) -> nn.Module:
    return WeightDropLSTM(input_size, hidden_size, cfg.weight_p, cfg.input_weight_p)


@register_layer("qrnn")
def _qrnn(cfg: ModelConfig, input_size: int, hidden_size: int, index: int) -> nn.Module:
    window = cfg.qrnn_window if index == 0 else 1
    return QRNNLayer(input_size, hidden_size, window=window, weight_p=cfg.weight_p, zoneout_p=cfg.zoneout_p)


@register_layer("lstm-cell")
def _lstm_cell(cfg: ModelConfig, input_size: int, hidden_size: int, index: int) -> nn.Module:
    return CellLSTM(input_size, hidden_size, weight_p=cfg.weight_p, input_weight_p=cfg.input_weight_p,
                    recurrent_p=cfg.recurrent_p, layer_norm=cfg.layer_norm)
