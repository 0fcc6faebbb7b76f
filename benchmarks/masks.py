"""What the DropConnect masks cost per training step on the CPU, drawn three ways.

For the preset's hidden-to-hidden matrices (11.2M weights for ``ptb``) this times forward
(mask and product) plus backward of:

- ``lanes``: ``awdlstm.regularize.drop_connect`` as it is on the CPU: 64-bit random
  integers read as four 16-bit lanes, a lane kept when it is at least p * 65536;
- ``rand_ge``: ``weight * (torch.rand_like(weight) >= p) / (1 - p)``, one uniform float
  per weight (what the CPU path did before);
- ``bernoulli``: ``F.dropout``, PyTorch's own (``bernoulli_``; one fused kernel on CUDA).

All three keep a weight with probability 1 - p and scale the survivors by 1 / (1 - p)
(``lanes`` with p rounded to a multiple of 2^-16). Freed memory is kept in the process as
training does (``awdlstm.runtime.keep_freed_memory``) unless ``--system-malloc``.

    python -m benchmarks.masks --preset ptb
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import torch.nn.functional as F

from awdlstm.presets import PRESETS, get_preset
from awdlstm.regularize import drop_connect
from awdlstm.runtime import keep_freed_memory

from .common import Interval, Snapshot, contention


def rand_ge(weight: torch.Tensor, p: float) -> torch.Tensor:
    return weight * torch.rand_like(weight).ge_(p).div_(1 - p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.masks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="ptb", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is")
    args = ap.parse_args(argv)
    if not args.system_malloc:
        keep_freed_memory()
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

    variants = {"lanes": lambda w, q: drop_connect(w, q, True), "rand_ge": rand_ge,
                "bernoulli": lambda w, q: F.dropout(w, q, True)}
    for fn in variants.values():
        step(fn)
    times = {k: [] for k in variants}
    ivs = {k: [] for k in variants}
    per = max(1, args.steps // args.rounds)
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            a = Snapshot.now()
            for _ in range(per):
                t0 = time.perf_counter()
                step(variants[name])
                times[name].append(time.perf_counter() - t0)
            ivs[name].append(Interval.between(a, Snapshot.now()))
    print(f"preset {args.preset}: weight_hh of {sizes}, {n / 1e6:.2f}M weights, p={p}, {threads} threads")
    for name in names:
        med = statistics.median(times[name])
        c = contention(ivs[name], threads, "cpu", own_use=False)  # PyTorch's CPU RNG runs on one thread
        print(f"  {name:<8} {1000 * med:8.1f} ms per step (forward + backward)  {1e9 * med / n:5.2f} ns/weight"
              f"  cpu/wall {c['cpu_per_wall']:.2f}{'  CONTENDED' if c['contended'] else ''}")
    for name in names:
        keep = variants[name](torch.ones(1000, 1000), p).ne(0).float().mean().item()
        print(f"  {name} keep fraction on 1M weights: {keep:.4f} (expected {1 - p})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
