"""The AWD-LSTM language model (Merity, Keskar, Socher 2018, Sec. 2-4).

Embedding (with embedding dropout) -> locked dropout -> N single-layer recurrent layers
(weight-dropped LSTMs, or QRNNs: ``model.rnn``, see layers.py) with locked dropout between
them -> locked dropout -> decoder tied to the embedding. The model knows nothing about
devices, precision or ranks, and keeps no hidden state: ``forward(tokens, state)`` returns
the new state and the caller detaches it. The state is a list with one tuple of tensors per
layer, whose meaning only the layer knows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .heads import build_head
from .layers import LayerState, build_layer
from .regularize import embed_with_dropout, locked_dropout, step_dropout

# One tuple of tensors per layer: (h, c) for an LSTM, each (1, B, H_layer).
State = list[LayerState]


class LMOutput(NamedTuple):
    state: State
    """The recurrent state after the last step (not detached)."""
    raw_output: Tensor
    """(T, B, H_last) the last LSTM layer's output before dropout (for TAR and the cache)."""
    dropped_output: Tensor
    """(T, B, H_last) the same after output dropout: what the output layer (``model.head``)
    turns into word probabilities, and what AR penalises."""


class AWDLSTM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.encoder = nn.Embedding(vocab_size, cfg.emb_size)
        sizes = [cfg.emb_size] + [cfg.hidden_size] * (cfg.num_layers - 1)
        last = cfg.emb_size if cfg.tie_weights else cfg.hidden_size
        sizes.append(last)
        self.rnns = nn.ModuleList(build_layer(cfg, sizes[i], sizes[i + 1], i) for i in range(cfg.num_layers))
        self.decoder = nn.Linear(last, vocab_size)
        if cfg.tie_weights:
            self.decoder.weight = self.encoder.weight
        self.reset_parameters()
        # The output layer borrows the decoder: the full softmax, or one that never builds
        # (T, B, V) in training (heads.py). Its own parameters (split: the tail rows) are
        # under head.*, the decoder's under decoder.* whichever head it is.
        self.head = build_head(cfg.head, self.decoder, vocab_size, cfg.split_cutoffs or None, cfg.num_sampled)

    def reset_parameters(self) -> None:
        # Paper: embedding uniform(-0.1, 0.1); LSTM weights keep PyTorch's
        # uniform(-1/sqrt(H), 1/sqrt(H)); the decoder bias starts at zero.
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if not self.cfg.tie_weights:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    @property
    def layer_sizes(self) -> list[int]:
        return [rnn.hidden_size for rnn in self.rnns]

    def init_state(self, batch_size: int) -> State:
        return [rnn.init_state(batch_size, self.encoder.weight) for rnn in self.rnns]

    def forward(self, tokens: Tensor, state: State | None = None) -> LMOutput:
        """tokens: (T, B) word ids."""
        cfg = self.cfg
        if state is None:
            state = self.init_state(tokens.size(1))
        drop = locked_dropout if cfg.dropout_masks == "locked" else step_dropout
        if cfg.embed_dropout == "word":
            x = embed_with_dropout(tokens, self.encoder.weight, cfg.embed_p, self.training)  # (T, B, E)
        else:
            x = step_dropout(F.embedding(tokens, self.encoder.weight), cfg.embed_p, self.training)
        last = len(self.rnns) - 1
        # The dropout on each layer's input: input_p on the embedding, hidden_p between layers,
        # last_input_p (when set) before the last layer.
        input_ps = [cfg.input_p] + [cfg.hidden_p] * last
        if cfg.last_input_p is not None:
            input_ps[last] = cfg.last_input_p
        new_state: State = []
        for i, rnn in enumerate(self.rnns):
            x = drop(x, input_ps[i], self.training)
            x, layer_state = rnn(x, state[i])  # (T, B, H_i)
            new_state.append(tuple(layer_state))
        raw = x
        dropped = drop(raw, cfg.output_p, self.training)
        return LMOutput(new_state, raw, dropped)

    def token_nll(self, out: LMOutput, targets: Tensor) -> Tensor:
        """-log p(target) (fp32) at every position: (T, B) for targets (T, B)."""
        hidden = out.dropped_output
        return self.head.nll(hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1).long()).view(targets.shape)

    def loss(self, out: LMOutput, targets: Tensor, reduction: str = "mean") -> Tensor:
        """The cross-entropy of targets (T, B), fp32, mean or sum over tokens."""
        hidden = out.dropped_output
        return self.head.loss(hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1).long(), reduction)

    def log_probs(self, out: LMOutput) -> Tensor:
        """(T, B, V) fp32 log-probabilities over the whole vocabulary (builds them all)."""
        hidden = out.dropped_output
        return self.head.log_probs(hidden.reshape(-1, hidden.size(-1))).view(*hidden.shape[:2], -1)


def detach_state(state: State) -> State:
    """Cut the graph between BPTT windows, keeping the values."""
    return [tuple(t.detach() for t in layer) for layer in state]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
