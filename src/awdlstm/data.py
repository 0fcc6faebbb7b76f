"""Corpora, vocabulary, batching and variable-length BPTT (Merity et al. 2018, Sec. 4.1).

Tokens are ``line.split() + ['<eos>']`` for every line, a blank line included. Lines end
where Python's text mode ends them (``\n``, ``\r\n`` or ``\r``, as the original code read its
files), not at the other breaks ``str.splitlines()`` knows (``\x0b``, ``\x1c``, ``\x85``,
``\u2028``, ...): those are whitespace inside a line. A UTF-8 byte-order mark is dropped.
The vocabulary comes from the training split, most frequent first. Token ids are cached on
disk under a key made of the files' contents, so renaming or moving a corpus keeps its
cache and editing it invalidates the cache.
"""

from __future__ import annotations

import array
import collections
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

from .config import DataConfig
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
KNOWN_CORPORA = ("ptb", "wikitext-2", "ptb-char")
# Bump when tokenisation or the cache layout changes.
CACHE_VERSION = 2  # 2: a lone \r ends a line; a byte-order mark is dropped


# ---------------------------------------------------------------------------- reading


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file, as text mode reads them (see the module docstring)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; a corpus directory needs train.txt, valid.txt and test.txt") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        # Lines as split_lines counts them: \n, \r\n and a lone \r each end one.
        head = raw[: err.start]
        line = head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1
        raise DataError(
            f"{path}, line {line}: bytes that are not UTF-8 ({raw[err.start:err.start + 4]!r}); "
            "convert the file to UTF-8 (e.g. iconv -t UTF-8)"
        ) from None
    del raw  # a large file is held twice at most, not three times
    if text.startswith("\ufeff"):
        text = text[1:]
    return split_lines(text)


