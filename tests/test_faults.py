"""Faults during training: NaN and infinity, full disks, signals and SIGKILL lose nothing
that was checkpointed, and a resumed run ends where an uninterrupted one does."""

import errno
import math
import os
import signal

import pytest
import torch
from helpers import checks, events, run_cli, spawn_cli, wait_for_check, wait_until

from awdlstm import checkpoint
from awdlstm.model import AWDLSTM
from awdlstm.train import Trainer

pytestmark = pytest.mark.corpus

TINY = ["--preset", "tiny", "--no-eval", "--set", "optim.check_every=40"]


def poison(monkeypatch, at_steps, *, where="loss"):
    """Make training forward call number n (1-based, counted over the whole test) give a NaN
    loss (NaN logits) or, with where="grad", a finite loss with a NaN gradient."""
    calls = {"n": 0}
    forward = AWDLSTM.forward

    def poisoned(self, tokens, state=None):
        out = forward(self, tokens, state)
        if not self.training:
            return out
        calls["n"] += 1
        if not at_steps(calls["n"]):
            return out
        if where == "loss":
            return out._replace(dropped_output=out.dropped_output * float("nan"))
        dropped = out.dropped_output.clone()
        dropped.register_hook(lambda g: g * float("nan"))
        return out._replace(dropped_output=dropped)

    monkeypatch.setattr(AWDLSTM, "forward", poisoned)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("where, what", [("loss", "the training loss"), ("grad", "the gradient norm")])
def test_one_nonfinite_step_rolls_back_and_halves_the_lr(tmp_path, small_ptb, monkeypatch, capsys, caplog,
                                                        where, what):
    poison(monkeypatch, lambda n: n == 70, where=where)
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", *TINY, "--data", str(small_ptb), "--out", str(run), "--max-steps", "130")
    assert code == 0
    (event,) = events(run)
    assert event == {"event": "nonfinite", "what": what, "at_step": 70, "step": 40, "epoch": 1,
                     "rollbacks": 1, "action": "rolled back", "lr": 10.0}
    assert "not finite at step 70: rolled back to step 40, learning rate halved to 10 (1 of 3)" in caplog.text
    steps = [r["step"] for r in checks(run)]
    assert steps == [40, 80, 120]  # step 40's check is not repeated, training went on from it
    assert all(math.isfinite(r["val_loss"]) for r in checks(run))
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["progress"]["lr"] == 10.0 and last["progress"]["rollbacks"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())


@pytest.mark.slow
def test_detected_at_its_step_without_a_sync_per_step(tmp_path, small_ptb, monkeypatch, capsys):
    """The GPU path reads the flag only at log intervals and saves; the step is still exact."""
    init = Trainer.__init__

    def no_sync(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._sync_each_step = False

    monkeypatch.setattr(Trainer, "__init__", no_sync)
    poison(monkeypatch, lambda n: n == 53)
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", *TINY, "--data", str(small_ptb), "--out", str(run), "--max-steps", "90",
                      "--set", "train.log_every=25")
    assert code == 0
    (event,) = events(run)
    assert event["at_step"] == 53 and event["step"] == 40


@pytest.mark.slow
def test_persistent_nan_stops_after_the_rollback_limit(tmp_path, small_ptb, monkeypatch, capsys):
    # step 45 fails, then (rolled back to step 40) step 41, twice more
    poison(monkeypatch, lambda n: n >= 45)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *TINY, "--data", str(small_ptb), "--out", str(run),
                        "--set", "train.max_rollbacks=2")
    assert code == 2 and err[-1].startswith("error: the training loss is not finite at step 41")
    assert "again after 2 rollback(s)" in err[-1] and "last.pt holds the good weights of step 40" in err[-1]
    evs = events(run)
    assert [e["action"] for e in evs] == ["rolled back", "rolled back", "stopped"]
    assert [e.get("lr") for e in evs] == [10.0, 5.0, None]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["progress"]["step"] == 40 and last["progress"]["lr"] == 5.0
    assert all(torch.isfinite(t).all() for t in last["model"].values())


