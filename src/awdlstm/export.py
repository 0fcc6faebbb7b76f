"""Export a trained run as plain files that load without pickle:

OUT/model.safetensors  the weights (tied embedding and decoder stored once, re-tied on load)
OUT/config.json        the whole config, as RUN/config.json
OUT/vocab.txt          one word per line, in id order
OUT/README.md          a model card: data, metrics, the command that trained it

Needs the ``safetensors`` package (``pip install 'awdlstm[export]'``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .config import SECTIONS, Config
from .data import Vocab, read_lines
from .errors import CheckpointError, ConfigError, DataError
from .model import AWDLSTM, count_parameters

FORMAT = "awdlstm-export"
VERSION = "1"
TIED_KEY = "decoder.weight"  # with tie_weights, the same tensor as encoder.weight


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError("export needs the safetensors package: pip install 'awdlstm[export]'") from None
    return safetensors.torch


def export_run(src: Path | str, out_dir: Path | str) -> Path:
    """Write the export of ``src`` (a run directory or a checkpoint) to a new ``out_dir``."""
    from .api import load_parts

    st = _safetensors()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfigError(f"{out_dir} already exists; choose a new OUT_DIR (export never overwrites)")
    model, vocab, cfg, info = load_parts(src)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.model.tie_weights:
        del state[TIED_KEY]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written next to OUT_DIR, then renamed: an interrupted export leaves no half directory.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
    try:
        st.save_file(state, str(tmp / "model.safetensors"),
                     metadata={"format": FORMAT, "version": VERSION, "awdlstm": __version__})
        (tmp / "model.safetensors").chmod(0o644)  # safetensors writes it private
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / "vocab.txt").write_text("".join(w + "\n" for w in vocab.itos), encoding="utf-8")
        metrics = _run_metrics(Path(info["run_dir"])) if info.get("run_dir") else {}
        (tmp / "README.md").write_text(model_card(cfg, vocab, model, metrics, info), encoding="utf-8")
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_export(path: Path | str) -> tuple[AWDLSTM, Vocab, Config]:
    from .api import build_model

    st = _safetensors()
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
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path / 'model.safetensors'}: damaged ({str(err)[:120]})") from None
    if cfg.model.tie_weights and TIED_KEY not in state and "encoder.weight" in state:
        state[TIED_KEY] = state["encoder.weight"]
    model = build_model(cfg, len(vocab), state, str(path))
    return model, vocab, cfg


# ---------------------------------------------------------------------------- model card


def _run_metrics(run_dir: Path) -> dict[str, Any]:
    """Perplexities from RUN/results.json, else the best validation check in metrics.jsonl."""
    try:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        found = {s: results[s] for s in ("valid", "test") if isinstance(results.get(s), dict)}
        return found | {"source": "results.json", "stopped": results.get("stopped")}
    except (OSError, ValueError):
        pass
    try:
        text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line]
        best = min((r for r in rows if "val_loss" in r), key=lambda r: r["val_loss"])
        return {"valid": {"loss": best["val_loss"], "perplexity": math.exp(best["val_loss"]),
                          "step": best.get("step")}, "source": "metrics.jsonl"}
    except (OSError, ValueError, KeyError):
        return {}


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def train_command(cfg: Config) -> str:
    """The shortest ``awdlstm train`` command that gives ``cfg``: the preset closest to it,
    then --data and one --set per field that differs."""
    from .presets import PRESETS

    want = cfg.to_dict()

    def diffs(base: dict) -> list[tuple[str, str, Any]]:
        return [(s, k, v) for s in SECTIONS for k, v in want[s].items()
                if base[s].get(k) != v and (s, k) not in (("data", "name"), ("data", "root"))]

    name, base = min(((n, fn().to_dict()) for n, fn in PRESETS.items()), key=lambda nb: len(diffs(nb[1])))
    args = ["awdlstm", "train", "--preset", name]
    if cfg.data.name != base["data"]["name"]:
        args += ["--data", cfg.data.name]
    if cfg.data.root is not None:
        args += ["--data-root", cfg.data.root]
    args += [f"--set {s}.{k}={shlex.quote(_format_value(v))}" for s, k, v in diffs(base)]
    args += ["--out", "RUN"]
    return " ".join(a if a.startswith("--set ") else shlex.quote(a) for a in args)


def model_card(cfg: Config, vocab: Vocab, model: AWDLSTM, metrics: dict[str, Any], info: dict[str, Any]) -> str:
    m = cfg.model
    sizes = " -> ".join(str(s) for s in [m.emb_size, *model.layer_sizes])
    lines = [
        f"# AWD-LSTM language model ({cfg.data.name})",
        "",
        "An AWD-LSTM (Merity, Keskar, Socher, *Regularizing and Optimizing LSTM Language Models*, 2018) "
        f"exported by awdlstm {__version__}.",
        "",
        f"- **data**: `{cfg.data.name}`; tokens are `line.split()` plus `<eos>` per line; "
        f"vocabulary of {len(vocab):,} words{'' if vocab.unk_id is None else ', unknown words read as `<unk>`'}",
        f"- **model**: embedding {m.emb_size}, {m.num_layers} LSTM layers ({sizes}), "
        f"{'tied' if m.tie_weights else 'untied'} embedding and softmax, {count_parameters(model):,} parameters",
        f"- **dropout** (training only): embed_p {m.embed_p}, input_p {m.input_p}, hidden_p {m.hidden_p}, "
        f"weight_p {m.weight_p}, output_p {m.output_p}",
    ]
    progress = info.get("progress") or {}
    if progress.get("step"):
        lines.append(f"- **trained**: {progress['step']:,} steps, to epoch {progress.get('epoch')}")
    for split, note in (("valid", f"batch {cfg.data.eval_batch_size}"), ("test", f"batch {cfg.data.test_batch_size}")):
        if split in metrics:
            r = metrics[split]
            lines.append(f"- **{split} perplexity**: {r['perplexity']:.2f} "
                         f"({note}, state carried through the split; from the run's {metrics['source']})")
    if "valid" not in metrics and "test" not in metrics:
        lines.append("- **metrics**: none recorded with the run (evaluate it with `awdlstm evaluate`)")
    lines += [
        "",
        "## How it was trained",
        "",
        "```",
        train_command(cfg),
        "```",
        "",
        "This rebuilds the configuration (the full one is in `config.json`); limits given on the command "
        "line (`--max-epochs`, `--max-minutes`, `--max-steps`) are not part of it"
        + (f". The run stopped on: {metrics['stopped']}." if metrics.get("stopped") else "."),
        "",
        "## Use",
        "",
        "```python",
        "from awdlstm import LanguageModel",
        'lm = LanguageModel.load("THIS_DIRECTORY")',
        'lm.score(["the cat sat on the mat"]).total.perplexity',
        'lm.generate("the", words=20, seed=0)',
        "```",
        "",
        "or `awdlstm score THIS_DIRECTORY FILE`, `awdlstm generate THIS_DIRECTORY --prompt TEXT`.",
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights; with tied weights `decoder.weight` is not stored, it is "
        "`encoder.weight`",
        "- `config.json`: the configuration (`awdlstm.Config.from_dict`)",
        "- `vocab.txt`: the vocabulary, one word per line in id order",
        "",
    ]
    return "\n".join(lines)
