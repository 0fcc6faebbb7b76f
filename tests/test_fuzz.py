"""Property-based fuzzing (hypothesis) of the corpus reader, the vocabulary, the config parser
and the batch iterator on arbitrary text and values: each either works, checked against an
independent model of what it should give, or ends with a documented error (DataError,
ConfigError) of one line; never another exception, a wrong count or a loop without end.

Every test is derandomized, so a run in CI sees the same examples as a run here."""

import collections
import io
import itertools
import json
import math
import re
import tempfile
import typing
from pathlib import Path

import pytest
import torch
from helpers import config_fields
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from awdlstm.config import SECTIONS, Config, DataConfig, apply_overrides
from awdlstm.data import (
    EOS,
    UNK,
    Vocab,
    approx_batches,
    batchify,
    bptt_windows,
    epoch_start,
    load_corpus,
    read_lines,
    tokenize,
)
from awdlstm.errors import AWDLSTMError, ConfigError, DataError

SPLITS = ("train", "valid", "test")


def fuzz(n: int):
    """Modest, reproducible settings; the autouse fixture of conftest (a cache directory in
    the environment, the thread count) is the same for every example, so sharing it is fine."""
    return settings(max_examples=n, deadline=None, derandomize=True, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line(err: BaseException) -> str:
    """The message of a documented error, checked to be one line (the CLI prints it as is)."""
    assert isinstance(err, AWDLSTMError), repr(err)
    msg = str(err)
    assert msg and len(msg.splitlines()) == 1 and msg == msg.strip(), repr(msg)
    return msg


# ---------------------------------------------------------------------------- corpus reader

# Pieces that make the interesting cases likely: the three line ends text mode knows, the
# breaks str.splitlines() knows and text mode does not (whitespace inside a line), byte-order
# marks, NUL, the specials. Most files are lines of words, so that most corpora load.
WORDS = ["a", "b", "c", "a", "b", "é", "中", UNK, EOS, "x\x00y", "\ufeffa"]
SPACES = [" ", " ", "  ", "\t", "\x0b", "\x0c", "\x1c", "\x1d", "\x85", "\xa0", "\u2028", "\u2029"]
BREAKS = ["\n", "\n", "\r", "\r\n", "\n\r"]
PIECES = WORDS + SPACES + BREAKS + ["\ufeff", "\x00"]


@st.composite
def lines_of_words(draw):
    text = "\ufeff" if draw(st.integers(0, 4)) == 0 else ""
    for _ in range(draw(st.integers(1, 6))):
        line = [draw(st.sampled_from(WORDS)) for _ in range(draw(st.integers(0, 5)))]
        text += draw(st.sampled_from(SPACES + [""])) + draw(st.sampled_from(SPACES)).join(line)
        text += draw(st.sampled_from(BREAKS + [""]))
    return text


texts = lines_of_words() | st.lists(st.sampled_from(PIECES), max_size=30).map("".join) | st.text(max_size=20)
BAD_BYTES = [b"", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xe2\x82", b"\x80", b"\xf0\x9f\x98", b"\xed\xa0\x80"]
raw_files = st.one_of(
    texts.map(str.encode),
    st.tuples(texts, st.sampled_from(BAD_BYTES), texts).map(lambda t: t[0].encode() + t[1] + t[2].encode()),
    st.binary(max_size=30),
)
# Half the corpora are lines of words throughout (most of them load), half anything.
corpora = (st.fixed_dictionaries({s: lines_of_words().map(str.encode) for s in SPLITS})
           | st.fixed_dictionaries({s: raw_files for s in SPLITS}))


def model_lines(raw: bytes) -> list[str] | int:
    """The lines of a file as Python's text mode reads them (universal newlines, a BOM
    dropped); or, for bytes that are not UTF-8, the line the first bad byte is on."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        head = raw[: err.start].decode("utf-8")
        return len(io.StringIO(head, newline=None).read().split("\n"))
    text = io.StringIO(text.removeprefix("\ufeff"), newline=None).read()
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def model_tokens(lines: list[str]) -> list[str]:
    return [w for line in lines for w in line.split() + [EOS]]


def write_split_files(d: Path, raws: dict[str, bytes]) -> Path:
    d.mkdir()
    for s in SPLITS:
        (d / f"{s}.txt").write_bytes(raws[s])
    return d


def expected_corpus(raws, min_freq, max_vocab):
    """What load_corpus must give: ('error', type, message pattern) or ('ok', vocab, tokens)."""
    lines = {}
    for s in SPLITS:
        lines[s] = model_lines(raws[s])
        if isinstance(lines[s], int):
            return "error", DataError, rf"{s}\.txt, line {lines[s]}: bytes that are not UTF-8 .*convert the file"
    tokens = {s: model_tokens(lines[s]) for s in SPLITS}
    if all(t == EOS for t in tokens["train"]):
        return "error", DataError, r"train\.txt: the training split has no words; give a non-empty train\.txt"
    if max_vocab is not None and max_vocab < 2:
        return "error", ConfigError, r"data\.max_vocab must be >= 2 or none"
    vocab = Vocab.build(tokens["train"], min_freq, max_vocab)  # fuzzed on its own below
    for s in SPLITS:
        if vocab.unk_id is None:
            for i, line in enumerate(lines[s]):
                oov = [w for w in line.split() if w not in vocab]
                if oov:
                    return "error", DataError, (rf"{s}\.txt, line {i + 1}: word {re.escape(repr(oov[0]))} is not "
                                                rf"in the vocabulary, which has no <unk>; train with data\.min_freq")
        if len(tokens[s]) < 2:
            what = "empty" if not tokens[s] else "a single blank line"
            return "error", DataError, rf"{s}\.txt: {what}; every split needs at least one line of text"
    return "ok", vocab, tokens


@fuzz(150)
@given(raws=corpora,
       min_freq=st.integers(0, 3), max_vocab=st.none() | st.integers(2, 6) | st.integers(-1, 1))
def test_corpus_reader_on_arbitrary_bytes(raws, min_freq, max_vocab):
    """Any bytes in train/valid/test: the corpus the text-mode model predicts, token for token
    (unknown words as <unk>, counted), or the documented error it predicts, of one line."""
    want = expected_corpus(raws, min_freq, max_vocab)
    event(f"{want[0]}: {want[2][:30] if want[0] == 'error' else 'loaded'}")
    with tempfile.TemporaryDirectory() as tmp:
        d = write_split_files(Path(tmp) / "corpus", raws)
        cfg = DataConfig(name=str(d), min_freq=min_freq, max_vocab=max_vocab)
        if want[0] == "error":
            with pytest.raises(AWDLSTMError) as info:
                load_corpus(cfg, use_cache=False)
            assert type(info.value) is want[1] and re.search(want[2], one_line(info.value)), (want, info.value)
            return
        corpus = load_corpus(cfg, use_cache=False)
        for s in SPLITS:  # read_lines is what the scorer and the CLI use too
            assert tokenize(read_lines(d / f"{s}.txt")) == want[2][s]
    _, vocab, tokens = want
    assert corpus.vocab.itos == vocab.itos
    for s in SPLITS:
        ids = corpus.split(s)
        assert ids.dtype == torch.int32 and ids.dim() == 1 and ids.numel() == len(tokens[s])
        assert 0 <= int(ids.min()) and int(ids.max()) < len(corpus.vocab)
        assert corpus.vocab.decode(ids) == [t if t in vocab else UNK for t in tokens[s]]
        assert corpus.unknown[s] == sum(t not in vocab for t in tokens[s])  # train too: words cut


lines_without_breaks = st.lists(st.lists(st.sampled_from(WORDS + SPACES), max_size=8).map("".join),
                                min_size=1, max_size=6)


@fuzz(80)
@given(splits=st.tuples(lines_without_breaks, lines_without_breaks, lines_without_breaks),
       final_break=st.booleans(), bom=st.booleans(), max_vocab=st.none() | st.integers(2, 5))
def test_crlf_and_cr_files_give_the_ids_of_the_lf_file(splits, final_break, bom, max_vocab):
    """The same lines ended by \\n, \\r\\n or \\r (a BOM or not, a final break or not): the
    same vocabulary, the same ids and unknown counts, or the same error."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, end in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
            raws = {}
            for s, lines in zip(SPLITS, splits):
                text = end.join(lines) + (end if final_break else "")
                raws[s] = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
            d = write_split_files(Path(tmp) / name, raws)
            try:
                corpus = load_corpus(DataConfig(name=str(d), max_vocab=max_vocab), use_cache=False)
                results[name] = (corpus.vocab.itos, [corpus.split(s).tolist() for s in SPLITS], corpus.unknown)
                train = splits[0] if final_break or splits[0][-1] else splits[0][:-1]  # "a\n" + "" is one line
                assert corpus.train.numel() == sum(len(line.split()) + 1 for line in train)
            except DataError as err:
                results[name] = one_line(err).replace(str(d), "<dir>")
    assert results["crlf"] == results["lf"] and results["cr"] == results["lf"]


# ---------------------------------------------------------------------------- vocabulary

words = st.text(min_size=1, max_size=6).filter(lambda w: w.split() == [w])  # no whitespace inside
pools = st.lists(words | st.sampled_from([EOS, UNK]), min_size=1, max_size=8, unique=True)


@st.composite
def token_lists(draw):
    pool = draw(pools)
    return draw(st.lists(st.sampled_from(pool), max_size=40)), pool


def model_vocab(tokens, min_freq, max_vocab):
    """The order the data.py docstring promises: <eos>, <unk> when the corpus has it or words
    are cut, then the words by descending count, ties by first occurrence."""
    counts = collections.Counter(tokens)
    first = {w: i for i, w in reversed(list(enumerate(tokens)))}
    regular = sorted((w for w in counts if w not in (EOS, UNK)), key=lambda w: (-counts[w], first[w]))
    kept = [w for w in regular if counts[w] >= min_freq]
    if max_vocab is not None and 1 + (UNK in counts or len(kept) < len(regular)) + len(kept) > max_vocab:
        return [EOS, UNK] + kept[: max_vocab - 2]
    return [EOS] + ([UNK] if UNK in counts or len(kept) < len(regular) else []) + kept


@fuzz(150)
@given(data=token_lists(), others=st.lists(words | st.sampled_from([EOS, UNK]), max_size=10),
       min_freq=st.integers(1, 4), max_vocab=st.none() | st.integers(-1, 8))
def test_vocab_order_round_trip_and_unknown_words(data, others, min_freq, max_vocab):
    """Any words (no whitespace inside, the specials among them): the promised order, unique
    ids, encode/decode round trips, words outside it read as <unk> and counted exactly, or
    without <unk> a one-line DataError naming the first such word."""
    tokens, pool = data
    if max_vocab is not None and max_vocab < 2:
        with pytest.raises(ConfigError) as info:
            Vocab.build(tokens, min_freq, max_vocab)
        assert re.fullmatch(rf"data\.max_vocab must be >= 2 or none, got {max_vocab}", one_line(info.value))
        return
    vocab = Vocab.build(tokens, min_freq, max_vocab)
    event("with <unk>" if vocab.unk_id is not None else "without <unk>")
    assert vocab.itos == model_vocab(tokens, min_freq, max_vocab)
    assert len(set(vocab.itos)) == len(vocab) and all(vocab.stoi[w] == i for i, w in enumerate(vocab.itos))
    assert max_vocab is None or len(vocab) <= max_vocab
    assert vocab.eos_id == 0 and (vocab.unk_id in (None, 1))
    counts = collections.Counter(tokens)
    assert all(counts[w] >= min_freq for w in vocab.itos[2 if vocab.unk_id else 1:])
    assert Vocab.from_counts(counts, min_freq, max_vocab).itos == vocab.itos

    text = tokens + others + pool
    known = [w for w in text if w in vocab]
    ids, n_unk = vocab.encode(known)
    assert n_unk == 0 and vocab.decode(ids) == known  # in-vocabulary words round-trip
    if vocab.unk_id is not None:
        ids, n_unk = vocab.encode(text)
        assert vocab.decode(ids) == [w if w in vocab else UNK for w in text]
        assert n_unk == sum(w not in vocab for w in text)
    else:
        oov = [w for w in text if w not in vocab]
        if oov:
            with pytest.raises(DataError) as info:
                vocab.encode(text, where="valid.txt")
            msg = one_line(info.value)
            assert msg.startswith(f"valid.txt: word {oov[0]!r} is not in the vocabulary, which has no <unk>;")
        else:
            assert vocab.decode(vocab.encode(text)[0]) == text
    lines = [" ".join(text[i:i + 3]) for i in range(0, len(text), 3)]
    if vocab.unk_id is not None or all(w in vocab for w in text):
        a, b = vocab.encode_lines(lines), vocab.encode(tokenize(lines))
        assert torch.equal(a[0], b[0]) and a[1] == b[1]


# ---------------------------------------------------------------------------- config parser




HINTS = {(s, n): h for s, n, h in config_fields()}
NAMES = sorted({n for _, n in HINTS})


def conforms(value, hint) -> bool:
    """value is of the declared type exactly (an int is not a float here, a bool not an int)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return value is None or conforms(value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    return type(value) is hint


def check_config(cfg: Config) -> None:
    """A parsed config: every field of its declared type; then either a ConfigError of one
    line from validate(), or a valid config that round-trips through to_dict and JSON."""
    for (section, name), hint in HINTS.items():
        value = getattr(getattr(cfg, section), name)
        assert conforms(value, hint), (section, name, value)
    try:
        cfg.validate()
    except ConfigError as err:
        event("parsed, then a ConfigError from validate()")
        one_line(err)
        return
    event("parsed and valid")
    assert Config.from_dict(cfg.to_dict()) == cfg
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict(), allow_nan=False)))
    assert again == cfg and again.validate() == cfg


def typed_values(hint):
    """Values of a field's declared type, as json.loads gives them: mostly in range (so that
    many configs validate), at times anywhere (huge, negative, nan, inf)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return st.none() | typed_values(next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is list:
        return st.lists(st.integers(1, 800), max_size=3) | st.lists(st.integers(), max_size=2)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(1, 100) | st.integers(0, 2**64) | st.integers()
    if hint is float:
        return st.floats(0, 0.99) | st.floats(0.1, 100) | st.integers(0, 10) | st.floats()
    return st.sampled_from(["sgd", "adam", "fp32", "bf16", "fp16", "cpu", "auto", "ptb"]) | st.text(max_size=8)


def spellings(value):
    """The ways to write a value on the command line."""
    if value is None:
        return st.sampled_from(["none", "null", "None", ""])
    if isinstance(value, bool):
        return st.sampled_from(["true", "True", "yes", "1", "on"] if value else ["false", "FALSE", "no", "0", "off"])
    if isinstance(value, list):
        return st.sampled_from([",".join(map(str, value)), ", ".join(map(str, value)) + ","])
    if isinstance(value, float):
        return st.sampled_from([repr(value), f" {value} "])
    return st.sampled_from([str(value), f" {value} "])


def parsed(value, hint):
    """What --set must make of a value written by spellings (text is stripped; an empty
    or none/null text is None for an optional field)."""
    if isinstance(value, str):
        value = value.strip()
        if type(None) in typing.get_args(hint) and value.lower() in ("none", "null", ""):
            return None
    if isinstance(value, int) and not isinstance(value, bool) and hint in (float, float | None):
        return float(value)
    return value


def same(a, b) -> bool:
    return a == b or (a != a and b != b)  # nan is nan


VALUE_TEXTS = ["0", "1", "-1", "2", "0.5", "1e999", "-1e999", "nan", "inf", "1e-400", "true", "False", "yes",
               "none", "null", "", " ", "1,2,3", "1,,2", ",", "1,x", "2**64", "18446744073709551616", "1_000",
               "\u0663", "0x10", "+5", " 7 ", "1.0", "1e2", "sgd", "adam", "fp16", "cpu", "\x00", "a=b", "\n"]
value_texts = st.sampled_from(VALUE_TEXTS) | st.text(max_size=12) | st.integers().map(str) | st.floats().map(repr)
keys = st.sampled_from(NAMES) | st.text(max_size=8)


@st.composite
def typed_override(draw):
    """A known key, a value of its type and a way to write it: (item, section, name, value)."""
    section, name = draw(st.sampled_from(sorted(HINTS)))
    value = draw(typed_values(HINTS[section, name]))
    return f"{section}.{name}={draw(spellings(value))}", section, name, value


override_items = st.one_of(
    typed_override().map(lambda t: t[0]),
    st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(SECTIONS) | st.text(max_size=6), keys, value_texts),
    st.text(max_size=20),
)


@fuzz(150)
@given(items=st.lists(typed_override().map(lambda t: t[0]), max_size=4) | st.lists(override_items, max_size=3))
def test_set_overrides_give_a_valid_config_or_a_config_error(items):
    """--set section.key=value, any text: a config of the declared types that validates and
    round-trips, or a one-line ConfigError; never TypeError, ValueError, OverflowError..."""
    try:
        cfg = apply_overrides(Config(), items)
    except ConfigError as err:
        one_line(err)
        return
    check_config(cfg)


@fuzz(300)
@given(typed=typed_override(), section=st.sampled_from(SECTIONS), name=st.sampled_from(NAMES), text=value_texts)
def test_a_set_override_of_a_known_key_parses_to_the_field_type(typed, section, name, text):
    """The targeted form of the test above: a value of the field's type, however written, is
    that value; any text is a value of the type or a ConfigError naming the key; a key of
    another section is an unknown key, and the message lists the valid ones."""
    item, sec, key, value = typed
    cfg = apply_overrides(Config(), [item])
    assert same(getattr(getattr(cfg, sec), key), parsed(value, HINTS[sec, key])), item
    check_config(cfg)
    try:
        cfg = apply_overrides(Config(), [f"{section}.{name}={text}"])
    except ConfigError as err:
        msg = one_line(err)
        if (section, name) in HINTS:
            assert msg.startswith(f"{section}.{name} expects "), msg
        else:
            assert msg.startswith(f"unknown key {section}.{name}; valid keys of {section}: "), msg
        return
    assert (section, name) in HINTS
    check_config(cfg)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def typed_configs(draw):
    """Some fields of some sections, each a value of its declared type."""
    raw = {}
    for section in draw(st.lists(st.sampled_from(SECTIONS), unique=True, max_size=4)):
        names = draw(st.lists(st.sampled_from([n for s, n in HINTS if s == section]), unique=True, max_size=4))
        raw[section] = {n: draw(typed_values(HINTS[section, n])) for n in names}
    return raw


section_dicts = st.dictionaries(keys, json_values | typed_values(float) | st.sampled_from([None, True, 0.5, []]),
                                max_size=4)
# Half typed configs; a plain one_of would flatten the alternatives and draw them a quarter.
raw_configs = st.booleans().flatmap(lambda typed: typed_configs() if typed else st.one_of(
    st.dictionaries(st.sampled_from(SECTIONS), section_dicts, max_size=4),
    st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=6), section_dicts | json_values, max_size=3),
    json_values,
))


