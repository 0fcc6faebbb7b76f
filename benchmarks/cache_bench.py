"""The neural cache: vectorised (awdlstm.cache) against the naive per-token reference.

    python -m benchmarks.cache_bench RUN --split valid --window 500 [--limit N]

Both read the same precomputed hidden states and model log-probabilities of one split (the
model's forward pass is timed apart and not counted for either). The vectorised code needs
only the target's probability; the naive one builds the cache's distribution over the whole
vocabulary for every token, as the original pointer.py does, and gets the model's full
distributions (computed chunk by chunk outside its timing, so memory stays bounded). A third,
the original code's way (one-hot (W, V) vectors per token), is timed on the first
``--onehot-tokens`` tokens. Writes a result file (``write_result``) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from awdlstm.cache import PRESETS, CacheParams, cache_log_probs, mix, model_trace, naive_cache_log_probs, preset_for
from awdlstm.data import load_corpus
from awdlstm.loading import load_parts

from .common import RESULTS, write_result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cache_bench", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run directory, checkpoint or export")
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--window", type=int, help="default: the corpus preset (ptb 500, wt2 3785)")
    p.add_argument("--theta", type=float)
    p.add_argument("--lambda", dest="lam", type=float)
    p.add_argument("--limit", type=int, help="only the first N tokens of the split")
    p.add_argument("--chunk", type=int, default=512, help="positions per block of the vectorised cache")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of the vectorised cache (best is kept)")
    p.add_argument("--onehot-tokens", type=int, default=2000,
                   help="tokens timed for the original-style one-hot baseline (0: skip); its rate is per token")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--out", "--out-dir", dest="out", type=Path, default=RESULTS,
                   help="folder for the JSON result (default benchmarks/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, vocab, cfg, _ = load_parts(args.run)
    base = PRESETS[preset_for(cfg.data.name)]
    params = CacheParams(base.window if args.window is None else args.window,
                         base.theta if args.theta is None else args.theta,
                         base.lam if args.lam is None else args.lam).validate()
    ids = load_corpus(cfg.data).split(args.split)
    if args.limit:
        ids = ids[: args.limit]

    t0 = time.perf_counter()
    trace = model_trace(model, ids)
    forward_s = time.perf_counter() - t0
    n = trace.targets.numel()
    print(f"{args.split}: {n} tokens, hidden {tuple(trace.hidden.shape)}, forward pass {forward_s:.1f} s", flush=True)

    def vectorised():
        lp = cache_log_probs(trace.hidden, trace.targets, params.window, [params.theta], chunk=args.chunk)[0]
        return mix(trace.model_log_probs, lp, params.lam)

    vectorised()  # warm-up
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fast = vectorised()
        times.append(time.perf_counter() - t0)
    fast_s = min(times)

    naive_s, parts, block = 0.0, [], 2048
    with torch.no_grad():
        for s in range(0, n, block):
            full = F.log_softmax(model.decoder(trace.hidden[s : s + block]).float(), dim=-1)  # (b, V), not timed
            t0 = time.perf_counter()
            parts.append(naive_cache_log_probs(trace.hidden, trace.targets, full, params.window, params.theta,
                                               params.lam, start=s))
            naive_s += time.perf_counter() - t0
            print(f"  naive: {min(s + block, n)}/{n} tokens, {naive_s:.1f} s", end="\r", flush=True)
    print()
    slow = torch.cat(parts).double()
    finite = torch.isfinite(slow) & torch.isfinite(fast)
    diff = (fast - slow)[finite].abs().max().item() if finite.any() else 0.0

    onehot = None
    if args.onehot_tokens:
        # The original pointer.py's way: per token, one-hot vectors (W, V) of the cached next
        # words, weighted by the cache's softmax and summed. Timed on the first tokens only
        # (it is slow); its rate is tokens per second like the others.
        m = min(args.onehot_tokens, n)
        vocab_size = len(vocab)
        with torch.no_grad():
            full = F.log_softmax(model.decoder(trace.hidden[:m]).float(), dim=-1).exp()
            t0 = time.perf_counter()
            for t in range(1, m):
                lo = max(0, t - params.window)
                attn = torch.softmax(params.theta * (trace.hidden[lo:t] @ trace.hidden[t]), dim=0)
                onehots = F.one_hot(trace.targets[lo:t], vocab_size).float()  # (W, V)
                p_cache = (attn[:, None] * onehots).sum(0)
                p = params.lam * p_cache + (1 - params.lam) * full[t]
                p[trace.targets[t]].item()
            onehot_s = time.perf_counter() - t0
        onehot = {"tokens": m, "seconds": onehot_s, "tokens_per_s": (m - 1) / onehot_s}

    result = {
        "run": str(args.run),
        "split": args.split,
        "tokens": n,
        "window": params.window, "theta": params.theta, "lambda": params.lam, "chunk": args.chunk,
        "forward_seconds": round(forward_s, 3),
        "vectorised": {"seconds": fast_s, "tokens_per_s": n / fast_s},
        "naive": {"seconds": naive_s, "tokens_per_s": n / naive_s},
        "speedup": naive_s / fast_s,
        "onehot_original_style": onehot,
        "speedup_vs_onehot": None if onehot is None else (n / fast_s) / onehot["tokens_per_s"],
        "max_abs_diff_log_prob": diff,
        "perplexity": {"model": math.exp(-trace.model_log_probs.mean().item()),
                       "cache": math.exp(-fast.mean().item())},
        "vocab_size": len(vocab),
    }
    print(f"vectorised: {result['vectorised']['tokens_per_s']:,.0f} tokens/s ({fast_s:.3f} s)")
    print(f"naive:      {result['naive']['tokens_per_s']:,.0f} tokens/s ({naive_s:.2f} s)")
    if onehot is not None:
        print(f"one-hot (original style, first {onehot['tokens']} tokens): {onehot['tokens_per_s']:,.0f} tokens/s; "
              f"vectorised is {result['speedup_vs_onehot']:.0f}x faster")
    print(f"speedup:    {result['speedup']:.1f}x (max |difference| of log-probs {diff:.2e}); "
          f"perplexity {result['perplexity']['model']:.2f} -> {result['perplexity']['cache']:.2f} with the cache")
    out = write_result("cache", result, config=cfg.to_dict(), device=trace.hidden.device, out=args.out,
                       tag=f"cache-{Path(cfg.data.name).name}-{args.split}-w{params.window}",
                       command=" ".join(["python -m benchmarks.cache_bench", *(argv if argv is not None else sys.argv[1:])]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
