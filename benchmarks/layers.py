"""Two or more presets' models side by side: training and evaluation tokens/s of the real
training step (``Trainer.train_step``) and evaluation step, in one process, as ratios to the
first. Made for the recurrent layers (``ptb`` with LSTMs against ``ptb-qrnn``), but any
presets compare::

    python -m benchmarks.layers --presets ptb,ptb-qrnn --batch-size 20 --bptt 70
    python -m benchmarks.layers --presets demo,demo-qrnn
    python -m benchmarks.layers --presets demo --variant "q2x400=demo-qrnn model.num_layers=2 model.hidden_size=400"

Every contender gets the same synthetic windows (the preset's vocabulary size, fixed length
``--bptt``). The QRNN's steps are matrix products over whole windows plus the elementwise
ForgetMult, so its measured peak is that of its own products at the step's shapes (``torch.mm``);
the fraction of it that a step reaches is reported for the QRNN presets.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from awdlstm.config import apply_overrides
from awdlstm.errors import ConfigError
from awdlstm.presets import get_preset
from awdlstm.runtime import Runtime, keep_freed_memory

from .common import Interval, Snapshot, contention, measured_peak, summarize_times, write_result
from .harness import Ours, synthetic_corpus, tokens_needed

VOCAB = {"ptb": 10_000, "wikitext-2": 33_278, "wikitext-103": 267_735}


def qrnn_forward_flops(model, vocab: int) -> float:
    """Matrix-product FLOPs per token of a QRNN model's forward pass (layers and decoder)."""
    per_token = sum(2.0 * r.linear.in_features * r.linear.out_features for r in model.rnns)
    return per_token + 2.0 * model.decoder.in_features * vocab


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``LABEL=PRESET section.field=value ...`` -> (label, preset, overrides)."""
    head, *overrides = text.split()
    label, sep, preset = head.partition("=")
    if not sep or not label or not preset:
        raise ConfigError(f"--variant must look like LABEL=PRESET section.field=value ..., got {text!r}")
    return label, preset, overrides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layers", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="ptb,ptb-qrnn", help="comma-separated presets; ratios are to the first")
    p.add_argument("--variant", action="append", default=[], metavar="'LABEL=PRESET SECTION.FIELD=VALUE ...'",
                   help="a further contender: a preset with config overrides, named LABEL (repeatable; "
                        "after --presets, which may then be empty)")
    p.add_argument("--batch-size", type=int, help="training streams (default: each preset's)")
    p.add_argument("--bptt", type=int, help="window length (default: each preset's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each contender in turn")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--out", default=None, help="folder for the result JSON (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    rt_device = torch.device("cpu")
    runtime = Runtime(rt_device)
    contenders, configs = [], {}
    specs = [(name, name, []) for name in args.presets.split(",") if name] + [parse_variant(v) for v in args.variant]
    if not specs:
        p.error("nothing to compare: give --presets or --variant")
    for name, preset, overrides in specs:
        cfg = apply_overrides(get_preset(preset), overrides)
        data = replace(cfg.data, **{k: v for k, v in (("batch_size", args.batch_size), ("bptt", args.bptt))
                                    if v is not None}, variable_length=False, random_start=False)
        cfg = replace(cfg, data=data, train=replace(cfg.train, precision="fp32"))
        vocab = VOCAB.get(cfg.data.name, 10_000)
        corpus = synthetic_corpus(vocab, tokens_needed(data.batch_size, data.bptt, args.steps + 2),
                                  tokens_needed(data.eval_batch_size, data.bptt, args.steps + 2))
        c = Ours(name, cfg, corpus, runtime)
        contenders.append((c, cfg, vocab))
        configs[name] = cfg.to_dict()
    rows: dict[str, dict] = {}
    for phase in ("train", "eval"):
        times = {c.name: [] for c, _, _ in contenders}
        intervals = {c.name: [] for c, _, _ in contenders}
        for c, _, _ in contenders:  # warm-up
            (c.train_step if phase == "train" else c.eval_step)(0)
        for _ in range(args.rounds):
            for c, _, _ in contenders:
                step = c.train_step if phase == "train" else c.eval_step
                a = Snapshot.now()
                for i in range(args.steps):
                    t0 = time.perf_counter()
                    step(i)
                    times[c.name].append(time.perf_counter() - t0)
                intervals[c.name].append(Interval.between(a, Snapshot.now()))
        for c, cfg, vocab in contenders:
            b = cfg.data.batch_size if phase == "train" else cfg.data.eval_batch_size
            tokens = b * cfg.data.bptt
            flops = 0.0
            if cfg.model.rnn == "qrnn":
                flops = qrnn_forward_flops(c.model, vocab) * tokens * (3 if phase == "train" else 1)
            row = summarize_times(times[c.name], tokens, flops)
            row["contention"] = contention(intervals[c.name], torch.get_num_threads(), "cpu")
            rows.setdefault(c.name, {})[phase] = row
    first = contenders[0][0].name
    for c, cfg, vocab in contenders:
        for phase in ("train", "eval"):
            rows[c.name][phase]["tokens_per_s_over_first"] = round(
                rows[c.name][phase]["tokens_per_s"] / rows[first][phase]["tokens_per_s"], 3)
        if cfg.model.rnn == "qrnn":
            tb = cfg.data.batch_size * cfg.data.bptt
            gemms = [(tb, r.linear.in_features, r.linear.out_features) for r in c.model.rnns]
            gemms.append((tb, c.model.decoder.in_features, vocab))
            peak = measured_peak(rt_device, torch.float32, gemms, [], reps=3)
            rows[c.name]["peak"] = {k: peak[k] for k in ("gflops_per_s", "kernel", "what")}
            rows[c.name]["train"]["fraction_of_measured_peak"] = round(
                rows[c.name]["train"]["gflops_per_s"] / peak["gflops_per_s"], 3)
    print(f"{'preset':<14} {'phase':<6} {'tokens/s':>10} {'x first':>8} {'GFLOP/s':>8} {'cpu/wall':>8}")
    for name, r in rows.items():
        for phase in ("train", "eval"):
            x = r[phase]
            print(f"{name:<14} {phase:<6} {x['tokens_per_s']:>10.0f} {x['tokens_per_s_over_first']:>8.2f} "
                  f"{x['gflops_per_s'] or 0:>8.1f} {x['contention'].get('cpu_per_wall', 0):>8.2f}")
        if "peak" in r:
            print(f"{name:<14} measured peak of its products {r['peak']['gflops_per_s']:.1f} GFLOP/s; "
                  f"training step at {100 * r['train']['fraction_of_measured_peak']:.0f}% of it")
    presets = [name for name in args.presets.split(",") if name]
    variants = {label: {"preset": preset, "overrides": overrides} for label, preset, overrides in specs[len(presets):]}
    tag = "layers_" + "-".join(dict.fromkeys(name for name, _, _ in specs))
    path = write_result("layers", {"presets": presets, "variants": variants, "rows": rows}, config=configs,
                        out=args.out, tag=tag[:100])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
