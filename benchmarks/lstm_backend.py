"""Does our WeightDropLSTM reach oneDNN's (mkldnn's) fused LSTM on the CPU?

``WeightDropLSTM`` passes the DropConnect-ed hidden-to-hidden matrix through
``torch.func.functional_call``. This checks, for one layer:

1. which ATen kernels run (torch.profiler): ``aten::mkldnn_rnn_layer`` (and its backward)
   is oneDNN's LSTM; without it the LSTM is PyTorch's own cell-by-cell loop;
2. the speed of forward + backward (and of a no-grad forward) against a plain
   ``nn.LSTM`` holding the same weights, with oneDNN on and off, in interleaved rounds.

    python -m benchmarks.lstm_backend                       # 400 -> 1150, batch 20, bptt 70
    python -m benchmarks.lstm_backend --input 200 --hidden 400 --bptt 35 --steps 6
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from awdlstm.layers import WeightDropLSTM

from .common import Interval, Snapshot, contention, hardware, summarize_times, thread_env, versions

HERE = Path(__file__).resolve().parent


def kernels(fn) -> list[str]:
    """The LSTM-related ATen ops that ``fn`` dispatches (CPU profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    keep = ("rnn", "lstm", "mkldnn", "addmm", "mm", "sigmoid", "tanh")
    return sorted(n for n in names if any(k in n.lower() for k in keep))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lstm_backend", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=int, default=400)
    p.add_argument("--hidden", type=int, default=1150)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--bptt", type=int, default=70)
    p.add_argument("--weight-p", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--no-write", dest="write", action="store_false")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    torch.manual_seed(0)
    ours = WeightDropLSTM(args.input, args.hidden, args.weight_p)
    plain = nn.LSTM(args.input, args.hidden)
    plain.load_state_dict(ours.state_dict())  # same keys, same weights
    x = torch.randn(args.bptt, args.batch, args.input, requires_grad=True)

    def train_ours():
        ours.train()
        y, _ = ours(x)
        y.sum().backward()

    def train_plain():
        plain.train()
        y, _ = plain(x)
        y.sum().backward()

    @torch.no_grad()
    def eval_ours():
        ours.eval()
        ours(x)

    @torch.no_grad()
    def eval_plain():
        plain.eval()
        plain(x)

    def onednn(enabled: bool):
        return contextlib.nullcontext() if enabled else torch.backends.mkldnn.flags(enabled=False)

    variants = {}
    for on in (True, False):
        tag = "onednn" if on else "native"
        variants[f"train ours {tag}"] = (train_ours, on)
        variants[f"train plain {tag}"] = (train_plain, on)
        variants[f"eval ours {tag}"] = (eval_ours, on)
        variants[f"eval plain {tag}"] = (eval_plain, on)

    print(f"torch {torch.__version__}, {threads} threads, mkldnn available {torch.backends.mkldnn.is_available()}, "
          f"enabled {torch.backends.mkldnn.enabled}, cpu capability {hardware(torch.device('cpu'))['cpu_capability']}")
    print(f"one layer {args.input} -> {args.hidden}, batch {args.batch}, bptt {args.bptt}, weight_p {args.weight_p}")

    dispatched = {}
    for name, (fn, on) in variants.items():
        with onednn(on):
            fn()  # warm-up (oneDNN primitive creation)
            dispatched[name] = kernels(fn)
        uses = any("mkldnn_rnn" in k for k in dispatched[name])
        print(f"  {name:<20} oneDNN LSTM: {'yes' if uses else 'no '}  ops: {', '.join(dispatched[name])}")

    per = max(1, args.steps // args.rounds)
    times = {n: [] for n in variants}
    ivs = {n: [] for n in variants}
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, on = variants[name]
            with onednn(on):
                a = Snapshot.now()
                for _ in range(per):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
                ivs[name].append(Interval.between(a, Snapshot.now()))

    tokens = args.batch * args.bptt
    fwd = 2.0 * 4 * args.hidden * (args.input + args.hidden) * tokens
    results = {}
    print(f"\n  {'variant':<20} {'ms':>9} {'GFLOP/s':>8} {'cpu/wall':>8}  flag")
    for name in names:
        flops = fwd * (3 if name.startswith("train") else 1)
        res = summarize_times(times[name], tokens, flops)
        res.update(contention(ivs[name], threads, "cpu"))
        res["uses_onednn_lstm"] = any("mkldnn_rnn" in k for k in dispatched[name])
        res["ops"] = dispatched[name]
        results[name] = res
        print(f"  {name:<20} {res['ms_per_batch']:>9.2f} {res['gflops_per_s']:>8.1f} {res['cpu_per_wall']:>8.2f}"
              f"  {'CONTENDED' if res['contended'] else ''}")

    def r(a: str, b: str) -> float:
        return round(results[a]["ms_per_batch"] / results[b]["ms_per_batch"], 4)

    summary = {
        "ours_uses_onednn_in_training": results["train ours onednn"]["uses_onednn_lstm"],
        "ours_uses_onednn_in_eval": results["eval ours onednn"]["uses_onednn_lstm"],
        "train_ms_ours_over_plain_onednn": r("train ours onednn", "train plain onednn"),
        "eval_ms_ours_over_plain_onednn": r("eval ours onednn", "eval plain onednn"),
        "train_ms_native_over_onednn_plain": r("train plain native", "train plain onednn"),
        "eval_ms_native_over_onednn_plain": r("eval plain native", "eval plain onednn"),
    }
    print("\n" + "\n".join(f"  {k} = {v}" for k, v in summary.items()))
    if args.write:
        args.out.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now().astimezone()
        path = args.out / f"{now:%Y%m%d-%H%M%S}_lstm-backend_cpu.json"
        record = {"created": now.isoformat(timespec="seconds"), "command": "python -m benchmarks.lstm_backend "
                  + " ".join(sys.argv[1:] if argv is None else argv), "args": {k: str(v) for k, v in vars(args).items()},
                  "hardware": hardware(torch.device("cpu")), "versions": versions(), "thread_env": thread_env(),
                  "mkldnn": {"available": torch.backends.mkldnn.is_available(), "enabled": torch.backends.mkldnn.enabled},
                  "summary": summary, "variants": results}
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
