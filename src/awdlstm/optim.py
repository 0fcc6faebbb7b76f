"""NT-ASGD: non-monotonically triggered averaged SGD (Merity et al. 2018, Sec. 3, Alg. 1).

SGD runs until a validation check is worse than the best of all checks except the last
``n``; from that step T on, the iterates are averaged, ``(1 / (K - T + 1)) * sum_{i=T}^{K}
w_i``, and the averaged weights are the ones evaluated and kept. The average is held by
``torch.optim.swa_utils.AveragedModel`` (equal weights, a running mean). The paper includes
w_T itself; the original code (switching to ``torch.optim.ASGD``) starts with the step
after the trigger. The difference is one iterate among thousands.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .config import OptimConfig


def nonmono_triggered(history: list[float], current: float, n: int) -> bool:
    """True when ``current`` is worse than the best check made before the last ``n``.

    ``history`` holds the earlier checks, not ``current``. With n = 5 the earliest possible
    trigger is the 7th check (six earlier ones, the best of the first one compared).
    """
    return len(history) > n and current > min(history[:-n])


class NTASGD:
    """The trigger's history and, once it has fired, the running average of the weights."""

    def __init__(self, model: nn.Module, cfg: OptimConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.history: list[float] = []
        self.averaging_since: int | None = None
        """The optimiser step T at which averaging started (None: plain SGD)."""
        self.averaged: AveragedModel | None = None

    @property
    def averaging(self) -> bool:
        return self.averaged is not None

    @property
    def phase(self) -> str:
        return "asgd" if self.averaging else self.cfg.optimizer

    def check(self, val_loss: float, step: int) -> bool:
        """Record one validation check; start averaging if the trigger fires. Returns
        whether averaging started now."""
        fire = (
            self.cfg.ntasgd
            and self.cfg.optimizer == "sgd"
            and not self.averaging
            and nonmono_triggered(self.history, val_loss, self.cfg.nonmono)
        )
        self.history.append(val_loss)
        if fire:
            self.start(step)
        return fire

    def should_stop(self, val_loss: float) -> bool:
        """Fine-tuning's stopping rule: the same non-monotone criterion, then record."""
        stop = nonmono_triggered(self.history, val_loss, self.cfg.nonmono)
        self.history.append(val_loss)
        return stop

    def start(self, step: int) -> None:
        """Begin averaging with the current weights as w_T."""
        if self.averaging:
            return
        self.averaging_since = step
        self.averaged = AveragedModel(self.model)
        self.averaged.update_parameters(self.model)

    def update(self) -> None:
        """Add the weights after an optimiser step to the average (no-op before T)."""
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)

    def eval_model(self) -> nn.Module:
        """The weights to validate and keep: the average once it exists."""
        return self.averaged.module if self.averaged is not None else self.model

    @property
    def num_averaged(self) -> int:
        return 0 if self.averaged is None else int(self.averaged.n_averaged.item())

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "averaging_since": self.averaging_since,
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state["history"]]
        self.averaging_since = state["averaging_since"]
        self.averaged = None
        if state["averaged"] is not None:
            self.averaged = AveragedModel(self.model)
            self.averaged.load_state_dict(state["averaged"])


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
