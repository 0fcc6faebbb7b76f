"""What the DropConnect masks cost per training step, and a cheaper way to draw them.

``awdlstm.regularize.drop_connect`` calls ``F.dropout`` on each hidden-to-hidden matrix,
which draws its mask with ``bernoulli_``; for the PTB model that is 11.2M random draws per
step. This times, for the preset's matrices, forward (mask and product) plus backward:

- ``current``: ``drop_connect`` as it is (``F.dropout``);
- ``rand_ge``: ``weight * torch.rand_like(weight).ge_(p).div_(1 - p)``, the same
  distribution (keep with probability 1 - p, survivors scaled by 1 / (1 - p)), drawn with
  the uniform generator.

    python -m benchmarks.masks --preset ptb
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from awdlstm.presets import PRESETS, get_preset
from awdlstm.regularize import drop_connect

from .common import Interval, Snapshot, contention


def rand_ge(weight: torch.Tensor, p: float) -> torch.Tensor:
    return weight * torch.rand_like(weight).ge_(p).div_(1 - p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.masks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="ptb", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    m = get_preset(args.preset).model
    sizes = [m.hidden_size] * (m.num_layers - 1) + [m.emb_size if m.tie_weights else m.hidden_size]
    p = m.weight_p
    torch.manual_seed(0)
    weights = [torch.randn(4 * h, h, requires_grad=True) for h in sizes]
    grads = [torch.ones(4 * h, h) for h in sizes]
    n = sum(w.numel() for w in weights)

    def step(fn):
        outs = [fn(w, p) for w in weights]
        torch.autograd.backward(outs, grads)
        for w in weights:
            w.grad = None

    variants = {"current": lambda w, q: drop_connect(w, q, True), "rand_ge": rand_ge}
    for fn in variants.values():
        step(fn)
    times = {k: [] for k in variants}
    ivs = {k: [] for k in variants}
    per = max(1, args.steps // args.rounds)
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            a = Snapshot.now()
            for _ in range(per):
                t0 = time.perf_counter()
                step(variants[name])
                times[name].append(time.perf_counter() - t0)
            ivs[name].append(Interval.between(a, Snapshot.now()))
    print(f"preset {args.preset}: weight_hh of {sizes}, {n / 1e6:.2f}M weights, p={p}, {threads} threads")
    for name in names:
        med = statistics.median(times[name])
        c = contention(ivs[name], threads, "cpu")
        print(f"  {name:<8} {1000 * med:8.1f} ms per step (forward + backward)  {1e9 * med / n:5.2f} ns/weight"
              f"  cpu/wall {c['cpu_per_wall']:.2f}{'  CONTENDED' if c['contended'] else ''}")
    keep = rand_ge(torch.ones(1000, 1000), p).ne(0).float().mean().item()
    print(f"  rand_ge keep fraction on 1M weights: {keep:.4f} (expected {1 - p})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
