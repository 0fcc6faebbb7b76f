"""Dynamic evaluation against plain evaluation at batch 1, same model, same process.

    python -m benchmarks.dynamic_bench RUN [--split valid] [--limit N] [--threads T]

Times one pass over the split (or its first ``--limit`` tokens) with ``awdlstm evaluate
--batch-size 1``'s code and with dynamic evaluation (segments of ``--bptt``, one update
after each), alternating, ``--rounds`` times each; reports the best of each, their ratio and
CPU-seconds per wall-second of each pass (below the thread count when other processes
share the machine). The gradient statistics are measured first on ``--gradstat-tokens``
training tokens and not counted. A profile of a short stretch of dynamic evaluation says
which operations dominate. Writes a JSON result with hardware, versions and the full config
to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import torch

from awdlstm.data import batchify, load_corpus
from awdlstm.dynamic import DynamicParams, dynamic_trace, gradient_stats
from awdlstm.evaluate import evaluate
from awdlstm.loading import load_parts
from awdlstm.runtime import Runtime, pick_device

from .common import sync, write_result

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dynamic_bench", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run directory, checkpoint or export")
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--limit", type=int, help="only the first N tokens of the split")
    p.add_argument("--bptt", type=int, default=5, help="tokens per segment of dynamic evaluation")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--lambda", dest="lam", type=float, default=0.002)
    p.add_argument("--gradstat-tokens", type=int, default=50_000, help="training tokens for the statistics (not timed)")
    p.add_argument("--gradstat-batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2, help="timed passes of each (the best is kept)")
    p.add_argument("--profile-tokens", type=int, default=500, help="tokens of dynamic evaluation profiled (0: none)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    return p.parse_args(argv)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, device: torch.device) -> tuple[float, float, object]:
    sync(device)
    w0, c0 = time.perf_counter(), cpu_seconds()
    out = fn()
    sync(device)
    wall = time.perf_counter() - w0
    return wall, (cpu_seconds() - c0) / wall, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, vocab, cfg, _ = load_parts(args.run)
    model.to(device)
    corpus = load_corpus(cfg.data)
    ids = corpus.split(args.split)
    if args.limit:
        ids = ids[: args.limit]
    params = DynamicParams(args.lr, args.lam, bptt=args.bptt).validate()
    runtime = Runtime(device)

    t0 = time.perf_counter()
    stats = gradient_stats(model, corpus.train, batch_size=args.gradstat_batch, bptt=args.bptt,
                           max_tokens=args.gradstat_tokens)
    stats_s = time.perf_counter() - t0
    print(f"gradient statistics: {stats.tokens} training tokens, {stats_s:.1f} s", flush=True)

    def plain():
        return evaluate(model, batchify(ids, 1), cfg.data, runtime).loss

    def dynamic():
        return -dynamic_trace(model, ids, stats, params).model_log_probs.mean().item()

    warm = ids[: min(ids.numel(), 200)]
    evaluate(model, batchify(warm, 1), cfg.data, runtime)
    dynamic_trace(model, warm, stats, params)
    rows: dict[str, list[tuple[float, float]]] = {"plain": [], "dynamic": []}
    losses = {}
    for _ in range(args.rounds):
        for name, fn in (("plain", plain), ("dynamic", dynamic)):
            wall, cpu_per_wall, loss = timed(fn, device)
            rows[name].append((wall, cpu_per_wall))
            losses[name] = loss
            print(f"  {name:<8} {wall:8.2f} s  ({cpu_per_wall:.2f} CPU-s per wall-s)", flush=True)
    best = {name: min(r) for name, r in rows.items()}
    n = ids.numel() - 1

    profile = []
    if args.profile_tokens:
        from torch.profiler import profile as torch_profile

        part = ids[: min(ids.numel(), args.profile_tokens + 1)]
        with torch_profile() as prof:
            dynamic_trace(model, part, stats, params)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) or 1
        profile = [{"op": e.key, "calls": e.count, "self_cpu_share": round(e.self_cpu_time_total / total, 4)}
                   for e in events[:12]]

    result = {
        "run": str(args.run),
        "split": args.split,
        "tokens": n,
        "bptt": params.bptt, "lr": params.lr, "lambda": params.lam, "eval_bptt": cfg.data.bptt,
        "threads": torch.get_num_threads(),
        "gradstat": {"tokens": stats.tokens, "batch_size": args.gradstat_batch, "seconds": round(stats_s, 2)},
        "plain": {"seconds": best["plain"][0], "cpu_per_wall": best["plain"][1], "tokens_per_s": n / best["plain"][0],
                  "all": rows["plain"]},
        "dynamic": {"seconds": best["dynamic"][0], "cpu_per_wall": best["dynamic"][1],
                    "tokens_per_s": n / best["dynamic"][0], "all": rows["dynamic"]},
        "dynamic_over_plain": best["dynamic"][0] / best["plain"][0],
        "perplexity": {"plain": math.exp(losses["plain"]), "dynamic": math.exp(losses["dynamic"])},
        "profile_dynamic": profile,
        "vocab_size": len(vocab),
    }
    print(f"plain:   {result['plain']['tokens_per_s']:,.0f} tokens/s, perplexity {result['perplexity']['plain']:.2f}")
    print(f"dynamic: {result['dynamic']['tokens_per_s']:,.0f} tokens/s, perplexity {result['perplexity']['dynamic']:.2f}")
    print(f"dynamic/plain time = {result['dynamic_over_plain']:.2f}x ({result['threads']} threads)")
    if profile:
        print("dynamic evaluation, self CPU time by op: "
              + ", ".join(f"{p['op']} {p['self_cpu_share']:.0%}" for p in profile[:6]))
    out = write_result("dynamic", result, config=cfg.to_dict(), device=device, out=args.out,
                       tag=f"dynamic-{Path(cfg.data.name).name}-{args.split}",
                       command=" ".join(["python -m benchmarks.dynamic_bench",
                                         *(argv if argv is not None else sys.argv[1:])]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
