"""Live learning curves in TensorBoard: an observer the Trainer calls at each validation check.

It writes the numbers of each metrics.jsonl record as scalars (tag: what the record calls it)

    valid/perplexity  valid/loss  train/perplexity  train/loss  lr  tokens_per_s  averaging

(``averaging`` is 0 before NT-ASGD's switch and 1 after it), and one histogram per weight
matrix of the norms of its rows (``weight_row_norms/<parameter>``), whose spread shows
units dying or growing. The global step is the optimiser step. Only the main process
writes. A resumed run appends to the same directory; events after the checkpoint it
resumes from (written by the stopped process) are hidden, as metrics.jsonl drops them.
After a rollback (a non-finite loss sends training back to its last checkpoint) the events
from the abandoned steps are hidden the same way. Needs the optional extra ``pip install 'awdlstm[tensorboard]'``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError


def summary_writer_class():
    """torch.utils.tensorboard.SummaryWriter, or a one-line error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'awdlstm[tensorboard]'") from None
    return SummaryWriter


class TensorBoardObserver:
    """``on_check(record)`` writes one metrics record; ``close()`` flushes the event file."""

    def __init__(self, log_dir: Path, model: torch.nn.Module | None = None, *, resume_step: int | None = None,
                 histograms: bool = True) -> None:
        self.writer_class = summary_writer_class()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # purge_step hides events at steps after the checkpoint, which the resumed run writes again.
        self.writer = self._open(None if resume_step is None else resume_step + 1)
        self.model = model
        self.histograms = histograms and model is not None
        self.last_step = -1

    def _open(self, purge_step: int | None):
        return self.writer_class(log_dir=str(self.log_dir), purge_step=purge_step)

    def on_check(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if step <= self.last_step:  # a rollback to an earlier checkpoint: hide what came after it
            self.writer.close()
            self.writer = self._open(step)
        self.last_step = step
        w = self.writer
        w.add_scalar("valid/loss", record["val_loss"], step)
        w.add_scalar("valid/perplexity", record["val_ppl"], step)
        w.add_scalar("train/loss", record["train_loss"], step)
        w.add_scalar("train/perplexity", math.exp(min(record["train_loss"], 700.0)), step)
        w.add_scalar("lr", record["lr"], step)
        if record.get("tokens_per_s") is not None:
            w.add_scalar("tokens_per_s", record["tokens_per_s"], step)
        w.add_scalar("averaging", 1.0 if record.get("phase") == "asgd" else 0.0, step)
        if self.histograms:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    if p.dim() >= 2:
                        norms = p.detach().float().flatten(1).norm(dim=1).cpu()  # (rows,)
                        w.add_histogram(f"weight_row_norms/{name}", norms, step)
        w.flush()

    def close(self) -> None:
        self.writer.close()
