"""`awdlstm train --tensorboard`: the scalars of each check written as TensorBoard events."""

import json
import math
import sys

import pytest
from helpers import write_corpus

from awdlstm.cli import main
from awdlstm.errors import ConfigError
from awdlstm.runs import train_run

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SMALL = ["--preset", "tiny", "--no-eval", "--set", "model.emb_size=8", "--set", "model.hidden_size=12",
         "--set", "model.num_layers=2", "--set", "optim.check_every=4", "--set", "data.bptt=10"]


def checks(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r and not r.get("final")]


def scalars(log_dir, tag):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc, [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_events_match_metrics_and_resume_appends(tmp_path):
    corpus = write_corpus(tmp_path / "c", lines=600)
    run = tmp_path / "run"
    base = ["-q", "train", *SMALL, "--data", str(corpus), "--out", str(run)]
    assert main(base + ["--max-steps", "9", "--tensorboard"]) == 0
    assert main(["-q", "train", "--out", str(run), "--resume", "--max-steps", "17", "--no-eval", "--tensorboard"]) == 0
    rows = checks(run)
    assert [r["step"] for r in rows] == [4, 8, 12, 16]  # two sessions
    log_dir = run / "tensorboard"
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # the resumed session appended a file
    acc, val = scalars(log_dir, "valid/perplexity")
    assert [s for s, _ in val] == [r["step"] for r in rows]
    assert [v for _, v in val] == pytest.approx([r["val_ppl"] for r in rows], rel=1e-6)
    _, val_loss = scalars(log_dir, "valid/loss")
    assert [v for _, v in val_loss] == pytest.approx([r["val_loss"] for r in rows], rel=1e-6)
    _, train = scalars(log_dir, "train/perplexity")
    assert [v for _, v in train] == pytest.approx([math.exp(r["train_loss"]) for r in rows], rel=1e-5)
    _, lr = scalars(log_dir, "lr")
    assert [v for _, v in lr] == pytest.approx([r["lr"] for r in rows])
    _, tok = scalars(log_dir, "tokens_per_s")
    assert [v for _, v in tok] == pytest.approx([r["tokens_per_s"] for r in rows], rel=1e-6)
    _, avg = scalars(log_dir, "averaging")
    assert [v for _, v in avg] == [1.0 if r["phase"] == "asgd" else 0.0 for r in rows]
    hist = [t for t in acc.Tags()["histograms"] if t.startswith("weight_row_norms/")]
    assert any("encoder" in t or "embed" in t for t in hist) and len(hist) >= 3
    assert [e.step for e in acc.Histograms(hist[0])] == [r["step"] for r in rows]


def test_a_custom_directory_and_the_missing_package_error(tmp_path, monkeypatch, capsys):
    corpus = write_corpus(tmp_path / "c", lines=300)
    tb = tmp_path / "tb"
    assert main(["-q", "train", *SMALL, "--data", str(corpus), "--out", str(tmp_path / "run"),
                 "--max-steps", "4", "--tensorboard", str(tb)]) == 0
    assert list(tb.glob("events.out.tfevents.*")) and not (tmp_path / "run" / "tensorboard").exists()
    _, val = scalars(tb, "valid/perplexity")
    assert [s for s, _ in val] == [4]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were missing
    with pytest.raises(ConfigError, match=r"awdlstm\[tensorboard\]"):
        train_run(None, tmp_path / "other", tensorboard=True)
    capsys.readouterr()
    assert main(["-q", "train", *SMALL, "--data", str(corpus), "--out", str(tmp_path / "r2"), "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pip install" in err
    assert not (tmp_path / "r2").exists()


def test_sweep_passes_tensorboard_to_each_run(tmp_path, monkeypatch):
    import awdlstm.cli

    seen = {}

    def fake_run_sweep(out, preset, jobs, common, *, parallel, device, limits):
        seen["limits"] = limits
        return {"runs": [], "interrupted": None}

    monkeypatch.setattr(awdlstm.cli, "run_sweep", fake_run_sweep)
    assert main(["-q", "sweep", "--preset", "tiny", "--out", str(tmp_path / "s"), "--seeds", "1,2",
                 "--max-steps", "3", "--tensorboard"]) == 0
    assert seen["limits"] == ["--max-steps", "3", "--tensorboard"]


def test_a_rollback_hides_the_abandoned_steps(tmp_path):
    import torch

    from awdlstm.tensorboard import TensorBoardObserver

    obs = TensorBoardObserver(tmp_path / "tb", torch.nn.Linear(3, 2))

    def rec(step, val_loss):
        return {"step": step, "val_loss": val_loss, "val_ppl": math.exp(val_loss), "train_loss": val_loss + 0.1,
                "lr": 30.0, "phase": "sgd", "tokens_per_s": 10.0}

    for step, loss in ((4, 5.0), (8, 4.0), (12, 9.0)):
        obs.on_check(rec(step, loss))
    obs.on_check(rec(8, 4.5))  # rolled back to the checkpoint of step 4, then checked step 8 again
    obs.close()
    acc, val = scalars(tmp_path / "tb", "valid/loss")
    assert val == [(4, 5.0), (8, 4.5)]
    assert [e.step for e in acc.Histograms("weight_row_norms/weight")] == [4, 8]
