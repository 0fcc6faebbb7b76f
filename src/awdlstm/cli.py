"""The ``awdlstm`` command: thin subcommands over the library. Library code logs; this
prints. Known errors end with one line, ``error: ...``, and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .api import LanguageModel
from .cache import SearchGrid, evaluate_cache
from .config import DataConfig, apply_overrides, parse_value
from .data import load_corpus, read_lines
from .download import get as get_corpus
from .dynamic import DEFAULT_LAMBDAS, DEFAULT_LRS, evaluate_dynamic
from .errors import AWDLSTMError, ConfigError, DataError, TrainingError
from .export import export_run
from .generate import check_sampling
from .plot import plot_runs
from .presets import PRESETS, get_preset
from .runs import check_limits, evaluate_checkpoint, finetune_run, train_run
from .score import score_lines
from .sweep import plan, run_sweep
from .train import check_batch_for_ranks


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="corpus name (ptb, wikitext-2, ptb-char) or directory with train/valid/test.txt")
    p.add_argument("--data-root", help="directory that holds corpora by name (before $AWDLSTM_DATA, ./data, ../shared/data)")


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-epochs", type=int, help="stop after this epoch (resumable)")
    p.add_argument("--max-minutes", type=float, help="stop at the first batch boundary after this many minutes (resumable)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps in all (resumable)")
    p.add_argument("--resume", action="store_true", help="continue the run in the directory exactly where it stopped")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel with N processes on this machine (torchrun --standalone "
                        "--nproc-per-node N; one per GPU, or Gloo on the CPU)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-eval", action="store_true", help="skip the final valid/test evaluation")
    p.add_argument("--tensorboard", nargs="?", const=True, metavar="DIR",
                   help="write live curves for TensorBoard to DIR (default: RUN/tensorboard; needs awdlstm[tensorboard])")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awdlstm", description="AWD-LSTM language models (Merity et al. 2018).")
    parser.add_argument("--version", action="version", version=f"awdlstm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--preset", help="starting configuration (default: ptb; see `awdlstm presets`)")
    p.add_argument("--out", type=Path, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set model.weight_p=0.3 (repeatable)")
    p.add_argument("--seed", type=int, help="same as --set train.seed=N")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"),
                   help="mixed precision on CUDA (same as --set train.precision=...; the CPU runs fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (same as --set train.compile=true)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    _add_data_args(p)
    _add_limits(p)

    p = sub.add_parser("sweep", help="several trainings at once on one device: seeds, a grid or the paper's ablations")
    p.add_argument("--preset", default="ptb", help="starting configuration of every run")
    p.add_argument("--out", type=Path, required=True, help="folder for the runs (one run directory each)")
    p.add_argument("--seeds", help="comma-separated seeds: one run per seed (and per grid point or ablation)")
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=V1,V2",
                   help="one run per value, all combinations over repeated --grid")
    p.add_argument("--ablations", action="store_true",
                   help="the paper's ablations: the full model and each with one technique removed")
    p.add_argument("--jobs", type=int, help="runs at a time on the device (default: all of them)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override for every run (repeatable)")
    p.add_argument("--max-epochs", type=int, help="stop each run after this epoch (run the sweep again to go on)")
    p.add_argument("--max-minutes", type=float, help="stop each run after this many minutes")
    p.add_argument("--max-steps", type=int, help="stop each run after this many steps")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (all runs share it)")
    p.add_argument("--no-eval", action="store_true", help="skip each run's final valid/test evaluation")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their overrides, start nothing")
    p.add_argument("--tensorboard", action="store_true",
                   help="each run writes RUN/tensorboard; `tensorboard --logdir OUT` shows them side by side")
    _add_data_args(p)

    p = sub.add_parser("finetune", help="the paper's fine-tuning stage: averaged SGD from the best weights")
    p.add_argument("run", type=Path, help="run directory trained by `awdlstm train`")
    _add_limits(p)

    p = sub.add_parser("evaluate", help="loss and perplexity of a run's best checkpoint")
    p.add_argument("run", type=Path, help="run directory (its best.pt) or a checkpoint file")
    p.add_argument("--split", choices=("train", "valid", "test"), default="valid")
    p.add_argument("--batch-size", type=int, help="streams (default: 10 for valid, 1 for test, as the paper)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_data_args(p)

    p = sub.add_parser("data", help="corpus tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("info", help="tokens per split and vocabulary size")
    q.add_argument("name", help="corpus name or directory")
    q.add_argument("--data-root")
    q.add_argument("--min-freq", type=int, default=1)
    q.add_argument("--max-vocab", type=int)
    q.add_argument("--json", action="store_true")

    q = dsub.add_parser("get", help="download a corpus, verify its checksums and lay it out under the data root")
    q.add_argument("name", help="ptb, ptb-char, wikitext-2 or wikitext-103")
    q.add_argument("--data-root", default="data", help="where to put NAME/{train,valid,test}.txt (default: ./data)")
    q.add_argument("--json", action="store_true", help="print the counts as one JSON object")

    sub.add_parser("presets", help="list the presets")

    p = sub.add_parser("cache", help="perplexity with the neural cache pointer (Grave et al. 2017)")
    p.add_argument("run", type=Path, help="run directory (its best.pt), a checkpoint file or an export")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--preset", choices=("ptb", "wt2"),
                   help="window/theta/lambda of the original README (default: wt2 for wikitext-2, else ptb)")
    p.add_argument("--window", type=int, help="previous positions in the cache (ptb 500, wt2 3785)")
    p.add_argument("--theta", type=float, help="flatness of the cache softmax (ptb 1.0, wt2 0.662)")
    p.add_argument("--lambda", dest="lam", type=float, help="weight of the cache, in [0, 1] (ptb 0.1, wt2 0.1279)")
    p.add_argument("--search", action="store_true", help="first choose theta and lambda on the validation split")
    p.add_argument("--thetas", help="comma-separated thetas for --search")
    p.add_argument("--lambdas", help="comma-separated lambdas for --search")
    p.add_argument("--windows", help="comma-separated windows for --search (default: only --window)")
    p.add_argument("--limit", type=int, help="only the first N tokens of each split (quick checks)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_data_args(p)

    p = sub.add_parser("dynamic-eval", help="perplexity with dynamic evaluation (Krause et al. 2018)")
    p.add_argument("run", type=Path, help="run directory (its best.pt), a checkpoint file or an export")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--lr", type=float, default=5e-5, help="step size of the RMS-normalised update")
    p.add_argument("--lambda", dest="lam", type=float, default=0.002, help="decay towards the trained weights")
    p.add_argument("--eps", type=float, default=2e-5, help="added to the RMS gradient before dividing")
    p.add_argument("--bptt", type=int, default=5, help="tokens per segment, one update after each")
    p.add_argument("--search", action="store_true", help="first choose lr and lambda on the validation split")
    p.add_argument("--lrs", help="comma-separated lrs for --search (default 3e-5,4e-5,5e-5,6e-5,7e-5,1e-4)")
    p.add_argument("--lambdas", help="comma-separated lambdas for --search (default 0.001,0.002,0.003,0.005)")
    p.add_argument("--gradstat-tokens", type=int, help="training tokens for the gradient statistics (default: all)")
    p.add_argument("--gradstat-batch", type=int, default=100, help="streams for the gradient statistics")
    p.add_argument("--cache", action="store_true", help="also the neural cache, on the static and the adapted model")
    p.add_argument("--window", type=int, help="cache window (default: the corpus's cache preset)")
    p.add_argument("--theta", type=float, help="cache softmax flatness (default: the preset's)")
    p.add_argument("--lambda-cache", type=float, help="cache weight in the mixture (default: the preset's)")
    p.add_argument("--limit", type=int, help="only the first N tokens of each split (quick checks)")
    p.add_argument("--search-limit", type=int, help="--search on the first N tokens of the validation split only")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_data_args(p)

    p = sub.add_parser("generate", help="sample text from a trained model")
    p.add_argument("run", type=Path, help="run directory, checkpoint file or export")
    p.add_argument("--prompt", default="", help="words to continue (default: start a new line)")
    p.add_argument("--words", type=int, default=50, help="words to generate (<eos> counts, printed as a line break)")
    p.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this (> 0)")
    p.add_argument("--top-k", type=int, help="sample only among the K most likely words")
    p.add_argument("--top-p", type=float, help="sample only among the most likely words holding probability P")
    p.add_argument("--seed", type=int, help="the same seed gives the same text (default: random, logged)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")

    p = sub.add_parser("score", help="log-probability and perplexity of each line of a file")
    p.add_argument("run", type=Path, help="run directory, checkpoint file or export")
    p.add_argument("file", type=Path, help="UTF-8 text, one sentence per line (each scored on its own)")
    p.add_argument("--batch-size", type=int, default=32, help="lines scored at once (padded)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("plot", help="learning curves of runs or sweeps as a PNG (needs awdlstm[plot])")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories or sweep folders")
    p.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG to write (default: curves.png)")
    p.add_argument("--title", help="figure title (default: the runs and the best perplexity)")
    p.add_argument("--dpi", type=int, default=100, help="pixels per inch of the 12 x 8 inch figure (default 100)")

    p = sub.add_parser("export", help="write a run as safetensors, config.json, vocab.txt and a model card")
    p.add_argument("run", type=Path, help="run directory (its best.pt) or a checkpoint file")
    p.add_argument("out_dir", type=Path, help="new directory to create")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    rank = os.environ.get("RANK", "0")
    # Under torchrun rank 0 logs; the others say only what goes wrong, naming their rank.
    quiet = args.quiet or rank != "0"
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(message)s" if rank == "0" else f"%(asctime)s [rank {rank}] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args) or 0
    except AWDLSTMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _data_overrides(args) -> list[str]:
    """--data and --data-root as --set overrides."""
    return ([f"data.name={args.data}"] if args.data else []) + ([f"data.root={args.data_root}"] if args.data_root else [])


def _launch_ranks(args, batch_size: int | None = None) -> None:
    """--nproc N: start this same command as N ranks of a one-machine torchrun job (this
    process becomes torchrun). Does nothing under torchrun or for N = 1."""
    if args.nproc is None or "WORLD_SIZE" in os.environ:
        return
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be an integer >= 1, got {args.nproc}")
    if args.nproc == 1:
        return
    if batch_size is not None:
        check_batch_for_ranks(batch_size, args.nproc)
    rest, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "awdlstm", *rest]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def cmd_train(args) -> int:
    check_limits(args.max_epochs, args.max_minutes, args.max_steps)
    cfg = None
    if not args.resume or args.dry_run:
        cfg = get_preset(args.preset or "ptb")
        overrides = list(args.overrides) + _data_overrides(args)
        if args.seed is not None:
            overrides.append(f"train.seed={args.seed}")
        if args.precision:
            overrides.append(f"train.precision={args.precision}")
        if args.compile:
            overrides.append("train.compile=true")
        cfg = apply_overrides(cfg, overrides).validate()
        if args.dry_run:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
    elif args.overrides or args.data or args.seed is not None or args.precision or args.compile:
        raise ConfigError("--resume continues with the run's saved config; drop --set/--data/--seed/--precision/"
                          "--compile (only --max-epochs, --max-minutes, --max-steps, --device apply)")
    if args.out is None:
        raise ConfigError("train needs --out RUN_DIR")
    _launch_ranks(args, cfg.data.batch_size if cfg is not None else None)
    summary = train_run(cfg, args.out, resume=args.resume, max_epochs=args.max_epochs, max_minutes=args.max_minutes,
                        final_eval=not args.no_eval, device=args.device, max_steps=args.max_steps,
                        preset=args.preset if args.resume else None, tensorboard=args.tensorboard)
    _print_summary(summary)
    return _exit_status(summary)


def cmd_sweep(args) -> int:
    check_limits(args.max_epochs, args.max_minutes, args.max_steps)
    common = list(args.overrides) + _data_overrides(args)
    seeds = parse_value(args.seeds, list[int], "--seeds") if args.seeds else None
    jobs = plan(args.preset, common, seeds=seeds, grid=args.grid, ablations=args.ablations)
    if args.dry_run:
        for job in jobs:
            print(f"{job.name:<28} {' '.join(job.overrides) or '(the preset as it is)'}")
        return 0
    limits = [a for flag, v in (("--max-epochs", args.max_epochs), ("--max-minutes", args.max_minutes),
                                ("--max-steps", args.max_steps)) if v is not None for a in (flag, str(v))]
    if args.no_eval:
        limits.append("--no-eval")
    if args.tensorboard:
        from .tensorboard import summary_writer_class

        summary_writer_class()  # a missing package is one error here, not one per run
        limits.append("--tensorboard")
    summary = run_sweep(args.out, args.preset, jobs, common, parallel=args.jobs or len(jobs), device=args.device,
                        limits=limits)
    rows = summary["runs"]

    def num(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    print(f"{'run':<28} {'status':<22} {'epoch':>5} {'best val':>9} {'valid':>8} {'test':>8}")
    for r in rows:
        print(f"{r['name']:<28} {r['status'][:22]:<22} {num(r.get('epoch'), '{}'):>5} {num(r.get('best_val_ppl')):>9} "
              f"{num(r.get('valid_ppl')):>8} {num(r.get('test_ppl')):>8}")
    print(f"summary: {args.out / 'summary.json'}")
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
        raise TrainingError(f"{len(failed)} of {len(rows)} runs failed ({', '.join(r['name'] for r in failed)}); "
                            "see their train.log")
    if summary["interrupted"]:
        print(f"stopped by {summary['interrupted']}; every run saved. Run the same command again to continue.",
              file=sys.stderr)
        return 128 + int(getattr(signal, summary["interrupted"]))
    return 0


def cmd_finetune(args) -> int:
    check_limits(args.max_epochs, args.max_minutes, args.max_steps)
    _launch_ranks(args)
    summary = finetune_run(args.run, resume=args.resume, max_epochs=args.max_epochs, max_minutes=args.max_minutes,
                           final_eval=not args.no_eval, device=args.device, tensorboard=args.tensorboard)
    _print_summary(summary)
    return _exit_status(summary)


def _exit_status(summary: dict) -> int:
    """0, or 128 + the signal's number when a signal stopped the run (as a shell reports it)."""
    if summary["stopped"] != "interrupted":
        return 0
    return 128 + int(getattr(signal, summary.get("signal") or "SIGINT", signal.SIGINT))