@pytest.mark.slow
def test_nan_before_the_first_check_rolls_back_to_the_start(tmp_path, small_ptb, monkeypatch, capsys):
    poison(monkeypatch, lambda n: n == 3)
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", *TINY, "--data", str(small_ptb), "--out", str(run), "--max-steps", "45")
    assert code == 0
    (event,) = events(run)
    assert event["step"] == 0 and event["at_step"] == 3
    assert [r["step"] for r in checks(run)] == [40]


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, small_ptb, monkeypatch, capsys):
    run = tmp_path / "run"
    real_open = open
    saves = {"n": 0}

    class FullDisk:
        """A file on a disk that fills up after 1,000 bytes."""

        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def filling_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "last.pt" in str(path) and "w" in mode:
            saves["n"] += 1
            if saves["n"] >= 3:  # the start and the first check save; the second check finds the disk full
                return FullDisk(f)
        return f

    monkeypatch.setattr(checkpoint, "open", filling_open, raising=False)
    code, _, err = run_cli(capsys, "train", *TINY, "--data", str(small_ptb), "--out", str(run))
    assert code == 2 and len(err) == 1
    assert "No space left on device" in err[0] and "the previous file is intact" in err[0] and "resume" in err[0]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl"]
    assert torch.load(run / "last.pt", weights_only=True)["progress"]["step"] == 40
    # space freed: the run resumes from the checkpoint that survived
    monkeypatch.undo()
    code, _, _ = run_cli(capsys, "train", "--out", str(run), "--resume", "--max-steps", "100", "--no-eval")
    assert code == 0 and [r["step"] for r in checks(run)] == [40, 80]


# ---------------------------------------------------------------- other processes


def start(run, data, *extra):
    """Start (or resume) the tiny training of run in another process."""
    if (run / "last.pt").exists():  # the saved config, one thread included, applies
        return spawn_cli("train", "--out", run, "--resume", "--no-eval")
    return spawn_cli("train", *TINY, "--data", data, "--out", run, "--set", "train.threads=1", *extra)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def straight(small_ptb, tmp_path_factory):
    """The tiny run (two epochs), never interrupted, in its own process."""
    run = tmp_path_factory.mktemp("straight") / "run"
    code, _, err = finish(start(run, small_ptb))
    assert code == 0, err
    return run


def same_run(a, b):
    assert [(r["step"], r["val_loss"], r["train_loss"]) for r in checks(a)] == \
        [(r["step"], r["val_loss"], r["train_loss"]) for r in checks(b)]
    wa = torch.load(a / "best.pt", weights_only=True)["model"]
    wb = torch.load(b / "best.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigint_and_sigterm_save_print_the_resume_command_and_resume_exactly(tmp_path, small_ptb, straight):
    run = tmp_path / "run"
    for sig, after in ((signal.SIGTERM, 0), (signal.SIGINT, 80)):
        proc = start(run, small_ptb)
        wait_for_check(run, after, proc)
        proc.send_signal(sig)
        code, _, err = finish(proc)
        assert code == 128 + sig, err
        assert f"stopped by {sig.name}" in err and f"Resume with: awdlstm train --out {run} --resume" in err
        last = torch.load(run / "last.pt", weights_only=True)["progress"]
        assert last["step"] > after and not last["finished"]
    code, _, err = finish(start(run, small_ptb))
    assert code == 0, err
    same_run(straight, run)


def saved_step(run):
    """The step of RUN/last.pt (replaced atomically, so never read half-written); -1 before one."""
    try:
        return torch.load(run / "last.pt", weights_only=True)["progress"]["step"]
    except FileNotFoundError:
        return -1


@pytest.mark.slow
def test_sigkill_at_chosen_moments_then_resume_equals_an_uninterrupted_run(tmp_path, small_ptb, straight):
    """Kill -9 at moments chosen from the run's own progress, so that every machine, fast or
    slow, kills at the same points: as soon as a check is in metrics.jsonl (its last.pt save
    under way or just done), and as soon as last.pt holds a check (training steps under
    way); each time resume, and end as the run trained straight through."""
    run = tmp_path / "run"
    steps = [r["step"] for r in checks(straight)]
    targets = steps[:-1:2]  # every other check but the last: each kill leaves the run unfinished
    assert len(targets) >= 3, steps
    for i, target in enumerate(targets):
        proc = start(run, small_ptb)
        if i % 2 == 0:
            wait_for_check(run, target - 1, proc)
        else:
            wait_until(lambda t=target: saved_step(run) >= t, f"{run / 'last.pt'} of step {target} or later", proc=proc)
        proc.kill()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        if (run / "last.pt").exists():  # whatever the moment, the checkpoint on disk loads
            checkpoint.load_checkpoint(run / "last.pt")
    code, _, err = finish(start(run, small_ptb))
    assert code == 0, err
    same_run(straight, run)
    assert not list(run.glob(".*.tmp-*"))  # the resumed run cleared what killed saves left
