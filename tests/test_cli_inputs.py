"""Bad command lines end with one line, exit status 2, and nothing written."""

from __future__ import annotations

import json

import helpers
import pytest
from helpers import write_corpus

from awdlstm.presets import tiny


def run_cli(capsys, *argv):
    code, _, err = helpers.run_cli(capsys, *argv)
    return code, err


def train_small(capsys, corpus, out, *extra):
    return run_cli(capsys, "train", "--preset", "tiny", "--data", corpus, "--out", out,
                   "--set", "model.emb_size=8", "--set", "model.hidden_size=8", "--set", "model.num_layers=1",
                   "--set", "data.bptt=8", "--set", "data.batch_size=4", "--no-eval", *extra)


def test_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for resume in ([], ["--resume"]):
        code, err = run_cli(capsys, "train", "--preset", "tiny", "--out", target, *resume)
        assert code == 2 and len(err) == 1
        assert err[0] == f"error: {target} is a file, not a run directory; choose another --out"
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("flag, value, message", [
    ("--max-minutes", "-1", "--max-minutes must be a number > 0, got -1.0"),
    ("--max-minutes", "0", "--max-minutes must be a number > 0, got 0.0"),
    ("--max-minutes", "nan", "--max-minutes must be a number > 0, got nan"),
    ("--max-epochs", "0", "--max-epochs must be an integer >= 1, got 0"),
    ("--max-steps", "-5", "--max-steps must be an integer >= 1, got -5"),
])
def test_limits_out_of_range(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    for command in (["train", "--preset", "tiny", "--out", out], ["finetune", tmp_path / "nothing"],
                    ["sweep", "--preset", "tiny", "--seeds", "1,2", "--out", out]):
        if command[0] == "finetune" and flag == "--max-steps":
            continue  # finetune stops on its own criterion; it has no step limit
        code, err = run_cli(capsys, *command, flag, value)
        assert code == 2 and err == [f"error: {message}"], (command, err)
    assert not out.exists()


def test_preset_on_resume_must_be_the_runs(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c")
    out = tmp_path / "run"
    code, _ = train_small(capsys, corpus, out, "--max-steps", 3)
    assert code == 0
    before = (out / "last.pt").read_bytes()
    # Another preset: refused, naming the first field that differs.
    code, err = run_cli(capsys, "train", "--preset", "ptb", "--out", out, "--resume", "--max-steps", 6)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --resume continues with the run's saved config, which is not preset ptb (")
    assert err[0].endswith("); drop --preset")
    # The run's own preset, but the run changed fields with --set: refused as well.
    code, err = run_cli(capsys, "train", "--preset", "tiny", "--out", out, "--resume", "--max-steps", 6)
    assert code == 2 and "data.batch_size is 4 in the run, 20 in the preset" in err[0]
    # A bad limit is still refused first.
    code, err = run_cli(capsys, "train", "--preset", "ptb", "--out", out, "--resume", "--max-minutes", "-1")
    assert code == 2 and err == ["error: --max-minutes must be a number > 0, got -1.0"]
    assert (out / "last.pt").read_bytes() == before
    # Without --preset the run continues.
    code, _ = run_cli(capsys, "train", "--out", out, "--resume", "--max-steps", 6, "--no-eval")
    assert code == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_preset_on_resume_that_matches_continues(tmp_path, capsys, monkeypatch):
    corpus = write_corpus(tmp_path / "c")
    out = tmp_path / "run"
    # A run made from a preset as it is (only where the data lives differs) resumes with it.
    small = tiny()
    small.model.emb_size = small.model.hidden_size = 8
    small.model.num_layers, small.data.bptt, small.data.batch_size = 1, 8, 4
    monkeypatch.setitem(__import__("awdlstm.presets", fromlist=["PRESETS"]).PRESETS, "small", lambda: small)
    code, _ = run_cli(capsys, "train", "--preset", "small", "--data", corpus, "--out", out, "--max-steps", 3,
                      "--no-eval")
    assert code == 0
    code, err = run_cli(capsys, "train", "--preset", "small", "--out", out, "--resume", "--max-steps", 5, "--no-eval")
    assert code == 0, err
