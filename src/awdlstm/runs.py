"""Run directories: what `awdlstm train`, `finetune` and `evaluate` do with them.

RUN/config.json   the whole resolved config
RUN/metrics.jsonl one line per validation check
RUN/best.pt       the weights with the best validation loss (averaged once NT-ASGD fired)
RUN/last.pt       everything needed to resume exactly
RUN/results.json  valid and test perplexity of best.pt, written when training ends
RUN/finetune/     the same layout for `awdlstm finetune RUN`
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoint import checkpoint_config, load_checkpoint, load_weights, write_json
from .config import Config
from .data import Corpus, batchify, load_corpus
from .errors import CheckpointError, ConfigError
from .evaluate import evaluate
from .runtime import Runtime, keep_freed_memory, make_runtime
from .train import Trainer, describe

log = logging.getLogger(__name__)


class RunLock:
    """RUN/.lock holds the training process's id while it runs, so a second training into
    the same directory refuses instead of overwriting it; a lock left by a dead process is
    taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise ConfigError(f"{self.path.parent} is in use by another training (process {pid}); "
                                      "wait for it, stop it, or choose another directory") from None
                log.warning("taking over the stale lock of process %s in %s", pid, self.path.parent)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._clear_stale_temporaries()
            return self
        raise ConfigError(f"could not lock {self.path.parent}; remove {self.path} if no training runs there")

    def __exit__(self, *exc) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)

    def _clear_stale_temporaries(self) -> None:
        """Remove the half-written checkpoints (``.NAME.tmp-PID``) of a process killed while
        it saved: with the lock held, no live training writes here."""
        for tmp in self.path.parent.glob(".*.tmp-*"):
            pid = tmp.name.rpartition(".tmp-")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and tmp.is_file():
                tmp.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_run_dir(out: Path, resume: bool) -> None:
    if resume:
        if not (out / "last.pt").is_file():
            raise CheckpointError(f"{out}: no last.pt to resume from; start a run with --out {out} (without --resume)")
    elif any((out / name).exists() for name in ("last.pt", "best.pt", "metrics.jsonl", "results.json")):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    elif (out / "config.json").exists():
        log.warning("%s has a config.json but no checkpoint (a run stopped before its first save); starting over", out)


def train_run(cfg: Config | None, out: Path, *, resume: bool = False, max_epochs: int | None = None,
              max_minutes: float | None = None, final_eval: bool = True, device: str | None = None,
              max_steps: int | None = None) -> dict[str, Any]:
    out = Path(out)
    _check_run_dir(out, resume)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        if ckpt.get("finetune"):
            raise CheckpointError(f"{out} is a fine-tuning run; continue it with: awdlstm finetune {out.parent} --resume")
        cfg = checkpoint_config(ckpt, out / "last.pt")
    assert cfg is not None
    if device is not None:
        cfg.train = replace(cfg.train, device=device)
    cfg.validate()
    runtime = _training_runtime(cfg)
    corpus = load_corpus(cfg.data)
    trainer = Trainer(cfg, corpus, runtime, out)
    if ckpt is not None:
        trainer.resume(ckpt, str(out / "last.pt"))
        log.info("resuming %s at epoch %d, step %d", out, trainer.progress.epoch, trainer.progress.step)
    elif runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
    _log_start(cfg, corpus, trainer, runtime)
    with RunLock(out):
        return _fit_and_report(trainer, out, max_epochs, max_minutes, final_eval,
                               f"awdlstm train --out {shlex.quote(str(out))} --resume", max_steps)


