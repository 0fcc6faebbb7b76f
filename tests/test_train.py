"""End-to-end runs of the CLI on real PTB text (cut to train in seconds)."""

import json
import math

import pytest
import torch
from helpers import metrics, train_tiny

from awdlstm.cli import main
from awdlstm.config import Config

pytestmark = pytest.mark.corpus


@pytest.mark.slow
def test_tiny_run_lowers_validation_perplexity_and_writes_the_run(tmp_path, small_ptb, capsys):
    run = train_tiny(tmp_path / "run", small_ptb, "--set", "train.epochs=3")
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_ppl"] < rows[0]["val_ppl"] < 2000  # uniform would be ~ vocabulary size
    for key in ("train_loss", "val_loss", "val_ppl", "lr", "phase", "seconds", "tokens_per_s"):
        assert key in rows[0]
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.model.emb_size == 32
    for name in ("best.pt", "last.pt"):
        blob = torch.load(run / name, weights_only=True)  # state dicts and plain values only
        assert blob["format"] == "awdlstm-checkpoint" and "model" in blob
    capsys.readouterr()
    assert main(["-q", "evaluate", str(run), "--split", "valid", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"split", "tokens", "loss", "perplexity"} <= set(res)
    assert res["split"] == "valid" and res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    assert res["perplexity"] == pytest.approx(min(r["val_ppl"] for r in rows), rel=1e-4)


@pytest.mark.slow
def test_resume_after_an_epoch_equals_straight_through(tmp_path, small_ptb):
    straight = train_tiny(tmp_path / "straight", small_ptb, "--max-epochs", "2")
    split = train_tiny(tmp_path / "split", small_ptb, "--max-epochs", "1")
    assert len(metrics(split)) == 1
    assert main(["-q", "train", "--out", str(split), "--resume", "--max-epochs", "2", "--no-eval"]) == 0
    a, b = metrics(straight), metrics(split)
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


@pytest.mark.slow
def test_resume_mid_epoch_equals_straight_through(tmp_path, small_ptb):
    """Stopped inside an epoch (position, hidden state and generators saved), with averaging
    already running, the resumed run continues exactly."""
    extra = ["--set", "optim.average_from_epoch=0.5", "--max-epochs", "2"]
    straight = train_tiny(tmp_path / "straight", small_ptb, *extra)
    split = train_tiny(tmp_path / "split", small_ptb, *extra, "--max-steps", "230")
    assert torch.load(split / "last.pt", weights_only=True)["progress"]["in_epoch"]
    assert main(["-q", "train", "--out", str(split), "--resume", "--max-epochs", "2", "--no-eval"]) == 0
    a, b = metrics(straight), [r for r in metrics(split) if not r.get("final")]
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
    assert a[-1]["phase"] == "asgd"


@pytest.mark.slow
def test_ntasgd_switches_and_finetune_runs(tmp_path, small_ptb):
    # An absurd lr makes validation worse at once, so the trigger (n = 2 in tiny) fires.
    run = train_tiny(tmp_path / "run", small_ptb, "--max-epochs", "4", "--set", "optim.check_every=40",
                "--set", "optim.lr=60")
    phases = [r["phase"] for r in metrics(run)]
    assert "asgd" in phases and phases[0] == "sgd"
    assert phases[phases.index("asgd"):] == ["asgd"] * (len(phases) - phases.index("asgd"))
    assert main(["-q", "finetune", str(run), "--max-epochs", "2", "--no-eval"]) == 0
    rows = metrics(run / "finetune")
    assert rows and all(r["phase"] == "asgd" for r in rows)
    best = torch.load(run / "finetune" / "best.pt", weights_only=True)
    assert best["val_loss"] <= torch.load(run / "best.pt", weights_only=True)["val_loss"]


@pytest.mark.slow
def test_compile_trains_the_step_and_saves_the_plain_model(tmp_path, small_ptb, monkeypatch):
    """--compile wraps only what the step calls; checkpoints keep the plain state-dict keys.
    (Dynamo's eager backend: the integration is tested, not Inductor's code generation.)"""
    compiled = []
    real = torch.compile

    def eager_compile(model, **kwargs):
        compiled.append(model)
        return real(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    run = train_tiny(tmp_path / "run", small_ptb, "--compile", "--max-steps", "6", "--set", "optim.check_every=3")
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "AWDLSTM"
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
    keys = list(torch.load(run / "last.pt", weights_only=True)["model"])
    assert keys and not any("_orig_mod" in k for k in keys)
    assert all(math.isfinite(r["val_loss"]) for r in metrics(run))


@pytest.mark.slow
def test_only_training_changes_the_processes_malloc(tmp_path, small_ptb):
    """keep_freed_memory is process-wide: training sets it on the CPU, the API does not."""
    import subprocess
    import sys

    run = train_tiny(tmp_path / "run", small_ptb, "--max-steps", "2")
    probe = ("import sys, awdlstm.runtime as rt; from awdlstm import LanguageModel; from awdlstm.runs import train_run;"
             "LanguageModel.load(sys.argv[1]); print(rt._kept);"
             "train_run(None, sys.argv[1], resume=True, max_steps=3, final_eval=False); print(rt._kept)")
    out = subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
