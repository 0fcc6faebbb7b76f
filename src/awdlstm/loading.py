"""Loading a trained model: from a run directory (its ``best.pt``), a checkpoint file, or an
export directory (``model.safetensors``, ``config.json``, ``vocab.txt``). The one place the
API, the CLI commands, export, the cache and evaluation get a model from; only the weights, the
vocabulary and the config are read, never the training state."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoint import checkpoint_config, load_checkpoint, load_weights
from .config import Config
from .data import Corpus, Vocab, load_corpus, read_lines
from .errors import CheckpointError, DataError
from .model import AWDLSTM

EXPORT_FORMAT = "awdlstm-export"
EXPORT_VERSION = "1"
TIED_KEY = "decoder.weight"
"""With tie_weights, the same tensor as ``encoder.weight``: an export stores it once."""


def safetensors_module():
    """``safetensors.torch``, or a one-line error saying how to install it."""
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError("export needs the safetensors package: pip install 'awdlstm[export]'") from None
    return safetensors.torch


def build_model(cfg: Config, vocab_size: int, state: dict[str, Any], where: str) -> AWDLSTM:
    """The model of ``cfg`` with the weights ``state``, in eval mode on the CPU."""
    model = AWDLSTM(cfg.model, vocab_size)
    load_weights(model, state, where)
    return model.eval()


def load_export(path: Path | str) -> tuple[AWDLSTM, Vocab, Config]:
    st = safetensors_module()
    path = Path(path)
    for name in ("model.safetensors", "config.json", "vocab.txt"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} missing; not a complete awdlstm export")
    try:
        cfg = Config.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / 'config.json'}: not a valid config ({err})") from None
    try:
        vocab = Vocab(read_lines(path / "vocab.txt"))
    except DataError as err:
        raise CheckpointError(str(err)) from None
    try:
        state = st.load_file(str(path / "model.safetensors"), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{path / 'model.safetensors'}: damaged ({str(err)[:120]})") from None
    if cfg.model.tie_weights and TIED_KEY not in state and "encoder.weight" in state:
        state[TIED_KEY] = state["encoder.weight"]
    return build_model(cfg, len(vocab), state, str(path)), vocab, cfg


def load_parts(path: Path | str) -> tuple[AWDLSTM, Vocab, Config, dict[str, Any]]:
    """Model (on the CPU, eval mode), vocabulary, config and plain facts about the source
    (``kind``: run, checkpoint or export; ``checkpoint``; ``run_dir``; ``progress``)."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        model, vocab, cfg = load_export(path)
        return model, vocab, cfg, {"kind": "export", "path": str(path)}
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise CheckpointError(f"{path}: no best.pt (a run directory) or model.safetensors (an export) there; "
                                  f"train first: awdlstm train ... --out {path}")
        ckpt_path, kind, run_dir = path / "best.pt", "run", path
    else:
        ckpt_path, kind, run_dir = path, "checkpoint", path.parent
    ckpt = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, ckpt_path)
    try:
        vocab = Vocab(ckpt["vocab"])
        state = ckpt["model"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{ckpt_path}: checkpoint lacks {err}; "
                              "use a best.pt or last.pt written by awdlstm") from None
    model = build_model(cfg, len(vocab), state, str(ckpt_path))
    info = {"kind": kind, "path": str(path), "checkpoint": str(ckpt_path), "run_dir": str(run_dir),
            "progress": ckpt.get("progress"), "val_loss": ckpt.get("val_loss")}
    return model, vocab, cfg, info


def load_with_corpus(path: Path | str, *, data: str | None = None,
                     data_root: str | None = None) -> tuple[AWDLSTM, Config, Corpus, dict[str, Any]]:
    """A trained model (run directory, checkpoint or export), its config, and the corpus it
    reads (its own, or ``data``), checked to have the model's vocabulary."""
    model, vocab, cfg, info = load_parts(path)
    if data is not None:
        cfg.data = replace(cfg.data, name=data, root=data_root)
    elif data_root is not None:
        cfg.data = replace(cfg.data, root=data_root)
    corpus = load_corpus(cfg.data)
    if vocab.itos != corpus.vocab.itos:
        raise CheckpointError(
            f"{path} has a vocabulary of {len(vocab)} words that differs from the one built from "
            f"{corpus.path} ({len(corpus.vocab)} words); use the corpus the run was trained on"
        )
    return model, cfg, corpus, info
