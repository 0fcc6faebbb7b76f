"""Scoring lines (padded batches against one line at a time and the bare model) and
sampling text (seeded, top-k, top-p), through the API and the CLI."""

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import cli_error, fake_run, write_corpus

from awdlstm import LanguageModel
from awdlstm.cli import main
from awdlstm.errors import ConfigError, DataError
from awdlstm.generate import detokenize, encode_prompt, sample_next
from awdlstm.score import score_lines

LINES = ["the cat sat on the mat", "", "a dog ran", "zebra the quokka", "it was a big red table and it was small",
         "the", "and and and and and and and and and and and and and and"]


@pytest.fixture
def lm(tmp_path):
    return LanguageModel.load(fake_run(tmp_path / "run", write_corpus(tmp_path / "c")))


@pytest.fixture
def run(tmp_path):
    return fake_run(tmp_path / "run", write_corpus(tmp_path / "c"))


def line_alone(lm, line):
    """The model on one line by hand: <eos> then the words in, the words then <eos> out."""
    tokens = line.split() + ["<eos>"]
    ids = torch.tensor([lm.vocab.stoi.get(w, lm.vocab.unk_id) for w in tokens])
    inputs = torch.cat([torch.tensor([lm.vocab.eos_id]), ids[:-1]])
    with torch.no_grad():
        logits = lm.model.decoder(lm.model(inputs[:, None]).dropped_output)[:, 0]
    return -F.cross_entropy(logits, ids, reduction="sum").item()


def test_batched_scores_equal_one_at_a_time_and_the_bare_model(lm):
    batched = score_lines(lm.model, lm.vocab, LINES, batch_size=4)
    for i, line in enumerate(LINES):
        alone = score_lines(lm.model, lm.vocab, [line], batch_size=1).lines[0]
        assert batched.lines[i].log_prob == pytest.approx(alone.log_prob, abs=1e-5)
        assert batched.lines[i].log_prob == pytest.approx(line_alone(lm, line), abs=1e-5)
    everything = score_lines(lm.model, lm.vocab, LINES, batch_size=100)
    for a, b in zip(everything.lines, batched.lines):
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-5)


def test_long_lines_run_in_windows(lm):
    """A line longer than the scorer's time window gives the same score in windows."""
    from awdlstm.score import encode_line, sequence_log_probs

    ids, _ = encode_line(lm.vocab, " ".join(["the cat sat"] * 40), "x")
    (whole,) = sequence_log_probs(lm.model, [ids], seq_len=1000)
    (windowed,) = sequence_log_probs(lm.model, [ids], seq_len=7)
    assert windowed == pytest.approx(whole, abs=1e-4)


def test_counts_totals_and_perplexity(lm):
    report = lm.score(LINES)
    assert [s.tokens for s in report.lines] == [len(line.split()) + 1 for line in LINES]
    assert report.lines[1].tokens == 1  # an empty line is <eos> alone
    assert [s.unknown for s in report.lines] == [0, 0, 0, 2, 0, 0, 0]
    total = report.total
    assert total.tokens == sum(s.tokens for s in report.lines) and total.unknown == 2
    assert total.log_prob == pytest.approx(sum(s.log_prob for s in report.lines))
    assert total.perplexity == pytest.approx(math.exp(-total.log_prob / total.tokens))
    assert report.lines[0].bits == pytest.approx(-report.lines[0].log_prob / math.log(2))
    assert lm.score("a dog ran\nthe").total.tokens == 6


def test_perplexity_reads_the_text_as_one_stream(lm):
    text = "the cat sat\na dog ran\n"
    ids = [lm.vocab.stoi[w] for w in "the cat sat <eos> a dog ran <eos>".split()]
    inputs = torch.tensor([lm.vocab.eos_id] + ids[:-1])
    with torch.no_grad():
        loss = F.cross_entropy(lm.model.decoder(lm.model(inputs[:, None]).dropped_output)[:, 0],
                               torch.tensor(ids)).item()
    assert lm.perplexity(text) == pytest.approx(math.exp(loss), rel=1e-5)


