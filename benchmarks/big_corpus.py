"""The data layer at WikiText-103's size: first preparation, cached load, resident memory.

    python -m benchmarks.big_corpus --out DIR [--tokens N] [--results DIR]

Writes a synthetic corpus of WikiText-103's shape into ``DIR/corpus`` (103,227,021 training
tokens by default, <eos> included; valid and test 217,646 and 245,569 tokens; a Zipf
vocabulary of 267,733 words plus <unk> and <eos> (267,735 in all); a third of the lines blank, some short
headings, paragraphs of about 100 words), then measures, each in a fresh process with its
cache in ``DIR/cache``:

- ``prepare``: ``load_corpus`` with an empty cache (hash, count, vocabulary, numericalise
  every split, write the cache);
- ``load``: ``load_corpus`` again (cached: metadata read, ids memory-mapped), twice;
- ``memory``: a cached load, the training split batchified by the real ``Trainer`` (batch
  80, a small model: the split is what is measured) and every window of one epoch drawn
  and converted to int64, then the process's resident memory and that of the mapped
  training ids (/proc/self/smaps).

Each figure comes with CPU-seconds per wall-second of the process and the other processes'
load on the machine, since a shared machine makes wall times contended. Writes a JSON
result to benchmarks/results/ (or ``--results``). The corpus is data, never committed: give
``--out`` a directory outside the repository (e.g. under /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .common import Interval, Snapshot, write_result

RESULTS = Path(__file__).resolve().parent / "results"
WT103 = {"train": 103_227_021, "valid": 217_646, "test": 245_569, "vocab": 267_735}
CHUNK_TOKENS = 4_000_000


# ---------------------------------------------------------------------------- corpus


def word_table(n_words: int) -> list[bytes]:
    """n_words distinct lowercase words, shorter for lower ranks (rank r -> r + 26**3 in
    base 26, so 4 letters and up, about 5 on average in running text); rank 20 is <unk>."""
    words = []
    for r in range(n_words):
        v, letters = r + 26**3, []
        while v:
            v, d = divmod(v, 26)
            letters.append(97 + d)
        words.append(bytes(reversed(letters)))
    if n_words > 20:
        words[20] = b"<unk>"
    return words


def line_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Words per line: a third blank, a tenth headings of 2-6 words, the rest paragraphs
    (log-normal, mean about 100 words); about 57 tokens a line with <eos>, as WikiText-103."""
    kind = rng.random(n)
    paragraph = np.maximum(1, rng.lognormal(np.log(100) - 0.245, 0.7, n)).astype(np.int64)
    heading = rng.integers(2, 7, n)
    return np.where(kind < 0.33, 0, np.where(kind < 0.43, heading, paragraph))