@fuzz(150)
@given(raw=raw_configs)
def test_config_from_dict_gives_a_valid_config_or_a_config_error(raw):
    """Anything json.loads can give, as config.json or a checkpoint's config: a config of the
    declared types (an int for a float field becomes a float) or a one-line ConfigError."""
    try:
        cfg = Config.from_dict(raw)
    except ConfigError as err:
        one_line(err)
        return
    check_config(cfg)
    for section, values in raw.items():  # every value given is the value set
        for key, value in values.items():
            assert same(getattr(getattr(cfg, section), key), value)


def test_an_unknown_key_with_a_line_break_is_still_a_one_line_error():
    """Found by the fuzzer: the key was printed raw, so its line break split the message."""
    names = "name, root, batch_size"
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), ["data.a\nb=1"])
    assert one_line(info.value).startswith(f"unknown key 'data.a\\nb'; valid keys of data: {names}")
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"model": {"x\u2028": 1}})
    assert one_line(info.value).startswith("unknown key 'model.x\\u2028'; valid keys of model: emb_size")


# ---------------------------------------------------------------------------- batch iterator


@fuzz(150)
@given(n=st.integers(0, 300), batch_size=st.integers(-3, 40) | st.sampled_from([2**40, 2**70]),
       what=st.sampled_from(["training", "validation", "test", "split"]))
