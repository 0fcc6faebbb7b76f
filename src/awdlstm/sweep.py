"""Several trainings at once on one device: seeds, a grid of overrides, or the ablations of
Merity, Keskar and Socher (2018, Table 4), each an ordinary run directory under one folder.

One ``awdlstm train`` process per run, at most ``jobs`` at a time, all on the same device:
on a GPU they share it (the paper's PTB model at batch 40 leaves a large GPU mostly idle, so
several runs finish in little more than the time of one); on the CPU the cores are divided
between them. Running the same command again continues the sweep: finished runs are
skipped, stopped ones resumed. ``benchmarks/concurrent.py`` measures the total throughput
of K runs against one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import write_json
from .config import apply_overrides
from .errors import ConfigError
from .presets import get_preset
from .rundir import RunDir
from .runtime import available_cores, rank_env_names

log = logging.getLogger(__name__)

ABLATIONS: dict[str, list[str]] = {
    "full": [],
    "no-ntasgd": ["optim.ntasgd=false"],
    "no-variable-length": ["data.variable_length=false"],
    "no-embed-dropout": ["model.embed_p=0"],
    "no-weight-decay": ["optim.weight_decay=0"],
    "no-ar-tar": ["optim.alpha=0", "optim.beta=0"],
    "full-size-embedding": ["model.emb_size={hidden_size}"],
    "no-weight-drop": ["model.weight_p=0"],
}
"""The paper's ablations, each one thing removed from the full model. Its "- fine-tuning"
row is the ``full`` run before ``awdlstm finetune``."""


@dataclasses.dataclass
class Job:
    name: str
    overrides: list[str]


def plan(preset: str, common: list[str], *, seeds: list[int] | None = None, grid: list[str] | None = None,
         ablations: bool = False) -> list[Job]:
    """The runs of a sweep, each config checked now (an error before anything starts)."""
    if ablations and grid:
        raise ConfigError("--ablations and --grid are two kinds of sweep; give one")
    base = get_preset(preset)
    variants: list[Job] = [Job("", [])]
    if ablations:
        hidden = apply_overrides(base, common).model.hidden_size
        variants = [Job(name, [o.format(hidden_size=hidden) for o in ovs]) for name, ovs in ABLATIONS.items()]
    elif grid:
        axes = []
        for spec in grid:
            key, sep, values = spec.partition("=")
            if not sep or not values:
                raise ConfigError(f"--grid takes SECTION.FIELD=V1,V2,...; got {spec!r}")
            axes.append([f"{key.strip()}={v.strip()}" for v in values.split(",")])
        variants = [Job(",".join(o.split(".", 1)[1] for o in combo), list(combo)) for combo in itertools.product(*axes)]
    jobs = variants
    if seeds:
        jobs = [Job(f"{v.name}-seed{s}" if v.name else f"seed{s}", v.overrides + [f"train.seed={s}"])
                for v in variants for s in seeds]
    if len(jobs) == 1 and not jobs[0].name:
        raise ConfigError("a sweep needs --seeds, --grid or --ablations")
    names = set()
    for job in jobs:
        job.name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", job.name)
        if job.name in names:
            raise ConfigError(f"two runs of the sweep would both be named {job.name}; give distinct values")
        names.add(job.name)
        try:
            apply_overrides(base, common + job.overrides).validate()
        except ConfigError as err:
            raise ConfigError(f"run {job.name}: {err}") from None
    return jobs


def run_sweep(out: Path, preset: str, jobs: list[Job], common: list[str], *, parallel: int, device: str | None,
              limits: list[str], cpu_threads: int | None = None) -> dict[str, Any]:
    """Run ``jobs`` under ``out``, ``parallel`` at a time. Returns the summary (also written
    to ``out/summary.json``)."""
    if parallel < 1:
        raise ConfigError(f"--jobs must be >= 1, got {parallel}")
    out = Path(out)
    _check_plan(out, preset, jobs, common)
    on_cpu = device == "cpu" or (device in (None, "auto") and not _cuda_available())
    threads = max(1, (cpu_threads or available_cores()) // min(parallel, len(jobs))) if on_cpu else None
    # Each run is one process of its own, even when the sweep was started inside a torchrun job.
    env = {k: v for k, v in os.environ.items() if k not in rank_env_names()}
    if on_cpu and parallel > 1:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads starve the other runs
    pending = [j for j in jobs if not RunDir(out / j.name).finished()]
    for j in jobs:
        if j not in pending:
            log.info("%s: finished earlier, skipped", j.name)
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    codes: dict[str, int] = {}
    stop: list[str] = []

    def on_signal(signum, frame):
        stop.append(signal.Signals(signum).name)
        for proc, _ in running.values():
            proc.send_signal(signal.SIGTERM)  # each run finishes its batch and saves

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending or running:
            while pending and len(running) < parallel and not stop:
                job = pending.pop(0)
                running[job.name] = _start(out, preset, job, common, device, limits, threads, env)
            time.sleep(0.2)
            for name, (proc, logf) in list(running.items()):
                if proc.poll() is not None:
                    logf.close()
                    codes[name] = proc.returncode
                    del running[name]
                    level = logging.INFO if proc.returncode == 0 else logging.WARNING
                    log.log(level, "%s: ended (exit %d)", name, proc.returncode)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    summary = summarize(out, jobs, codes)
    summary["interrupted"] = stop[0] if stop else None
    write_json(out / "summary.json", summary)
    return summary


def _start(out: Path, preset: str, job: Job, common: list[str], device: str | None, limits: list[str],
           threads: int | None, env: dict) -> tuple[subprocess.Popen, Any]:
    run = out / job.name
    run.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "awdlstm", "train", "--out", str(run)]
    if (run / "last.pt").exists():
        argv.append("--resume")  # its saved config, threads included, applies
        what = "resumed"
    else:
        sets = common + job.overrides + ([f"train.threads={threads}"] if threads else [])
        argv += ["--preset", preset] + [a for o in sets for a in ("--set", o)]
        what = "started"
    if device:
        argv += ["--device", device]
    argv += limits
    logf = open(run / "train.log", "a", encoding="utf-8")
    logf.write(f"$ {' '.join(argv[1:])}\n")
    logf.flush()
    log.info("%s: %s (log: %s)", job.name, what, run / "train.log")
    return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env), logf


def _check_plan(out: Path, preset: str, jobs: list[Job], common: list[str]) -> None:
    """The first call writes the plan; a later one must be the same sweep (it continues it)."""
    plan_file = out / "sweep.json"
    mine = {"preset": preset, "common": common, "runs": [dataclasses.asdict(j) for j in jobs]}
    if plan_file.exists():
        try:
            theirs = json.loads(plan_file.read_text(encoding="utf-8"))
        except ValueError:
            theirs = None
        if theirs != mine:
            raise ConfigError(f"{out} holds another sweep (its sweep.json differs); give another --out, "
                              "or the same preset, --set, --seeds/--grid/--ablations to continue it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(plan_file, mine)


def summarize(out: Path, jobs: list[Job], codes: dict[str, int]) -> dict[str, Any]:
    rows = []
    for job in jobs:
        run = RunDir(out / job.name)
        row: dict[str, Any] = {"name": job.name, "overrides": job.overrides, "exit": codes.get(job.name)}
        checks = run.checks()
        res = run.results()
        if job.name in codes and codes[job.name] not in (0, 130, 143):
            row["status"] = f"failed (see {run / 'train.log'})"
        elif res is not None:
            row["status"] = "finished" if run.finished() else f"stopped ({res.get('stopped')})"
        else:
            row["status"] = "stopped" if run.last.exists() else "not started"
        if res is not None:  # valid/test of best.pt when the run last ended
            row.update(valid_ppl=res.get("valid", {}).get("perplexity"), test_ppl=res.get("test", {}).get("perplexity"))
        if checks:
            row.update(epoch=checks[-1].get("epoch"), step=checks[-1].get("step"),
                       best_val_ppl=min(c["val_ppl"] for c in checks),
                       seconds=round(sum(c.get("seconds", 0) for c in checks), 1))
        rows.append(row)
    return {"runs": rows}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
