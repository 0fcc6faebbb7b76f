"""The paper's evaluation protocol: the hidden state carried through the whole split,
no dropout, no gradients; loss per token and perplexity = exp(loss)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import DataConfig
from .data import bptt_windows
from .model import AWDLSTM, detach_state
from .runtime import Runtime


@dataclass
class EvalResult:
    loss: float
    """Mean cross-entropy per predicted token (nats)."""
    tokens: int
    """Tokens predicted (every stream's first token is only context)."""

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)


@torch.no_grad()
def evaluate(model: AWDLSTM, source: Tensor, data_cfg: DataConfig, runtime: Runtime) -> EvalResult:
    """source: (N, B) batchified split. Windows of data_cfg.bptt; the state runs across them."""
    was_training = model.training
    model.eval()
    state = model.init_state(source.size(1))
    total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    count = 0
    for win in bptt_windows(source, data_cfg, gen=None):
        inputs = win.inputs.to(runtime.device, non_blocking=True)
        targets = win.targets.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            out = model(inputs, state)
        loss = model.loss(out, targets, reduction="sum")
        total += loss.double()
        count += targets.numel()
        state = detach_state(out.state)
    model.train(was_training)
    return EvalResult(total.item() / count, count)
