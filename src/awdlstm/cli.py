"""The ``awdlstm`` command: thin subcommands over the library. Library code logs; this
prints. Known errors end with one line, ``error: ...``, and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from . import __version__
from .config import Config, apply_overrides
from .errors import AWDLSTMError


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="corpus name (ptb, wikitext-2, ptb-char) or directory with train/valid/test.txt")
    p.add_argument("--data-root", help="directory that holds corpora by name (before $AWDLSTM_DATA, ./data, ../shared/data)")


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-epochs", type=int, help="stop after this epoch (resumable)")
    p.add_argument("--max-minutes", type=float, help="stop at the first batch boundary after this many minutes (resumable)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps in all (resumable)")
    p.add_argument("--resume", action="store_true", help="continue the run in the directory exactly where it stopped")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-eval", action="store_true", help="skip the final valid/test evaluation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awdlstm", description="AWD-LSTM language models (Merity et al. 2018).")
    parser.add_argument("--version", action="version", version=f"awdlstm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--preset", default="ptb", help="starting configuration (see `awdlstm presets`)")
    p.add_argument("--out", type=Path, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set model.weight_p=0.3 (repeatable)")
    p.add_argument("--seed", type=int, help="same as --set train.seed=N")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    _add_data_args(p)
    _add_limits(p)

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

    sub.add_parser("presets", help="list the presets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args) or 0
    except AWDLSTMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    from .presets import get_preset
    from .runs import train_run

    cfg = None
    if not args.resume or args.dry_run:
        cfg = get_preset(args.preset)
        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data.name={args.data}")
        if args.data_root:
            overrides.append(f"data.root={args.data_root}")
        if args.seed is not None:
            overrides.append(f"train.seed={args.seed}")
        cfg = apply_overrides(cfg, overrides).validate()
        if args.dry_run:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
    elif args.overrides or args.data or args.seed is not None:
        from .errors import ConfigError

        raise ConfigError("--resume continues with the run's saved config; drop --set/--data/--seed (only --max-epochs, --max-minutes, --device apply)")
    if args.out is None:
        from .errors import ConfigError

        raise ConfigError("train needs --out RUN_DIR")
    summary = train_run(cfg, args.out, resume=args.resume, max_epochs=args.max_epochs, max_minutes=args.max_minutes,
                        final_eval=not args.no_eval, device=args.device,
                        max_steps=args.max_steps)
    _print_summary(summary)
    return 0


def cmd_finetune(args) -> int:
    from .runs import finetune_run

    summary = finetune_run(args.run, resume=args.resume, max_epochs=args.max_epochs, max_minutes=args.max_minutes,
                           final_eval=not args.no_eval, device=args.device)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    line = f"stopped: {summary['stopped']} after epoch {summary['epoch']}, step {summary['step']}, {summary['seconds']:.0f} s"
    print(line)
    for split in ("valid", "test"):
        if split in summary:
            r = summary[split]
            print(f"{split}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f} ({r['tokens']} tokens, batch {r['batch_size']})")


def cmd_evaluate(args) -> int:
    from .runs import evaluate_checkpoint

    res = evaluate_checkpoint(args.run, args.split, batch_size=args.batch_size, device=args.device,
                              data=args.data, data_root=args.data_root)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['split']}: loss {res['loss']:.4f}, perplexity {res['perplexity']:.2f}, "
              f"{res['tokens']} tokens, batch {res['batch_size']}")
    return 0


def cmd_data(args) -> int:
    from .config import DataConfig
    from .data import load_corpus

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
    from .presets import PRESETS

    for name, fn in PRESETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {doc}")
    return 0


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune, "evaluate": cmd_evaluate, "data": cmd_data,
            "presets": cmd_presets}

if __name__ == "__main__":
    sys.exit(main())
