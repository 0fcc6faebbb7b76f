"""Tiny corpora and run directories holding untrained random models: enough for the
cache, scoring, generation and export to be tested in milliseconds, without training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from awdlstm.checkpoint import save_checkpoint
from awdlstm.config import DataConfig
from awdlstm.data import load_corpus
from awdlstm.model import AWDLSTM
from awdlstm.presets import tiny

WORDS = "the a cat dog sat ran on under mat table red big small and it was".split()


def write_corpus(path: Path, *, lines: int = 120, seed: int = 0, unk: bool = True) -> Path:
    """Random lines over a small vocabulary; with ``unk``, some <unk> tokens in train."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", lines), ("valid", lines // 3), ("test", lines // 3)):
        rows = []
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(0, 9))]
            if unk and split == "train" and rng.random() < 0.2:
                words.append("<unk>")
            rows.append(" ".join(words))
        (path / f"{split}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def small_config(corpus: Path, *, tie: bool = True):
    cfg = tiny()
    cfg.data.name = str(corpus)
    cfg.model.emb_size, cfg.model.hidden_size, cfg.model.num_layers = 12, 20, 2
    cfg.model.tie_weights = tie
    return cfg


def fake_run(run: Path, corpus: Path, *, tie: bool = True, seed: int = 0, results: bool = True) -> Path:
    """RUN/best.pt and RUN/config.json as `awdlstm train` writes them, with random weights."""
    cfg = small_config(corpus, tie=tie)
    vocab = load_corpus(cfg.data).vocab
    torch.manual_seed(seed)
    model = AWDLSTM(cfg.model, len(vocab))
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"kind": "best", "config": cfg.to_dict(), "vocab": vocab.itos, "model": model.state_dict(),
                     "progress": {"step": 7, "epoch": 1}, "val_loss": 3.0}, run / "best.pt")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    if results:
        (run / "results.json").write_text(json.dumps({
            "valid": {"perplexity": 21.5, "loss": 3.07}, "test": {"perplexity": 20.25, "loss": 3.01}}))
    return run


def corpus_vocab(corpus: Path):
    return load_corpus(DataConfig(name=str(corpus))).vocab
