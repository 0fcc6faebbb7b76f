"""The run directory: one home for its format, read and written through ``RunDir``.

RUN/config.json    the whole resolved config
RUN/metrics.jsonl  one JSON record per line: a validation check (epoch, step, train_loss,
                   val_loss, val_ppl, lr, phase, averaged, seconds, tokens_per_s, best), the
                   check at a stop (``"final": true``), or an event (``"event": ...``)
RUN/best.pt        the weights with the best validation loss (averaged once NT-ASGD fired)
RUN/last.pt        everything needed to resume exactly
RUN/results.json   valid and test perplexity of best.pt and why training stopped
RUN/.lock          the id of the process training into the directory
RUN/finetune/      the same layout for ``awdlstm finetune RUN``
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text, write_json
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


class StopReason(str, enum.Enum):
    """Why a training stopped; written to results.json and returned by ``Trainer.fit``."""

    FINISHED = "finished"
    """All configured epochs are done."""
    CONVERGED = "converged"
    """Fine-tuning's non-monotone criterion fired."""
    MAX_EPOCHS = "max epochs"
    TIME_LIMIT = "time limit"
    MAX_STEPS = "max steps"
    INTERRUPTED = "interrupted"
    """SIGINT or SIGTERM."""

    def __str__(self) -> str:
        return self.value

    @property
    def complete(self) -> bool:
        """Trained to the end: nothing left to resume."""
        return self in (StopReason.FINISHED, StopReason.CONVERGED)


class RunDir:
    """Paths and records of one run directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def finetune(self) -> RunDir:
        return RunDir(self.path / "finetune")

    # ------------------------------------------------------------------ starting

    def check_start(self, resume: bool, resume_hint: str = "pass --resume to continue it") -> None:
        """A new run needs an empty (or new) directory; a resumed one needs last.pt."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file, not a run directory; choose another --out")
        if resume:
            if not self.last.is_file():
                raise CheckpointError(f"{self.path}: no last.pt to resume from; "
                                      f"start a run with --out {self.path} (without --resume)")
        elif self.holds_run():
            raise ConfigError(f"{self.path} already holds a run; {resume_hint}, or choose another --out")
        elif self.config_file.exists():
            log.warning("%s has a config.json but no checkpoint (a run stopped before its first save); "
                        "starting over", self.path)

    def holds_run(self) -> bool:
        return any(p.exists() for p in (self.last, self.best, self.metrics_file, self.results_file))

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config_file, config)

    def lock(self) -> RunLock:
        return RunLock(self.path)

    # ------------------------------------------------------------------ metrics.jsonl

    def append(self, record: dict[str, Any]) -> None:
        """One record (a check or an event) at the end of metrics.jsonl."""
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every readable record of metrics.jsonl, in order (a torn line is skipped)."""
        try:
            text = self.metrics_file.read_text(encoding="utf-8")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def checks(self) -> list[dict[str, Any]]:
        """The validation records (checks and the check at a stop), not the events."""
        return [r for r in self.records() if "val_ppl" in r and "event" not in r]

    def trim(self, step: int) -> int:
        """Drop the records written after optimiser step ``step`` (by a process killed before
        it saved again, or a torn last line), so a resumed run's log reads like a straight one.
        Returns how many lines went."""
        if not self.metrics_file.is_file():
            return 0
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(self.metrics_file, "".join(k + "\n" for k in kept))
        return len(lines) - len(kept)

    # ------------------------------------------------------------------ results.json

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results_file, results)

    def results(self) -> dict[str, Any] | None:
        try:
            res = json.loads(self.results_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return res if isinstance(res, dict) else None

    def finished(self) -> bool:
        """Trained to the end (results.json is also written when a limit stops a run)."""
        res = self.results()
        return res is not None and res.get("stopped") in (StopReason.FINISHED.value, StopReason.CONVERGED.value)

    def best_metrics(self) -> dict[str, Any]:
        """Perplexities from results.json, else the best validation check in metrics.jsonl;
        ``source`` says which ({} when the run has neither)."""
        res = self.results()
        if res is not None:
            found = {s: res[s] for s in ("valid", "test") if isinstance(res.get(s), dict)}
            return found | {"source": "results.json", "stopped": res.get("stopped")}
        checks = [r for r in self.records() if isinstance(r.get("val_loss"), (int, float)) and "event" not in r]
        if not checks:
            return {}
        best = min(checks, key=lambda r: r["val_loss"])
        return {"valid": {"loss": best["val_loss"], "perplexity": math.exp(min(best["val_loss"], 700.0)),
                          "step": best.get("step")}, "source": "metrics.jsonl"}


class RunLock:
    """RUN/.lock holds the training process's id while it runs, so a second training into
    the same directory refuses instead of overwriting it; a lock left by a dead process is
    taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> RunLock:
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
