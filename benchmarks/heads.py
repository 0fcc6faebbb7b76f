"""Output heads at WikiText-103's vocabulary: the split and sampled softmax against the full one.

    python -m benchmarks.heads                                   # V 267,735, emb 400, bptt 96, batch 16
    python -m benchmarks.heads --batch-size 8 --steps 3 --warmup 1 --rounds 1   # a short run

One training step of each head, side by side in one process: ``nll`` of random hidden
states (N = bptt x batch, from a fixed generator) against Zipf-distributed targets
(P(id) proportional to 1 / (id + 1) over frequency-ordered ids, so most targets fall in the
split head's first cluster, as on real text), the mean, backward (into the decoder, the
tail rows and the hidden states), and an SGD update of the decoder and the tail rows. The
contenders are timed in interleaved rounds so that contention hits them alike.

Peak memory: on the CPU each contender runs in a short child process that builds the same
setup, resets the kernel's peak-RSS mark (VmHWM) and reads its resident set size (VmRSS),
runs ``--memory-steps`` steps and reports VmHWM minus that baseline: the step's extra memory
(the (N, V) logits and their gradients for the full head, the (V, H) decoder gradient for
all). Not ``ru_maxrss``: a child inherits its parent's. The child leaves glibc's malloc as
it is (large blocks go back to the system when freed), so the figure is the live memory;
the timed steps keep freed memory in the process, as training does on the CPU
(``--system-malloc`` to leave malloc alone there too). On CUDA,
``torch.cuda.max_memory_allocated`` minus the memory allocated after setup, in process.
Writes a JSON result (hardware, versions, config, figures, CPU-s per wall-s) to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from awdlstm.heads import HEADS, build_head, check_cutoffs, default_cutoffs
from awdlstm.runtime import keep_freed_memory

from .common import (
    Interval,
    Snapshot,
    contention,
    current_rss_mib,
    hwm_rss_mib,
    max_rss_mib,
    reset_peak_rss,
    sync,
    write_result,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WT103_VOCAB = 267_735


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.heads", description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=WT103_VOCAB, help="vocabulary size (default: WikiText-103's)")
    p.add_argument("--emb", type=int, default=400, help="decoder input size (default 400)")
    p.add_argument("--bptt", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--heads", default=",".join(HEADS), help="comma-separated contenders (default: all)")
    p.add_argument("--cutoffs", default=None, help="split cutoffs, comma-separated (default: the original code's)")
    p.add_argument("--num-sampled", type=int, default=8192)
    p.add_argument("--steps", type=int, default=10, help="timed steps per contender per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    p.add_argument("--memory-steps", type=int, default=2, help="steps of the memory child (0: no memory)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc malloc as it is (default on the CPU: keep freed memory, as training does)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.head_list = [h for h in args.heads.split(",") if h]
    if not args.head_list or any(h not in HEADS for h in args.head_list):
        p.error(f"--heads takes a comma-separated subset of {','.join(HEADS)}")
    args.cutoff_list = (default_cutoffs(args.vocab) if args.cutoffs is None
                        else check_cutoffs([int(c) for c in args.cutoffs.split(",")], args.vocab))
    return args


class Setup:
    """Decoder, head, optimizer, hidden states and targets of one contender, from fixed seeds."""

    def __init__(self, args: argparse.Namespace, kind: str) -> None:
        self.device = torch.device(args.device)
        gen = torch.Generator().manual_seed(0)
        n = args.bptt * args.batch_size
        self.decoder = nn.Linear(args.emb, args.vocab).to(self.device)
        with torch.no_grad():
            self.decoder.weight.uniform_(-0.1, 0.1, generator=gen)
            self.decoder.bias.zero_()
        self.head = build_head(kind, self.decoder, args.vocab, args.cutoff_list, args.num_sampled).train()
        self.hidden = torch.randn(n, args.emb, generator=gen).to(self.device).requires_grad_()
        zipf = 1.0 / torch.arange(1, args.vocab + 1, dtype=torch.float64)
        self.targets = torch.multinomial(zipf, n, replacement=True, generator=gen).to(self.device)
        params = list(self.decoder.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.SGD(params, lr=1.0)
        self.loss = float("nan")

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.hidden.grad = None
        loss = self.head.nll(self.hidden, self.targets).mean()
        loss.backward()
        self.opt.step()
        self.loss = loss.item()


def memory_child(args: argparse.Namespace) -> dict:
    """Extra memory of ``args.memory_steps`` training steps over the setup, in MiB."""
    setup = Setup(args, args.memory_child)
    if setup.device.type == "cuda":
        sync(setup.device)
        base = torch.cuda.memory_allocated(setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)
        for _ in range(args.memory_steps):
            setup.step()
        sync(setup.device)
        peak = torch.cuda.max_memory_allocated(setup.device)
        return {"method": "torch.cuda.max_memory_allocated - memory_allocated after setup",
                "baseline_mib": round(base / 2 ** 20, 1), "extra_mib": round((peak - base) / 2 ** 20, 1)}
    # A child started from a large parent inherits the parent's ru_maxrss (Linux keeps the
    # high-water mark across fork and exec), so the peak is the kernel's VmHWM, reset to the
    # current size after setup; ru_maxrss only where that reset is not supported.
    if reset_peak_rss():
        base = current_rss_mib()
        for _ in range(args.memory_steps):
            setup.step()
        return {"method": "VmHWM of a child process, reset after setup, - its VmRSS after setup",
                "baseline_mib": round(base, 1), "extra_mib": round(hwm_rss_mib() - base, 1)}
    base = max_rss_mib()
    for _ in range(args.memory_steps):
        setup.step()
    return {"method": "ru_maxrss of a child process - its ru_maxrss after setup",
            "baseline_mib": round(current_rss_mib() or 0.0, 1), "extra_mib": round(max_rss_mib() - base, 1)}


def measure_memory(args: argparse.Namespace, kind: str, argv: list[str]) -> dict:
    if args.device == "cuda":
        return memory_child(argparse.Namespace(**{**vars(args), "memory_child": kind}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.heads", *argv, "--memory-child", kind],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_heads(args: argparse.Namespace) -> dict:
    setups = {kind: Setup(args, kind) for kind in args.head_list}
    for s in setups.values():
        for _ in range(args.warmup):
            s.step()
        sync(s.device)
    times = {k: [] for k in setups}
    intervals = {k: [] for k in setups}
    for _ in range(args.rounds):
        for kind, s in setups.items():
            a = Snapshot.now()
            for _ in range(args.steps):
                t0 = time.perf_counter()
                s.step()
                sync(s.device)
                times[kind].append(time.perf_counter() - t0)
            intervals[kind].append(Interval.between(a, Snapshot.now()))
    n = args.bptt * args.batch_size
    out = {}
    for kind, s in setups.items():
        med = statistics.median(times[kind])
        out[kind] = {
            "tokens_per_s": round(n / med, 1),
            "ms_per_step": round(1000 * med, 2),
            "step_ms": [round(1000 * t, 2) for t in times[kind]],
            "loss_last": round(s.loss, 4),
            **contention(intervals[kind], torch.get_num_threads(), args.device),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "system"
    # The memory child leaves malloc alone: with freed memory kept, each thread's arena keeps
    # its own freed blocks and the peak RSS varies from run to run by hundreds of MB.
    if args.device == "cpu" and not args.system_malloc and not args.memory_child and keep_freed_memory():
        malloc = "freed memory kept (awdlstm.runtime.keep_freed_memory)"
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0
    device = torch.device(args.device)
    n = args.bptt * args.batch_size
    in_head = sum(1.0 / (i + 1) for i in range(args.cutoff_list[0])) if args.cutoff_list else None
    head_share = None if in_head is None else in_head / sum(1.0 / (i + 1) for i in range(args.vocab))
    print(f"V {args.vocab}, emb {args.emb}, N = {args.bptt} x {args.batch_size} = {n}, "
          f"cutoffs {args.cutoff_list}, num_sampled {args.num_sampled}, device {args.device}, "
          f"threads {torch.get_num_threads()}", flush=True)
    t0 = Snapshot.now()
    speed = time_heads(args)
    memory = {}
    if args.memory_steps > 0:
        child_argv = [a for a in raw]
        for kind in args.head_list:
            memory[kind] = measure_memory(args, kind, child_argv)
    total = Interval.between(t0, Snapshot.now())

    ratios = {}
    print(f"{'head':8} {'tokens/s':>10} {'ms/step':>10} {'x full':>7} {'extra MiB':>10} {'/ full':>7} "
          f"{'cpu/wall':>9} {'contended':>9}")
    for kind in args.head_list:
        sp, mem = speed[kind], memory.get(kind, {})
        r = {}
        if "full" in speed:
            r["speed_over_full"] = round(sp["tokens_per_s"] / speed["full"]["tokens_per_s"], 3)
            full_extra = memory.get("full", {}).get("extra_mib")
            if mem.get("extra_mib") is not None and full_extra:
                r["extra_memory_over_full"] = round(mem["extra_mib"] / full_extra, 4)
        ratios[kind] = r
        print(f"{kind:8} {sp['tokens_per_s']:>10.1f} {sp['ms_per_step']:>10.1f} "
              f"{r.get('speed_over_full', float('nan')):>7.2f} {mem.get('extra_mib', float('nan')):>10.1f} "
              f"{r.get('extra_memory_over_full', float('nan')):>7.3f} {sp['cpu_per_wall']:>9.2f} "
              f"{str(sp['contended']):>9}")
    contended = any(speed[k]["contended"] for k in speed)
    if contended:
        print("contended: other processes took CPU; rerun on a quiet machine with the defaults: "
              "python -m benchmarks.heads")
    target = {}
    if "split" in ratios and "full" in speed:
        sr = ratios["split"]
        target = {"split_speed_at_least_5x": sr.get("speed_over_full", 0) >= 5,
                  "split_extra_memory_at_most_one_fifth": (sr["extra_memory_over_full"] <= 0.2
                                                           if "extra_memory_over_full" in sr else None)}
        print(f"target (split >= 5x tokens/s, <= 1/5 extra memory of full): {target}")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    result = {
        "benchmark": "heads",
        "time": stamp,
        "config": {"vocab": args.vocab, "emb": args.emb, "bptt": args.bptt, "batch_size": args.batch_size,
                   "tokens_per_step": n, "heads": args.head_list, "cutoffs": args.cutoff_list,
                   "num_sampled": args.num_sampled, "steps": args.steps, "warmup": args.warmup,
                   "rounds": args.rounds, "memory_steps": args.memory_steps, "device": args.device,
                   "threads": torch.get_num_threads(), "targets": "Zipf, P(id) ~ 1/(id+1)",
                   "target_share_in_first_cluster": None if head_share is None else round(head_share, 4),
                              "malloc": malloc, "malloc_memory_child": "system",
                   "optimizer": "SGD lr 1.0 over decoder and head parameters, zero_grad(set_to_none=True)"},
        "train": speed,
        "memory": memory,
        "ratios": ratios,
        "target": target,
        "contended": contended,
        "total": total.as_dict(),
        "rusage_maxrss_mib_parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    result["heads_config"] = result.pop("config")
    path = write_result("heads", result, config=None, device=device, out=args.out,
                        tag=f"heads_{args.device}_v{args.vocab}_bs{args.batch_size}",
                        command="python -m benchmarks.heads " + " ".join(raw))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