def _print_summary(summary: dict) -> None:
    if os.environ.get("RANK", "0") != "0":  # rank 0 reports for the job
        return
    line = f"stopped: {summary['stopped']} at epoch {summary['epoch']}, step {summary['step']}, {summary['seconds']:.0f} s"
    print(line)
    for split in ("valid", "test"):
        if split in summary:
            r = summary[split]
            print(f"{split}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f} ({r['tokens']} tokens, batch {r['batch_size']})")


def cmd_evaluate(args) -> int:
    res = evaluate_checkpoint(args.run, args.split, batch_size=args.batch_size, device=args.device,
                              data=args.data, data_root=args.data_root)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['split']}: loss {res['loss']:.4f}, perplexity {res['perplexity']:.2f}, "
              f"{res['tokens']} tokens, batch {res['batch_size']}")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "get":
        path, fresh = get_corpus(args.name, args.data_root)
        if not args.json:
            print(f"{path}: {'downloaded and verified' if fresh else 'already there, verified'}")
        args.min_freq, args.max_vocab, args.name = 1, None, str(path)
    cfg = DataConfig(name=args.name, root=args.data_root, min_freq=args.min_freq, max_vocab=args.max_vocab)
    cfg.validate()
    corpus = load_corpus(cfg)
    info = {"path": str(corpus.path), "train": corpus.train.numel(), "valid": corpus.valid.numel(),
            "test": corpus.test.numel(), "vocab": len(corpus.vocab), "unknown": corpus.unknown}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['path']}: train {info['train']:,}, valid {info['valid']:,}, test {info['test']:,} tokens; "
              f"vocabulary {info['vocab']:,}")
    return 0