def write_split(path: Path, n_tokens: int, words: list[bytes], rng: np.random.Generator) -> int:
    """A file of about n_tokens tokens (<eos> included), written a chunk at a time: word
    ranks drawn from Zipf's law (s = 1) over the table, bytes gathered with numpy."""
    v = len(words)
    cdf = np.cumsum(1.0 / np.arange(1, v + 1))
    cdf /= cdf[-1]
    # One flat byte table: word i is table[start[i]:start[i] + size[i]], a space after it;
    # the last entry is the line end.
    pieces = [w + b" " for w in words] + [b"\n"]
    size = np.array([len(p) for p in pieces], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    table = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    newline = v
    written = 0
    with open(path, "wb") as f:
        while written < n_tokens:
            lengths = line_lengths(rng, max(1, CHUNK_TOKENS // 57))
            total = np.cumsum(lengths + 1)
            keep = int(np.searchsorted(total, n_tokens - written, side="right"))
            if keep == 0:  # the last tokens: one line of what is left
                lengths = np.array([n_tokens - written - 1])
            else:
                lengths = lengths[:keep]
            n_words = int(lengths.sum())
            ids = np.empty(n_words + len(lengths), dtype=np.int64)
            ends = np.cumsum(lengths + 1) - 1
            is_word = np.ones(len(ids), dtype=bool)
            is_word[ends] = False
            ids[ends] = newline
            ids[is_word] = np.searchsorted(cdf, rng.random(n_words), side="right").clip(0, v - 1)
            sizes = size[ids]
            offsets = np.cumsum(sizes) - sizes  # where each token's bytes go in the output
            gather = np.repeat(start[ids] - offsets, sizes) + np.arange(int(sizes.sum()))
            f.write(table[gather].tobytes())
            written += len(ids)
    return written


def make_corpus(out: Path, n_train: int, seed: int = 0) -> dict:
    scale = n_train / WT103["train"]
    # The table holds <unk>; with <eos> the vocabulary is WikiText-103's (smaller corpora: fewer).
    n_words = max(50, round((WT103["vocab"] - 1) * scale ** 0.5)) if scale < 1 else WT103["vocab"] - 1
    words = word_table(n_words)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train,
             "valid": max(200, round(WT103["valid"] * min(1.0, scale * 100))),
             "test": max(200, round(WT103["test"] * min(1.0, scale * 100)))}
    counts = {s: write_split(out / f"{s}.txt", n, words, rng) for s, n in sizes.items()}
    return {"tokens": counts, "word_table": n_words,
            "bytes": {s: (out / f"{s}.txt").stat().st_size for s in sizes}}


# ---------------------------------------------------------------------------- measuring (child)


def _smaps_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path``."""
    total, inside = 0, False
    target = str(path.resolve())
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
                inside = len(head) == 6 and head[5].strip() == target
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(phase: str, corpus: Path) -> dict:
    import torch

    from awdlstm.config import DataConfig
    from awdlstm.data import cache_dir, cache_key, load_corpus

    torch.set_num_threads(1)
    cfg = DataConfig(name=str(corpus))
    rss_before = _status_mib("VmRSS")
    a = Snapshot.now()
    c = load_corpus(cfg)
    timing = Interval.between(a, Snapshot.now()).as_dict()
    res = {"phase": phase, "load": timing, "train": c.train.numel(), "valid": c.valid.numel(),
           "test": c.test.numel(), "vocab": len(c.vocab), "dtype": str(c.train.dtype),
           "rss_before_load_mib": round(rss_before, 1), "rss_after_load_mib": round(_status_mib("VmRSS"), 1),
           "peak_rss_mib": round(_status_mib("VmHWM"), 1)}
    if phase != "memory":
        return res
    from dataclasses import replace

    from awdlstm.config import Config
    from awdlstm.data import bptt_windows, epoch_start
    from awdlstm.runtime import make_runtime
    from awdlstm.train import Trainer

    cfg = Config()
    cfg = replace(cfg, data=replace(cfg.data, name=str(corpus), batch_size=80),
                  model=replace(cfg.model, emb_size=8, hidden_size=8, num_layers=1),
                  train=replace(cfg.train, device="cpu"))
    a = Snapshot.now()
    trainer = Trainer(cfg, c, make_runtime(cfg.train), corpus.parent / "run-unused")
    data = trainer.train_data
    view = data.untyped_storage().data_ptr() == c.train.untyped_storage().data_ptr()
    gen = torch.Generator().manual_seed(0)
    windows = tokens = 0
    checksum = 0
    for w in bptt_windows(data, cfg.data, gen, epoch_start(cfg.data, gen)):
        assert w.inputs.dtype == torch.long
        windows += 1
        tokens += w.targets.numel()
        checksum += int(w.targets[-1, -1])
    epoch = Interval.between(a, Snapshot.now()).as_dict()
    ids_file = cache_dir() / f"corpus-{cache_key({s: corpus / f'{s}.txt' for s in ('train', 'valid', 'test')}, cfg.data)}" / "train.ids"
    res.update({
        "batchified": list(data.shape), "batchified_is_view_of_map": view, "batchified_dtype": str(data.dtype),
        "epoch": epoch, "windows": windows, "window_tokens": tokens, "checksum": checksum,
        "rss_after_epoch_mib": round(_status_mib("VmRSS"), 1),
        "peak_rss_mib": round(_status_mib("VmHWM"), 1),  # ru_maxrss would include the parent's
        "train_ids_file_mib": round(ids_file.stat().st_size / 2**20, 1),
        "train_ids_resident_mib": round(_smaps_rss_kib(ids_file) / 1024, 1),
        "rss_anon_mib": round(_status_mib("RssAnon"), 1),
        "rss_file_mib": round(_status_mib("RssFile"), 1),
    })
    return res


def run_child(phase: str, corpus: Path, cache: Path) -> dict:
    env = dict(os.environ, AWDLSTM_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.big_corpus", "--child", phase, "--out", str(corpus)],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.big_corpus", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where the corpus and its cache go (not the repository)")
    p.add_argument("--tokens", type=int, default=WT103["train"], help="training tokens (default: WikiText-103's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="keep DIR/corpus if it is there (the cache is always new)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON result goes")
    p.add_argument("--child", choices=("prepare", "load", "memory"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _fmt(t: dict) -> str:
    s = f"{t['wall_s']:.2f} s wall, {t['cpu_s']:.2f} CPU-s ({t['cpu_per_wall']:.2f} CPU-s per wall-s)"
    if "others_cores" in t:
        s += f"; other processes {t['others_cores']:.2f} cores"
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.out)))
        return 0
    import shutil


    corpus, cache = args.out / "corpus", args.out / "cache"
    a = Snapshot.now()
    if args.reuse and (corpus / "test.txt").is_file():
        made = {"reused": True, "bytes": {s: (corpus / f"{s}.txt").stat().st_size for s in ("train", "valid", "test")}}
    else:
        made = make_corpus(corpus, args.tokens, args.seed)
    generate = Interval.between(a, Snapshot.now()).as_dict()
    print(f"corpus: {made.get('tokens', 'reused')}, {made['bytes']['train'] / 2**20:.0f} MiB train.txt; "
          f"generated in {_fmt(generate)}")
    shutil.rmtree(cache, ignore_errors=True)
    prepare = run_child("prepare", corpus, cache)
    print(f"first preparation: {_fmt(prepare['load'])}; peak RSS {prepare['peak_rss_mib']:.0f} MiB; "
          f"train {prepare['train']:,}, valid {prepare['valid']:,}, test {prepare['test']:,} tokens, "
          f"vocabulary {prepare['vocab']:,}")
    loads = [run_child("load", corpus, cache) for _ in range(2)]
    for i, r in enumerate(loads):
        print(f"cached load {i + 1}: {_fmt(r['load'])}; RSS after {r['rss_after_load_mib']:.0f} MiB")
    memory = run_child("memory", corpus, cache)
    print(f"memory: batchified {memory['batchified']} {memory['batchified_dtype']} "
          f"(a view of the map: {memory['batchified_is_view_of_map']}), {memory['windows']:,} windows "
          f"({memory['window_tokens']:,} tokens) in {_fmt(memory['epoch'])}")
    print(f"memory: training ids resident {memory['train_ids_resident_mib']:.0f} MiB of "
          f"{memory['train_ids_file_mib']:.0f} MiB mapped; process RSS {memory['rss_after_epoch_mib']:.0f} MiB "
          f"(before the load {memory['rss_before_load_mib']:.0f} MiB, anonymous {memory['rss_anon_mib']:.0f} MiB), "
          f"peak {memory['peak_rss_mib']:.0f} MiB")
    path = write_result("big_corpus", {"corpus": made, "generate": generate, "prepare": prepare,
                                       "cached_loads": loads, "memory": memory},
                        config=None, out=args.results, tag=f"big-corpus-{args.tokens}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