def finetune_run(run: Path, *, resume: bool = False, max_epochs: int | None = None,
                 max_minutes: float | None = None, final_eval: bool = True, device: str | None = None) -> dict[str, Any]:
    """The paper's fine-tuning: averaged SGD from the best weights, averaging from the
    first step, stopping on the non-monotone criterion."""
    run = Path(run)
    out = run / "finetune"
    _check_run_dir(out, resume)
    src_path = out / "last.pt" if resume else run / "best.pt"
    src = load_checkpoint(src_path)
    cfg = checkpoint_config(src, src_path)
    if device is not None:
        cfg.train = replace(cfg.train, device=device)
    cfg.validate()
    if cfg.optim.optimizer != "sgd":
        raise ConfigError("fine-tuning is averaged SGD; this run used optim.optimizer=adam")
    runtime = _training_runtime(cfg)
    corpus = load_corpus(cfg.data)
    trainer = Trainer(cfg, corpus, runtime, out, finetune=True)
    if resume:
        trainer.resume(src, str(src_path))
    else:
        if src["vocab"] != corpus.vocab.itos:
            raise CheckpointError(f"{run}/best.pt was trained on another vocabulary than {corpus.path}")
        load_weights(trainer.model, src.get("model"), str(src_path))
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
        trainer.progress.best_val_loss = float(src.get("val_loss", math.inf))
        trainer.save_best(trainer.progress.best_val_loss)
    _log_start(cfg, corpus, trainer, runtime)
    with RunLock(out):
        return _fit_and_report(trainer, out, max_epochs, max_minutes, final_eval,
                               f"awdlstm finetune {shlex.quote(str(run))} --resume")


def _training_runtime(cfg: Config) -> Runtime:
    runtime = make_runtime(cfg.train)
    if runtime.device.type == "cpu":
        keep_freed_memory()  # steps reuse the last step's memory instead of faulting in new pages
    return runtime


def _log_start(cfg: Config, corpus: Corpus, trainer: Trainer, runtime: Runtime) -> None:
    log.info("config: %s", json.dumps(cfg.to_dict(), separators=(",", ":")))
    log.info("data %s: %d/%d/%d tokens, vocabulary %d", corpus.path, corpus.train.numel(), corpus.valid.numel(),
             corpus.test.numel(), len(corpus.vocab))
    log.info("model: %s; device %s, %s", describe(trainer.model), runtime.device, runtime.precision)


def _fit_and_report(trainer: Trainer, out: Path, max_epochs, max_minutes, final_eval: bool, resume_cmd: str,
                    max_steps: int | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    reason = trainer.fit(max_epochs=max_epochs, max_minutes=max_minutes, max_steps=max_steps)
    p = trainer.progress
    summary: dict[str, Any] = {"stopped": reason, "epoch": p.epoch - (0 if p.in_epoch else 1), "step": p.step,
                               "seconds": round(time.perf_counter() - t0, 1)}
    if reason == "interrupted":
        summary["signal"] = trainer._signal
        log.warning("stopped by %s after step %d; checkpoint saved. Resume with: %s", trainer._signal, p.step, resume_cmd)
        return summary
    trainer.final_check()
    if reason in ("time limit", "max epochs", "max steps"):
        log.info("stopped (%s) after step %d; resume with: %s", reason, p.step, resume_cmd)
    if final_eval and trainer.rt.is_main and (out / "best.pt").exists():
        results = {s: evaluate_checkpoint(out / "best.pt", s, runtime=trainer.rt) for s in ("valid", "test")}
        results["stopped"] = reason
        write_json(out / "results.json", results)
        summary.update(results)
        log.info("best checkpoint: valid ppl %.2f, test ppl %.2f", results["valid"]["perplexity"], results["test"]["perplexity"])
    return summary


def load_with_corpus(path: Path | str, *, data: str | None = None, data_root: str | None = None):
    """A trained model (run directory, checkpoint or export), its config, and the corpus it
    reads (its own, or ``data``), checked to have the model's vocabulary."""
    from .api import load_parts

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


def evaluate_checkpoint(path: Path, split: str, *, batch_size: int | None = None, runtime: Runtime | None = None,
                        device: str | None = None, data: str | None = None, data_root: str | None = None) -> dict[str, Any]:
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    model, cfg, corpus, info = load_with_corpus(path, data=data, data_root=data_root)
    if runtime is None:
        train_cfg = cfg.train if device is None else replace(cfg.train, device=device)
        runtime = make_runtime(train_cfg)
    model.to(runtime.device)
    if batch_size is None:
        batch_size = cfg.data.test_batch_size if split == "test" else cfg.data.eval_batch_size
    source = batchify(corpus.split(split), batch_size, what=split)
    t0 = time.perf_counter()
    res = evaluate(model, source, cfg.data, runtime)
    seconds = time.perf_counter() - t0
    return {"split": split, "tokens": res.tokens, "loss": res.loss, "perplexity": res.perplexity,
            "bits_per_token": res.bits_per_token, "batch_size": batch_size,
            "checkpoint": info.get("checkpoint", info["path"]), "seconds": round(seconds, 2)}
