"""Corpora, vocabulary, batching and variable-length BPTT (Merity et al. 2018, Sec. 4.1).

Tokens are ``line.split() + ['<eos>']`` for every line, a blank line included. Lines end
where Python's text mode ends them (``\n``, ``\r\n`` or ``\r``, as the original code read its
files), not at the other breaks ``str.splitlines()`` knows (``\x0b``, ``\x1c``, ``\x85``,
``\u2028``, ...): those are whitespace inside a line. A UTF-8 byte-order mark is dropped.
The vocabulary comes from the training split, most frequent first. Token ids are cached on
disk under a key made of the files' contents, so renaming or moving a corpus keeps its
cache and editing it invalidates the cache.

A corpus is read as a stream (``read_blocks``): blocks of whole lines. The training file is
read once (``number_file``: counts and first-seen indices together, remapped to vocabulary ids
once the vocabulary is known), valid and test are numericalised block by block, so a corpus
of 100M tokens (WikiText-103) is never one Python list of lines or words. The cache holds each split's ids as a raw int32
file that the next load memory-maps, plus ``meta.json`` (vocabulary, unknown counts, lengths);
``Corpus.train/valid/test`` are int32 tensors over those maps, ``batchify`` returns a view of
them and every ``Window`` is converted to int64, a window at a time.
"""

from __future__ import annotations

import array
import collections
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from .config import DataConfig
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
KNOWN_CORPORA = ("ptb", "wikitext-2", "ptb-char", "wikitext-103")
# Bump when tokenisation or the cache layout changes.
CACHE_VERSION = 3  # 2: a lone \r ends a line; a BOM is dropped. 3: memory-mapped int32 ids
IDS_DTYPE = np.dtype("<i4")  # 2**31 word types: any vocabulary; 4 bytes a token
BLOCK_BYTES = 1 << 22  # text read, counted and numericalised at a time


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


# Bytes a long line may be cut after: ASCII whitespace that str.split() splits on (\n and
# \r end lines), each a character of its own in UTF-8, so a cut never splits a character.
_SPACE_BYTES = (b" ", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\x1f")


def _open_text(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; a corpus directory needs train.txt, valid.txt and test.txt") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror}); check its permissions") from None


def _breaks(raw: bytes) -> int:
    """Line ends in raw bytes as text mode counts them: \n, \r\n and a lone \r each end one."""
    return raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")


def read_blocks(path: Path, block_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """The text of a UTF-8 file in blocks of about ``block_bytes`` (default ``BLOCK_BYTES``):
    ``(line, text)``, ``line`` the number of the block's first line, every line end a ``\n``.

    A block is whole lines, each ending in ``\n`` (the last line of a file without a final
    break gets one), except for a line longer than a block, which comes in pieces cut at
    whitespace: a piece has no ``\n``, and the block that ends the line does. So the tokens
    of ``"".join(texts)`` are those of ``tokenize(read_lines(path))``, block by block.
    """
    block_bytes = block_bytes or BLOCK_BYTES
    line = 1
    buf = b""
    open_line = False  # the last block was a piece of a line that goes on
    with _open_text(path) as f:
        first = True
        while True:
            try:
                chunk = f.read(max(block_bytes, 3) if first else block_bytes)  # a whole BOM
            except OSError as err:
                raise DataError(f"{path}: cannot be read ({err.strerror}); check its permissions") from None
            eof = not chunk
            if first and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            first = False
            buf += chunk
            if eof:  # what is left is the last line(s)
                if buf and not buf.endswith((b"\n", b"\r")):
                    buf += b"\n"
                elif not buf and open_line:
                    buf = b"\n"
                if buf:
                    yield line, _decode(path, buf, len(buf), line)
                return
            # After the last line end, but not after a \r that may be the first half of \r\n.
            cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1)) + 1
            open_line = cut == 0
            if open_line:  # no line ends here: a piece of a long line, up to its last space
                cut = max(buf.rfind(c) for c in _SPACE_BYTES) + 1
                if cut == 0:  # one word longer than a block: read on
                    continue
            yield line, _decode(path, buf, cut, line)
            line += _breaks(buf[:cut])
            buf = buf[cut:]


