"""The QRNN's ForgetMult recurrence, c_t = f_t z_t + (1 - f_t) c_{t-1}, timed several ways, and
one whole QRNN layer against one nn.LSTM layer of the same sizes, side by side in one process.

Forward + backward (gradients for f, z and c0) of:

- ``plain``: the step-by-step loop under autograd (T small graphs), over ``unbind``;
- ``indexed`` (only when asked for): the same loop over ``f[t]``, quadratic in T under autograd;
- ``ours``: ``awdlstm.qrnn.forget_mult``, a custom autograd function: two fused ops per
  step forward, the reverse recurrence and the gradients per step backward;
- ``passes``: the same custom function done with whole-tensor passes (f z and 1 - f for all
  t at once, one ``addcmul_`` per step; the gradients as whole-tensor products afterwards);
- ``block``: time cut into blocks of ``--block`` steps, each solved at once as a small
  lower-triangular system (the coefficients prod g_i built by ``cumprod``, no division and
  no logarithms, so it is exact), the running value passed between blocks; autograd backward;
- ``scan``: a Hillis-Steele parallel prefix over the affine maps c -> g_t c + f_t z_t
  (log2 T vectorised steps); autograd backward.

``block`` and ``scan`` trade more arithmetic and memory traffic (about ``block`` times and
log2 T times the loop's) for fewer, larger operations; they are here to show which wins where.

    python -m benchmarks.forget_mult                       # T 70 and 200, B 20, H 1550
    python -m benchmarks.forget_mult --shapes 35x4x64 --layer 32x64x35x4 --steps 2 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from awdlstm.qrnn import QRNNLayer, forget_mult

from .common import Interval, Snapshot, contention, summarize_times, write_result

HERE = Path(__file__).resolve().parent


def plain_loop(f, z, c0):
    # unbind, not f[t]: autograd's backward of each f[t] writes a whole (T, B, H) tensor of
    # zeros, which makes the loop quadratic in T (``indexed``).
    c, out = c0, []
    for ft, zt in zip(f.unbind(0), z.unbind(0)):
        c = ft * zt + (1 - ft) * c
        out.append(c)
    return torch.stack(out)


def indexed_loop(f, z, c0):
    c, out = c0, []
    for t in range(f.size(0)):
        c = f[t] * z[t] + (1 - f[t]) * c
        out.append(c)
    return torch.stack(out)


class _WholeTensorPasses(torch.autograd.Function):
    """``forget_mult`` done with whole-tensor passes where it can: fz = f z and g = 1 - f for
    all t, one ``addcmul_`` per step; backward the recurrence per step, the gradients in
    whole-tensor passes. Each pass streams (T, B, H) tensors through memory once more.

    Forward: c_t = fz_t + g_t * c_{t-1} with fz = f z and g = 1 - f computed for all t at
    once, then one ``addcmul_`` per step into the output buffer.
    Backward, with d_t the gradient reaching c_t (from the output at t and from c_{t+1}):
        d_t = grad_t + g_{t+1} d_{t+1}
        dL/df_t = d_t (z_t - c_{t-1}),  dL/dz_t = d_t f_t,  dL/dc0 = g_0 d_0
    """

    @staticmethod
    def forward(ctx, f: Tensor, z: Tensor, c0: Tensor) -> Tensor:
        out = torch.mul(f, z)  # (T, B, H): fz, overwritten step by step with c
        g = torch.rsub(f, 1)
        prev = c0
        for t in range(out.size(0)):
            prev = out[t].addcmul_(g[t], prev)
        ctx.save_for_backward(f, z, c0, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        f, z, c0, out = ctx.saved_tensors
        need_f, need_z, need_c0 = ctx.needs_input_grad
        g = torch.rsub(f, 1)
        d = grad_out.contiguous().clone()  # (T, B, H): d_t, filled from the end
        for t in range(d.size(0) - 2, -1, -1):
            d[t].addcmul_(g[t + 1], d[t + 1])
        grad_f = grad_z = grad_c0 = None
        if need_f:
            grad_f = torch.empty_like(d)  # (T, B, H): z_t - c_{t-1}, then times d_t
            torch.sub(z[0], c0, out=grad_f[0])
            torch.sub(z[1:], out[:-1], out=grad_f[1:])
            grad_f.mul_(d)
        if need_z:
            grad_z = d * f
        if need_c0:
            grad_c0 = d[0] * g[0]
        return grad_f, grad_z, grad_c0


def passes(f, z, c0):
    return _WholeTensorPasses.apply(f, z, c0)


def block_solve(f, z, c0, block: int = 8):
    g, fz = 1 - f, f * z
    steps = torch.arange(block, device=f.device)
    later = (steps[:, None] < steps[None, :])[:, :, None, None]  # [j, i]: i > j
    upper = (steps[:, None] <= steps[None, :])[:, :, None, None]  # [j, k]: k >= j
    prev, out = c0, []
    for gb, fzb in zip(g.split(block), fz.split(block)):
        n = gb.size(0)
        # P[j, k] = prod_{j < i <= k} g_i for k >= j, else 0: c_k = sum_j P[j, k] fz_j + prod_{i <= k} g_i c_prev
        P = torch.where(later[:n, :n], gb.unsqueeze(0), 1.0).cumprod(dim=1) * upper[:n, :n]
        c = (P * fzb.unsqueeze(1)).sum(0) + gb.cumprod(0) * prev
        out.append(c)
        prev = c[-1]
    return torch.cat(out)


def prefix_scan(f, z, c0):
    # c_t = a_t c_{t-1} + b_t; after the scan b_t holds c_t (c_{-1} folded into b_0).
    a = torch.cat([torch.zeros_like(f[:1]), 1 - f[1:]])
    b = torch.cat([(f[0] * z[0] + (1 - f[0]) * c0).unsqueeze(0), f[1:] * z[1:]])
    shift = 1
    while shift < f.size(0):
        b = torch.cat([b[:shift], a[shift:] * b[:-shift] + b[shift:]])
        a = torch.cat([a[:shift], a[shift:] * a[:-shift]])
        shift *= 2
    return b


def gate_inputs(T: int, B: int, H: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    f = torch.sigmoid(torch.randn(T, B, H, generator=gen)).requires_grad_()
    z = torch.tanh(torch.randn(T, B, H, generator=gen)).requires_grad_()
    c0 = torch.randn(B, H, generator=gen).requires_grad_()
    grad = torch.randn(T, B, H, generator=gen)
    return f, z, c0, grad


def timed(variants: dict, steps: int, rounds: int) -> tuple[dict, dict]:
    """Interleaved rounds: each variant runs ``steps`` times per round, in a rotating order."""
    for fn in variants.values():
        fn()  # warm-up
    times = {n: [] for n in variants}
    ivs = {n: [] for n in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            a = Snapshot.now()
            for _ in range(steps):
                t0 = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - t0)
            ivs[name].append(Interval.between(a, Snapshot.now()))
    return times, ivs


def report(title: str, variants: dict, times: dict, ivs: dict, base: str, tokens: int, threads: int) -> dict:
    rows = {}
    print(f"\n{title}")
    print(f"  {'variant':<8} {'ms fwd+bwd':>11} {'q1-q3':>17} {base + '/this':>12} {'cpu ms':>9} "
          f"{base + '/this':>12} {'cpu/wall':>9}  flag")
    for name in variants:
        res = summarize_times(times[name], tokens, 0.0)
        res.pop("gflops_per_s")
        res.update(contention(ivs[name], threads, "cpu"))
        # CPU time per call: with one thread, the figure least disturbed by other processes.
        res["cpu_ms_per_batch"] = round(1000 * sum(i.cpu for i in ivs[name]) / len(times[name]), 3)
        rows[name] = res
    for name, res in rows.items():
        res[f"speedup_over_{base}"] = round(rows[base]["ms_per_batch"] / res["ms_per_batch"], 3)
        res[f"cpu_speedup_over_{base}"] = round(rows[base]["cpu_ms_per_batch"] / res["cpu_ms_per_batch"], 3)
        print(f"  {name:<8} {res['ms_per_batch']:>11.2f} {res['ms_per_batch_q1']:>8.2f}-{res['ms_per_batch_q3']:<8.2f}"
              f" {res[f'speedup_over_{base}']:>12.2f} {res['cpu_ms_per_batch']:>9.2f}"
              f" {res[f'cpu_speedup_over_{base}']:>12.2f} {res['cpu_per_wall']:>9.2f}  "
              f"{'CONTENDED' if res['contended'] else ''}")
    return rows


IMPLS = {"plain": plain_loop, "ours": forget_mult, "block": block_solve, "scan": prefix_scan, "passes": passes, "indexed": indexed_loop}


def bench_forget_mult(T: int, B: int, H: int, block: int, names: list[str], steps: int, rounds: int,
                      threads: int) -> dict:
    f, z, c0, grad = gate_inputs(T, B, H)
    impls = {name: IMPLS[name] for name in ["plain"] + [n for n in names if n != "plain"]}
    if "block" in impls:
        impls["block"] = lambda f, z, c0: block_solve(f, z, c0, block)
    ref = plain_loop(f, z, c0)
    ref_grads = torch.autograd.grad(ref, (f, z, c0), grad)
    errors = {}
    for name, fn in impls.items():
        out = fn(f, z, c0)
        grads = torch.autograd.grad(out, (f, z, c0), grad)
        errors[name] = max([(out - ref).abs().max().item()] + [(a - b).abs().max().item()
                                                                for a, b in zip(grads, ref_grads)])

    def step(fn):
        return lambda: torch.autograd.grad(fn(f, z, c0), (f, z, c0), grad)

    variants = {name: step(fn) for name, fn in impls.items()}
    times, ivs = timed(variants, steps, rounds)
    rows = report(f"forget_mult, T {T}, B {B}, H {H} (block {block})", variants, times, ivs, "plain", T * B, threads)
    for name in rows:
        rows[name]["max_abs_diff_from_plain"] = errors[name]
    print("  max |difference| from plain (output and gradients): "
          + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    return {"shape": {"T": T, "B": B, "H": H, "block": block}, "variants": rows}


def bench_layer(inp: int, hidden: int, T: int, B: int, window: int, steps: int, rounds: int, threads: int) -> dict:
    torch.manual_seed(0)
    qrnn = QRNNLayer(inp, hidden, window=window).train()
    lstm = nn.LSTM(inp, hidden).train()
    x = torch.randn(T, B, inp, requires_grad=True)

    def run(module):
        def fn():
            y, _ = module(x)
            y.sum().backward()
        return fn

    variants = {"qrnn": run(qrnn), "lstm": run(lstm)}
    times, ivs = timed(variants, steps, rounds)
    rows = report(f"one layer {inp} -> {hidden}, T {T}, B {B}, QRNN window {window} against nn.LSTM",
                  variants, times, ivs, "lstm", T * B, threads)
    params = {"qrnn": sum(p.numel() for p in qrnn.parameters()), "lstm": sum(p.numel() for p in lstm.parameters())}
    return {"shape": {"input": inp, "hidden": hidden, "T": T, "B": B, "window": window}, "params": params,
            "variants": rows}


def parse_shape(text: str, n: int) -> tuple[int, ...]:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) != n or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected {n} positive integers joined by x, got {text!r}")
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.forget_mult", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="70x20x1550,200x20x1550", help="TxBxH,... (default: %(default)s)")
    p.add_argument("--layer", default="400x1550x70x20", help="INPUTxHIDDENxTxB of the layer comparison")
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--variants", default="plain,ours,passes,block,scan", help="forget_mult variants (plain always runs)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--no-write", dest="write", action="store_false")
    args = p.parse_args(argv)
    shapes = [parse_shape(s, 3) for s in args.shapes.split(",")]
    names = args.variants.split(",")
    if unknown := set(names) - set(IMPLS):
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(IMPLS)}")
    layer = parse_shape(args.layer, 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, cpu, {args.steps} steps x {args.rounds} rounds per variant")

    with torch.device("cpu"):
        fm = [bench_forget_mult(T, B, H, args.block, names, args.steps, args.rounds, threads) for T, B, H in shapes]
        lay = bench_layer(*layer, args.window, args.steps, args.rounds, threads)
    if args.write:
        path = write_result("forget_mult", {"args": {k: str(v) for k, v in vars(args).items()},
                                            "forget_mult": fm, "layer": lay},
                            config=None, out=args.out, tag="forget-mult_cpu",
                            command="python -m benchmarks.forget_mult " + " ".join(sys.argv[1:] if argv is None else argv))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
