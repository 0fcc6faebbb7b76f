"""Bad input ends with one line that says what to do, exit status 2, no traceback."""

import pytest

from awdlstm.cli import main


def run_cli(capsys, *argv):
    code = main(["-q", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def write_corpus(d, text):
    d.mkdir(parents=True, exist_ok=True)
    for s in ("train", "valid", "test"):
        (d / f"{s}.txt").write_text(text, encoding="utf-8")
    return d


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "nope", "--out", "X"], "unknown preset 'nope'; valid presets:"),
    (["train", "--preset", "tiny", "--set", "model.wdrop=0.5", "--out", "X"], "unknown key model.wdrop; valid keys"),
    (["train", "--preset", "tiny", "--set", "model.weight_p=1.5", "--out", "X"], "must be in [0, 1)"),
    (["train", "--preset", "tiny", "--set", "data.bptt=0", "--out", "X"], "data.bptt must be > 0"),
    (["train", "--preset", "tiny", "--data", "./missing-corpus", "--out", "X"], "no such directory"),
    (["evaluate", "does-not-exist"], "no checkpoint there"),
])
def test_cli_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "X").exists()


def test_batch_larger_than_data(capsys, tmp_path):
    corpus = write_corpus(tmp_path / "c", "a b c\n")
    code, err = run_cli(capsys, "train", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "r"))
    assert code == 2 and "too few for batch size 20" in err[0]


def test_corrupt_checkpoint_and_existing_run(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"\x00garbage" * 10)
    code, err = run_cli(capsys, "evaluate", str(run))
    assert code == 2 and "not a checkpoint" in err[0] and "use another checkpoint" in err[0]
    (run / "config.json").write_text("{}")
    code, err = run_cli(capsys, "train", "--preset", "tiny", "--out", str(run))
    assert code == 2 and "already holds a run; pass --resume" in err[0]
    assert (run / "best.pt").read_bytes() == b"\x00garbage" * 10  # nothing overwritten


@pytest.mark.slow
def test_checkpoint_from_another_vocabulary(capsys, tmp_path, small_ptb):
    run = tmp_path / "run"
    assert main(["-q", "train", "--preset", "tiny", "--data", str(small_ptb), "--out", str(run), "--max-steps", "3", "--no-eval"]) == 0
    other = write_corpus(tmp_path / "other", "x y z\n" * 200)
    code, err = run_cli(capsys, "evaluate", str(run), "--data", str(other))
    assert code == 2 and "vocabulary" in err[0]


def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    import subprocess
    import sys

    from awdlstm.errors import ConfigError
    from awdlstm.rundir import RunLock

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(str(live.pid))
        with pytest.raises(ConfigError, match=f"in use by another training \\(process {live.pid}\\)"):
            with RunLock(tmp_path):
                pass
    finally:
        live.kill()
        live.wait()
    # the owner is now dead: its lock is stale and taken over, then released
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(__import__("os").getpid())
    assert not (tmp_path / ".lock").exists()