def _decode(path: Path, buf: bytes, cut: int, line: int) -> str:
    """buf[:cut] as text with \n line ends; bytes that are not UTF-8 name file and line."""
    try:
        text = buf[:cut].decode("utf-8")
    except UnicodeDecodeError as err:
        line += _breaks(buf[: err.start])
        raise DataError(
            f"{path}, line {line}: bytes that are not UTF-8 ({buf[err.start:err.start + 4]!r}); "
            "convert the file to UTF-8 (e.g. iconv -t UTF-8)"
        ) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


_EOS_SEP = f" {EOS} "


def block_tokens(text: str) -> list[str]:
    """The tokens of a block of ``read_blocks``: each ``\n`` becomes ``<eos>``."""
    return text.replace("\n", _EOS_SEP).split()


class _FirstSeen(dict):
    """word -> id in order of first occurrence; a word not seen yet gets the next id."""

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self)
        return i


def number_file(path: Path, out: BinaryIO | None = None, *,
                block_bytes: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray | int]:
    """Read a file once, a block at a time: its distinct tokens in order of first
    occurrence, how often each occurs (int64), and its tokens as indices into that list
    (int32): written to ``out`` (then their number is returned) or returned as one array.

    This is the counting pass and the numericalising pass in one: one dictionary look-up a
    token; ``remap`` then turns the indices into vocabulary ids."""
    seen = _FirstSeen()
    counts = np.zeros(0, dtype=np.int64)
    parts: list[np.ndarray] = []
    n_ids = 0
    for _, text in read_blocks(path, block_bytes):
        tokens = block_tokens(text)
        ids = np.fromiter(map(seen.__getitem__, tokens), IDS_DTYPE, len(tokens))
        block_counts = np.bincount(ids, minlength=len(seen))
        counts = np.concatenate([counts, np.zeros(len(block_counts) - len(counts), np.int64)])
        counts += block_counts
        n_ids += len(ids)
        if out is None:
            parts.append(ids)
        else:
            out.write(ids.data)
    if out is not None:
        return list(seen), counts, n_ids
    return list(seen), counts, (np.concatenate(parts) if parts else np.zeros(0, IDS_DTYPE))


def count_file(path: Path, block_bytes: int | None = None) -> collections.Counter:
    """``count_words(read_lines(path))``, a block at a time: the same counts, the words in
    the same order of first occurrence."""
    counts: collections.Counter = collections.Counter()
    for _, text in read_blocks(path, block_bytes):
        counts.update(block_tokens(text))
    return counts


def check_file(path: Path, block_bytes: int | None = None) -> None:
    """Raise the DataError ``read_lines`` would (not UTF-8, unreadable), a block at a time."""
    for _ in read_blocks(path, block_bytes):
        pass


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
    def build(cls, tokens: list[str], min_freq: int = 1, max_vocab: int | None = None) -> Vocab:
        """Specials first (<eos>, then <unk> if the corpus has it or words are cut), then
        the words by descending training count, ties in order of first occurrence."""
        return cls.from_counts(collections.Counter(tokens), min_freq, max_vocab)

    @classmethod
    def from_counts(cls, counts: collections.Counter, min_freq: int = 1, max_vocab: int | None = None) -> Vocab:
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

    def encode_file(self, path: Path, out: BinaryIO | None = None, *,
                    block_bytes: int | None = None) -> tuple[np.ndarray | int, int]:
        """The ids of ``tokenize(read_lines(path))`` as int32, a block at a time, and how many
        tokens were out of vocabulary. With ``out`` the ids are written to that binary file
        and their number is returned; without, they come back as one array."""
        stoi, unk = self.stoi, self.unk_id
        parts: list[np.ndarray] = []
        n_ids = n_unk = 0
        for line, text in read_blocks(path, block_bytes):
            tokens = block_tokens(text)
            if unk is None:
                try:
                    ids = np.fromiter(map(stoi.__getitem__, tokens), IDS_DTYPE, len(tokens))
                except KeyError:
                    self._raise_unknown(text, f"{path}", line)
            else:
                ids = np.fromiter(map(stoi.get, tokens, itertools.repeat(unk)), IDS_DTYPE, len(tokens))
                # Every <unk> id is a word outside the vocabulary, except a literal <unk>.
                n_unk += int(np.count_nonzero(ids == unk)) - tokens.count(UNK)
            n_ids += len(ids)
            if out is None:
                parts.append(ids)
            else:
                out.write(ids.data)
        if out is not None:
            return n_ids, n_unk
        return (np.concatenate(parts) if parts else np.zeros(0, IDS_DTYPE)), n_unk

    def _raise_unknown(self, text: str, where: str, first_line: int) -> None:
        for i, line in enumerate(text.split("\n")):
            for word in line.split():
                if word not in self.stoi:
                    self._ids([word], f"{where}, line {first_line + i}")  # raises the one-line error
        raise AssertionError("a word outside the vocabulary was not found again")

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


