"""The training loop: variable-length BPTT, AR/TAR, clipping, NT-ASGD, checks and saves.

No argparse and no globals: a Trainer gets a Config, a Corpus, a Runtime and a run
directory. Everything it needs to continue exactly (weights, optimiser, average, trigger
history, position in the epoch, hidden state, random generators) goes into ``last.pt``.

Data-parallel (a Runtime with several ranks, under torchrun): the training split is
batchified once for the global batch B and rank r trains streams (columns) r*B/N to
(r+1)*B/N, so N ranks at B/N compute what one process does at B, the gradients averaged by
DistributedDataParallel. Every rank draws the same window lengths (the sampler, seeded
alike). With ``train.rank_masks=global`` every rank draws the dropout masks of the whole
batch and uses its streams' part (``regularize.streams``), so the ranks compute what one
process does, up to float rounding; with ``rank`` each draws its own (rank r > 0 reseeds
with an offset).
Validation is split over the ranks by columns and summed, so every rank sees one
validation loss; stops (signals, the time limit, a non-finite loss) are agreed by all ranks
at the same step; only rank 0 writes. ``last.pt`` holds the hidden state of all B streams
and every rank's generators, so a run resumes on any number of ranks that divides B.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .config import Config
from .data import Corpus, Window, approx_batches, batchify, bptt_windows, epoch_start
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluate import EvalResult, evaluate
from .model import AWDLSTM, State, count_parameters, detach_state
from .optim import NTASGD, make_optimizer
from .regularize import activation_reg, streams, temporal_activation_reg
from .rundir import RunDir, StopReason
from .runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Plain values that say where training stands; saved in every checkpoint."""

    lr: float
    """Base learning rate (after any lr drops); each step uses lr * seq_len / bptt."""
    epoch: int = 1
    in_epoch: bool = False
    """True between an epoch's first and last window (then position and state matter)."""
    position: int = 0
    """Row of the batchified training split where the epoch continues."""
    step: int = 0
    best_val_loss: float = math.inf
    checks: int = 0
    elapsed: float = 0.0
    """Seconds of training and validation over all sessions."""
    loss_sum: float = 0.0
    """Cross-entropy summed over tokens since the last check."""
    loss_tokens: int = 0
    train_seconds: float = 0.0
    """Seconds spent in training steps since the last check."""
    finished: bool = False
    rollbacks: int = 0
    """Times a non-finite loss or gradient sent the run back to its last checkpoint."""


class NonFinite(Exception):
    """A NaN or infinite loss or gradient norm; the loop rolls back to the last checkpoint."""

    def __init__(self, what: str, step: int) -> None:
        super().__init__(f"{what} is not finite at step {step}")
        self.what, self.step = what, step


