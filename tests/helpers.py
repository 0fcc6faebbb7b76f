"""What the tests share: running the CLI (in this process or in another), small corpora
written by the test itself, tiny configs and run directories holding untrained random
models (enough for the cache, scoring, generation and export to be tested in
milliseconds, without training), a run's metrics, and waiting on a run's progress."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from awdlstm.checkpoint import save_checkpoint
from awdlstm.cli import main
from awdlstm.config import SECTIONS, Config, DataConfig
from awdlstm.data import load_corpus
from awdlstm.model import AWDLSTM
from awdlstm.presets import tiny

# ---------------------------------------------------------------------------- corpora

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


def write_splits(path: Path, train: str | bytes = "a b c\nb c d\n", valid: str | bytes = "a b\n",
                 test: str | bytes = "c d\n") -> Path:
    """A corpus directory of exactly these texts (bytes are written as they are)."""
    path.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        if isinstance(text, bytes):
            (path / f"{split}.txt").write_bytes(text)
        else:
            (path / f"{split}.txt").write_text(text, encoding="utf-8")
    return path


def corpus_vocab(corpus: Path):
    return load_corpus(DataConfig(name=str(corpus))).vocab


# ---------------------------------------------------------------------------- configs and runs


def small_config(corpus: Path, *, tie: bool = True) -> Config:
    """The tiny preset on ``corpus``, with a smaller model still (2 layers of 20 units)."""
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


def config_fields():
    """(section, field name, declared type) of every config field."""
    for section in SECTIONS:
        cls = type(getattr(Config(), section))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield section, f.name, hints[f.name]


# ---------------------------------------------------------------------------- the CLI


class CliResult(NamedTuple):
    code: int
    out: str
    err: list[str]  # the lines of stderr


def run_cli(capsys, *argv) -> CliResult:
    """``awdlstm -q ARGV`` in this process (arguments may be paths or numbers)."""
    code = main(["-q", *map(str, argv)])
    io = capsys.readouterr()
    return CliResult(code, io.out, io.err.strip().splitlines())


def cli_error(capsys, *argv) -> str:
    """The one line a failing command prints, after checking it failed the documented way."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def train_tiny(out: Path, data: Path, *extra) -> Path:
    """``awdlstm train --preset tiny --no-eval`` in this process; it must succeed."""
    assert main(["-q", "train", "--preset", "tiny", "--no-eval", "--data", str(data), "--out", str(out),
                 *map(str, extra)]) == 0
    return out


def cli_argv(*argv) -> list[str]:
    """The command line of ``awdlstm -q ARGV`` run by this Python in another process."""
    return [sys.executable, "-m", "awdlstm", "-q", *map(str, argv)]


def spawn_cli(*argv) -> subprocess.Popen:
    """``awdlstm -q ARGV`` started in another process, its output in text pipes."""
    return subprocess.Popen(cli_argv(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------- a run's metrics and progress


def metrics(run: Path) -> list[dict]:
    """Every record of RUN/metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def checks(run: Path) -> list[dict]:
    """The validation checks of a run (no events, no final check)."""
    return [r for r in metrics(run) if "event" not in r and not r.get("final")]


def events(run: Path) -> list[dict]:
    return [r for r in metrics(run) if "event" in r]


def wait_until(condition: Callable[[], bool], what: str, *, proc: subprocess.Popen | None = None,
               timeout: float = 120.0, every: float = 0.02) -> None:
    """Poll ``condition`` until it holds. Fail with a message naming ``what`` when ``timeout``
    seconds pass first, or when ``proc`` (the process that should bring it about) ends."""
    t0 = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"waited {timeout:g} s for {what}, in vain")
        time.sleep(every)


def last_check_step(run: Path) -> int:
    """The step of the run's last check in metrics.jsonl (0 before the first; a torn last
    line, being written, is not read)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "event" not in rec and not rec.get("final") and "step" in rec:
            steps.append(rec["step"])
    return max(steps)


def wait_for_check(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until the run has written a check past ``step`` to its metrics."""
    wait_until(lambda: last_check_step(run) > step,
               f"a check past step {step} in {run / 'metrics.jsonl'} (last: step {last_check_step(run)})",
               proc=proc, timeout=timeout)