def cache_key(files: dict[str, Path], cfg: DataConfig) -> str:
    """The cache's name for a corpus: its files' contents and the vocabulary settings."""
    key_src = f"v{CACHE_VERSION}|{cfg.min_freq}|{cfg.max_vocab}|" + "|".join(_file_digest(files[s]) for s in SPLITS)
    return hashlib.sha256(key_src.encode()).hexdigest()[:24]


def load_corpus(cfg: DataConfig, *, use_cache: bool = True) -> Corpus:
    """The corpus ``cfg`` names. From the cache when it has it (memory-mapped, nothing read
    but the metadata), else read, counted and numericalised a block at a time, then cached."""
    path = resolve_corpus(cfg.name, cfg.root)
    files = {s: path / f"{s}.txt" for s in SPLITS}
    for f in files.values():
        if not f.is_file():
            raise DataError(f"{f}: missing; a corpus directory needs train.txt, valid.txt and test.txt")
    if not use_cache:
        vocab, ids, unknown = _build(files, cfg, None)
        return Corpus(vocab, ids["train"], ids["valid"], ids["test"], path, unknown)
    cache = cache_dir() / f"corpus-{cache_key(files, cfg)}"
    if cache.exists():
        try:
            return open_cached_corpus(cache, path)
        except (OSError, ValueError, KeyError, TypeError, DataError) as err:  # rebuilt, never fatal
            log.warning("ignoring damaged corpus cache %s (%s); rebuilding it", cache, err)
    return _build_cached(files, cfg, path, cache)


def open_cached_corpus(cache: Path, path: Path) -> Corpus:
    """A corpus from a cache directory: ``meta.json`` read, each split's ids memory-mapped.
    Anything that does not match the metadata (a file cut short, a missing key) raises."""
    meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    if meta.get("version") != CACHE_VERSION:
        raise DataError(f"cache version {meta.get('version')!r}, expected {CACHE_VERSION}")
    dtype = np.dtype(meta["dtype"])
    vocab = Vocab(meta["vocab"])
    ids = {}
    for s in SPLITS:
        n = int(meta["lengths"][s])
        f = cache / f"{s}.ids"
        size = f.stat().st_size
        if n < 2 or size != n * dtype.itemsize:
            raise DataError(f"{f.name} has {size} bytes, expected {n * dtype.itemsize}")
        # Copy-on-write: the tensor is writable (torch wants that) but the file never changes.
        ids[s] = torch.from_numpy(np.memmap(f, dtype=dtype, mode="c", shape=(n,)))
    unknown = {s: int(meta["unknown"][s]) for s in SPLITS}
    return Corpus(vocab, ids["train"], ids["valid"], ids["test"], path, unknown)


