"""The Python API: a trained language model from a run, a checkpoint or an export.

    from awdlstm import LanguageModel
    lm = LanguageModel.load("runs/ptb")         # RUN/best.pt, a .pt file, or an export directory
    lm.score(["the cat sat on the mat"])        # per line: log-probability, bits, perplexity
    lm.perplexity(open("text.txt").read())      # one running text
    lm.generate("the market", words=20, seed=1)

Only the weights, the vocabulary and the model config are needed: nothing of the training
state (optimiser, averaging, generators) is read, and the training code is not imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from .config import Config
from .data import Vocab, split_lines
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
    def load(cls, path: Path | str, *, device: str | None = "cpu") -> "LanguageModel":
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

    def generate(self, prompt: str = "", *, words: int = 50, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> str:
        """The continuation of ``prompt`` (not including it); <eos> becomes a line break.
        The same seed gives the same text on the same device."""
        ids = generate_ids(self.model, encode_prompt(self.vocab, prompt), words,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return detokenize(self.vocab.decode(ids))
