"""What ``awdlstm train``, ``finetune`` and ``evaluate`` do with run directories (their
format: rundir.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoint import checkpoint_config, load_checkpoint, load_weights
from .config import Config
from .data import Corpus, batchify, load_corpus
from .errors import CheckpointError, ConfigError
from .evaluate import evaluate
from .loading import load_with_corpus
from .presets import get_preset
from .rundir import RunDir, StopReason
from .runtime import Runtime, env_ranks, inference_runtime, keep_freed_memory, make_runtime
from .train import Trainer, check_batch_for_ranks, describe

log = logging.getLogger(__name__)


def check_limits(max_epochs: int | None, max_minutes: float | None, max_steps: int | None) -> None:
    """The limits of one training session: each None or a positive number."""
    for flag, value in (("--max-epochs", max_epochs), ("--max-steps", max_steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be an integer >= 1, got {value}")
    if max_minutes is not None and not (math.isfinite(max_minutes) and max_minutes > 0):
        raise ConfigError(f"--max-minutes must be a number > 0, got {max_minutes}")


def train_run(cfg: Config | None, out: Path, *, resume: bool = False, max_epochs: int | None = None,
              max_minutes: float | None = None, final_eval: bool = True, device: str | None = None,
              max_steps: int | None = None, preset: str | None = None,
              tensorboard: Path | str | bool | None = None) -> dict[str, Any]:
    """Train ``cfg`` into the run directory ``out``, or with ``resume`` continue the run there
    with its saved config (``preset``, if given, must then be the config it was made from).
    ``tensorboard``: True (RUN/tensorboard) or a directory, for live curves."""
    check_limits(max_epochs, max_minutes, max_steps)
    _check_tensorboard(tensorboard)
    run = RunDir(out)
    if env_ranks().is_main:  # rank 0 writes the directory, so only it judges it
        run.check_start(resume)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run.last)
        if ckpt.get("finetune"):
            raise CheckpointError(f"{out} is a fine-tuning run; continue it with: awdlstm finetune {out.parent} --resume")
        cfg = checkpoint_config(ckpt, run.last)
        if preset is not None:
            _check_same_preset(cfg, preset)
    assert cfg is not None
    if device is not None:
        cfg.train = replace(cfg.train, device=device)
    cfg.validate()
    check_batch_for_ranks(cfg.data.batch_size, env_ranks().world_size)
    with _training_runtime(cfg) as runtime:
        corpus = load_corpus(cfg.data)
        trainer = Trainer(cfg, corpus, runtime, run.path)
        if ckpt is not None:
            trainer.resume(ckpt, str(run.last))
            log.info("resuming %s at epoch %d, step %d", run, trainer.progress.epoch, trainer.progress.step)
        elif runtime.is_main:
            run.write_config(cfg.to_dict())
        _log_start(cfg, corpus, trainer, runtime)
        with _locked(run, runtime), _observing(trainer, run.path, tensorboard, resumed=ckpt is not None):
            return _fit_and_report(trainer, run, max_epochs, max_minutes, final_eval,
                                   f"awdlstm train --out {shlex.quote(str(out))} --resume", max_steps)


def _check_same_preset(cfg: Config, preset: str) -> None:
    """--preset with --resume: the run's config must be the preset's (where the data lives
    and the device are not part of that)."""
    ignored = {("data", "name"), ("data", "root"), ("train", "device")}
    theirs, ours = cfg.to_dict(), get_preset(preset).to_dict()
    for section, values in ours.items():
        for key, value in values.items():
            if (section, key) not in ignored and theirs[section][key] != value:
                raise ConfigError(
                    f"--resume continues with the run's saved config, which is not preset {preset} "
                    f"({section}.{key} is {theirs[section][key]!r} in the run, {value!r} in the preset); drop --preset")


def finetune_run(run: Path, *, resume: bool = False, max_epochs: int | None = None,
                 max_minutes: float | None = None, final_eval: bool = True, device: str | None = None,
                 tensorboard: Path | str | bool | None = None) -> dict[str, Any]:
    """The paper's fine-tuning: averaged SGD from the best weights, averaging from the
    first step, stopping on the non-monotone criterion. ``tensorboard`` as for train_run
    (True: RUN/finetune/tensorboard)."""
    check_limits(max_epochs, max_minutes, max_steps=None)
    _check_tensorboard(tensorboard)
    parent = RunDir(run)
    out = parent.finetune
    if env_ranks().is_main:
        out.check_start(resume, f"continue it with: awdlstm finetune {parent} --resume")
    src_path = out.last if resume else parent.best
    src = load_checkpoint(src_path)
    cfg = checkpoint_config(src, src_path)
    if device is not None:
        cfg.train = replace(cfg.train, device=device)
    cfg.validate()
    if cfg.optim.optimizer != "sgd":
        raise ConfigError("fine-tuning is averaged SGD; this run used optim.optimizer=adam")
    check_batch_for_ranks(cfg.data.batch_size, env_ranks().world_size)
    with _training_runtime(cfg) as runtime:
        corpus = load_corpus(cfg.data)
        trainer = Trainer(cfg, corpus, runtime, out.path, finetune=True)
        if resume:
            trainer.resume(src, str(src_path))
        else:
            if src["vocab"] != corpus.vocab.itos:
                raise CheckpointError(f"{parent.best} was trained on another vocabulary than {corpus.path}")
            load_weights(trainer.model, src.get("model"), str(src_path))
            if runtime.is_main:
                out.write_config(cfg.to_dict())
            trainer.progress.best_val_loss = float(src.get("val_loss", math.inf))
            trainer.save_best(trainer.progress.best_val_loss)
        _log_start(cfg, corpus, trainer, runtime)
        with _locked(out, runtime), _observing(trainer, out.path, tensorboard, resumed=resume):
            return _fit_and_report(trainer, out, max_epochs, max_minutes, final_eval,
                                   f"awdlstm finetune {shlex.quote(str(parent))} --resume")


def _check_tensorboard(tensorboard) -> None:
    """Fail before loading anything when --tensorboard is asked for but not installed."""
    if tensorboard:
        from .tensorboard import summary_writer_class

        summary_writer_class()


@contextlib.contextmanager
def _observing(trainer: Trainer, out: Path, tensorboard, *, resumed: bool):
    """Attach the TensorBoard observer (main process only) for the duration of training."""
    if not tensorboard or not trainer.rt.is_main:
        yield
        return
    from .tensorboard import TensorBoardObserver

    log_dir = out / "tensorboard" if tensorboard is True else Path(tensorboard)
    observer = TensorBoardObserver(log_dir, trainer.model, resume_step=trainer.progress.step if resumed else None)
    trainer.observers.append(observer)
    log.info("TensorBoard events in %s (view with: tensorboard --logdir %s)", log_dir, log_dir)
    try:
        yield
    finally:
        trainer.observers.remove(observer)
        observer.close()


@contextlib.contextmanager
def _training_runtime(cfg: Config):
    """The training Runtime (joining the process group under torchrun), left on exit."""
    runtime = make_runtime(cfg.train)
    if runtime.device.type == "cpu":
        keep_freed_memory()  # steps reuse the last step's memory instead of faulting in new pages
    try:
        yield runtime
    finally:
        runtime.close()


def _locked(run: RunDir, runtime: Runtime):
    """The run directory's lock, held by the process that writes it (rank 0)."""
    return run.lock() if runtime.is_main else contextlib.nullcontext()


