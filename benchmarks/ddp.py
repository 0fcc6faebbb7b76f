"""Data-parallel training speed: tokens/s of N ranks against one process, and the share of
a rank's step spent communicating.

    python -m benchmarks.ddp [--preset demo] [--ranks 1,2] [--steps 40] [--rounds 2]
    python -m benchmarks.ddp --device cuda --ranks 1,2,4,8 --per-rank-batch 20 --preset ptb

Each configuration is a fresh job: one process (``--ranks 1``), or ``torchrun --standalone
--nproc-per-node N`` running this module as a worker. A worker builds the real ``Trainer``
and times the training loop's per-step work (the step through DistributedDataParallel, the
agreed non-finite check and stop flags), after ``--warmup`` steps. Every rank also times the
same number of steps with no communication at all (``no_sync`` and local checks), rounds
alternating, so the communication share comes from one process, side by side:
``1 - local / full``.

On the CPU the default compares N ranks of one thread each with one process using all the
threads (``--single-threads``, default: the cores), at the same global batch (the preset's):
the same computation split two ways. On CUDA, ``--per-rank-batch`` gives weak scaling (the
global batch grows with the ranks, as when adding GPUs) and the result has the efficiency of
each doubling, tokens/s(2N) / (2 tokens/s(N)).

CPU-seconds per wall-second of every process come with each figure: another process on the
machine makes a timing contended.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import Interval, Snapshot, write_result


def _worker(args) -> None:
    from awdlstm.config import apply_overrides
    from awdlstm.data import bptt_windows, load_corpus
    from awdlstm.presets import get_preset
    from awdlstm.runtime import make_runtime
    from awdlstm.train import Trainer

    cfg = apply_overrides(get_preset(args.preset), list(args.overrides)).validate()
    rt = make_runtime(cfg.train)
    corpus = load_corpus(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, corpus, rt, Path(tmp) / "run")
    windows = bptt_windows(trainer.train_data, cfg.data, trainer.sampler)

    def step(local: bool) -> int:
        win = next(windows)
        if local and rt.distributed:
            with trainer.step_model.no_sync():
                ce = trainer.train_step(win)
            ce.item()
        else:
            trainer.train_step(win)
            trainer.raise_if_nonfinite()
            trainer._stop_flags(None)
        return win.targets.numel()

    for _ in range(args.warmup):
        step(False)
        if rt.distributed:
            step(True)
    modes = {"full": [], "local": []} if rt.distributed else {"full": []}
    for _ in range(args.rounds):
        for mode, rounds in modes.items():
            rt.barrier()
            tokens, t0 = 0, Snapshot.now()
            for _ in range(args.steps):
                tokens += step(mode == "local")
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            rounds.append((tokens, Interval.between(t0, Snapshot.now())))
    result = {"rank": rt.rank, "world_size": rt.world_size, "threads": torch.get_num_threads(),
              "batch_per_rank": trainer.train_data.size(1), "device": str(rt.device)}
    for mode, rounds in modes.items():
        tokens = sum(t for t, _ in rounds)
        wall = sum(i.wall for _, i in rounds)
        result[mode] = {"tokens_per_s_rank": round(tokens / wall, 1),
                        "tokens_per_s": round(tokens * rt.world_size / wall, 1),
                        "ms_per_step": round(1000 * wall / (len(rounds) * args.steps), 2),
                        "cpu_per_wall": round(sum(i.cpu for _, i in rounds) / wall, 3),
                        "rounds": [i.as_dict() for _, i in rounds]}
    gathered = rt.gather(result)
    rt.close(wait=True)
    if rt.is_main:
        Path(args.result).write_text(json.dumps(gathered))


def _run_job(args, ranks: int, batch: int, threads: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        worker = ["-m", "benchmarks.ddp", "--worker", "--result", str(result), "--preset", args.preset,
                  "--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds),
                  *[f"--set={o}" for o in args.overrides], f"--set=data.batch_size={batch}",
                  f"--set=train.threads={threads}", f"--set=train.device={args.device}"]
        launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        cmd = [sys.executable, *launcher, *worker]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
        if proc.returncode != 0:
            raise SystemExit(f"the {ranks}-rank job failed:\n{proc.stderr[-3000:]}")
        out = json.loads(result.read_text())
        print(f"  {ranks} rank(s) x {threads} thread(s), batch {batch}: {out[0]['full']['tokens_per_s']:.0f} tokens/s "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--per-rank-batch", type=int, help="weak scaling: this batch on every rank (default: the "
                                                     "preset's global batch, split among the ranks)")
    p.add_argument("--single-threads", type=int, help="threads of the one-process job on the CPU (default: the cores)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="rounds per job (full and local alternate)")
    p.add_argument("--repeats", type=int, default=1, help="jobs per configuration, interleaved")
    p.add_argument("--out", help="result folder (default benchmarks/results)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    from awdlstm.config import apply_overrides
    from awdlstm.presets import get_preset
    from awdlstm.runtime import available_cores

    cfg = apply_overrides(get_preset(args.preset), list(args.overrides)).validate()
    counts = [int(n) for n in args.ranks.split(",")]
    cores = available_cores()
    jobs: dict[int, list[list[dict]]] = {n: [] for n in counts}
    started = __import__("datetime").datetime.now().astimezone()
    for _ in range(args.repeats):
        for n in counts:
            batch = args.per_rank_batch * n if args.per_rank_batch else cfg.data.batch_size
            if args.device == "cpu":
                threads = (args.single_threads or cores) if n == 1 else max(1, cores // n)
            else:
                threads = max(1, cores // n)
            jobs[n].append(_run_job(args, n, batch, threads))
    rows = []
    for n in counts:
        ranks = [r for job in jobs[n] for r in job]
        full = sum(r["full"]["tokens_per_s"] for r in ranks if r["rank"] == 0) / len(jobs[n])
        row = {"ranks": n, "threads_per_rank": ranks[0]["threads"], "batch_per_rank": ranks[0]["batch_per_rank"],
               "tokens_per_s": round(full, 1),
               "cpu_per_wall_per_rank": [r["full"]["cpu_per_wall"] for r in ranks],
               "ms_per_step": round(sum(r["full"]["ms_per_step"] for r in ranks) / len(ranks), 2)}
        if n > 1:
            local = sum(r["local"]["ms_per_step"] for r in ranks) / len(ranks)
            row["ms_per_step_without_communication"] = round(local, 2)
            row["communication_share"] = round(1 - local / row["ms_per_step"], 3)
        row["jobs"] = jobs[n]
        rows.append(row)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_first"] = round(row["tokens_per_s"] / base, 3)
        if args.per_rank_batch:
            row["efficiency_vs_first"] = round(row["tokens_per_s"] / (base * row["ranks"] / rows[0]["ranks"]), 3)
    for a, b in zip(rows, rows[1:]):
        if args.per_rank_batch and b["ranks"] == 2 * a["ranks"]:
            b["doubling_efficiency"] = round(b["tokens_per_s"] / (2 * a["tokens_per_s"]), 3)
    figures = {"preset": args.preset, "device_kind": args.device, "cores": cores,
               "scaling": "weak" if args.per_rank_batch else "strong (same global batch)", "rows": rows}
    path = write_result("ddp", figures, config=cfg.to_dict(), device=args.device if args.device == "cpu" else "cuda",
                        out=args.out, tag=f"ddp_{args.preset}_{args.device}", started=started)
    print(f"{'ranks':>5} {'threads':>7} {'batch/rank':>10} {'tokens/s':>10} {'vs first':>8} {'comm share':>10} "
          f"{'CPU-s/wall-s per rank':>22}")
    for r in rows:
        comm = f"{r['communication_share']:.1%}" if "communication_share" in r else "-"
        print(f"{r['ranks']:>5} {r['threads_per_rank']:>7} {r['batch_per_rank']:>10} {r['tokens_per_s']:>10.0f} "
              f"{r['speedup_vs_first']:>8.2f} {comm:>10} {', '.join(f'{c:.2f}' for c in r['cpu_per_wall_per_rank']):>22}")
    print(f"result: {path}")


if __name__ == "__main__":
    main()