def test_batchify_makes_streams_or_a_documented_error(n, batch_size, what):
    data = torch.arange(n)
    try:
        out = batchify(data, batch_size, what=what)
    except ConfigError as err:
        assert batch_size < 1 and "batch size must be >= 1" in one_line(err)
        return
    except DataError as err:
        assert batch_size >= 1 and n // batch_size < 2
        assert one_line(err).startswith(f"the {what} split has {n} tokens, too few for batch size {batch_size}")
        return
    rows = n // batch_size
    assert rows >= 2 and out.shape == (rows, batch_size) and out.data_ptr() == data.data_ptr()  # a view
    assert out.t().flatten().tolist() == list(range(rows * batch_size))  # stream j is a run of the text


@st.composite
def good_window_configs(draw):
    """Window settings validate() accepts, small enough to give many windows."""
    min_seq_len = draw(st.integers(1, 20))
    return DataConfig(
        bptt=draw(st.integers(1, 60)),
        min_seq_len=min_seq_len,
        max_seq_len=draw(st.none() | st.integers(min_seq_len, 60)),
        length_std=draw(st.floats(0, 40)),
        full_bptt_p=draw(st.floats(0, 1)),
        variable_length=draw(st.booleans()),
        random_start=draw(st.booleans()),
    )


any_window_configs = st.builds(
    DataConfig,
    bptt=st.integers(-1, 60) | st.sampled_from([2**40, 2**40 + 1, 2**63, 10**30]),
    min_seq_len=st.integers(-1, 20) | st.sampled_from([2**40 + 1, 2**64]),
    max_seq_len=st.none() | st.integers(-2, 60) | st.sampled_from([2**40, 2**41]),
    length_std=st.floats(0, 40) | st.sampled_from([-1.0, math.nan, math.inf, 2.0**40, 2.0**41, 1e39, 1e300]),
    full_bptt_p=st.floats(0, 1) | st.sampled_from([-0.5, 1.5, math.nan]),
    variable_length=st.booleans(),
    random_start=st.booleans(),
)
window_configs = good_window_configs() | any_window_configs


