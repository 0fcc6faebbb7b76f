"""`awdlstm plot`: learning curves from metrics.jsonl of runs and sweeps, written as a PNG."""

import json
import math
import struct
import sys

import pytest

from awdlstm.cli import main
from awdlstm.errors import ConfigError
from awdlstm.plot import averaging_start, collect, epoch_axis, hours_axis, plot_runs, read_metrics

pytest.importorskip("matplotlib")


def write_run(run, *, epochs=3, per_epoch=50, check_every=20, lr=30.0, switch_at=None, seed=0):
    """A metrics.jsonl as training writes it: checks, an event line, a final line, a torn line."""
    run.mkdir(parents=True, exist_ok=True)
    lines, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(per_epoch):
            step += 1
            if step % check_every == 0:
                loss = 6.5 - 0.4 * math.log(step) + 0.01 * seed
                phase = "asgd" if switch_at is not None and step >= switch_at else "sgd"
                lines.append({"epoch": epoch, "step": step, "train_loss": loss + 0.2, "val_loss": loss,
                              "val_ppl": round(math.exp(loss), 4), "lr": lr if epoch < 3 else lr / 4, "phase": phase,
                              "averaged": 0, "seconds": 12.5, "tokens_per_s": 1000.0, "best": True})
    lines.insert(2, {"event": "nonfinite", "what": "the training loss", "at_step": 41, "step": 40, "epoch": 1})
    lines.append({"epoch": epochs, "step": step, "train_loss": 5.0, "val_loss": 4.9, "val_ppl": 134.3, "lr": lr,
                  "phase": "sgd", "averaged": 0, "final": True, "best": False})
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 9, "ste'
    (run / "metrics.jsonl").write_text(text)
    return run


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_read_metrics_splits_checks_events_and_final(tmp_path):
    run = write_run(tmp_path / "run", switch_at=60)
    m = read_metrics(run)
    assert [c["step"] for c in m.checks] == [20, 40, 60, 80, 100, 120, 140]
    assert [e["event"] for e in m.events] == ["nonfinite"]
    assert m.final is not None and m.final["val_ppl"] == 134.3
    assert averaging_start(m.checks) == 2
    assert hours_axis(m.checks)[-1] == pytest.approx(7 * 12.5 / 3600)


def test_epoch_axis_is_fractional_and_stays_inside_each_checks_epoch():
    checks = [{"epoch": 1 + (s - 1) // 50, "step": s} for s in range(20, 160, 20)]
    x = epoch_axis(checks)  # epochs of 50 steps, checked every 20
    assert x[:2] == pytest.approx([0.4, 0.8])  # epoch 1 ends halfway between steps 40 and 60
    assert all(abs(v - c["step"] / 50) < 0.3 for c, v in zip(checks, x))
    assert all(c["epoch"] - 1 <= v <= c["epoch"] for c, v in zip(checks, x)) and x == sorted(x)
    assert epoch_axis([{"epoch": e, "step": 37 * e} for e in (1, 2, 3)]) == [1.0, 2.0, 3.0]  # end-of-epoch checks
    assert epoch_axis([c for c in checks if c["epoch"] == 1]) is None  # no second epoch yet


def test_plot_of_one_run_writes_a_png_of_the_expected_size(tmp_path, capsys):
    run = write_run(tmp_path / "run", switch_at=60)
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(run), "--out", str(out)]) == 0
    assert png_size(out) == (1200, 800)
    assert str(out) in capsys.readouterr().out
    assert main(["plot", str(run), "--out", str(out), "--dpi", "50"]) == 0
    assert png_size(out) == (600, 400)


def test_several_runs_are_labelled_by_the_shortest_distinct_path(tmp_path):
    a = write_run(tmp_path / "x" / "base", seed=0)
    b = write_run(tmp_path / "y" / "base", seed=1, lr=20.0)
    c = write_run(tmp_path / "y" / "other", seed=2, epochs=1)  # still in epoch 1: plotted by steps
    curves = collect([a, b, c])
    assert [cv.label for cv in curves] == ["x/base", "y/base", "y/other"]
    out = plot_runs([a, b, c], tmp_path / "c.png")
    assert png_size(out) == (1200, 800)


def test_a_sweep_plots_its_runs_labelled_by_the_overrides_that_differ(tmp_path):
    sweep = tmp_path / "sweep"
    runs = [{"name": "lr=10", "overrides": ["optim.lr=10", "train.seed=1"]},
            {"name": "lr=20", "overrides": ["optim.lr=20", "train.seed=1"]},
            {"name": "lr=30", "overrides": ["optim.lr=30", "train.seed=1"]}]
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"preset": "tiny", "common": [], "runs": runs}))
    for i, r in enumerate(runs[:2]):  # the third has not started
        write_run(sweep / r["name"], seed=i)
    assert [cv.label for cv in collect([sweep])] == ["lr=10", "lr=20"]
    out = tmp_path / "sweep.png"
    assert main(["plot", str(sweep), "--out", str(out)]) == 0
    assert png_size(out) == (1200, 800)


def test_missing_matplotlib_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'awdlstm\[plot\]'"):
        plot_runs([run], tmp_path / "c.png")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "awdlstm[plot]" in err and err.count("\n") == 1
    assert not (tmp_path / "c.png").exists()


def test_a_run_without_metrics_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "no metrics.jsonl" in err and err.count("\n") == 1
    (empty / "metrics.jsonl").write_text('{"event": "nonfinite", "step": 0}\n')
    assert main(["plot", str(empty), "--out", str(tmp_path / "c.png")]) == 2
    assert "no validation checks" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.png")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