def split_lines(text: str) -> list[str]:
    """Lines ended by \n, \r\n or \r, as text mode reads a file; no line after a final break."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def tokenize(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


def split_words(line: str, chunk: int = 1 << 20) -> Iterator[list[str]]:
    """``line.split()`` in pieces of about ``chunk`` characters, cut at whitespace, so that
    a line of many megabytes never becomes one list of millions of strings."""
    start, end = 0, len(line)
    while end - start > chunk:
        cut = start + chunk
        while cut < end and not line[cut].isspace():
            cut += 1
        yield line[start:cut].split()
        start = cut
    yield line[start:].split()


def count_words(lines: Iterable[str]) -> collections.Counter:
    """Counts of ``tokenize(lines)``, in order of first occurrence."""
    counts: collections.Counter = collections.Counter()
    n_lines = 0
    for line in lines:
        for words in split_words(line):
            counts.update(words)
        n_lines += 1
    if n_lines:
        counts[EOS] += n_lines
    return counts


# ---------------------------------------------------------------------------- vocabulary


class Vocab:
    """Word <-> id. Ids are ordered by training frequency (ties: first occurrence)."""

    def __init__(self, words: list[str]) -> None:
        self.itos = list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise DataError("vocabulary has duplicate words")

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @property
    def unk_id(self) -> int | None:
        return self.stoi.get(UNK)

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.itos).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, tokens: list[str], min_freq: int = 1, max_vocab: int | None = None) -> "Vocab":
        """Specials first (<eos>, then <unk> if the corpus has it or words are cut), then
        the words by descending training count, ties in order of first occurrence."""
        return cls.from_counts(collections.Counter(tokens), min_freq, max_vocab)

    @classmethod
    def from_counts(cls, counts: collections.Counter, min_freq: int = 1, max_vocab: int | None = None) -> "Vocab":
        """As ``build``, from the counts of the tokens in order of first occurrence."""
        if max_vocab is not None and max_vocab < 2:
            raise ConfigError(f"data.max_vocab must be >= 2 or none, got {max_vocab}")
        # Counter keeps first-occurrence order and sorted() is stable, so ties keep it.
        regular = [w for w in sorted(counts, key=lambda w: -counts[w]) if w not in (EOS, UNK)]
        kept = [w for w in regular if counts[w] >= min_freq]
        specials = [EOS] + ([UNK] if UNK in counts or len(kept) < len(regular) else [])
        if max_vocab is not None and len(specials) + len(kept) > max_vocab:
            specials = [EOS, UNK]
            kept = kept[: max_vocab - 2]
        return cls(specials + kept)

    def encode(self, tokens: list[str], *, where: str = "text") -> tuple[Tensor, int]:
        """Ids for tokens, and how many were out of vocabulary (mapped to <unk>)."""
        ids, n_unk = self._ids(tokens, where)
        return torch.tensor(ids, dtype=torch.long), n_unk

    def encode_lines(self, lines: list[str], *, where: str = "text") -> tuple[Tensor, int]:
        """``encode(tokenize(lines))``, a piece of a line at a time: 8 bytes a token, not a
        string object each; a word outside a vocabulary without <unk> names its line."""
        out = array.array("q")
        n_unk = 0
        for i, line in enumerate(lines):
            for words in split_words(line):
                ids, n = self._ids(words, f"{where}, line {i + 1}")
                out.extend(ids)
                n_unk += n
            out.append(self.eos_id)
        return torch.frombuffer(out, dtype=torch.long) if out else torch.zeros(0, dtype=torch.long), n_unk

    def _ids(self, tokens: list[str], where: str) -> tuple[list[int], int]:
        unk = self.unk_id
        stoi = self.stoi
        if unk is None:
            try:
                return [stoi[t] for t in tokens], 0
            except KeyError as err:
                raise DataError(
                    f"{where}: word {err.args[0]!r} is not in the vocabulary, which has no {UNK}; "
                    f"train with data.min_freq or data.max_vocab to get an {UNK} token"
                ) from None
        ids = [stoi.get(t, unk) for t in tokens]
        n_unk = sum(1 for t in tokens if t not in stoi)
        return ids, n_unk

    def decode(self, ids) -> list[str]:
        return [self.itos[int(i)] for i in ids]


# ---------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    vocab: Vocab
    train: Tensor
    valid: Tensor
    test: Tensor
    path: Path
    unknown: dict[str, int]
    """Tokens per split that were outside the vocabulary (mapped to <unk>)."""

    def split(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)


def resolve_corpus(name: str, root: str | None = None) -> Path:
    """A corpus directory from a name or a path.

    A name (no path separator) is looked up in ``root``, then ``$AWDLSTM_DATA``, then
    ``./data``, then ``../shared/data``, and only then taken as a directory of the working
    directory; anything that looks like a path is taken as one.
    """
    as_path = Path(name).expanduser()
    looks_like_path = os.sep in name or name.startswith((".", "~")) or as_path.is_absolute()
    if looks_like_path:
        if as_path.is_dir():
            return as_path
        raise DataError(f"{name}: no such directory; give a corpus name ({', '.join(KNOWN_CORPORA)}) "
                        "or a directory with train.txt, valid.txt, test.txt")
    candidates = []
    if root:
        candidates.append(Path(root).expanduser())
    if os.environ.get("AWDLSTM_DATA"):
        candidates.append(Path(os.environ["AWDLSTM_DATA"]).expanduser())
    candidates += [Path("data"), Path("..") / "shared" / "data"]
    for base in candidates:
        if (base / name).is_dir():
            return base / name
    if as_path.is_dir():
        return as_path
    looked = ", ".join(str(c / name) for c in candidates)
    raise DataError(f"corpus {name!r} not found (looked in {looked}); pass --data-root or set AWDLSTM_DATA")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("AWDLSTM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "awdlstm"
    )
    return Path(base)


def load_corpus(cfg: DataConfig, *, use_cache: bool = True) -> Corpus:
    path = resolve_corpus(cfg.name, cfg.root)
    files = {s: path / f"{s}.txt" for s in SPLITS}
    for s, f in files.items():
        if not f.is_file():
            raise DataError(f"{f}: missing; a corpus directory needs train.txt, valid.txt and test.txt")
    key_src = f"v{CACHE_VERSION}|{cfg.min_freq}|{cfg.max_vocab}|" + "|".join(_file_digest(files[s]) for s in SPLITS)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    cache_file = cache_dir() / f"corpus-{key}.pt"
    if use_cache and cache_file.is_file():
        try:
            blob = torch.load(cache_file, weights_only=True)
            return Corpus(Vocab(blob["vocab"]), blob["train"], blob["valid"], blob["test"], path, blob["unknown"])
        except Exception as err:  # a damaged cache is rebuilt, never fatal
            log.warning("ignoring unreadable corpus cache %s (%s)", cache_file, err)
    corpus = _build_corpus(files, cfg, path)
    if use_cache:
        from .checkpoint import atomic_save

        try:
            blob = {"vocab": corpus.vocab.itos, "unknown": corpus.unknown}
            blob.update({s: corpus.split(s) for s in SPLITS})
            atomic_save(blob, cache_file)
        except OSError as err:
            log.warning("could not write corpus cache %s (%s)", cache_file, err)
    return corpus


def _build_corpus(files: dict[str, Path], cfg: DataConfig, path: Path) -> Corpus:
    lines = {s: read_lines(files[s]) for s in SPLITS}
    counts = count_words(lines["train"])
    if not any(t != EOS for t in counts):
        raise DataError(f"{files['train']}: the training split has no words; give a non-empty train.txt")
    vocab = Vocab.from_counts(counts, cfg.min_freq, cfg.max_vocab)
    ids, unknown = {}, {}
    for s in SPLITS:
        ids[s], unknown[s] = vocab.encode_lines(lines[s], where=str(files[s]))
        lines[s] = []  # free the text as soon as it is encoded
        if ids[s].numel() < 2:  # nothing to predict: fail now, not after training
            what = "empty" if ids[s].numel() == 0 else "a single blank line"
            raise DataError(f"{files[s]}: {what}; every split needs at least one line of text")
    return Corpus(vocab, ids["train"], ids["valid"], ids["test"], path, unknown)


# ---------------------------------------------------------------------------- batching


# The config field that sets the batch size batchify is given, by its ``what``.
_BATCH_FIELD = {"training": "data.batch_size", "validation": "data.eval_batch_size"}


def batchify(data: Tensor, batch_size: int, *, what: str = "split") -> Tensor:
    """(N,) -> (N // B, B): B parallel streams, time-major. The remainder is dropped."""
    if batch_size < 1:
        raise ConfigError(f"the batch size must be >= 1, got {batch_size}")
    n = data.numel() // batch_size
    if n < 2:  # each stream needs an input and a target
        field = _BATCH_FIELD.get(what)
        fix = f"lower {field} (--set {field}=N)" if field else "use a smaller batch size (--batch-size)"
        raise DataError(
            f"the {what} split has {data.numel()} tokens, too few for batch size {batch_size} "
            f"(each stream needs 2 tokens or more); {fix} or use more text"
        )
    return data[: n * batch_size].view(batch_size, n).t().contiguous()


def sample_seq_len(bptt: int, gen: torch.Generator, cfg: DataConfig) -> int:
    """The paper's window length: bptt w.p. full_bptt_p else bptt/2, then Normal(., std)."""
    base = bptt if torch.rand((), generator=gen).item() < cfg.full_bptt_p else bptt / 2
    length = int(torch.normal(float(base), cfg.length_std, (), generator=gen).item()) if cfg.length_std else int(base)
    length = max(cfg.min_seq_len, length)
    if cfg.max_seq_len is not None:
        length = min(length, cfg.max_seq_len)
    return length


@dataclass
class Window:
    inputs: Tensor  # (T, B)
    targets: Tensor  # (T, B)
    lr_scale: float
    """seq_len / bptt: the step's lr is multiplied by it, so short windows weigh less."""
    end: int
    """Position in the epoch after this window (where a resumed epoch continues)."""


def bptt_windows(
    source: Tensor, cfg: DataConfig, gen: torch.Generator | None, start: int = 0
) -> Iterator[Window]:
    """Consecutive windows over a batchified split.

    With ``gen`` and ``cfg.variable_length`` the lengths are drawn per window (training);
    otherwise every window is ``bptt`` long (evaluation). The lr scale uses the length
    actually used, so the last, truncated window of an epoch is weighted by its length.
    """
    cfg.validate_windows()  # a window of 0 tokens would never end the epoch
    i = start
    last = source.size(0) - 1
    while i < last:
        if gen is not None and cfg.variable_length:
            want = sample_seq_len(cfg.bptt, gen, cfg)
        else:
            want = cfg.bptt
        n = min(want, last - i)
        yield Window(source[i : i + n], source[i + 1 : i + 1 + n], n / cfg.bptt, i + n)
        i += n


def epoch_start(cfg: DataConfig, gen: torch.Generator) -> int:
    """Where an epoch starts: 0, or a random offset in [0, bptt) with random_start."""
    cfg.validate_windows()
    if not cfg.random_start:
        return 0
    return int(torch.randint(cfg.bptt, (), generator=gen).item())


def approx_batches(source: Tensor, cfg: DataConfig) -> int:
    """Expected windows per epoch (for progress bars)."""
    if not cfg.variable_length:
        return math.ceil((source.size(0) - 1) / cfg.bptt)
    mean = cfg.full_bptt_p * cfg.bptt + (1 - cfg.full_bptt_p) * cfg.bptt / 2
    return max(1, math.ceil((source.size(0) - 1) / mean))