def _build_cached(files: dict[str, Path], cfg: DataConfig, path: Path, cache: Path) -> Corpus:
    """Build the cache in a temporary directory beside it, then rename it into place: a
    cache directory is always complete. If it cannot be written, the corpus is still
    returned (mapped from the temporary files, which are then deleted)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent))
    try:
        vocab, lengths, unknown = _build(files, cfg, tmp)
        meta = {"version": CACHE_VERSION, "dtype": IDS_DTYPE.str, "lengths": lengths, "unknown": unknown,
                "files": {s: str(files[s]) for s in SPLITS}, "vocab": vocab.itos}
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        if cache.exists():  # a damaged one
            shutil.rmtree(cache, ignore_errors=True)
        try:
            os.rename(tmp, cache)
        except OSError as err:  # another process was quicker, or the directory is not ours
            if not cache.is_dir():
                log.warning("could not write corpus cache %s (%s)", cache, err)
            return open_cached_corpus(tmp, path)  # maps survive the deletion below
        return open_cached_corpus(cache, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _remap_file(path: Path, remap: np.ndarray, n: int, chunk: int = 1 << 24) -> None:
    """ids -> remap[ids] in place in a raw int32 file, a chunk at a time (little memory)."""
    with open(path, "r+b") as f:
        for start in range(0, n, chunk):
            f.seek(start * IDS_DTYPE.itemsize)
            ids = np.fromfile(f, dtype=IDS_DTYPE, count=min(chunk, n - start))
            f.seek(start * IDS_DTYPE.itemsize)
            f.write(remap[ids].data)
        _sync(f)


def _build(files: dict[str, Path], cfg: DataConfig, out: Path | None) -> tuple[Vocab, dict, dict[str, int]]:
    """Read the training split once (counts and first-occurrence indices together), build
    the vocabulary, remap the indices to ids, numericalise valid and test. Returns the
    vocabulary, per split the ids (a tensor) or, with ``out``, their number (the ids are in
    ``out/SPLIT.ids``), and per split the tokens outside the vocabulary. Errors come in the
    order of reading each file whole: a file that is not UTF-8 first (train, valid, test),
    then an empty training split, then per split a word outside the vocabulary or too few
    tokens."""
    if out is None:
        words, counts, train = number_file(files["train"])
    else:
        with open(out / "train.ids", "wb") as f:
            words, counts, train = number_file(files["train"], f)
    for s in ("valid", "test"):
        check_file(files[s])
    if not any(w != EOS for w in words):
        raise DataError(f"{files['train']}: the training split has no words; give a non-empty train.txt")
    # Counter keeps the order of first occurrence, which breaks ties in the vocabulary.
    vocab = Vocab.from_counts(collections.Counter(dict(zip(words, counts.tolist()))), cfg.min_freq, cfg.max_vocab)
    unk = vocab.unk_id
    remap = np.array([vocab.stoi.get(w, -1 if unk is None else unk) for w in words], dtype=IDS_DTYPE)
    outside = np.array([w not in vocab.stoi for w in words], dtype=bool)
    ids: dict = {}
    unknown: dict[str, int] = {"train": int(counts[outside].sum())}
    if out is None:
        ids["train"] = torch.from_numpy(remap[train])
    else:
        ids["train"] = train
        _remap_file(out / "train.ids", remap, train)
    for s in SPLITS:
        if s != "train":
            if out is None:
                arr, unknown[s] = vocab.encode_file(files[s])
                ids[s] = torch.from_numpy(arr)
            else:
                with open(out / f"{s}.ids", "wb") as f:
                    ids[s], unknown[s] = vocab.encode_file(files[s], f)
                    _sync(f)
        n = ids[s] if out is not None else ids[s].numel()
        if n < 2:  # nothing to predict: fail now, not after training
            what = "empty" if n == 0 else "a single blank line"
            raise DataError(f"{files[s]}: {what}; every split needs at least one line of text")
    return vocab, ids, unknown


# ---------------------------------------------------------------------------- batching


# The config field that sets the batch size batchify is given, by its ``what``.
_BATCH_FIELD = {"training": "data.batch_size", "validation": "data.eval_batch_size"}


def batchify(data: Tensor, batch_size: int, *, what: str = "split") -> Tensor:
    """(N,) -> (N // B, B): B parallel streams, time-major, as a (strided) view of ``data``.
    The remainder is dropped."""
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
    # A view, never a copy: for a memory-mapped split of 100M tokens the copy would be the
    # whole split again. Windows of it are converted to int64 one at a time (Window).
    return data[: n * batch_size].view(batch_size, n).t()


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

    def __post_init__(self) -> None:
        # The split is int32 and a view across streams; a window is a small int64 block.
        self.inputs = self.inputs.to(torch.long, memory_format=torch.contiguous_format)
        self.targets = self.targets.to(torch.long, memory_format=torch.contiguous_format)


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
