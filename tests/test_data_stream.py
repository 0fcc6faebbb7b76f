"""The streamed corpus reader and the memory-mapped cache: the same ids as reading each file
whole (line ends, BOM, blank and huge lines, at any block size), a cache that is read
instead of the text and rebuilt when damaged, and splits that stay views until a window."""

import collections
import logging
import re

import numpy as np
import pytest
import torch

from awdlstm import data as D
from awdlstm.config import DataConfig
from awdlstm.data import UNK, Vocab, batchify, bptt_windows, count_words, load_corpus, read_lines, tokenize

SPLITS = ("train", "valid", "test")

# Line ends of three kinds, a BOM, blank lines, a final line without a break, Unicode
# spaces inside lines, a literal <unk>, and lines longer than the small blocks used below.
LONG = " ".join(f"w{i % 37}" for i in range(400))
TEXTS = {
    "lf": "the cat sat\n\non the mat\n  \n" + LONG + "\nthe end",
    "crlf": "the cat sat\r\n\r\non the mat\r\n" + LONG + " \r\n\r\n",
    "cr": "\rthe\u2028cat sat\r\ron the mat\r" + LONG + "\rmat",
    "mixed": "a b\r\nc\rd\n\r\n\re f <unk> g\n" + "x" * 700 + " y\r",
    "one-huge-line": LONG + " " + LONG,
}


def old_way(files, min_freq=1, max_vocab=None):
    """What the reader gave before streaming: each file read whole, tokenized, encoded;
    or the one-line error it raised."""
    vocab = Vocab.build(tokenize(read_lines(files["train"])), min_freq, max_vocab)
    out = {}
    try:
        for s in SPLITS:
            ids, n_unk = vocab.encode_lines(read_lines(files[s]), where=str(files[s]))
            out[s] = (ids.tolist(), n_unk)
    except D.DataError as err:
        return vocab.itos, str(err)
    return vocab.itos, out


def write(d, train, valid=None, test=None, bom=False):
    d.mkdir(parents=True)
    for s, text in zip(SPLITS, (train, valid or train, test or train)):
        (d / f"{s}.txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return {s: d / f"{s}.txt" for s in SPLITS}


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("block", [1, 2, 5, 64, 4096])
def test_blocks_give_the_tokens_and_counts_of_reading_the_file_whole(tmp_path, name, block):
    f = write(tmp_path / "c", TEXTS[name], bom=True)["train"]
    tokens = [t for _, text in D.read_blocks(f, block) for t in D.block_tokens(text)]
    assert tokens == tokenize(read_lines(f))
    counts, old_counts = D.count_file(f, block), count_words(read_lines(f))
    assert counts == old_counts  # and the words in the same order (<eos>, a special, may move)
    assert [w for w in counts if w != D.EOS] == [w for w in old_counts if w != D.EOS]
    words, n, ids = D.number_file(f, block_bytes=block)
    assert [words[i] for i in ids] == tokens and dict(zip(words, n.tolist())) == dict(counts)


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("block", [3, None])
@pytest.mark.parametrize("use_cache", [False, True])
def test_load_corpus_gives_the_ids_of_the_old_way(tmp_path, monkeypatch, name, block, use_cache):
    files = write(tmp_path / "c", TEXTS[name], TEXTS["lf"], TEXTS["mixed"], bom=name == "crlf")
    if block:
        monkeypatch.setattr(D, "BLOCK_BYTES", block)
    for min_freq, max_vocab in ((1, None), (2, None), (1, 6)):
        itos, want = old_way(files, min_freq, max_vocab)
        cfg = DataConfig(name=str(files["train"].parent), min_freq=min_freq, max_vocab=max_vocab)
        if isinstance(want, str):  # a word outside a vocabulary without <unk>
            with pytest.raises(D.DataError) as err:
                load_corpus(cfg, use_cache=use_cache)
            assert str(err.value) == want
            continue
        corpus = load_corpus(cfg, use_cache=use_cache)
        assert corpus.vocab.itos == itos
        for s in SPLITS:
            ids = corpus.split(s)
            assert ids.dtype == torch.int32 and ids.tolist() == want[s][0] and corpus.unknown[s] == want[s][1]


def test_a_word_outside_the_vocabulary_names_its_line_at_any_block_size(tmp_path, monkeypatch):
    files = write(tmp_path / "c", "a b\nb a\n", "a\r\nb\r\n\r\na zzz b\n", "a\n")
    for block in (2, 7, None):
        monkeypatch.setattr(D, "BLOCK_BYTES", block or 1 << 22)
        with pytest.raises(D.DataError, match=r"valid.txt, line 4: word 'zzz' is not in the vocabulary"):
            load_corpus(DataConfig(name=str(files["train"].parent)), use_cache=False)


def test_bytes_that_are_not_utf8_name_the_line_at_any_block_size(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"ok\r\nok\rok\n" + b"long " * 50 + b"bad \xe2\x82\nnext\n")
    for block in (1, 3, 16, 1 << 20):
        with pytest.raises(D.DataError, match=r"bad.txt, line 4: bytes that are not UTF-8"):
            list(D.read_blocks(f, block))


def _cache(tmp_path):
    (entry,) = D.cache_dir().glob("corpus-*/meta.json")
    return entry.parent


def test_a_cached_load_maps_the_cache_and_reads_no_text(tmp_path, monkeypatch):
    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path / "cache"))
    files = write(tmp_path / "c", TEXTS["lf"])
    first = load_corpus(DataConfig(name=str(files["train"].parent)))
    cache = _cache(tmp_path)
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "test.ids", "train.ids", "valid.ids"]
    assert not list(cache.parent.glob(".*"))  # no temporary directory left behind
    assert (cache / "train.ids").stat().st_size == 4 * first.train.numel()

    # The next load reads the ids from the cache: change them there (same length, valid
    # ids) and the corpus follows; tokenizing the text would fail.
    before = first.train.tolist()
    swapped = np.fromfile(cache / "train.ids", dtype="<i4")[::-1].copy()
    swapped.tofile(cache / "train.ids")
    monkeypatch.setattr(D, "read_blocks", lambda *a, **k: pytest.fail("the text was tokenized again"))
    again = load_corpus(DataConfig(name=str(files["train"].parent)))
    assert again.train.tolist() == swapped.tolist() == before[::-1]
    assert again.vocab.itos == first.vocab.itos and again.unknown == first.unknown
    maps = open("/proc/self/maps").read()
    assert str(cache / "train.ids") in maps  # a memory map, not a copy in memory
    again.train[0] = 99  # copy-on-write: the tensor is writable, the cache file is not changed
    assert np.fromfile(cache / "train.ids", dtype="<i4")[0] == swapped[0]


