"""Export to safetensors + config.json + vocab.txt + a model card, and loading it back
without pickle; plus one end-to-end pass over a really trained tiny run."""

import json
import pickle
import shlex

import pytest
import torch
from helpers import fake_run, train_tiny, write_corpus

from awdlstm import Config, LanguageModel
from awdlstm.cli import main
from awdlstm.config import apply_overrides
from awdlstm.export import train_command
from awdlstm.presets import get_preset

safetensors_torch = pytest.importorskip("safetensors.torch")

LINES = ["the cat sat on the mat", "", "a dog zebra ran", "it was small"]


def export(capsys, run, out):
    assert main(["-q", "export", str(run), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    return out


def forbid_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an export must load without pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_gives_the_same_scores(tmp_path, capsys, monkeypatch, tie):
    run = fake_run(tmp_path / "run", write_corpus(tmp_path / "c"), tie=tie)
    out = export(capsys, run, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "vocab.txt"]
    original = LanguageModel.load(run)
    want = original.score(LINES)
    forbid_pickle(monkeypatch)
    loaded = LanguageModel.load(out)
    got = loaded.score(LINES)
    assert [s.log_prob for s in got.lines] == pytest.approx([s.log_prob for s in want.lines], abs=1e-6)
    assert loaded.generate("the", words=10, seed=3) == original.generate("the", words=10, seed=3)
    # Tied weights are stored once and tied again on load.
    keys = set(safetensors_torch.load_file(str(out / "model.safetensors")))
    assert ("decoder.weight" in keys) == (not tie)
    assert (loaded.model.decoder.weight is loaded.model.encoder.weight) == tie
    assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines() == original.vocab.itos
    assert Config.from_dict(json.loads((out / "config.json").read_text())) == original.config


def test_model_card(tmp_path, capsys):
    run = fake_run(tmp_path / "run", write_corpus(tmp_path / "c"))
    card = (export(capsys, run, tmp_path / "e1") / "README.md").read_text()
    assert "test perplexity**: 20.25" in card and "valid perplexity**: 21.50" in card
    assert "awdlstm train --preset tiny --data" in card and "--set model.emb_size=12" in card
    # Without results.json the best validation check of metrics.jsonl is reported.
    (run / "results.json").unlink()
    (run / "metrics.jsonl").write_text('{"step": 5, "val_loss": 3.2}\n{"step": 9, "val_loss": 2.5}\n')
    card = (export(capsys, run, tmp_path / "e2") / "README.md").read_text()
    assert "valid perplexity**: 12.18" in card and "test perplexity" not in card


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", ["model.weight_p=0.3", "optim.lr_drops=3,5", "data.max_vocab=none"]),
    ("ptb", []),
    ("wt2", ["train.seed=7", "model.tie_weights=false", "data.name=/some/dir"]),
])
def test_train_command_rebuilds_the_config(capsys, preset, overrides):
    cfg = apply_overrides(get_preset(preset), overrides)
    cmd = train_command(cfg)
    assert cmd.startswith(f"awdlstm train --preset {preset}")
    assert main(shlex.split(cmd)[1:] + ["--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == cfg.to_dict()


def test_export_refuses_an_existing_directory(tmp_path, capsys):
    run = fake_run(tmp_path / "run", write_corpus(tmp_path / "c"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["-q", "export", str(run), str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already exists" in err[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "norun").mkdir()
    code = main(["-q", "export", str(tmp_path / "norun"), str(tmp_path / "new")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no best.pt" in err[0] and not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]  # no half-written export


def test_damaged_export(tmp_path, capsys):
    run = fake_run(tmp_path / "run", write_corpus(tmp_path / "c"))
    out = export(capsys, run, tmp_path / "e")
    (out / "model.safetensors").write_bytes(b"garbage")
    code = main(["-q", "score", str(out), str(tmp_path / "c" / "test.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "damaged" in err[0]


@pytest.mark.slow
@pytest.mark.corpus
def test_pipeline_on_a_trained_tiny_run(tmp_path, small_ptb, capsys):
    """Train 100 steps on real PTB text, then cache, score, generate and export it."""
    run = train_tiny(tmp_path / "run", small_ptb, "--max-steps", "100")
    capsys.readouterr()
    assert main(["-q", "evaluate", str(run), "--split", "test", "--batch-size", "1", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["-q", "cache", str(run), "--json"]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert cached["model_perplexity"] == pytest.approx(plain["perplexity"], rel=1e-5)
    assert cached["perplexity"] < cached["model_perplexity"]  # real text repeats words: the cache helps
    lines = (small_ptb / "test.txt").read_text().splitlines()[:20]
    out = export(capsys, run, tmp_path / "export")
    a, b = LanguageModel.load(run).score(lines), LanguageModel.load(out).score(lines)
    assert b.total.log_prob == pytest.approx(a.total.log_prob, abs=1e-4)
    assert "valid perplexity" in (out / "README.md").read_text()  # from metrics.jsonl
    text = LanguageModel.load(out).generate("the company", words=20, seed=0)
    assert text == LanguageModel.load(run).generate("the company", words=20, seed=0)
