"""The Python API: a trained language model from a run, a checkpoint or an export.

    from awdlstm import LanguageModel
    lm = LanguageModel.load("runs/ptb")         # RUN/best.pt, a .pt file, or an export directory
    lm.score(["the cat sat on the mat"])        # per line: log-probability, bits, perplexity
    lm.perplexity(open("text.txt").read())      # one running text
    lm.generate("the market", words=20, seed=1)
    stats = lm.gradient_stats(open("train.txt").read())    # once, for dynamic evaluation
    lm.dynamic_perplexity(open("text.txt").read(), stats)  # the model learning as it reads

Only the weights, the vocabulary and the model config are needed: nothing of the training
state (optimiser, averaging, generators) is read, and the training code is not imported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from .config import Config
from .data import Vocab, split_lines
from .dynamic import DynamicParams, GradStats, dynamic_trace, gradient_stats
from .errors import CheckpointError
from .generate import detokenize, encode_prompt, generate_ids
from .loading import load_parts
from .model import AWDLSTM
from .runtime import pick_device
from .score import LineScore, ScoreReport, score_lines, score_stream


class LanguageModel:
    """A trained AWD-LSTM with its vocabulary, ready to score and generate (no dropout)."""

    def __init__(self, model: AWDLSTM, vocab: Vocab, config: Config | None = None) -> None:
        if model.vocab_size != len(vocab):
            raise CheckpointError(f"the model has {model.vocab_size} output words but the vocabulary {len(vocab)}")
        self.model = model.eval()
        self.vocab = vocab
        self.config = config

    @classmethod
    def load(cls, path: Path | str, *, device: str | None = "cpu") -> LanguageModel:
        """A run directory (its best.pt), a checkpoint file, or an export directory."""
        model, vocab, cfg, _ = load_parts(path)
        return cls(model.to(pick_device(device)), vocab, cfg)

    @property
    def device(self) -> torch.device:
        return self.model.encoder.weight.device

    def score(self, lines: Iterable[str] | str, *, batch_size: int = 32) -> ScoreReport:
        """Each line on its own (zero state, <eos> fed first, the line's words then <eos>
        as targets). A string is split into lines first, as a file is read (\n, \r\n, \r)."""
        if isinstance(lines, str):
            lines = split_lines(lines)
        return score_lines(self.model, self.vocab, list(lines), batch_size=batch_size)

    def perplexity(self, text: str) -> float:
        """Perplexity of a text read as one stream (the state carried across its lines, as
        ``awdlstm evaluate`` reads a split); every token, the first word included, counts."""
        return self.score_text(text).perplexity

    def score_text(self, text: str) -> LineScore:
        return score_stream(self.model, self.vocab, split_lines(text))

    def gradient_stats(self, train_text: str, *, batch_size: int = 100, bptt: int = 5,
                       max_tokens: int | None = None) -> GradStats:
        """The mean squared gradients that dynamic evaluation divides by, from one pass over
        training text (the text the model was trained on; the authors: batch 100, bptt 5).
        Measure once and pass to every ``dynamic_perplexity`` call; ``GradStats.to_dict``
        and ``from_dict`` store them with ``torch.save``/``torch.load``."""
        ids, _ = self.vocab.encode_lines(split_lines(train_text), where="training text")
        return gradient_stats(self.model, ids, batch_size=batch_size, bptt=bptt, max_tokens=max_tokens)

    def dynamic_perplexity(self, text: str, stats: GradStats, *, lr: float = 5e-5, lam: float = 0.002,
                           eps: float = 2e-5, bptt: int = 5) -> float:
        """Perplexity of a text read as one stream with dynamic evaluation (Krause et al.
        2018): after each segment of ``bptt`` tokens is scored the model takes a gradient step
        on it, pulled back towards the trained weights. Tokens are counted as ``perplexity``
        counts them (equal to it at lr = 0). The loaded model is not changed."""
        ids, _ = self.vocab.encode_lines(split_lines(text))
        seq = torch.cat([ids.new_tensor([self.vocab.eos_id]), ids])
        trace = dynamic_trace(self.model, seq, stats, DynamicParams(lr, lam, eps, bptt).validate())
        return math.exp(min(-trace.model_log_probs.mean().item(), 700.0))

    def generate(self, prompt: str = "", *, words: int = 50, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> str:
        """The continuation of ``prompt`` (not including it); <eos> becomes a line break.
        The same seed gives the same text on the same device."""
        ids = generate_ids(self.model, encode_prompt(self.vocab, prompt), words,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return detokenize(self.vocab.decode(ids))
