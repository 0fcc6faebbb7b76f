"""Time the real training and evaluation steps of awdlstm against a plain nn.LSTM stack
(and fastai's AWD_LSTM where installed), in one process, in interleaved rounds.

    python -m benchmarks.run --preset ptb --batch-size 20 --steps 20
    python -m benchmarks.run --preset ptb --precision bf16          # bf16 autocast vs fp32
    python -m benchmarks.run --preset ptb --device cuda --compile

See benchmarks/README.md for what is measured and how to read the result file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

from awdlstm.presets import PRESETS

from .common import RESULTS, measured_peak, raise_peak, step_gemms, step_lstms, theoretical_peak, write_result
from .harness import Setup, memory_probe, probe_memory, timed_rounds, warm_up

TARGETS = {"train": 0.95, "eval": 1.0}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ptb", choices=sorted(PRESETS), help="model and data shapes (default ptb)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="evaluation batch (default: the preset's, 10)")
    p.add_argument("--bptt", type=int, default=None, help="window length, fixed for every step (default: the preset's, 70)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per contender (default 20)")
    p.add_argument("--eval-steps", type=int, default=None, help="timed evaluation steps per contender (default: --steps)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender and phase first (default 3)")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds the timed steps are split into (default 4)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision; other than fp32 also times ours in fp32 for comparison")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd copy of our model")
    p.add_argument("--compile-allow-rnn", action="store_true",
                   help="with --compile, let Dynamo trace into nn.LSTM (experimental; else the LSTMs are graph breaks)")
    p.add_argument("--compile-timeout", type=float, default=900.0, help="seconds before compilation is given up (default 900)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: one per allowed core, as training)")
    p.add_argument("--data", default=None, help="a corpus name or directory to take token ids from (default: synthetic ids)")
    p.add_argument("--peak-reps", type=int, default=5,
                   help="timed repetitions of each kernel for the measured peak (default 5; the LSTM op at most 3)")
    p.add_argument("--fma-units", type=int, default=2,
                   help="FMA units per CPU core for the theoretical peak (default 2; 1 on some AVX-512 parts)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory probes (a short child process per contender)")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (training keeps freed memory; this shows what that gains)")
    p.add_argument("--no-fastai", dest="fastai", action="store_false", help="leave fastai out even if importable")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result (default benchmarks/results)")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.eval_steps is None:
        args.eval_steps = args.steps
    for name in ("steps", "eval_steps", "rounds", "peak_reps", "fma_units"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU is visible")
    return args


# ---------------------------------------------------------------------------- report


def dynamo_counters() -> dict | None:
    """How torch.compile fared: graphs compiled and the reasons for graph breaks."""
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return None
    breaks = counters.get("graph_break", {})
    return {
        "stats": {k: int(v) for k, v in counters.get("stats", {}).items()},
        "graph_breaks": {str(k)[:300]: int(v) for k, v in list(breaks.items())[:20]},
    }


def ratio(results: dict, a: str, b: str) -> float | None:
    if a in results and b in results and results[b]["tokens_per_s"] > 0:
        return round(results[a]["tokens_per_s"] / results[b]["tokens_per_s"], 4)
    return None


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def print_phase(phase: str, res: dict, tokens: int) -> None:
    print(f"\n{phase}: {tokens} tokens per batch")
    print(f"  {'contender':<14} {'ms/batch':>10} {'[q1 - q3]':>19} {'tokens/s':>10} {'GFLOP/s':>8} "
          f"{'%meas':>6} {'%theo':>6} {'cpu/wall':>8} {'others':>6}  flag")
    for name, r in res.items():
        others = "-" if r["others_cores"] is None else f"{r['others_cores']:.2f}"
        flag = "CONTENDED" if r["contended"] else ""
        if not r["loss_finite"]:
            flag += " NON-FINITE-LOSS"
        print(f"  {name:<14} {r['ms_per_batch']:>10.1f} [{r['ms_per_batch_q1']:>8.1f} - {r['ms_per_batch_q3']:>8.1f}]"
              f" {r['tokens_per_s']:>10.0f} {r['gflops_per_s']:>8.1f} {_pct(r['fraction_of_measured_peak']):>6}"
              f" {_pct(r['fraction_of_theoretical_peak']):>6} {r['cpu_per_wall']:>8.2f} {others:>6}  {flag}")


def measure_peaks(setup: Setup, args: argparse.Namespace) -> dict:
    """The measured peak per precision (the step's kernels at its shapes) and the CPU's
    theoretical fp32 peak; see benchmarks/README.md."""
    cfg, dev = setup.cfg, setup.device
    ref = setup.contenders[0]
    sizes = (ref.input_sizes, ref.hidden_sizes)
    batches = {"train": cfg.data.batch_size, "eval": cfg.data.eval_batch_size}
    gemms = step_gemms(*sizes, ref.decoder_in, setup.vocab, cfg.data.bptt, sorted(set(batches.values())))
    lstms = step_lstms(*sizes, cfg.data.bptt, batches)
    measured = {"fp32": measured_peak(dev, torch.float32, gemms, lstms, args.peak_reps)}
    if args.precision != "fp32":
        measured[args.precision] = measured_peak(dev, DTYPES[args.precision], gemms, lstms, args.peak_reps)
    if dev.type == "cpu":
        theo = theoretical_peak(setup.threads, args.fma_units)
    else:
        theo = {"what": "theoretical", "gflops_per_s": None,
                "why_none": "not computed for GPUs (see the GPU's datasheet; hardware.gpu_name)"}
    return {"measured": measured, "theoretical": theo}


def print_peaks(peaks: dict) -> None:
    for k, v in peaks["measured"].items():
        failed = [r["kernel"] for r in v["kernels"] if "error" in r]
        print(f"  measured {k}: {v['gflops_per_s']} GFLOP/s, best of {len(v['kernels'])} kernels at the step's shapes "
              f"({v['kernel']}; cpu/wall {v['cpu_per_wall']:.2f})" + (f"; failed: {', '.join(failed)}" if failed else ""))
    t = peaks["theoretical"]
    if t["gflops_per_s"] is None:
        print(f"  theoretical: none ({t['why_none']})")
    else:
        print(f"  theoretical fp32: {t['gflops_per_s']} GFLOP/s = {t['cores']} cores x {t['ghz']} GHz "
              f"({t['frequency_source']}) x {t['fma_units_per_core']} {t['isa']} units (assumed) "
              f"x {t['flops_per_cycle_per_unit']} FLOP/cycle")


def apply_peaks(results: dict, peaks: dict, precision: str) -> list[str]:
    """Each contender's fraction of the measured peak of its precision and of the
    theoretical peak (fp32). A step faster than the measured peak raises it (never a
    fraction above 1); returns what was raised, for the report."""
    notes = []

    def own(name: str) -> str:
        return "fp32" if name == "ours-fp32" else precision

    for phase, res in results.items():
        for name, r in res.items():
            if raise_peak(peaks["measured"][own(name)], r["gflops_per_s"], f"{name} {phase} step"):
                notes.append(f"the {own(name)} measured peak was raised to {r['gflops_per_s']} GFLOP/s: the {name} "
                             f"{phase} step ran faster than every kernel timed for the peak")
    theo = peaks["theoretical"]["gflops_per_s"]
    for phase, res in results.items():
        for name, r in res.items():
            peak = peaks["measured"][own(name)]["gflops_per_s"]
            r["fraction_of_measured_peak"] = round(r["gflops_per_s"] / peak, 4) if peak else None
            r["fraction_of_theoretical_peak"] = (round(r["gflops_per_s"] / theo, 4)
                                                 if theo and own(name) == "fp32" else None)
            if r["fraction_of_theoretical_peak"] is not None and r["fraction_of_theoretical_peak"] > 1:
                notes.append(f"the {name} {phase} step is above the theoretical peak: the frequency or the FMA "
                             "unit count assumed for it is too low for this CPU (turbo clock, --fma-units)")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_probe is not None:
        print("MEMORY_PROBE " + json.dumps(memory_probe(args)), flush=True)
        return 0

    started = dt.datetime.now().astimezone()
    setup = Setup(args)
    dev = setup.device
    names = [c.name for c in setup.contenders]
    cfg = setup.cfg
    print(f"awdlstm benchmark: preset {args.preset}, {dev.type}, {args.precision}, batch {cfg.data.batch_size} "
          f"(eval {cfg.data.eval_batch_size}) x bptt {cfg.data.bptt}, vocab {setup.vocab} ({setup.data_source}), "
          f"{setup.threads} threads, malloc: {setup.malloc}; contenders: {', '.join(names)}", flush=True)
    for note in setup.notes:
        print(f"  note: {note}")

    print("peak: the step's kernels at its shapes ...", flush=True)
    peaks = measure_peaks(setup, args)
    print_peaks(peaks)

    results: dict = {}
    warm: dict = {}
    for phase in ("train", "eval"):
        print(f"{phase}: warm-up ...", flush=True)
        active, warm[phase] = warm_up(setup, phase, args.compile_timeout)
        results[phase] = timed_rounds(setup, phase, active)

    survivors = [c.name for c in setup.contenders if not setup.failures.get(c.name)]
    memory = probe_memory(args, survivors) if args.memory else {}
    for name, m in memory.items():
        for phase in ("train", "eval"):
            if name in results[phase] and f"{phase}_peak_mib" in m:
                results[phase][name]["peak_memory_mib"] = m[f"{phase}_peak_mib"]

    peak_notes = apply_peaks(results, peaks, args.precision)
    for phase in ("train", "eval"):
        print_phase(phase, results[phase], setup.tokens(phase))
    print("  (%meas: of the measured peak, the best FLOP/s of the step's own kernels; "
          "%theo: of the CPU's theoretical fp32 peak)")
    for note in peak_notes:
        print(f"  note: {note}")

    ratios: dict = {}
    for phase in ("train", "eval"):
        r = ratio(results[phase], "ours", "plain")
        contended = any(v["contended"] for v in results[phase].values())
        ratios[phase] = {"ours_over_plain": r, "target": TARGETS[phase],
                         "met": None if r is None else r >= TARGETS[phase], "contended": contended}
        if "fastai" in results[phase]:
            ratios[phase]["fastai_over_plain"] = ratio(results[phase], "fastai", "plain")
            ratios[phase]["ours_over_fastai"] = ratio(results[phase], "ours", "fastai")
        if "ours-fp32" in results[phase]:
            ratios[phase][f"ours_{args.precision}_over_fp32"] = ratio(results[phase], "ours", "ours-fp32")
            if "ours-no-onednn" in results[phase]:
                ratios[phase][f"ours_{args.precision}_no_onednn_over_fp32"] = ratio(
                    results[phase], "ours-no-onednn", "ours-fp32")
        if "ours-compiled" in results[phase]:
            ratios[phase]["compiled_over_eager"] = ratio(results[phase], "ours-compiled", "ours")

    print("\nratios (tokens/s, median step)")
    for phase, r in ratios.items():
        v = r["ours_over_plain"]
        verdict = "n/a" if v is None else ("MET" if r["met"] else "NOT MET")
        extra = "  (contended: timings not the machine's speed)" if r["contended"] else ""
        print(f"  {phase:<5} ours/plain = {v}  target >= {r['target']}: {verdict}{extra}")
        for k, val in r.items():
            if k not in ("ours_over_plain", "target", "met", "contended"):
                print(f"        {k} = {val}")
    if memory:
        print("\npeak memory (MiB above the built model)")
        for name, m in memory.items():
            if "train_peak_mib" in m:
                print(f"  {name:<14} train {m['train_peak_mib']:>9.1f}  eval {m['eval_peak_mib']:>9.1f}"
                      f"  (parameters {m['params_mib']:.1f})")
            else:
                print(f"  {name:<14} {m.get('error') or m.get('skipped')}")

    for name, f in setup.failures.items():
        for phase, err in f.items():
            print(f"\nFAILED {name} ({phase}): {err[:500]}")

    compile_info = None
    if args.compile:
        compile_info = {
            "ok": "ours-compiled" not in setup.failures,
            "allow_rnn": args.compile_allow_rnn,
            "first_train_step_s": warm["train"].get("ours-compiled", {}).get("first_step_s"),
            "first_eval_step_s": warm["eval"].get("ours-compiled", {}).get("first_step_s"),
            "eager_first_train_step_s": warm["train"].get("ours", {}).get("first_step_s"),
            "failure": setup.failures.get("ours-compiled"),
            "dynamo": dynamo_counters(),
        }
        print(f"\ncompile: {json.dumps(compile_info)}")

    ref = setup.contenders[0] if setup.contenders else None
    figures = {
        "benchmark": {
            "preset": args.preset, "device": dev.type, "precision": args.precision,
            "batch_size": cfg.data.batch_size, "eval_batch_size": cfg.data.eval_batch_size,
            "bptt": cfg.data.bptt, "fixed_window_length": True, "vocab_size": setup.vocab,
            "data": setup.data_source, "threads": setup.threads, "malloc": setup.malloc, "steps": args.steps,
            "eval_steps": args.eval_steps, "warmup": args.warmup, "rounds": args.rounds,
            "contenders": {c.name: c.label for c in setup.contenders},
            "tokens_per_train_step": setup.tokens("train"), "tokens_per_eval_step": setup.tokens("eval"),
            "flops_per_train_step": setup.flops(ref, "train") if ref else None,
            "flops_per_eval_step": setup.flops(ref, "eval") if ref else None,
            "flops_counted": "LSTM input and recurrent matmuls + decoder, 2mnk each; backward = 2 x forward",
        },
        "peak": peaks,
        "peak_notes": peak_notes,
        "warmup_first_step": warm,
        "train": results["train"],
        "eval": results["eval"],
        "ratios": ratios,
        "memory": memory,
        "compile": compile_info,
        "failures": setup.failures,
        "notes": setup.notes,
    }
    path = write_result("run", figures, config=cfg.to_dict(), device=dev, out=args.out, started=started,
                        tag=f"{args.preset}_{dev.type}_{args.precision}_bs{cfg.data.batch_size}",
                        command="python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
