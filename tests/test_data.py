import statistics

import pytest
import torch
from helpers import write_splits

from awdlstm.config import DataConfig
from awdlstm.data import (
    EOS,
    UNK,
    Vocab,
    batchify,
    bptt_windows,
    cache_dir,
    epoch_start,
    load_corpus,
    read_lines,
    resolve_corpus,
    sample_seq_len,
    tokenize,
)
from awdlstm.errors import DataError


@pytest.mark.corpus
@pytest.mark.parametrize(
    "name, counts",
    [("ptb", (929_589, 73_760, 82_430, 10_000)), ("wikitext-2", (2_088_628, 217_646, 245_569, 33_278))],
)
def test_benchmark_corpus_counts(shared_data, name, counts):
    corpus = load_corpus(DataConfig(name=name, root=str(shared_data)))
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel(), len(corpus.vocab)) == counts
    assert corpus.unknown == {"train": 0, "valid": 0, "test": 0}


def test_tokens_per_line_and_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b" the cat \n\n sat\n")
    assert tokenize(read_lines(f)) == ["the", "cat", EOS, EOS, "sat", EOS]


def test_crlf_gives_the_same_tokens_as_lf(tmp_path):
    (tmp_path / "lf.txt").write_bytes(b"a b\nc\n\nd\n")
    (tmp_path / "crlf.txt").write_bytes(b"a b\r\nc\r\n\r\nd\r\n")
    assert read_lines(tmp_path / "lf.txt") == read_lines(tmp_path / "crlf.txt")


def test_non_utf8_names_file_and_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad.txt, line 3"):
        read_lines(f)


def test_vocab_is_frequency_ordered_with_specials_first():
    v = Vocab.build("b a b c b a".split() + [EOS])
    assert v.itos == [EOS, "b", "a", "c"]
    assert v.unk_id is None


def test_vocab_min_freq_and_max_vocab_map_the_rest_to_unk():
    tokens = "a a a b b c d".split()
    v = Vocab.build(tokens, min_freq=2)
    assert v.itos == [EOS, UNK, "a", "b"]
    ids, n_unk = v.encode(["a", "c", "zzz"])
    assert ids.tolist() == [2, 1, 1] and n_unk == 2
    v = Vocab.build(tokens, max_vocab=3)
    assert v.itos == [EOS, UNK, "a"]


def test_word_outside_a_vocab_without_unk_is_a_clear_error():
    v = Vocab.build(["a", "b"])
    with pytest.raises(DataError, match="not in the vocabulary"):
        v.encode(["a", "zzz"], where="valid.txt")


def test_batchify_makes_time_major_streams():
    data = torch.arange(10)
    b = batchify(data, 3)
    assert b.shape == (3, 3)
    assert b[:, 0].tolist() == [0, 1, 2] and b[:, 2].tolist() == [6, 7, 8]
    with pytest.raises(DataError, match="too few for batch size"):
        batchify(torch.arange(5), 4)


def test_sequence_length_distribution():
    cfg = DataConfig(bptt=70)
    gen = torch.Generator().manual_seed(0)
    lengths = [sample_seq_len(70, gen, cfg) for _ in range(20_000)]
    short = [n for n in lengths if n < 52]  # drawn around bptt/2 = 35
    full = [n for n in lengths if n >= 52]
    assert len(short) / len(lengths) == pytest.approx(0.05, abs=0.01)
    # int() truncates toward zero, so the mean sits about half a token under the base.
    assert statistics.mean(full) == pytest.approx(69.5, abs=0.3)
    assert statistics.pstdev(full) == pytest.approx(5.0, abs=0.3)
    assert statistics.mean(short) == pytest.approx(34.5, abs=0.6)
    assert min(lengths) >= 5
    capped = DataConfig(bptt=70, max_seq_len=72)
    assert max(sample_seq_len(70, gen, capped) for _ in range(2000)) == 72
    tiny = DataConfig(bptt=4)
    assert min(sample_seq_len(4, gen, tiny) for _ in range(500)) == 5  # the floor of 5 tokens


def test_windows_cover_the_split_and_scale_the_lr():
    source = torch.arange(1000).view(-1, 1)
    cfg = DataConfig(bptt=70)
    wins = list(bptt_windows(source, cfg, torch.Generator().manual_seed(0)))
    inputs = torch.cat([w.inputs for w in wins]).flatten()
    targets = torch.cat([w.targets for w in wins]).flatten()
    assert inputs.tolist() == list(range(999)) and targets.tolist() == list(range(1, 1000))
    for w in wins:
        assert w.lr_scale == pytest.approx(w.inputs.size(0) / 70)
    assert len({w.inputs.size(0) for w in wins}) > 3  # lengths vary
    fixed = list(bptt_windows(source, cfg, gen=None))  # evaluation: fixed length
    assert {w.inputs.size(0) for w in fixed[:-1]} == {70}


def test_random_start_offsets():
    gen = torch.Generator().manual_seed(0)
    assert epoch_start(DataConfig(bptt=10), gen) == 0
    starts = {epoch_start(DataConfig(bptt=10, random_start=True), gen) for _ in range(300)}
    assert starts == set(range(10))


ABC = ("a b c\nb c\n",) * 3  # the same text in train, valid and test


def test_cache_is_keyed_by_content_not_path(tmp_path, monkeypatch):
    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path / "cache"))
    a = write_splits(tmp_path / "one", *ABC)
    b = write_splits(tmp_path / "two", *ABC)
    load_corpus(DataConfig(name=str(a)))
    load_corpus(DataConfig(name=str(b)))
    assert len(list(cache_dir().glob("corpus-*/meta.json"))) == 1
    (b / "train.txt").write_text("a b c d\n", encoding="utf-8")
    corpus = load_corpus(DataConfig(name=str(b)))
    assert "d" in corpus.vocab
    assert len(list(cache_dir().glob("corpus-*/meta.json"))) == 2


def test_corpus_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_corpus(DataConfig(name="no-such-corpus", root=str(tmp_path)))
    d = write_splits(tmp_path / "c", *ABC)
    (d / "valid.txt").unlink()
    with pytest.raises(DataError, match="valid.txt: missing"):
        load_corpus(DataConfig(name=str(d)))
    e = write_splits(tmp_path / "e", *ABC)
    (e / "train.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no words"):
        load_corpus(DataConfig(name=str(e)))


def test_name_resolution_order(tmp_path, monkeypatch):
    root = write_splits(tmp_path / "root" / "mycorp", *ABC).parent
    env = write_splits(tmp_path / "env" / "mycorp", *ABC).parent
    monkeypatch.setenv("AWDLSTM_DATA", str(env))
    assert resolve_corpus("mycorp", str(root)) == root / "mycorp"
    assert resolve_corpus("mycorp", None) == env / "mycorp"
    monkeypatch.delenv("AWDLSTM_DATA")
    monkeypatch.chdir(tmp_path / "root")
    assert resolve_corpus("mycorp", None).resolve() == (root / "mycorp").resolve()  # a directory here
    (tmp_path / "root" / "data").mkdir()
    write_splits(tmp_path / "root" / "data" / "mycorp", *ABC)
    # ./data comes before a same-named directory in the working directory
    assert resolve_corpus("mycorp", None).resolve() == (tmp_path / "root" / "data" / "mycorp").resolve()