def test_score_cli(run, tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text("the cat\n\nzebra dog\n", encoding="utf-8")
    assert main(["-q", "score", str(run), str(f), "--json", "--batch-size", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["tokens"] for r in res["lines"]] == [3, 1, 3] and res["total"]["unknown"] == 1
    assert set(res["total"]) == {"log_prob", "bits", "tokens", "unknown", "perplexity"}
    assert main(["-q", "score", str(run), str(f)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 5 and out[0].split() == ["line", "tokens", "unk", "log_prob", "bits", "perplexity"]
    assert out[-1].split()[:3] == ["total", "7", "1"]


def test_score_bad_input(run, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the cat\nsat \xff\xfe on\n")
    assert "bad.txt, line 2: bytes that are not UTF-8" in cli_error(capsys, "score", run, bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "no lines to score" in cli_error(capsys, "score", run, empty)
    assert "missing.txt: no such file" in cli_error(capsys, "score", run, tmp_path / "missing.txt")
    good = tmp_path / "good.txt"
    good.write_text("the\n")
    assert "--batch-size must be >= 1" in cli_error(capsys, "score", run, good, "--batch-size", 0)
    (tmp_path / "norun").mkdir()
    assert "no best.pt" in cli_error(capsys, "score", tmp_path / "norun", good)


def test_score_without_unk_names_the_line(tmp_path, capsys):
    run = fake_run(tmp_path / "run", write_corpus(tmp_path / "c", unk=False))
    f = tmp_path / "in.txt"
    f.write_text("the cat\nthe zebra\n")
    msg = cli_error(capsys, "score", run, f)
    assert "in.txt, line 2: word 'zebra' is not in the vocabulary" in msg


# ---------------------------------------------------------------------------- generation


def test_same_seed_same_text(lm):
    a = lm.generate("the cat", words=30, seed=5)
    assert a == lm.generate("the cat", words=30, seed=5)
    others = {lm.generate("the cat", words=30, seed=s) for s in range(6, 10)}
    assert others - {a}  # another seed, another text
    assert len(a.replace("\n", " ").split()) <= 30


def test_top_k_one_and_small_top_p_are_greedy(lm):
    ids = encode_prompt(lm.vocab, "the")
    want = []
    state = None
    inputs = ids[:, None]
    with torch.no_grad():
        for _ in range(8):
            out = lm.model(inputs, state)
            state = out.state
            nxt = int(lm.model.decoder(out.dropped_output)[-1, 0].argmax())
            want.append(lm.vocab.itos[nxt])
            inputs = torch.tensor([[nxt]])
    greedy = detokenize(want)
    assert lm.generate("the", words=8, top_k=1, seed=1) == greedy
    assert lm.generate("the", words=8, top_p=1e-9, seed=2) == greedy
    assert lm.generate("the", words=8, temperature=1e-4, seed=3) == greedy


def test_sample_next_respects_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = torch.Generator().manual_seed(0)
    assert {sample_next(logits, gen, top_k=2) for _ in range(200)} == {0, 1}
    assert {sample_next(logits, gen, top_p=0.7) for _ in range(200)} == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert {sample_next(logits, gen, top_p=0.5) for _ in range(100)} == {0}


def test_detokenize_turns_eos_into_line_breaks():
    assert detokenize(["a", "b", "<eos>", "c", "<eos>"]) == "a b\nc\n"
    assert detokenize([]) == ""


def test_prompts(lm, caplog):
    assert lm.generate("", words=5, seed=0)  # an empty prompt starts from <eos>
    with caplog.at_level(logging.WARNING):
        lm.generate("the zebra quokka", words=3, seed=0)
    assert "read as <unk>: zebra quokka" in caplog.text


def test_generate_cli(run, capsys):
    argv = ["-q", "generate", str(run), "--prompt", "the cat", "--words", "12", "--seed", "4", "--top-k", "5"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("the cat")


def test_generate_bad_input(run, tmp_path, capsys):
    assert "--words must be >= 1" in cli_error(capsys, "generate", run, "--words", 0)
    assert "--temperature must be > 0" in cli_error(capsys, "generate", run, "--temperature", 0)
    assert "--top-k must be >= 1" in cli_error(capsys, "generate", run, "--top-k", 0)
    assert "--top-p must be in (0, 1]" in cli_error(capsys, "generate", run, "--top-p", 1.5)
    no_unk = fake_run(tmp_path / "run2", write_corpus(tmp_path / "c2", unk=False))
    msg = cli_error(capsys, "generate", no_unk, "--prompt", "zebra")
    assert "prompt: word 'zebra' is not in the vocabulary, which has no <unk>" in msg
    (tmp_path / "norun").mkdir()
    assert "no best.pt" in cli_error(capsys, "generate", tmp_path / "norun")


def test_api_rejects_bad_values(lm, tmp_path):
    with pytest.raises(ConfigError, match="--words must be >= 1"):
        lm.generate("the", words=0)
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        lm.score(["the"], batch_size=0)
    no_unk = LanguageModel.load(fake_run(tmp_path / "run2", write_corpus(tmp_path / "c2", unk=False)))
    with pytest.raises(DataError, match="line 1: word 'zebra'"):
        no_unk.score(["zebra"])
