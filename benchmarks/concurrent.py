"""Total training throughput of K runs sharing one device (as ``awdlstm sweep`` runs them)
against one run alone.

For each K, K processes each build the preset's model with the real ``Trainer.train_step``
(as ``benchmarks.run`` does), warm up, wait until all are ready, then train for the same
wall-clock window; the total is the sum of their tokens/s. On the CPU each run gets
cores / K threads and OpenMP waits passively (what the sweep does); on a GPU they share it.

    python -m benchmarks.concurrent --preset ptb --batch-size 40 --runs 1,2 --seconds 60
    python -m benchmarks.concurrent --preset ptb --batch-size 40 --runs 1,2,4,8 --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from awdlstm.presets import PRESETS, get_preset

from .common import REPO, RESULTS, Interval, Snapshot, contention, sync, write_result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.concurrent", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ptb", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--bptt", type=int, default=None, help="window length (default: the preset's)")
    p.add_argument("--runs", default="1,2", help="comma-separated numbers of concurrent runs (default 1,2)")
    p.add_argument("--seconds", type=float, default=60.0, help="timed window per K (default 60)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per run first (default 2)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result (default benchmarks/results)")
    p.add_argument("--child-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.run_counts = [int(k) for k in args.runs.split(",")]
    if any(k < 1 for k in args.run_counts):
        p.error("--runs takes positive counts")
    return args


def child(args: argparse.Namespace) -> int:
    """One run: build, warm up, say READY, wait for GO <end time>, train until then."""
    from .harness import Setup
    from .run import parse_args as run_args

    argv = ["--preset", args.preset, "--device", args.device, "--precision", args.precision, "--steps", "1",
            "--warmup", str(args.warmup), "--threads", str(args.child_threads), "--no-fastai", "--no-memory"]
    for flag, v in (("--batch-size", args.batch_size), ("--bptt", args.bptt)):
        if v is not None:
            argv += [flag, str(v)]
    setup = Setup(run_args(argv), only="ours")
    ours = setup.contenders[0]
    dev = setup.device
    for i in range(args.warmup):
        ours.train_step(i)
    sync(dev)
    print("READY", flush=True)
    end = float(sys.stdin.readline().split()[1])
    steps = 0
    start = Snapshot.now()
    while time.time() < end:
        ours.train_step(args.warmup + steps)
        sync(dev)
        steps += 1
    iv = Interval.between(start, Snapshot.now())
    tokens = steps * setup.tokens("train")
    print("RESULT " + json.dumps({"steps": steps, "tokens": tokens, "wall": iv.wall, "cpu": iv.cpu,
                                  "tokens_per_s": tokens / iv.wall if iv.wall else 0.0,
                                  "loss_finite": bool(torch.isfinite(ours.last_loss).item())}), flush=True)
    return 0


def measure(args: argparse.Namespace, k: int, cores: int) -> dict:
    threads = max(1, cores // k) if args.device == "cpu" else 1
    env = dict(os.environ)
    if args.device == "cpu" and k > 1:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as awdlstm sweep
    cmd = [sys.executable, "-m", "benchmarks.concurrent", *sys_argv_without_runs(args), "--child-threads", str(threads)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
             for _ in range(k)]
    for p in procs:
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(f"a run failed to start: {line!r}")
    end = time.time() + args.seconds
    before = Snapshot.now()
    for p in procs:
        p.stdin.write(f"GO {end}\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out = p.communicate()[0]
        results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:]))
    iv = Interval.between(before, Snapshot.now())
    machine = contention([iv], cores, args.device)
    return {"runs": k, "threads_per_run": threads if args.device == "cpu" else None, "per_run": results,
            "total_tokens_per_s": sum(r["tokens_per_s"] for r in results),
            # children are other processes to this one: their use shows as others_cores
            "cores_used": machine["others_cores"], "steal_cores": machine["steal_cores"]}


def sys_argv_without_runs(args: argparse.Namespace) -> list[str]:
    argv = ["--preset", args.preset, "--device", args.device, "--precision", args.precision,
            "--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    for flag, v in (("--batch-size", args.batch_size), ("--bptt", args.bptt)):
        if v is not None:
            argv += [flag, str(v)]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_threads is not None:
        return child(args)
    started = dt.datetime.now().astimezone()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"concurrent runs: preset {args.preset}, {args.device}, {args.precision}, {args.seconds:.0f} s per K, "
          f"{cores} cores", flush=True)
    rows = []
    for k in args.run_counts:
        row = measure(args, k, cores)
        rows.append(row)
        per_run = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in row["per_run"])
        print(f"  K={k}: total {row['total_tokens_per_s']:,.0f} tokens/s (per run {per_run}; "
              f"cores used {row['cores_used']})", flush=True)
    base = rows[0]["total_tokens_per_s"] if rows and rows[0]["runs"] == 1 else None
    print("\nK  threads/run  total tokens/s  vs one run")
    for row in rows:
        vs = f"{row['total_tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"{row['runs']:<2} {str(row['threads_per_run'] or '-'):>11}  {row['total_tokens_per_s']:>14,.0f}  {vs:>10}")
        row["total_over_one_run"] = round(row["total_tokens_per_s"] / base, 3) if base else None
    from .harness import bench_config

    cfg = bench_config(get_preset(args.preset), args.batch_size, args.bptt, None, 0, args.device, args.precision)
    figures = {"benchmark": {"preset": args.preset, "device": args.device, "precision": args.precision,
                             "batch_size": cfg.data.batch_size, "bptt": cfg.data.bptt, "seconds_per_k": args.seconds,
                             "warmup": args.warmup, "cores": cores,
                             "threads": "cores // K per run on the CPU (config's train.threads is not used)"},
               "rows": rows}
    path = write_result("concurrent", figures, config=cfg.to_dict(), device=args.device, out=args.out,
                        started=started, tag=f"concurrent_{args.preset}_{args.device}",
                        command="python -m benchmarks.concurrent " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
