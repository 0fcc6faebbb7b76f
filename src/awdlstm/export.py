"""Export a trained run as plain files that load without pickle:

OUT/model.safetensors  the weights (tied embedding and decoder stored once, re-tied on load)
OUT/config.json        the whole config, as RUN/config.json
OUT/vocab.txt          one word per line, in id order
OUT/README.md          a model card: data, metrics, the command that trained it

Needs the ``safetensors`` package (``pip install 'awdlstm[export]'``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .config import SECTIONS, Config
from .data import Vocab
from .errors import ConfigError
from .loading import EXPORT_FORMAT, EXPORT_VERSION, TIED_KEY, load_parts, safetensors_module
from .model import AWDLSTM, count_parameters
from .presets import PRESETS
from .rundir import RunDir


def export_run(src: Path | str, out_dir: Path | str) -> Path:
    """Write the export of ``src`` (a run directory or a checkpoint) to a new ``out_dir``."""
    st = safetensors_module()
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
                     metadata={"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "awdlstm": __version__})
        (tmp / "model.safetensors").chmod(0o644)  # safetensors writes it private
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / "vocab.txt").write_text("".join(w + "\n" for w in vocab.itos), encoding="utf-8")
        metrics = RunDir(info["run_dir"]).best_metrics() if info.get("run_dir") else {}
        (tmp / "README.md").write_text(model_card(cfg, vocab, model, metrics, info), encoding="utf-8")
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------------------- model card


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
        f"# AWD-LSTM language model ({cfg.data.name}, {m.rnn.upper()})",
        "",
        "An AWD-LSTM (Merity, Keskar, Socher, *Regularizing and Optimizing LSTM Language Models*, 2018) "
        f"exported by awdlstm {__version__}.",
        "",
        f"- **data**: `{cfg.data.name}`; tokens are `line.split()` plus `<eos>` per line; "
        f"vocabulary of {len(vocab):,} words{'' if vocab.unk_id is None else ', unknown words read as `<unk>`'}",
        f"- **model**: embedding {m.emb_size}, {m.num_layers} {m.rnn.upper()} layers ({sizes}), "
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