def cmd_presets(args) -> int:
    for name, fn in PRESETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        print(f"{name:18s} {doc}")
    return 0


def _number_list(text: str | None, kind, flag: str) -> list | None:
    if text is None:
        return None
    values = parse_value(text, list[kind], flag)
    if not values:
        raise ConfigError(f"{flag} needs at least one value")
    return values


def cmd_cache(args) -> int:
    search = None
    if args.search:
        search = SearchGrid()
        search.thetas = _number_list(args.thetas, float, "--thetas") or search.thetas
        search.lambdas = _number_list(args.lambdas, float, "--lambdas") or search.lambdas
        search.windows = _number_list(args.windows, int, "--windows")
    elif args.thetas or args.lambdas or args.windows:
        raise ConfigError("--thetas, --lambdas and --windows are grids for --search; add --search")
    res = evaluate_cache(args.run, args.split, window=args.window, theta=args.theta, lam=args.lam,
                         preset=args.preset, search=search, device=args.device, data=args.data,
                         data_root=args.data_root, limit=args.limit)
    if args.json:
        print(json.dumps(res))
        return 0
    if "search" in res:
        best = res["search"]["best"]
        print(f"search on valid ({res['search']['settings']} settings): best window {best['window']}, "
              f"theta {best['theta']:g}, lambda {best['lambda']:g}: perplexity {best['perplexity']:.2f}")
    print(f"{res['split']}: perplexity {res['perplexity']:.2f} with the cache (window {res['window']}, "
          f"theta {res['theta']:g}, lambda {res['lambda']:g}), {res['model_perplexity']:.2f} without; "
          f"{res['tokens']} tokens")
    return 0