class Trainer:
    def __init__(self, cfg: Config, corpus: Corpus, runtime: Runtime, run_dir: Path, *, finetune: bool = False) -> None:
        self.cfg = cfg
        self.corpus = corpus
        self.rt = runtime
        self.run_dir = Path(run_dir)
        self.run = RunDir(run_dir)
        self.finetune = finetune
        seed = cfg.train.finetune_seed if finetune and cfg.train.finetune_seed is not None else cfg.train.seed
        self.seed = seed
        check_batch_for_ranks(cfg.data.batch_size, runtime.world_size)
        torch.manual_seed(seed)
        self.model = AWDLSTM(cfg.model, len(corpus.vocab)).to(runtime.device)
        # Every rank starts from the same weights. With rank_masks=global every rank then
        # draws the same random numbers (the masks of the whole batch, as one process would);
        # with rank_masks=rank, rank r > 0 draws its own from an offset generator.
        self.own_masks = runtime.distributed and cfg.train.rank_masks == "rank"
        if self.own_masks and runtime.rank > 0:
            torch.manual_seed(rank_seed(seed, runtime.rank))
        # What the training step calls; checkpoints and the average hold the plain model.
        self.step_model: torch.nn.Module = self.model
        if runtime.distributed:
            # The weight-dropped layers' raw weights are their only parameters, so every
            # parameter gets a gradient in every step (no find_unused_parameters).
            self.step_model = DistributedDataParallel(
                self.model, device_ids=[runtime.device] if runtime.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
        if cfg.train.compile:
            self.step_model = torch.compile(self.step_model)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.optim)
        self.ntasgd = NTASGD(self.model, cfg.optim)
        # The training split lives on the device once; windows are views of it. A rank holds
        # its own columns of the global batch.
        self.columns = rank_columns(cfg.data.batch_size, runtime.rank, runtime.world_size)
        full = batchify(corpus.train, cfg.data.batch_size, what="training")
        self.train_data = full[:, self.columns[0]:self.columns[1]].to(runtime.device)
        valid = batchify(corpus.valid, cfg.data.eval_batch_size, what="validation")
        self.valid_data = valid.tensor_split(runtime.world_size, dim=1)[runtime.rank]
        self.sampler = torch.Generator().manual_seed(seed)
        self._resumed = False
        self.progress = Progress(lr=cfg.optim.lr)
        self.state: State | None = None
        self.signal: str | None = None
        """The name of the signal that stopped training (SIGINT, SIGTERM), if one did."""
        # First step whose loss or gradient norm was not finite (-1: none). It stays on the
        # device, so on a GPU it is read only at log intervals and before saving.
        self._bad_step = torch.full((), -1, dtype=torch.long, device=runtime.device)
        self._bad_what = torch.zeros((), dtype=torch.long, device=runtime.device)
        self._sync_each_step = runtime.device.type == "cpu"
        self.observers: list = []
        """Objects with ``on_check(record)``, called on the main process with each check's metrics."""

    # ------------------------------------------------------------------ checkpoints

    def _payload(self, model_state: dict, kind: str) -> dict[str, Any]:
        return {
            "kind": kind,
            "config": self.cfg.to_dict(),
            "vocab": self.corpus.vocab.itos,
            "model": model_state,
            "progress": dataclasses.asdict(self.progress),
            "finetune": self.finetune,
        }

    def save_last(self) -> None:
        """Write last.pt (rank 0); with several ranks every rank must call it at the same step."""
        self.raise_if_nonfinite()
        hidden = None if self.state is None or not self.progress.in_epoch else [[t.cpu() for t in layer] for layer in self.state]
        parts = self.rt.gather((hidden, self.rt.rng_state()))
        if not self.rt.is_main:
            return
        rng = {**parts[0][1], "sampler": self.sampler.get_state()}
        if self.rt.distributed:
            rng["ranks"] = [r for _, r in parts]
            if self.own_masks:
                rng["own_masks"] = True
        payload = self._payload(self.model.state_dict(), "last")
        payload.update(
            optimizer=self.optimizer.state_dict(),
            ntasgd=self.ntasgd.state_dict(),
            scaler=self.rt.scaler.state_dict(),
            hidden=None if hidden is None else join_states([h for h, _ in parts]),
            rng=rng,
        )
        save_checkpoint(payload, self.run_dir / "last.pt")

    def save_best(self, val_loss: float) -> None:
        if not self.rt.is_main:
            return
        payload = self._payload(self.ntasgd.eval_model().state_dict(), "best")
        payload["val_loss"] = val_loss
        save_checkpoint(payload, self.run_dir / "best.pt")

    def resume(self, ckpt: dict[str, Any], where: str = "the checkpoint") -> None:
        if ckpt.get("kind") != "last":
            raise CheckpointError("resume needs a last.pt checkpoint")
        if ckpt["vocab"] != self.corpus.vocab.itos:
            raise CheckpointError(
                f"the run's vocabulary ({len(ckpt['vocab'])} words) differs from the corpus "
                f"{self.corpus.path} ({len(self.corpus.vocab)} words); resume with the data it was trained on"
            )
        load_weights(self.model, ckpt.get("model"), where)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.ntasgd.load_state_dict(ckpt["ntasgd"])
            self.rt.scaler.load_state_dict(ckpt["scaler"])
            self.progress = Progress(**ckpt["progress"])
            self._restore_rng(ckpt["rng"])
            self.sampler.set_state(ckpt["rng"]["sampler"])
            hidden = ckpt.get("hidden")
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"the checkpoint's training state does not match this awdlstm ({type(err).__name__}: {err}); "
                "resume it with the awdlstm release that wrote it"
            ) from None
        self.state = None
        if hidden is not None:
            state = restore_state(hidden, self.rt.device)
            streams = state[0][0].size(1)
            if streams != self.cfg.data.batch_size:
                raise CheckpointError(f"{where} holds {streams} streams, the config's data.batch_size is "
                                      f"{self.cfg.data.batch_size}; resume it with the config it was saved with")
            self.state = [tuple(t[:, self.columns[0]:self.columns[1]] for t in layer) for layer in state]
        self._bad_step.fill_(-1)
        self._resumed = True
        self._trim_metrics(self.progress.step)

    def _streams(self):
        """With several ranks and global masks: masks are drawn for the global batch and cut
        to this rank's streams."""
        if not self.rt.distributed or self.own_masks:
            return contextlib.nullcontext()
        return streams(*self.columns, self.cfg.data.batch_size)

    def _restore_rng(self, rng: dict) -> None:
        """This rank's generators. With global masks every rank's are the same, so any number
        of ranks continues the run; with own masks and another number of ranks than the
        checkpoint's, ranks above 0 get fresh rank-offset ones."""
        ranks = rng.get("ranks") or [rng]
        if len(ranks) == self.rt.world_size:
            self.rt.set_rng_state(ranks[self.rt.rank])
            return
        if not self.own_masks and "own_masks" not in rng:
            self.rt.set_rng_state(ranks[0])
            return
        if self.rt.rank == 0:
            self.rt.set_rng_state(ranks[0])
            log.warning("resuming on %d rank(s) a run last saved on %d: the streams are divided anew; the "
                        "weights, optimiser, average, hidden state and windows continue exactly, the dropout "
                        "masks do not", self.rt.world_size, len(ranks))
        else:
            torch.manual_seed(rank_seed(self.seed, self.rt.rank, self.progress.step))

    def _trim_metrics(self, step: int) -> None:
        if self.rt.is_main:
            dropped = self.run.trim(step)
            if dropped:
                log.info("metrics.jsonl: dropped %d line(s) written after the checkpoint of step %d", dropped, step)

    def _log_event(self, record: dict[str, Any]) -> None:
        if self.rt.is_main:
            self.run.append(record)

    # ------------------------------------------------------------------ one step

    def train_step(self, win: Window) -> torch.Tensor:
        cfg, model = self.cfg, self.model
        self.step_model.train()
        if self.state is None:
            self.state = model.init_state(self.train_data.size(1))
        with self.rt.autocast(), self._streams():
            out = self.step_model(win.inputs, self.state)
        self.state = detach_state(out.state)
        # The loss (through the output head), AR and TAR are fp32 whatever the autocast precision.
        ce = model.loss(out, win.targets)
        loss = (
            ce
            + activation_reg(out.dropped_output, cfg.optim.alpha)
            + temporal_activation_reg(out.raw_output, cfg.optim.beta)
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.rt.scaler.scale(loss).backward()
        norm = None
        if cfg.optim.clip > 0:
            self.rt.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        elif not self.rt.scaler.is_enabled():
            norm = torch.nn.utils.get_total_norm([q.grad for q in model.parameters() if q.grad is not None])
        # With fp16 the gradient scaler owns overflowing gradients (it skips the step and
        # lowers the scale); otherwise a non-finite norm is an error like a non-finite loss.
        loss_ok = torch.isfinite(loss)
        ok = loss_ok if norm is None or self.rt.scaler.is_enabled() else loss_ok & torch.isfinite(norm)
        first = (self._bad_step < 0) & ~ok
        self._bad_step = torch.where(first, self.progress.step + 1, self._bad_step)
        self._bad_what = torch.where(first, torch.where(loss_ok, 1, 0), self._bad_what)
        for group in self.optimizer.param_groups:
            group["lr"] = self.progress.lr * win.lr_scale
        self.rt.scaler.step(self.optimizer)
        self.rt.scaler.update()
        self.ntasgd.update()
        return ce.detach()

    # ------------------------------------------------------------------ checks

    def check(self) -> bool:
        """Validate, feed NT-ASGD, save; True when fine-tuning has converged."""
        p = self.progress
        self.raise_if_nonfinite()
        t0 = time.perf_counter()
        res = self.validate()
        if not math.isfinite(res.loss):
            raise NonFinite("the validation loss", p.step)
        stop = False
        if self.finetune:
            stop = self.ntasgd.should_stop(res.loss)
        elif self.ntasgd.check(res.loss, p.step):
            log.info("NT-ASGD: validation did not improve on the best check before the last %d; "
                     "averaging from step %d", self.cfg.optim.nonmono, p.step)
        p.checks += 1
        improved = res.loss < p.best_val_loss
        if improved:
            p.best_val_loss = res.loss
            self.save_best(res.loss)
        val_seconds = time.perf_counter() - t0
        train_loss = p.loss_sum / max(1, p.loss_tokens)
        record = {
            "epoch": p.epoch,
            "step": p.step,
            "train_loss": round(train_loss, 6),
            "val_loss": round(res.loss, 6),
            "val_ppl": round(res.perplexity, 4),
            "lr": p.lr,
            "phase": self.ntasgd.phase,
            "averaged": self.ntasgd.num_averaged,
            "seconds": round(p.train_seconds + val_seconds, 3),
            "tokens_per_s": round(p.loss_tokens / p.train_seconds, 1) if p.train_seconds else None,
            "best": improved,
        }
        self._log_event(record)
        if self.rt.is_main:
            for observer in self.observers:
                observer.on_check(record)
        log.info(
            "epoch %d step %d | train ppl %.2f | valid ppl %.2f%s | lr %.3g | %s | %.0f tok/s",
            p.epoch, p.step, math.exp(min(train_loss, 700)), res.perplexity, " *" if improved else "",
            p.lr, self.ntasgd.phase, record["tokens_per_s"] or 0,
        )
        p.loss_sum, p.loss_tokens, p.train_seconds = 0.0, 0, 0.0
        return stop

    def validate(self) -> EvalResult:
        """The validation loss of the weights to keep; with several ranks each evaluates its
        columns of the validation streams and the sums are added, so all see one loss."""
        model = self.ntasgd.eval_model()
        if not self.rt.distributed:
            return evaluate(model, self.valid_data, self.cfg.data, self.rt)
        total = torch.zeros(2, dtype=torch.float64, device=self.rt.device)
        if self.valid_data.size(1) > 0:
            res = evaluate(model, self.valid_data, self.cfg.data, self.rt)
            total[0], total[1] = res.loss * res.tokens, res.tokens
        self.rt.all_sum(total)
        loss, tokens = total.tolist()
        return EvalResult(loss / tokens, int(tokens))

    def final_check(self) -> None:
        """After a stop, validate the weights trained since the last check (without adding
        to the trigger's history, so a resumed run is unchanged) and keep them if better."""
        p = self.progress
        if p.loss_tokens == 0:
            return
        res = self.validate()
        if not math.isfinite(res.loss):
            log.warning("the weights at the stop give a non-finite validation loss; best.pt is kept")
            return
        log.info("weights at the stop: valid ppl %.2f", res.perplexity)
        record = {"epoch": p.epoch, "step": p.step, "train_loss": round(p.loss_sum / p.loss_tokens, 6),
                  "val_loss": round(res.loss, 6), "val_ppl": round(res.perplexity, 4), "lr": p.lr,
                  "phase": self.ntasgd.phase, "averaged": self.ntasgd.num_averaged, "final": True,
                  "best": res.loss < p.best_val_loss}
        self._log_event(record)
        if res.loss < p.best_val_loss:
            p.best_val_loss = res.loss
            self.save_best(res.loss)
            self.save_last()

    # ------------------------------------------------------------------ the loop

    def fit(self, max_epochs: int | None = None, max_minutes: float | None = None,
            max_steps: int | None = None) -> StopReason:
        """Train until the configured epochs (or max_epochs), the time limit, a signal or,
        when fine-tuning, convergence. Returns why it stopped."""
        last_epoch = self.cfg.train.epochs if not self.finetune else self.cfg.train.finetune_epochs
        if max_epochs is not None:
            last_epoch = min(last_epoch, max_epochs)
        minutes = max_minutes if max_minutes is not None else self.cfg.train.max_minutes
        deadline = None if minutes is None else time.monotonic() + 60 * minutes
        if self.finetune and not self.ntasgd.averaging:
            self.ntasgd.start(self.progress.step)
        old = self._install_signals()
        try:
            return self._loop(last_epoch, deadline, max_steps)
        finally:
            self._restore_signals(old)

    def _loop(self, last_epoch: int, deadline: float | None, max_steps: int | None) -> StopReason:
        p = self.progress
        if p.finished:
            return StopReason.FINISHED
        if not self._resumed:
            self.save_last()  # the point to roll back to before the first check
        while self.progress.epoch <= last_epoch:
            try:
                reason = self._epoch(deadline, max_steps)
            except NonFinite as err:
                self._roll_back(err)
                continue
            if reason is not None:
                return reason
        if self.progress.epoch > (self.cfg.train.finetune_epochs if self.finetune else self.cfg.train.epochs):
            return self._finish(StopReason.FINISHED)
        return StopReason.MAX_EPOCHS

    def _epoch(self, deadline: float | None, max_steps: int | None) -> StopReason | None:
        """Train to the end of the current epoch; a stop reason, or None to go on."""
        p, cfg = self.progress, self.cfg
        n_rows = self.train_data.size(0)
        check_every = cfg.optim.check_every
        if not p.in_epoch:
            p.position = epoch_start(cfg.data, self.sampler)
            p.in_epoch = True
            self.state = None
        bar = self._progress_bar(p)
        try:
            loss_acc = torch.zeros((), device=self.rt.device)
            acc_tokens = 0
            batches = 0
            t_last = time.perf_counter()
            self._interval_start, self._interval_batches = t_last, 0
            for win in bptt_windows(self.train_data, cfg.data, self.sampler, start=p.position):
                ce = self.train_step(win)
                if self._sync_each_step:  # free on the CPU: catch trouble at its step
                    self.raise_if_nonfinite()
                n = win.targets.numel()
                loss_acc += ce * n
                acc_tokens += n
                batches += 1
                p.step += 1
                p.position = win.end
                now = time.perf_counter()
                p.train_seconds += now - t_last
                p.elapsed += now - t_last
                t_last = now
                if bar is not None:
                    bar.update(1)
                # Flush on global step numbers, so a resumed run sums its losses in the
                # same groups as an uninterrupted one (and reports identical numbers).
                if p.step % cfg.train.log_every == 0 or check_every and p.step % check_every == 0:
                    self._flush_loss(loss_acc, acc_tokens, bar, now, batches)
                    loss_acc.zero_()
                    acc_tokens = 0
                self._maybe_start_average(n_rows)
                if check_every and p.step % check_every == 0:
                    stop = self.check()
                    t_last = self._interval_start = time.perf_counter()
                    if stop:
                        return self._finish(StopReason.CONVERGED)
                    self.save_last()
                out_of_time = self._stop_flags(deadline)
                out_of_steps = max_steps is not None and p.step >= max_steps
                if self.signal or out_of_time or out_of_steps:
                    self._flush_loss(loss_acc, acc_tokens, None, now, batches)
                    self.save_last()
                    if self.signal:
                        return StopReason.INTERRUPTED
                    return StopReason.TIME_LIMIT if out_of_time else StopReason.MAX_STEPS
            self._flush_loss(loss_acc, acc_tokens, None, time.perf_counter(), batches)
        finally:
            if bar is not None:
                bar.close()
        p.in_epoch = False
        stop = False
        if not check_every:
            stop = self.check()
        if p.epoch in cfg.optim.lr_drops:
            p.lr /= cfg.optim.lr_drop_factor
            log.info("lr divided by %g after epoch %d: now %g", cfg.optim.lr_drop_factor, p.epoch, p.lr)
        p.epoch += 1
        if stop:
            return self._finish(StopReason.CONVERGED)
        self.save_last()
        return None

    def _stop_flags(self, deadline: float | None) -> bool:
        """Whether the time is up, and ``self.signal``: in a single process this process's
        own; with several ranks agreed by all (a signal or the clock of any rank stops all of
        them at the same step), each step on the CPU and at log intervals on a GPU."""
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if not self.rt.distributed:
            return out_of_time
        if not self._sync_each_step and self.progress.step % self.cfg.train.log_every:
            return False
        signum, out_of_time = self.rt.agree(int(signal.Signals[self.signal]) if self.signal else 0, int(out_of_time))
        if signum:
            self.signal = signal.Signals(signum).name
        return bool(out_of_time)

    # ------------------------------------------------------------------ numerical trouble

    def raise_if_nonfinite(self) -> None:
        """Raise NonFinite if a step since the last rollback had a NaN or infinite loss or
        gradient norm (one host sync; with several ranks, agreed by all)."""
        step, what = int(self._bad_step.item()), int(self._bad_what.item())
        if self.rt.distributed:
            # The first bad step of any rank (-1: none); all ranks roll back together.
            neg, what = self.rt.agree(-step if step >= 0 else -(1 << 62), what)
            step = -neg if neg > -(1 << 62) else -1
        if step >= 0:
            raise NonFinite("the training loss" if what == 0 else "the gradient norm", step)

    def _roll_back(self, err: NonFinite) -> None:
        """Reload last.pt and halve its learning rate; stop after train.max_rollbacks."""
        limit = self.cfg.train.max_rollbacks
        failed_lr = self.progress.lr
        count = self.progress.rollbacks + 1
        self.rt.barrier()  # rank 0 has finished writing last.pt
        self.resume(load_checkpoint(self.run_dir / "last.pt"), str(self.run_dir / "last.pt"))
        p = self.progress
        event = {"event": "nonfinite", "what": err.what, "at_step": err.step, "step": p.step,
                 "epoch": p.epoch, "rollbacks": count}
        if count > limit:
            self._log_event({**event, "action": "stopped"})
            raise TrainingError(
                f"{err.what} is not finite at step {err.step}, again after {limit} rollback(s) halving the "
                f"learning rate (last tried {failed_lr:g}); last.pt holds the good weights of step {p.step}. "
                "Start a new run with a lower optim.lr or a smaller optim.clip, or allow more with train.max_rollbacks"
            )
        p.lr = min(p.lr, failed_lr) / 2
        p.rollbacks = count
        self._log_event({**event, "action": "rolled back", "lr": p.lr})
        log.warning("%s is not finite at step %d: rolled back to step %d, learning rate halved to %g (%d of %d)",
                    err.what, err.step, p.step, p.lr, count, limit)
        self.save_last()

    def _finish(self, reason: StopReason) -> StopReason:
        self.progress.finished = True
        self.progress.in_epoch = False
        self.save_last()
        return reason

    def _flush_loss(self, loss_acc, acc_tokens: int, bar, now: float, batches: int) -> None:
        """Move the running loss to the host (one sync per log interval, not per step)."""
        if acc_tokens == 0:
            return
        self.raise_if_nonfinite()
        if self.rt.distributed:  # the loss of all B streams, as one process would sum it
            loss_acc = self.rt.all_sum(loss_acc.detach().clone())
            acc_tokens *= self.rt.world_size
        total = loss_acc.item()
        p = self.progress
        p.loss_sum += total
        p.loss_tokens += acc_tokens
        if bar is None:
            return
        loss = total / acc_tokens
        ms = 1000 * (now - self._interval_start) / max(1, batches - self._interval_batches)
        self._interval_start, self._interval_batches = now, batches
        stats = dict(loss=f"{loss:.3f}", ppl=f"{math.exp(min(loss, 700)):.1f}", lr=f"{p.lr:.3g}", ms_batch=f"{ms:.0f}")
        if bar.disable:  # no terminal (a log file, CI): one line per interval instead of a bar
            log.info("epoch %d | batch %d/~%d | %s", p.epoch, batches, bar.total,
                     " | ".join(f"{k} {v}" for k, v in stats.items()))
        else:
            bar.set_postfix(stats, refresh=False)

    def _maybe_start_average(self, n_rows: int) -> None:
        start = self.cfg.optim.average_from_epoch
        if start is None or self.ntasgd.averaging or self.cfg.optim.optimizer != "sgd":
            return
        p = self.progress
        if p.epoch - 1 + p.position / n_rows >= start:
            log.info("averaging from step %d (optim.average_from_epoch=%g)", p.step, start)
            self.ntasgd.start(p.step)

    def _progress_bar(self, p: Progress):
        if not self.rt.is_main:
            return None
        total = approx_batches(self.train_data[p.position:], self.cfg.data)
        return tqdm(total=total, desc=f"epoch {p.epoch}", leave=False, dynamic_ncols=True, disable=None)

    # ------------------------------------------------------------------ signals

    def _install_signals(self):
        def handler(signum, frame):
            self.signal = signal.Signals(signum).name

        old = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return old

    @staticmethod
    def _restore_signals(old) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def check_batch_for_ranks(batch_size: int, world_size: int) -> None:
    """Each of N ranks trains B / N streams: B must be a multiple of N."""
    if batch_size % world_size:
        ranks = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        lower = batch_size - batch_size % world_size
        sizes = f"{lower} or {lower + world_size}" if lower else f"{world_size}"
        raise ConfigError(
            f"data.batch_size {batch_size} cannot be divided among {world_size} ranks; use a batch size that is a "
            f"multiple of {world_size} (--set data.batch_size={sizes}) or a number of ranks that divides "
            f"{batch_size} ({', '.join(map(str, ranks))})")


def rank_columns(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The streams [start, stop) of the global batch that ``rank`` trains."""
    per = batch_size // world_size
    return rank * per, (rank + 1) * per


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The global generator's seed of rank > 0 (its dropout masks), from the run's seed,
    the rank and, when a run resumes on another number of ranks, the step."""
    return (seed + 1_000_003 * rank + 7_919 * step) % (1 << 63)


def join_states(states: list) -> list | None:
    """One state over all streams from the ranks' states (lists per layer of CPU tensors
    whose dimension 1 is the stream)."""
    if states[0] is None:
        return None
    if len(states) == 1:
        return states[0]
    return [[torch.cat(parts, dim=1) for parts in zip(*layers)] for layers in zip(*states)]


def restore_state(hidden: list, device: torch.device) -> State:
    """The recurrent state saved in a checkpoint: a list per layer of its tensors (release
    0.1 saved a flat list of the LSTMs' h, c, h, c, ...)."""
    if hidden and isinstance(hidden[0], torch.Tensor):
        it = iter(hidden)
        hidden = [list(pair) for pair in zip(it, it)]
    return [tuple(t.to(device) for t in layer) for layer in hidden]


def describe(model: AWDLSTM) -> str:
    return f"{count_parameters(model) / 1e6:.2f}M parameters, {model.cfg.rnn} layers {model.layer_sizes}"
