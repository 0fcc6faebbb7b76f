"""awdlstm sweep: several runs at once, each equal to the same run trained alone, continued
by running the same command again, interrupted without losing anything."""

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import metrics, spawn_cli, train_tiny, wait_until, write_corpus

from awdlstm import sweep as sweep_module
from awdlstm.cli import main
from awdlstm.errors import ConfigError
from awdlstm.runtime import _default_threads, available_cores
from awdlstm.sweep import ABLATIONS, plan, run_sweep

COMMON = ["--preset", "tiny", "--set", "optim.check_every=4", "--set", "data.batch_size=4"]


def checks(run):
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in metrics(run) if "val_loss" in r and "event" not in r]


def sweep(capsys, out, corpus, *extra):
    code = main(["-q", "sweep", *COMMON, "--data", str(corpus), "--out", str(out), *extra])
    return code, capsys.readouterr()


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus", lines=300)


def test_the_ablations_remove_one_technique_each():
    jobs = {j.name: j.overrides for j in plan("ptb", [], ablations=True)}
    assert list(jobs) == list(ABLATIONS)
    assert jobs["full"] == [] and jobs["no-weight-drop"] == ["model.weight_p=0"]
    assert jobs["no-ar-tar"] == ["optim.alpha=0", "optim.beta=0"]
    assert jobs["full-size-embedding"] == ["model.emb_size=1150"]  # emb = hidden, as the paper's row
    small = {j.name: j.overrides for j in plan("ptb", ["model.hidden_size=500"], ablations=True)}
    assert small["full-size-embedding"] == ["model.emb_size=500"]


def test_grids_and_seeds_multiply_and_bad_values_stop_before_anything_runs():
    jobs = plan("tiny", [], grid=["model.weight_p=0.3,0.5", "optim.alpha=0,2"], seeds=[1, 2])
    assert len(jobs) == 8
    assert jobs[0].name == "weight_p=0.3,alpha=0-seed1"
    assert jobs[0].overrides == ["model.weight_p=0.3", "optim.alpha=0", "train.seed=1"]
    with pytest.raises(ConfigError, match=r"run weight_p=1.5: model.weight_p must be in \[0, 1\), got 1.5"):
        plan("tiny", [], grid=["model.weight_p=0.3,1.5"])
    with pytest.raises(ConfigError, match="needs --seeds, --grid or --ablations"):
        plan("tiny", [])
    with pytest.raises(ConfigError, match="both be named"):
        plan("tiny", [], seeds=[1, 1])


@pytest.mark.slow
def test_sweep_runs_equal_runs_trained_alone_and_continue(tmp_path, corpus, capsys):
    out = tmp_path / "sweep"
    code, io = sweep(capsys, out, corpus, "--seeds", "1,2", "--jobs", "2", "--max-steps", "8", "--no-eval")
    assert code == 0, io.err
    # Each of the 2 runs got one of the 2 cores; alone with one thread it gives the same numbers.
    alone = tmp_path / "alone"
    train_tiny(alone, corpus, *COMMON[2:], "--seed", "2", "--set", "train.threads=1", "--max-steps", "8")
    assert checks(out / "seed2") == checks(alone) and len(checks(alone)) == 2
    # The same command, no limit: both runs resume and train to the end.
    code, io = sweep(capsys, out, corpus, "--seeds", "1,2", "--jobs", "2")
    assert code == 0, io.err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["finished", "finished"]
    assert all(r["test_ppl"] > 1 for r in summary["runs"])
    assert "--resume" in (out / "seed1" / "train.log").read_text()
    assert "seed1" in io.out and "finished" in io.out
    log = (out / "seed1" / "train.log").read_text()
    code, io = sweep(capsys, out, corpus, "--seeds", "1,2")  # nothing left to do
    assert code == 0 and (out / "seed1" / "train.log").read_text() == log
    code, io = sweep(capsys, out, corpus, "--seeds", "1,2,3")
    assert code == 2 and "holds another sweep" in io.err


@pytest.mark.slow
def test_a_failing_run_is_named_and_the_others_finish(tmp_path, corpus, capsys):
    out = tmp_path / "sweep"
    code, _ = sweep(capsys, out, corpus, "--seeds", "1,2", "--max-steps", "4", "--no-eval")
    assert code == 0
    (out / "seed1" / "last.pt").write_bytes(b"garbage")
    code, io = sweep(capsys, out, corpus, "--seeds", "1,2", "--max-steps", "8", "--no-eval")
    assert code == 2 and "1 of 2 runs failed (seed1); see their train.log" in io.err
    assert "not a checkpoint" in (out / "seed1" / "train.log").read_text()
    assert checks(out / "seed2")[-1][0] == 8


@pytest.mark.slow
def test_sigterm_stops_every_run_with_a_checkpoint_and_the_sweep_continues(tmp_path, corpus):
    out = tmp_path / "sweep"
    proc = spawn_cli("sweep", *COMMON, "--data", corpus, "--out", out, "--seeds", "1,2", "--no-eval",
                     "--set", "train.epochs=200")
    wait_until(lambda: all((out / s / "last.pt").exists() for s in ("seed1", "seed2")),
               "a last.pt in both runs", proc=proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM; every run saved" in stderr
    for s in ("seed1", "seed2"):
        log = (out / s / "train.log").read_text()
        assert "stopped by SIGTERM" in log and "checkpoint saved" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == "SIGTERM" and all(r["status"] == "stopped" for r in summary["runs"])


# ---------------------------------------------------------------------------- cores


def test_available_cores_is_the_affinity_where_the_os_has_one(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert available_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # as on macOS and Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cores() == 6


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_process_limited_to_one_core_trains_with_one_thread():
    probe = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
             "from awdlstm.runtime import _default_threads, available_cores;"
             "print(available_cores(), _default_threads(), os.cpu_count())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cores, threads, _ = map(int, out.stdout.split())
    assert (cores, threads) == (1, 1)
    assert 1 <= _default_threads() <= available_cores()


@pytest.mark.parametrize("allowed, parallel, threads", [({0}, 2, 1), ({0, 1, 2, 3}, 2, 2), ({0, 1, 2, 3, 4, 5}, 3, 2)])
def test_the_sweep_divides_the_cores_it_may_run_on(tmp_path, monkeypatch, allowed, parallel, threads):
    """The cores of the process's affinity (a container's limit), not the machine's, are
    divided between the runs; each run is a stand-in process that ends at once."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    started = []
    real_popen = subprocess.Popen

    def record(argv, **kwargs):
        started.append(argv)
        return real_popen([sys.executable, "-c", ""], **kwargs)

    monkeypatch.setattr(sweep_module.subprocess, "Popen", record)
    jobs = plan("tiny", [], seeds=list(range(1, parallel + 2)))
    run_sweep(tmp_path / "sweep", "tiny", jobs, [], parallel=parallel, device="cpu", limits=["--max-steps", "1"])
    assert len(started) == len(jobs)
    for argv in started:
        assert argv[1:4] == ["-m", "awdlstm", "train"]
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        assert [s for s in sets if s.startswith("train.threads=")] == [f"train.threads={threads}"]