def cmd_dynamic_eval(args) -> int:

    search = None
    if args.search:
        search = (_number_list(args.lrs, float, "--lrs") or DEFAULT_LRS,
                  _number_list(args.lambdas, float, "--lambdas") or DEFAULT_LAMBDAS)
    elif args.lrs or args.lambdas:
        raise ConfigError("--lrs and --lambdas are grids for --search; add --search")
    res = evaluate_dynamic(args.run, args.split, lr=args.lr, lam=args.lam, eps=args.eps, bptt=args.bptt,
                           search=search, cache=args.cache, window=args.window, theta=args.theta,
                           lam_cache=args.lambda_cache, gradstat_tokens=args.gradstat_tokens,
                           gradstat_batch=args.gradstat_batch, device=args.device, data=args.data,
                           data_root=args.data_root, limit=args.limit, search_limit=args.search_limit,
                           progress=True)
    if args.json:
        print(json.dumps(res))
        return 0
    if "search" in res:
        best = res["search"]["best"]
        print(f"search on valid ({len(res['search']['grid'])} settings): best lr {best['lr']:g}, "
              f"lambda {best['lambda']:g}: perplexity {best['perplexity']:.2f} "
              f"({res['search']['model_perplexity']:.2f} static)")
    print(f"{res['split']}: {res['tokens']} tokens; lr {res['lr']:g}, lambda {res['lambda']:g}, bptt {res['bptt']}; "
          f"gradient statistics from {res['gradstat']['tokens']} training tokens")
    rows = [("static", res["model_perplexity"]), ("dynamic", res["perplexity"])]
    if "cache_perplexity" in res:
        rows[1:1] = [("cache", res["cache_perplexity"])]
        rows.append(("dynamic + cache", res["dynamic_cache_perplexity"]))
        print(f"cache: window {res['window']}, theta {res['theta']:g}, lambda {res['lambda_cache']:g}")
    print(f"{'model':<16} {'perplexity':>10}")
    for name, ppl in rows:
        print(f"{name:<16} {ppl:>10.2f}")
    return 0


