"""Scoring text with a trained model: the log-probability of every line on its own.

Each line is independent: it starts from a zero state, ``<eos>`` is fed as the first input
(the line starts where a previous sentence ended, as in the corpora), and the targets are
the line's words then ``<eos>``. So every token of the line, the first word included, is
predicted, and a line of n words has n + 1 tokens; an empty line is one token, ``<eos>``.
Many lines run at once in padded batches; the LSTM is causal and each column starts from
zero, so padding after a line's end cannot change its score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import EOS, Vocab
from .errors import ConfigError
from .model import AWDLSTM

LN2 = math.log(2)


@dataclass
class LineScore:
    log_prob: float
    """Natural log of the probability of all the tokens (<= 0)."""
    tokens: int
    """Tokens predicted: the words and the closing <eos>."""
    unknown: int
    """Words outside the vocabulary, read as <unk>."""

    @property
    def bits(self) -> float:
        """-log2 of the probability: the cost of the tokens in bits."""
        return -self.log_prob / LN2

    @property
    def perplexity(self) -> float:
        if self.tokens == 0:
            return math.nan
        return math.exp(min(-self.log_prob / self.tokens, 700.0))

    def to_dict(self) -> dict:
        return {"log_prob": self.log_prob, "bits": self.bits, "tokens": self.tokens,
                "unknown": self.unknown, "perplexity": self.perplexity}


@dataclass
class ScoreReport:
    lines: list[LineScore]
    total: LineScore

    def to_dict(self) -> dict:
        return {"lines": [{"line": i + 1, **s.to_dict()} for i, s in enumerate(self.lines)],
                "total": self.total.to_dict()}


def encode_line(vocab: Vocab, line: str, where: str) -> tuple[Tensor, int]:
    """(n + 2,) ids: <eos>, the words, <eos>; and the number of unknown words."""
    ids, unknown = vocab.encode(line.split() + [EOS], where=where)
    return torch.cat([ids.new_tensor([vocab.eos_id]), ids]), unknown


@torch.no_grad()
def sequence_log_probs(model: AWDLSTM, seqs: list[Tensor], *, seq_len: int = 256) -> list[float]:
    """Sum of log p(seq[t+1] | seq[:t+1]) for each 1-D id tensor, all in one padded batch.

    Each sequence starts from a zero state. The batch runs in time windows of ``seq_len``
    with the state carried, so a very long line never needs (T, B, V) logits at once.
    """
    model.eval()
    device = model.encoder.weight.device
    lengths = torch.tensor([s.numel() - 1 for s in seqs])  # predictions per sequence
    longest = int(lengths.max())
    batch = torch.zeros(longest + 1, len(seqs), dtype=torch.long)  # padding: any valid id
    for j, s in enumerate(seqs):
        batch[: s.numel(), j] = s
    # mask[t, j]: position t of sequence j predicts a real token.
    mask = torch.arange(longest).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
    batch, mask = batch.to(device), mask.to(device)
    total = torch.zeros(len(seqs), dtype=torch.float64, device=device)
    state = model.init_state(len(seqs))
    for start in range(0, longest, seq_len):
        end = min(start + seq_len, longest)
        out = model(batch[start:end], state)
        state = out.state
        target_logp = -model.token_nll(out, batch[start + 1 : end + 1])  # (t, B)
        total += (target_logp.double() * mask[start:end]).sum(0)
    return total.tolist()


def score_lines(model: AWDLSTM, vocab: Vocab, lines: list[str], *, batch_size: int = 32,
                where: str = "input") -> ScoreReport:
    """Score each line independently (see the module docstring)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    encoded = [encode_line(vocab, line, f"{where}, line {i + 1}") for i, line in enumerate(lines)]
    log_probs = [0.0] * len(lines)
    # Longest first, so each batch holds lines of similar length and pads little.
    order = sorted(range(len(lines)), key=lambda i: -encoded[i][0].numel())
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        for i, lp in zip(idx, sequence_log_probs(model, [encoded[i][0] for i in idx])):
            log_probs[i] = lp
    scores = [LineScore(lp, ids.numel() - 1, unk) for lp, (ids, unk) in zip(log_probs, encoded)]
    total = LineScore(sum(s.log_prob for s in scores), sum(s.tokens for s in scores),
                      sum(s.unknown for s in scores))
    return ScoreReport(scores, total)


def score_stream(model: AWDLSTM, vocab: Vocab, lines: list[str], *, where: str = "text") -> LineScore:
    """Score lines as one running text: the state is carried from line to line (as
    ``awdlstm evaluate`` does), and <eos> is fed first so every token is predicted."""
    tokens = [w for line in lines for w in line.split() + [EOS]]
    ids, unknown = vocab.encode(tokens, where=where)
    seq = torch.cat([ids.new_tensor([vocab.eos_id]), ids])
    (log_prob,) = sequence_log_probs(model, [seq])
    return LineScore(log_prob, ids.numel(), unknown)