@fuzz(200)
@given(cfg=window_configs, rows=st.integers(0, 200), streams=st.integers(1, 3),
       seed=st.integers(0, 2**64 - 1), training=st.booleans())
def test_windows_cover_every_position_once(cfg, rows, streams, seed, training):
    """Any window settings: the iterator accepts exactly what validate() accepts (else a
    one-line ConfigError), starts in [0, bptt), and its windows tile the split from there:
    inputs and targets contiguous, targets one step ahead, lengths >= 1 in the configured
    range, lr_scale = length / bptt, in at most rows - 1 windows (it always ends)."""
    source = torch.arange(rows * streams).view(rows, streams)
    gen = torch.Generator().manual_seed(seed)
    try:
        start = epoch_start(cfg, gen)
        wins = list(itertools.islice(bptt_windows(source, cfg, gen if training else None, start), rows + 1))
    except ConfigError as err:
        event("ConfigError")
        one_line(err)
        with pytest.raises(ConfigError):
            cfg.validate()
        return
    event("several windows" if len(wins) > 1 else "one window or none")
    cfg.validate()  # the iterator ran, so the config must be a valid one
    assert 0 <= start < cfg.bptt if cfg.random_start else start == 0
    end = max(rows - 1, start)
    assert len(wins) <= max(rows - 1 - start, 0)
    variable = training and cfg.variable_length
    pos = start
    for k, w in enumerate(wins):
        length = w.inputs.size(0)
        assert length >= 1 and w.inputs.shape == w.targets.shape == (length, streams)
        assert torch.equal(w.inputs, source[pos:pos + length])
        assert torch.equal(w.targets, source[pos + 1:pos + 1 + length])
        assert w.lr_scale == length / cfg.bptt and w.end == pos + length
        if k < len(wins) - 1:  # the last one is cut at the end of the split
            if variable:
                assert cfg.min_seq_len <= length <= (cfg.max_seq_len or length)
            else:
                assert length == cfg.bptt
        pos += length
    assert pos == end  # every position from the start on, once
    if rows >= 2:  # what batchify gives
        approx = approx_batches(source, cfg)
        assert isinstance(approx, int) and approx >= 1
        if not cfg.variable_length and start == 0:  # fixed windows: the exact count
            assert approx == len(wins)


