"""Every command on a QRNN run (model.rnn = qrnn), end to end on a small corpus."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import write_corpus

from awdlstm import LanguageModel
from awdlstm.cli import main
from awdlstm.errors import ConfigError
from awdlstm.model import AWDLSTM
from awdlstm.presets import get_preset, tiny
from awdlstm.qrnn import QRNNLayer

QRNN = ["--preset", "tiny", "--set", "model.rnn=qrnn", "--set", "model.emb_size=16", "--set", "model.hidden_size=24",
        "--set", "data.batch_size=8", "--set", "data.bptt=10", "--set", "optim.check_every=8", "--no-eval"]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("qrnn") / "c", lines=400)


def train(out, corpus, *extra):
    assert main(["-q", "train", *QRNN, "--data", str(corpus), "--out", str(out), *extra]) == 0
    return out


def test_the_model_stacks_qrnn_layers_as_the_original():
    cfg = tiny().model
    cfg.rnn, cfg.num_layers = "qrnn", 3
    model = AWDLSTM(cfg, 50)
    assert all(isinstance(r, QRNNLayer) for r in model.rnns)
    assert [r.window for r in model.rnns] == [2, 1, 1]
    assert [(r.input_size, r.hidden_size) for r in model.rnns] == [(32, 64), (64, 64), (64, 32)]
    assert all(r.weight_p == cfg.weight_p for r in model.rnns)
    state = model.init_state(3)
    assert [tuple(t.shape) for t in state[0]] == [(1, 3, 64), (1, 3, 32)]  # c, and the last input
    assert [tuple(t.shape) for t in state[1]] == [(1, 3, 64), (0, 3, 64)]


def test_bad_qrnn_settings_are_one_line_errors(tmp_path, capsys):
    for override, message in (("model.qrnn_window=0", "model.qrnn_window must be > 0, got 0"),
                              ("model.zoneout_p=1", "model.zoneout_p must be in [0, 1), got 1.0"),
                              ("model.zoneout_p=-0.1", "model.zoneout_p must be in [0, 1), got -0.1"),
                              ("model.rnn=gru", "model.rnn must be one of lstm, qrnn, lstm-cell; got 'gru'")):
        assert main(["-q", "train", "--preset", "tiny", "--set", override, "--out", str(tmp_path / "r")]) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"
        with pytest.raises(ConfigError):
            from awdlstm.config import apply_overrides
            apply_overrides(tiny(), [override]).validate()
    assert not (tmp_path / "r").exists()


def test_presets_of_the_original_readme():
    ptb, wt2 = get_preset("ptb-qrnn"), get_preset("wt2-qrnn")
    assert (ptb.model.rnn, ptb.model.num_layers, ptb.model.hidden_size, ptb.data.batch_size) == ("qrnn", 4, 1550, 20)
    assert (ptb.optim.clip, ptb.model.weight_p, ptb.train.seed, ptb.train.epochs) == (0.2, 0.1, 9001, 550)
    assert (ptb.train.finetune_seed, ptb.train.finetune_epochs) == (404, 300)
    assert (wt2.data.batch_size, wt2.model.hidden_p, wt2.train.seed, wt2.train.epochs) == (40, 0.2, 4002, 500)
    for name in ("ptb-qrnn", "wt2-qrnn", "wt103-qrnn", "demo-qrnn"):
        get_preset(name).validate()


@pytest.mark.slow
def test_every_command_on_a_qrnn_run(tmp_path, corpus, capsys):
    run = train(tmp_path / "run", corpus, "--max-epochs", "2")
    rows = metrics(run)
    assert rows[-1]["val_ppl"] < rows[0]["val_ppl"]
    # Resume inside an epoch equals a run that never stopped (the carried input included).
    split = train(tmp_path / "split", corpus, "--max-epochs", "2", "--max-steps", "13")
    assert torch.load(split / "last.pt", weights_only=True)["progress"]["in_epoch"]
    assert main(["-q", "train", "--out", str(split), "--resume", "--max-epochs", "2", "--no-eval"]) == 0
    assert [r["val_loss"] for r in rows if not r.get("final")] == [
        r["val_loss"] for r in metrics(split) if not r.get("final")]
    capsys.readouterr()
    assert main(["-q", "finetune", str(run), "--max-epochs", "1", "--no-eval"]) == 0
    assert all(r["phase"] == "asgd" for r in metrics(run / "finetune"))
    capsys.readouterr()
    assert main(["-q", "evaluate", str(run), "--split", "test", "--json"]) == 0
    static = json.loads(capsys.readouterr().out)
    assert main(["-q", "cache", str(run), "--window", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_perplexity"] == pytest.approx(static["perplexity"], rel=1e-5)
    assert main(["-q", "generate", str(run), "--words", "12", "--seed", "3"]) == 0
    assert len(capsys.readouterr().out.split()) >= 1
    (tmp_path / "lines.txt").write_text("the cat sat\na dog ran on the mat\n")
    assert main(["-q", "score", str(run), str(tmp_path / "lines.txt"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert len(scores["lines"]) == 2
    assert main(["-q", "export", str(run), str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "QRNN layers" in card and "model.rnn=qrnn" in card
    lm = LanguageModel.load(tmp_path / "export")
    assert isinstance(lm.model.rnns[0], QRNNLayer)
    assert lm.score(["the cat sat", "a dog ran on the mat"]).total.log_prob == pytest.approx(
        sum(s["log_prob"] for s in scores["lines"]), rel=1e-5)


@pytest.mark.slow
def test_a_sweep_of_qrnn_runs(tmp_path, corpus, capsys):
    sets = [a for a in QRNN if a != "--no-eval"][2:]
    argv = ["-q", "sweep", "--preset", "tiny", *sets, "--data", str(corpus), "--seeds", "1,2",
            "--out", str(tmp_path / "sweep"), "--max-steps", "5", "--no-eval"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["seed1", "seed2"]
    for r in summary["runs"]:
        assert json.loads((tmp_path / "sweep" / r["name"] / "config.json").read_text())["model"]["rnn"] == "qrnn"
