"""Sampling text from a trained model, word by word.

The prompt is read after an ``<eos>``, as the start of a line, so an empty prompt starts a
new line (document) from ``<eos>`` alone. Each next word is drawn from the model's
distribution divided by a temperature, optionally cut to the k most likely words (top-k)
and to the smallest set of words whose probabilities add up to p (top-p, nucleus). Draws
use their own seeded CPU generator, so the same seed gives the same text.
"""

from __future__ import annotations

import logging
import secrets

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import EOS, Vocab
from .errors import ConfigError
from .model import AWDLSTM

log = logging.getLogger(__name__)


def check_sampling(words: int, temperature: float, top_k: int | None, top_p: float | None,
                   seed: int | None = None) -> None:
    if words < 1:
        raise ConfigError(f"--words must be >= 1, got {words}")
    if not temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    if seed is not None and not 0 <= seed < 2**64:  # what torch's generators accept
        raise ConfigError(f"--seed must be in [0, 2**64), got {seed}")


def encode_prompt(vocab: Vocab, prompt: str) -> Tensor:
    """Ids of <eos> + the prompt's words. Unknown words become <unk> with a warning; a
    vocabulary without <unk> cannot read them (DataError from Vocab.encode)."""
    words = prompt.split()
    unknown = [w for w in words if w not in vocab]
    ids, _ = vocab.encode(words, where="prompt")
    if unknown:
        log.warning("prompt words not in the vocabulary, read as <unk>: %s", " ".join(unknown))
    return torch.cat([ids.new_tensor([vocab.eos_id]), ids])


def sample_next(logits: Tensor, gen: torch.Generator, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> int:
    """One id drawn from logits (V,)."""
    probs = F.softmax(logits.double().cpu() / temperature, dim=-1)
    if top_k is not None and top_k < probs.numel():
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p is not None and top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass of the more likely words
        # Keep a word while the words above it hold less than top_p (the first always).
        keep = before < top_p * sorted_p.sum()
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen).item())


@torch.no_grad()
def generate_ids(model: AWDLSTM, prompt_ids: Tensor, words: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> list[int]:
    """``words`` ids that continue ``prompt_ids`` (1-D, starting with <eos>)."""
    check_sampling(words, temperature, top_k, top_p, seed)
    if seed is None:
        seed = secrets.randbits(63)
        log.info("generating with --seed %d", seed)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    device = model.encoder.weight.device
    out = model(prompt_ids.view(-1, 1).to(device))  # the whole prompt at once
    state, last = out.state, model.log_probs(out)[-1, 0]
    generated: list[int] = []
    while True:
        generated.append(sample_next(last, gen, temperature, top_k, top_p))
        if len(generated) == words:
            return generated
        out = model(torch.tensor([[generated[-1]]], device=device), state)
        state, last = out.state, model.log_probs(out)[-1, 0]


def detokenize(words: list[str]) -> str:
    """Words joined by spaces; <eos> ends a line."""
    lines, current = [], []
    for w in words:
        if w == EOS:
            lines.append(" ".join(current))
            current = []
        else:
            current.append(w)
    lines.append(" ".join(current))
    return "\n".join(lines)