def test_window_settings_out_of_range_are_config_errors_not_crashes_or_endless_loops():
    """Found by the fuzzer, each was a crash or a hang before: a huge length_std or bptt made
    the float32 length draw infinite (OverflowError), a bptt of 2**63 overflowed epoch_start's
    randint, a bptt of 0 with random_start raised torch's RuntimeError, and a max_seq_len
    under 1 gave windows of 0 tokens forever."""
    source = torch.arange(20).view(-1, 1)
    gen = torch.Generator().manual_seed(0)
    for changes, message in [
        ({"length_std": 1e300}, r"data\.length_std must be in \[0, 2\*\*40\], got 1e\+300"),
        ({"length_std": math.nan}, r"data\.length_std must be (in \[0, 2\*\*40\]|a finite number), got nan"),
        ({"bptt": 10**40}, r"data\.bptt must be at most 2\*\*40 tokens, got 10{40}"),
        ({"bptt": 2**63, "random_start": True}, r"data\.bptt must be at most 2\*\*40 tokens"),
        ({"bptt": 0, "random_start": True}, r"data\.bptt must be > 0, got 0"),
        ({"max_seq_len": 0}, r"data\.max_seq_len must be >= data\.min_seq_len \(5\), got 0"),
        ({"max_seq_len": 2**41}, r"data\.max_seq_len must be at most 2\*\*40 tokens"),
        ({"full_bptt_p": math.nan}, r"data\.full_bptt_p must be (in \[0, 1\]|a finite number), got nan"),
    ]:
        cfg = DataConfig(**changes)
        with pytest.raises(ConfigError, match=message):
            cfg.validate()
        with pytest.raises(ConfigError, match=message):
            epoch_start(cfg, gen)
        with pytest.raises(ConfigError, match=message):
            next(bptt_windows(source, cfg, gen))
    edge = DataConfig(bptt=2**40, length_std=2.0**40, max_seq_len=2**40, random_start=True)
    edge.validate()
    assert 0 <= epoch_start(edge, gen) < 2**40
    assert sum(w.inputs.size(0) for w in bptt_windows(source, edge, gen)) == 19
