"""The run directory's format (rundir.py) and loading models without side effects (loading.py)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import torch
from helpers import fake_run, write_corpus

import awdlstm
from awdlstm import LanguageModel
from awdlstm.rundir import RunDir, StopReason
from awdlstm.runs import evaluate_checkpoint


def test_records_checks_trim_and_results(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert run.records() == [] and run.results() is None and not run.finished() and not run.holds_run()
    run.append({"epoch": 1, "step": 10, "val_loss": 5.0, "val_ppl": 148.4})
    run.append({"event": "nonfinite", "step": 12})
    run.append({"epoch": 1, "step": 20, "val_loss": 4.0, "val_ppl": 54.6})
    with open(run.metrics_file, "a") as f:
        f.write('{"epoch": 1, "step": 3')  # a torn last line
    assert [r["step"] for r in run.records()] == [10, 12, 20]
    assert [r["step"] for r in run.checks()] == [10, 20]
    assert run.best_metrics()["valid"]["step"] == 20 and run.best_metrics()["source"] == "metrics.jsonl"
    assert run.trim(12) == 2  # the check of step 20 and the torn line
    assert [r["step"] for r in run.records()] == [10, 12]
    run.write_results({"valid": {"perplexity": 50.0}, "stopped": StopReason.TIME_LIMIT.value})
    assert run.holds_run() and not run.finished()
    assert run.best_metrics()["source"] == "results.json"
    run.write_results({"stopped": StopReason.CONVERGED.value})
    assert run.finished()


def test_stop_reasons_are_their_words():
    assert json.dumps({"stopped": StopReason.MAX_STEPS}) == '{"stopped": "max steps"}'
    assert f"{StopReason.TIME_LIMIT}" == "time limit" and StopReason("finished") is StopReason.FINISHED
    assert [r.complete for r in StopReason] == [True, True, False, False, False, False]


def test_loading_a_model_changes_no_process_wide_setting(tmp_path):
    run = fake_run(tmp_path / "run", write_corpus(tmp_path / "c"))
    before = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(1)
    try:
        lm = LanguageModel.load(run)
        lm.score(["the cat sat"])
        evaluate_checkpoint(run, "valid")
        assert torch.get_num_threads() == 1 and torch.backends.cudnn.benchmark == before[1]
    finally:
        torch.set_num_threads(before[0])


def test_lower_layers_do_not_import_upward():
    """api.py is the top of the library: nothing imports it (but the package and the CLI), and
    export and the API share loading.py instead of importing each other."""
    src = Path(awdlstm.__file__).parent
    users = {}
    for path in src.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        users[path.stem] = names
    assert {m for m, names in users.items() if "api" in names} <= {"__init__", "cli"}
    assert "export" not in users["api"] and "api" not in users["export"]
    assert "loading" in users["api"] and "loading" in users["export"]
