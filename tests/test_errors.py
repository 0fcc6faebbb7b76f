"""Bad input ends with one line that says what to do, exit status 2, no traceback."""

import pytest
from helpers import run_cli, train_tiny, write_corpus, write_splits


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
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "X").exists()


def test_batch_larger_than_data(capsys, tmp_path):
    corpus = write_splits(tmp_path / "c", "a b c\n", "a b c\n", "a b c\n")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "r"))
    assert code == 2 and "too few for batch size 20" in err[0]


def test_corrupt_checkpoint_and_existing_run(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"\x00garbage" * 10)
    code, _, err = run_cli(capsys, "evaluate", str(run))
    assert code == 2 and "not a checkpoint" in err[0] and "use another checkpoint" in err[0]
    (run / "config.json").write_text("{}")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--out", str(run))
    assert code == 2 and "already holds a run; pass --resume" in err[0]
    assert (run / "best.pt").read_bytes() == b"\x00garbage" * 10  # nothing overwritten


def test_checkpoint_from_another_vocabulary(capsys, tmp_path):
    run = train_tiny(tmp_path / "run", write_corpus(tmp_path / "c", lines=300), "--max-steps", "3")
    other = write_splits(tmp_path / "other", *["x y z\n" * 200] * 3)
    code, _, err = run_cli(capsys, "evaluate", str(run), "--data", str(other))
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


def test_taking_the_run_lock_clears_the_temporary_files_of_dead_processes(tmp_path):
    """A process killed while it saved leaves .last.pt.tmp-PID; the next training removes it,
    and leaves alone the temporary file of a process still alive."""
    import os
    import subprocess
    import sys

    from awdlstm.rundir import RunLock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.pt.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".best.pt.tmp-{os.getppid()}"
    live.write_bytes(b"being written")
    (tmp_path / "last.pt").write_bytes(b"kept")
    with RunLock(tmp_path):
        assert not stale.exists() and live.exists() and (tmp_path / "last.pt").exists()