def cmd_generate(args) -> int:
    check_sampling(args.words, args.temperature, args.top_k, args.top_p)  # before the slow load
    lm = LanguageModel.load(args.run, device=args.device)
    text = lm.generate(args.prompt, words=args.words, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed)
    prompt = " ".join(args.prompt.split())
    joined = prompt + ("" if not prompt or text.startswith("\n") else " ") + text
    print(joined, end="" if joined.endswith("\n") else "\n")
    return 0


def cmd_score(args) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.file.exists():
        raise DataError(f"{args.file}: no such file")
    lines = read_lines(args.file)
    if not lines:
        raise DataError(f"{args.file}: no lines to score")
    lm = LanguageModel.load(args.run, device=args.device)
    report = score_lines(lm.model, lm.vocab, lines, batch_size=args.batch_size, where=str(args.file))
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(f"{'line':>6} {'tokens':>7} {'unk':>5} {'log_prob':>12} {'bits':>11} {'perplexity':>11}")
    rows = [(str(i + 1), s) for i, s in enumerate(report.lines)] + [("total", report.total)]
    for name, s in rows:
        print(f"{name:>6} {s.tokens:>7} {s.unknown:>5} {s.log_prob:>12.4f} {s.bits:>11.2f} {s.perplexity:>11.2f}")
    return 0


def cmd_plot(args) -> int:
    if not 10 <= args.dpi <= 1000:
        raise ConfigError(f"--dpi must be between 10 and 1000, got {args.dpi}")
    out = plot_runs(args.runs, args.out, title=args.title, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    out = export_run(args.run, args.out_dir)
    print(f"exported {args.run} to {out}: model.safetensors, config.json, vocab.txt, README.md")
    return 0


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune, "evaluate": cmd_evaluate, "data": cmd_data,
            "presets": cmd_presets, "cache": cmd_cache, "generate": cmd_generate, "score": cmd_score,
            "export": cmd_export, "sweep": cmd_sweep, "dynamic-eval": cmd_dynamic_eval, "plot": cmd_plot}

if __name__ == "__main__":
    sys.exit(main())