def _log_start(cfg: Config, corpus: Corpus, trainer: Trainer, runtime: Runtime) -> None:
    log.info("config: %s", json.dumps(cfg.to_dict(), separators=(",", ":")))
    log.info("data %s: %d/%d/%d tokens, vocabulary %d", corpus.path, corpus.train.numel(), corpus.valid.numel(),
             corpus.test.numel(), len(corpus.vocab))
    log.info("model: %s; device %s, %s", describe(trainer.model), runtime.device, runtime.precision)


def _fit_and_report(trainer: Trainer, run: RunDir, max_epochs, max_minutes, final_eval: bool, resume_cmd: str,
                    max_steps: int | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    reason = trainer.fit(max_epochs=max_epochs, max_minutes=max_minutes, max_steps=max_steps)
    if reason is not StopReason.INTERRUPTED:
        trainer.final_check()
    trainer.rt.close(wait=True)  # the ranks are done together; rank 0 alone evaluates best.pt
    p = trainer.progress
    summary: dict[str, Any] = {"stopped": reason.value, "epoch": p.epoch - (0 if p.in_epoch else 1), "step": p.step,
                               "seconds": round(time.perf_counter() - t0, 1)}
    if reason is StopReason.INTERRUPTED:
        summary["signal"] = trainer.signal
        log.warning("stopped by %s after step %d; checkpoint saved. Resume with: %s", trainer.signal, p.step, resume_cmd)
        return summary
    if not reason.complete:
        log.info("stopped (%s) after step %d; resume with: %s", reason, p.step, resume_cmd)
    if final_eval and trainer.rt.is_main and run.best.exists():
        results = {s: evaluate_checkpoint(run.best, s, runtime=trainer.rt) for s in ("valid", "test")}
        results["stopped"] = reason.value
        run.write_results(results)
        summary.update(results)
        log.info("best checkpoint: valid ppl %.2f, test ppl %.2f", results["valid"]["perplexity"], results["test"]["perplexity"])
    return summary


def evaluate_checkpoint(path: Path, split: str, *, batch_size: int | None = None, runtime: Runtime | None = None,
                        device: str | None = None, data: str | None = None, data_root: str | None = None) -> dict[str, Any]:
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    model, cfg, corpus, info = load_with_corpus(path, data=data, data_root=data_root)
    if runtime is None:
        runtime = inference_runtime(cfg.train, device)
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