@pytest.mark.parametrize("damage", ["cut ids", "longer ids", "cut meta", "no meta", "old version", "no ids"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(name=str(write(tmp_path / "c", TEXTS["crlf"])["train"].parent))
    want = load_corpus(cfg)
    want = (want.vocab.itos, [want.split(s).tolist() for s in SPLITS], want.unknown)
    cache = _cache(tmp_path)
    ids, meta = cache / "train.ids", cache / "meta.json"
    if damage == "cut ids":
        ids.write_bytes(ids.read_bytes()[:-6])
    elif damage == "longer ids":
        ids.write_bytes(ids.read_bytes() + b"\0" * 4)
    elif damage == "cut meta":
        meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 2])
    elif damage == "no meta":
        meta.unlink()
    elif damage == "old version":
        meta.write_text(re.sub(r'"version": \d+', '"version": 2', meta.read_text()))
    else:
        (cache / "valid.ids").unlink()
    with caplog.at_level(logging.WARNING, logger="awdlstm.data"):
        got = load_corpus(cfg)
    assert "ignoring damaged corpus cache" in caplog.text
    assert (got.vocab.itos, [got.split(s).tolist() for s in SPLITS], got.unknown) == want
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="awdlstm.data"):
        load_corpus(cfg)  # rebuilt for good
    assert caplog.text == ""


def test_a_half_written_cache_is_never_used(tmp_path, monkeypatch):
    """A build that stops midway leaves no cache directory: the next load builds again."""
    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(name=str(write(tmp_path / "c", TEXTS["lf"])["train"].parent))

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(D.Vocab, "encode_file", stop)  # after train.ids, before valid.ids
    with pytest.raises(KeyboardInterrupt):
        load_corpus(cfg)
    assert not list((tmp_path / "cache").iterdir())
    monkeypatch.undo()
    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path / "cache"))
    assert load_corpus(cfg).train.tolist() == load_corpus(cfg, use_cache=False).train.tolist()


def test_batchify_is_a_view_and_windows_are_int64(tmp_path, monkeypatch):
    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(name=str(write(tmp_path / "c", LONG + "\n" + TEXTS["lf"])["train"].parent), bptt=7)
    load_corpus(cfg)
    train = load_corpus(cfg).train  # memory-mapped
    b = batchify(train, 3)
    n = train.numel() // 3
    assert b.shape == (n, 3) and b.dtype == torch.int32
    assert b.untyped_storage().data_ptr() == train.untyped_storage().data_ptr()  # no copy
    assert b.to("cpu") is b  # what the trainer does on a CPU
    assert [b[:, j].tolist() for j in range(3)] == [train[j * n:(j + 1) * n].tolist() for j in range(3)]
    wins = list(bptt_windows(b, cfg, torch.Generator().manual_seed(0)))
    for w in wins:
        assert w.inputs.dtype == w.targets.dtype == torch.long
        assert w.inputs.is_contiguous() and w.targets.is_contiguous()
    assert torch.equal(torch.cat([w.inputs for w in wins]), b[:-1].long())
    assert torch.equal(torch.cat([w.targets for w in wins]), b[1:].long())


def test_the_trainer_keeps_the_training_split_a_view_of_the_map(tmp_path, monkeypatch):
    from helpers import small_config

    from awdlstm.runtime import make_runtime
    from awdlstm.train import Trainer

    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path / "cache"))
    d = write(tmp_path / "c", "\n".join(LONG for _ in range(5)) + "\n")["train"].parent
    cfg = small_config(d)
    corpus = load_corpus(cfg.data)
    trainer = Trainer(cfg, corpus, make_runtime(cfg.train), tmp_path / "run")
    assert trainer.train_data.untyped_storage().data_ptr() == corpus.train.untyped_storage().data_ptr()
    win = next(bptt_windows(trainer.train_data, cfg.data, None))
    assert torch.isfinite(trainer.train_step(win))


def test_unknown_counts_match_the_old_way_when_words_are_cut(tmp_path):
    files = write(tmp_path / "c", "a a a b b c <unk> d\n", "a e <unk> c\n", "f f\n")
    itos, want = old_way(files, min_freq=2)
    corpus = load_corpus(DataConfig(name=str(files["train"].parent), min_freq=2), use_cache=False)
    assert corpus.vocab.itos == itos and UNK in itos
    assert corpus.unknown == {s: want[s][1] for s in SPLITS} == {"train": 2, "valid": 2, "test": 2}
    assert collections.Counter(corpus.train.tolist())[corpus.vocab.unk_id] == 3  # 2 cut words + the literal one
