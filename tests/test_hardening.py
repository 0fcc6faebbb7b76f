"""Everything a user can get wrong ends as a documented error that says what to do: corpora
(missing, empty, not UTF-8, too small), words outside the vocabulary, and configuration
values, checked through the Python API and the CLI. The config checks are generated from
the dataclasses, so a new field is covered (or fails here) without editing this file."""

import json
import logging
import math
import subprocess
import sys
import textwrap
import typing

import pytest
import torch
from helpers import cli_error, config_fields, fake_run, write_splits

from awdlstm import LanguageModel
from awdlstm.cli import main
from awdlstm.config import SECTIONS, Config, DataConfig, apply_overrides
from awdlstm.data import EOS, UNK, batchify, bptt_windows, load_corpus, read_lines, resolve_corpus, tokenize
from awdlstm.errors import ConfigError, DataError
from awdlstm.presets import get_preset

SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------- corpora


@pytest.mark.parametrize("split", SPLITS)
def test_a_missing_split_file_is_named(tmp_path, split):
    d = write_splits(tmp_path / "c")
    (d / f"{split}.txt").unlink()
    with pytest.raises(DataError, match=rf"{split}.txt: missing; a corpus directory needs train.txt, valid.txt and test.txt"):
        load_corpus(DataConfig(name=str(d)))


def test_a_missing_directory_says_what_a_corpus_is(tmp_path):
    with pytest.raises(DataError, match="no such directory; give a corpus name .* or a directory with train.txt"):
        resolve_corpus(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="pass --data-root or set AWDLSTM_DATA"):
        load_corpus(DataConfig(name="nowhere", root=str(tmp_path)))


@pytest.mark.parametrize("split, message", [
    ("train", "the training split has no words; give a non-empty train.txt"),
    ("valid", "valid.txt: empty; every split needs at least one line of text"),
    ("test", "test.txt: empty; every split needs at least one line of text"),
])
def test_an_empty_split_is_refused_before_training(tmp_path, split, message):
    d = write_splits(tmp_path / "c")
    (d / f"{split}.txt").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        load_corpus(DataConfig(name=str(d)))


def test_blank_lines_only(tmp_path):
    """Train needs words; valid and test of blank lines are <eos> tokens to predict, but a
    single blank line is nothing to predict (it would fail only after training)."""
    d = write_splits(tmp_path / "c", train="\n \n\t\n")
    with pytest.raises(DataError, match="no words"):
        load_corpus(DataConfig(name=str(d)))
    d = write_splits(tmp_path / "d", valid="\n")
    with pytest.raises(DataError, match="valid.txt: a single blank line; every split needs"):
        load_corpus(DataConfig(name=str(d)))
    d = write_splits(tmp_path / "e", valid="\n\n\n")
    corpus = load_corpus(DataConfig(name=str(d)))
    assert corpus.valid.tolist() == [corpus.vocab.eos_id] * 3


@pytest.mark.parametrize("data, line", [
    (b"\xff first\n", 1),
    (b"ok\nok\n\xc3(\n", 3),  # a bad continuation byte
    (b"ok\r\nok\r\nstill fine \xe2\x82\n", 3),  # CRLF counts one line per break
    (b"ok\rok\rbad \x80\n", 3),  # so does a lone CR (text mode)
    (b"ok\nlast \xf0\x9f\x98", 2),  # a character cut off at the end of the file
])
def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path, data, line):
    f = tmp_path / "bad.txt"
    f.write_bytes(data)
    with pytest.raises(DataError, match=rf"bad.txt, line {line}: bytes that are not UTF-8 .*convert the file to UTF-8"):
        read_lines(f)


def test_not_utf8_in_a_corpus_names_the_split(tmp_path):
    d = write_splits(tmp_path / "c", b"a b\n", "a\nb \xe9\n".encode("latin-1"), b"a\n")
    with pytest.raises(DataError, match=r"valid.txt, line 2: bytes that are not UTF-8"):
        load_corpus(DataConfig(name=str(d)))


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    f = tmp_path / "locked.txt"
    f.write_text("a\n")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(f), "read_bytes", denied)  # chmod 000 does not stop root
    with pytest.raises(DataError, match="locked.txt: cannot be read \\(Permission denied\\); check its permissions"):
        read_lines(f)


def test_windows_and_old_mac_line_endings_give_the_same_corpus(tmp_path):
    lf = "the cat sat\n\non the mat\nthe end"
    corpora = {}
    for name, ending in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        text = lf.replace("\n", ending)
        corpora[name] = load_corpus(DataConfig(name=str(write_splits(tmp_path / name, text, text, text))))
    for name in ("crlf", "cr"):
        assert corpora[name].vocab.itos == corpora["lf"].vocab.itos
        for split in SPLITS:
            assert torch.equal(corpora[name].split(split), corpora["lf"].split(split))
    assert tokenize(read_lines(tmp_path / "crlf" / "train.txt")) == (
        "the cat sat <eos> <eos> on the mat <eos> the end <eos>".split())


def test_a_byte_order_mark_is_not_part_of_the_first_word(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfthe cat\r\n")
    assert tokenize(read_lines(f)) == ["the", "cat", EOS]


def test_unicode_breaks_inside_a_line_are_spaces_not_line_ends(tmp_path):
    """Only \\n, \\r\\n and \\r end a line (as text mode reads a file); the other characters
    str.splitlines() breaks on are whitespace between words."""
    f = tmp_path / "u.txt"
    f.write_text("a\u2028b\x1cc\x85d\x0be\x0cf\u2029g\x1fh\n", encoding="utf-8", newline="")
    assert tokenize(read_lines(f)) == list("abcdefgh") + [EOS]


def test_a_50_mb_line_loads_in_seconds_and_lean(tmp_path):
    """One line of 50 MB (8.3M words): the right token count, in a few seconds, and a peak
    memory well under ten times the file (a list of every word as a string needed ~15x)."""
    words = [f"w{i}" for i in range(5000)]
    chunk = " ".join(words[(i * 7919) % 5000] for i in range(200_000)) + " "  # 1.2 MB
    reps = 50_000_000 // len(chunk) + 1
    d = write_splits(tmp_path / "big", valid="w1 w2\n", test="w3\n")
    with open(d / "train.txt", "w", encoding="utf-8") as f:
        for _ in range(reps):
            f.write(chunk)
        f.write("\n")
    size = (d / "train.txt").stat().st_size
    assert size >= 50_000_000
    script = textwrap.dedent(f"""
        import json, resource, time
        from awdlstm.config import DataConfig
        from awdlstm.data import load_corpus
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        c = load_corpus(DataConfig(name={str(d)!r}))
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"seconds": seconds, "extra_mb": (peak - before) / 1024, "tokens": c.train.numel(),
                          "vocab": len(c.vocab), "last": c.vocab.itos[c.train[-1]], "first": c.vocab.itos[c.train[0]]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    res = json.loads(out.stdout)
    assert res["tokens"] == 200_000 * reps + 1 and res["vocab"] == 5001
    assert (res["first"], res["last"]) == (words[0], EOS)
    assert res["seconds"] < 15, res  # ~3 s on the 2-core development machine
    assert res["extra_mb"] < 8 * size / 2**20, res  # ~140 MB measured; 730 MB before


def test_corpus_smaller_than_one_batch_names_the_setting(tmp_path):
    corpus = load_corpus(DataConfig(name=str(write_splits(tmp_path / "c"))))
    with pytest.raises(DataError, match=r"the training split has 8 tokens, too few for batch size 20 .*"
                                        r"lower data.batch_size \(--set data.batch_size=N\) or use more text"):
        batchify(corpus.train, 20, what="training")
    with pytest.raises(DataError, match=r"lower data.eval_batch_size \(--set data.eval_batch_size=N\)"):
        batchify(corpus.valid, 10, what="validation")
    with pytest.raises(DataError, match=r"use a smaller batch size \(--batch-size\)"):
        batchify(corpus.test, 5, what="test")
    assert batchify(corpus.train, 4).shape == (2, 4)  # 2 tokens a stream is enough
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="batch size must be >= 1"):
            batchify(corpus.train, bad)


def test_windows_refuse_a_zero_length_instead_of_looping_forever():
    source = torch.arange(20).view(-1, 1)
    for cfg in (DataConfig(bptt=0), DataConfig(min_seq_len=0)):
        with pytest.raises(ConfigError, match="must be > 0"):
            next(bptt_windows(source, cfg, torch.Generator().manual_seed(0)))


CORPUS_CASES = {
    "missing split": (lambda d: (d / "test.txt").unlink(), "test.txt: missing"),
    "empty train": (lambda d: (d / "train.txt").write_text(""), "the training split has no words"),
    "empty valid": (lambda d: (d / "valid.txt").write_text(""), "valid.txt: empty"),
    "blank train": (lambda d: (d / "train.txt").write_text("\n\n"), "the training split has no words"),
    "not utf-8": (lambda d: (d / "train.txt").write_bytes(b"a b\nc \xff\n"), "train.txt, line 2: bytes that are not UTF-8"),
    "unknown word": (lambda d: (d / "valid.txt").write_text("a\nb zebra\n"),
                     "valid.txt, line 2: word 'zebra' is not in the vocabulary, which has no <unk>"),
}


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_corpus_errors_through_the_cli(capsys, tmp_path, case):
    spoil, message = CORPUS_CASES[case]
    d = write_splits(tmp_path / "c", "a b c\n" * 100, "a b\n" * 20, "c\n" * 20)
    spoil(d)
    out = tmp_path / "run"
    assert message in cli_error(capsys, "train", "--preset", "tiny", "--data", d, "--out", out)
    assert not out.exists()  # nothing is left behind by a start that failed
    assert message in cli_error(capsys, "data", "info", d)


def test_corpus_too_small_for_the_batch_through_the_cli(capsys, tmp_path):
    d = write_splits(tmp_path / "c", "a b c\n" * 100, "a b\n", "c\n")
    out = tmp_path / "run"
    msg = cli_error(capsys, "train", "--preset", "tiny", "--data", d, "--out", out)
    assert "validation split has 3 tokens, too few for batch size 10" in msg
    assert "--set data.eval_batch_size=N" in msg and not out.exists()
    msg = cli_error(capsys, "train", "--preset", "tiny", "--data", tmp_path / "nope", "--out", out)
    assert "no such directory" in msg


# ---------------------------------------------------------------------------- vocabulary


def test_unknown_words_in_valid_and_test_are_counted(tmp_path, capsys):
    d = write_splits(tmp_path / "c", "a a b b c\n", "a zebra\nyak yak b\n", "c\n")
    corpus = load_corpus(DataConfig(name=str(d), min_freq=2))  # c is cut: the vocab has <unk>
    assert corpus.vocab.itos == [EOS, UNK, "a", "b"]
    assert corpus.unknown == {"train": 1, "valid": 3, "test": 1}
    assert corpus.valid.tolist() == [2, 1, 0, 1, 1, 3, 0]
    assert main(["-q", "data", "info", str(d), "--min-freq", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unknown"] == {"train": 1, "valid": 3, "test": 1}


def test_unknown_word_without_unk_names_file_line_and_fix(tmp_path):
    d = write_splits(tmp_path / "c", "a a b c\n", "a\nb\na yak\n", "a\n")
    with pytest.raises(DataError, match=r"valid.txt, line 3: word 'yak' is not in the vocabulary, which has "
                                        r"no <unk>; train with data.min_freq or data.max_vocab"):
        load_corpus(DataConfig(name=str(d)))
    corpus = load_corpus(DataConfig(name=str(d), max_vocab=3))  # cutting a word brings <unk>
    assert corpus.unknown["valid"] == 2 and corpus.vocab.itos == [EOS, UNK, "a"]


@pytest.fixture
def lm_and_run(tmp_path):
    d = write_splits(tmp_path / "c", "the cat sat\n<unk> the dog\n" * 30, "the cat\n" * 5, "the dog\n" * 5)
    run = fake_run(tmp_path / "run", d)
    return LanguageModel.load(run), run


def test_scoring_counts_unknown_words_everywhere(lm_and_run, tmp_path, capsys):
    lm, run = lm_and_run
    assert [s.unknown for s in lm.score(["the zebra", "the cat", "yak yak yak"]).lines] == [1, 0, 3]
    assert lm.score_text("the zebra\nyak the cat\n").unknown == 2
    f = tmp_path / "in.txt"
    f.write_text("the zebra\nthe cat\nyak yak\n", encoding="utf-8")
    assert main(["-q", "score", str(run), str(f)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [("1", "1"), ("2", "0"), ("3", "2"), ("total", "3")]


def test_score_a_string_splits_lines_as_a_file_is_read(lm_and_run, tmp_path):
    lm, _ = lm_and_run
    text = "the cat\u2028sat\r\nthe dog\rthe"
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8", newline="")
    assert [s.tokens for s in lm.score(text).lines] == [4, 3, 2]
    assert lm.score(text).total.log_prob == pytest.approx(lm.score(read_lines(f)).total.log_prob)
    assert lm.score_text(text).tokens == 9


def test_generate_prompt_with_unknown_words(lm_and_run, capsys, caplog):
    lm, run = lm_and_run
    with caplog.at_level(logging.WARNING):
        text = lm.generate("the zebra yak", words=4, seed=1)
    assert "prompt words not in the vocabulary, read as <unk>: zebra yak" in caplog.text
    assert text == lm.generate("the <unk> <unk>", words=4, seed=1)  # read exactly as <unk>
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["-q", "generate", str(run), "--prompt", "zebra the", "--words", "3", "--seed", "2"]) == 0
    assert capsys.readouterr().out.startswith("zebra the") and "read as <unk>: zebra" in caplog.text


def test_generate_seed_out_of_range(lm_and_run, capsys):
    lm, run = lm_and_run
    with pytest.raises(ConfigError, match=r"--seed must be in \[0, 2\*\*64\)"):
        lm.generate("the", words=2, seed=2**64)
    assert "--seed must be in [0, 2**64)" in cli_error(capsys, "generate", run, "--seed", -1)


# ---------------------------------------------------------------------------- configuration


def base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return base_type(args[0]) if type(None) in typing.get_args(hint) else typing.get_origin(hint) or hint


ALL = list(config_fields())
IDS = [f"{s}.{n}" for s, n, _ in ALL]
NUMBERS = [(s, n, h) for s, n, h in ALL if base_type(h) in (int, float, list)]
PROBABILITIES = [(s, n) for s, n, h in ALL if n.endswith("_p")]
FLOATS = [(s, n) for s, n, h in ALL if base_type(h) is float]
# Numbers that may be 0; every other int or float field must be > 0 (a size, a count, a rate).
ZERO_OK = {"data.length_std", "optim.clip", "optim.weight_decay", "optim.alpha", "optim.beta",
           "optim.check_every", "optim.average_from_epoch", "train.seed", "train.finetune_seed", "train.threads",
           "train.max_rollbacks"}


def validated(*overrides):
    return apply_overrides(get_preset("tiny"), list(overrides)).validate()


def test_the_generated_field_lists_are_complete():
    assert len(PROBABILITIES) >= 6 and ("data", "full_bptt_p") in PROBABILITIES
    assert all(base_type(h) is float for s, n, h in ALL if n.endswith("_p"))
    assert {"data.batch_size", "data.bptt", "model.emb_size", "model.hidden_size", "model.num_layers"} <= {
        f"{s}.{n}" for s, n, h in NUMBERS}
    assert ZERO_OK <= {f"{s}.{n}" for s, n, h in NUMBERS}  # no stale names


@pytest.mark.parametrize("section, name", PROBABILITIES, ids=[f"{s}.{n}" for s, n in PROBABILITIES])
def test_every_probability_is_checked_against_its_range(section, name):
    inclusive = name == "full_bptt_p"  # a probability of a choice may be 1; of dropping, not
    rng = r"\[0, 1\]" if inclusive else r"\[0, 1\)"
    bad = ["-0.01", "1.01", "nan", "inf"] + ([] if inclusive else ["1", "1.0"])
    layer = ["model.rnn=lstm-cell"] if name == "recurrent_p" else []  # a cell-level dropout
    for value in bad:
        with pytest.raises(ConfigError, match=rf"{section}.{name} must be (in {rng}|a finite number), got"):
            validated(*layer, f"{section}.{name}={value}")
    for value in ["0", "0.5", "0.99"] + (["1"] if inclusive else []):
        validated(*layer, f"{section}.{name}={value}")


@pytest.mark.parametrize("section, name, hint", NUMBERS, ids=[f"{s}.{n}" for s, n, h in NUMBERS])
def test_every_number_rejects_a_negative_value_and_states_the_range(section, name, hint):
    with pytest.raises(ConfigError, match=rf"{section}.{name} must be [^,]*(>|\[)"):
        validated(f"{section}.{name}=-1")


@pytest.mark.parametrize("section, name, hint", NUMBERS, ids=[f"{s}.{n}" for s, n, h in NUMBERS])
def test_every_size_and_count_rejects_zero(section, name, hint):
    if f"{section}.{name}" in ZERO_OK or name.endswith("_p") or base_type(hint) is list:
        validated(f"{section}.{name}=0" if base_type(hint) is not list else f"{section}.{name}=")
        return
    with pytest.raises(ConfigError, match=rf"{section}.{name} must be (> 0|>= 2|>= data.min_seq_len)"):
        validated(f"{section}.{name}=0")


@pytest.mark.parametrize("section, name", FLOATS, ids=[f"{s}.{n}" for s, n in FLOATS])
def test_every_float_must_be_finite(section, name):
    for value in ("nan", "inf", "-inf", "1e999"):
        with pytest.raises(ConfigError, match=rf"{section}.{name} must be"):
            validated(f"{section}.{name}={value}")


WRONG_TEXT = {int: ("2.5", "expects int"), float: ("lots", "expects float"), bool: ("maybe", "expects bool"),
              list: ("1,x", "expects comma-separated ints")}
WRONG_JSON = {int: ["3", 2.5, True, [1]], float: ["0.5", True, None, {}], bool: ["yes", 1, None],
              str: [3, None, ["cpu"]], list: [3, "300,400", [1.5], [True]]}


@pytest.mark.parametrize("section, name, hint", ALL, ids=IDS)
def test_every_field_rejects_the_wrong_type(section, name, hint):
    kind = base_type(hint)
    if kind in WRONG_TEXT:  # from the command line (a str field takes any text)
        text, message = WRONG_TEXT[kind]
        with pytest.raises(ConfigError, match=f"{section}.{name} {message}"):
            apply_overrides(get_preset("tiny"), [f"{section}.{name}={text}"])
    optional = type(None) in typing.get_args(hint)
    for value in WRONG_JSON[kind]:  # from a config file (config.json, a checkpoint)
        if value is None and optional:
            continue
        with pytest.raises(ConfigError, match=rf"{section}.{name} expects"):
            Config.from_dict({section: {name: value}})


@pytest.mark.parametrize("section", SECTIONS)
def test_an_unknown_key_lists_every_valid_key_of_its_section(section):
    names = [n for s, n, _ in ALL if s == section]
    with pytest.raises(ConfigError, match=f"unknown key {section}.nope; valid keys of {section}: {', '.join(names)}$"):
        apply_overrides(get_preset("tiny"), [f"{section}.nope=1"])
    with pytest.raises(ConfigError, match=f"valid keys of {section}: {', '.join(names)}$"):
        Config.from_dict({section: {"nope": 1}})


def test_a_config_file_of_the_wrong_shape():
    for raw, message in (([], "a config is a mapping of the sections data, model, optim, train"),
                         ({"model": 3}, "config section model must map keys to values"),
                         ({"modle": {}}, "unknown config section 'modle'; valid: data, model, optim, train")):
        with pytest.raises(ConfigError, match=message):
            Config.from_dict(raw)
    cfg = Config.from_dict({"optim": {"lr": 3}, "data": {"max_seq_len": None}})
    assert cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)  # an int is a float


def test_other_ranges_state_the_valid_values():
    for override, message in [
        ("train.seed=18446744073709551616", r"train.seed must be in \[0, 2\*\*64\)"),
        ("train.threads=1000000", r"train.threads must be in \[0, 1024\] \(0: one per physical core\)"),
        ("optim.lr_drops=0,300", r"optim.lr_drops must be epochs >= 1"),
        ("data.max_seq_len=3", r"data.max_seq_len must be >= data.min_seq_len \(5\)"),
        ("data.max_vocab=1", r"data.max_vocab must be >= 2 or none"),
        ("data.name=", r"data.name must be a corpus name \(ptb, wikitext-2, ptb-char\) or a directory"),
        ("train.precision=fp64", "train.precision must be one of fp32, bf16, fp16"),
        ("optim.optimizer=lbfgs", "optim.optimizer must be one of sgd, adam"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validated(override)
    assert validated("train.seed=18446744073709551615", "train.threads=0").train.seed == 2**64 - 1


@pytest.mark.parametrize("argv, message", [
    (["--set", "model.emb_size=big"], "model.emb_size expects int, got 'big'"),
    (["--set", "optim.lr=nan"], "optim.lr must be a finite number, got nan"),
    (["--set", "data.full_bptt_p=2"], "data.full_bptt_p must be in [0, 1], got 2.0"),
    (["--set", "train.seed=-5"], "train.seed must be in [0, 2**64), got -5"),
    (["--seed", "99999999999999999999999"], "train.seed must be in [0, 2**64)"),
    (["--set", "data.batch_size=0"], "data.batch_size must be > 0, got 0"),
    (["--set", "train.threads=5000"], "train.threads must be in [0, 1024]"),
    (["--preset", "ptb-orignal"], "unknown preset 'ptb-orignal'; valid presets: ptb, ptb-original, wt2"),
])
def test_config_errors_through_the_cli(capsys, tmp_path, argv, message):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", *argv] if "--preset" not in argv else ["train", *argv]
    assert message in cli_error(capsys, *argv, "--out", out)
    assert not out.exists()


def test_nothing_but_config_errors_from_a_bad_json_value():
    """The values json.loads can give, in every field: a ConfigError or a valid config."""
    values = [None, True, 0, -1, 1, 2**70, 0.5, -0.5, math.inf, math.nan, "", "x", [], [1], {}, {"a": 1}]
    for section, name, _ in ALL:
        for value in values:
            try:
                Config.from_dict({section: {name: value}}).validate()
            except ConfigError:
                pass
