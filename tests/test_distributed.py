"""Data-parallel training on the CPU (Gloo): N ranks at B / N compute what one process does
at B; stops, NaNs and kills are agreed by every rank; a run resumes exactly, also on another
number of ranks; torchrun's multi-node rendezvous works on the loopback."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import checks, cli_argv, cli_error, events, last_check_step, metrics, run_cli, wait_until, write_corpus

from awdlstm import checkpoint
from awdlstm.model import AWDLSTM
from awdlstm.runtime import env_ranks
from awdlstm.train import check_batch_for_ranks, join_states, rank_columns

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this PyTorch has no Gloo backend")

NO_DROPOUT = [f"--set=model.{p}=0" for p in ("embed_p", "input_p", "hidden_p", "weight_p", "output_p")]
# Tiny model, global batch 4, a check every 10 steps; NT-ASGD fires at step 40 on the corpus
# below, and an epoch is 28 steps, so 57 steps cross both.
BASE = ["--preset", "tiny", "--set=data.batch_size=4", "--set=optim.check_every=10", "--set=train.log_every=5",
        "--set=train.threads=1", "--no-eval"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("ddp") / "corpus", lines=400)


def torchrun_argv(*argv, nproc: int = 2, launcher: list[str] | None = None) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m awdlstm -q ARGV`` with this Python."""
    launcher = launcher or ["--standalone", f"--nproc-per-node={nproc}"]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, *cli_argv(*argv)[1:]]


def torchrun(*argv, nproc: int = 2, launcher: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(torchrun_argv(*argv, nproc=nproc, launcher=launcher), capture_output=True, text=True,
                          timeout=timeout, env=env)


def train(out: Path, corpus: Path, *extra, nproc: int = 1) -> None:
    argv = ["train", *BASE, "--data", corpus, "--out", out, *extra]
    if nproc == 1:
        res = subprocess.run(cli_argv(*argv), capture_output=True, text=True, timeout=300)
    else:
        res = torchrun(*argv, nproc=nproc)
    assert res.returncode == 0, res.stderr[-3000:]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load_checkpoint(run / "last.pt")["model"]


def assert_same_run(a: Path, b: Path, tol: float) -> None:
    """The same checks (losses to ``tol``, steps, phases) and the same weights."""
    ca, cb = checks(a), checks(b)
    assert [(c["step"], c["epoch"], c["phase"], c["averaged"]) for c in ca] == \
           [(c["step"], c["epoch"], c["phase"], c["averaged"]) for c in cb]
    for x, y in zip(ca, cb):
        assert abs(x["train_loss"] - y["train_loss"]) <= tol and abs(x["val_loss"] - y["val_loss"]) <= tol, (x, y)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=tol, rtol=0), (k, (wa[k] - wb[k]).abs().max())


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory) -> Path:
    """One process at batch 4, every dropout off, 57 steps (NT-ASGD fires, two epochs)."""
    run = tmp_path_factory.mktemp("one") / "run"
    train(run, corpus, *NO_DROPOUT, "--max-steps", 60)
    return run


@pytest.fixture(scope="module")
def two_ranks(corpus, tmp_path_factory) -> Path:
    """The same on two ranks of batch 2."""
    run = tmp_path_factory.mktemp("two") / "run"
    train(run, corpus, *NO_DROPOUT, "--max-steps", 60, nproc=2)
    return run


# ---------------------------------------------------------------------------- the split of the batch


def test_rank_columns_tile_the_batch():
    for world in (1, 2, 3, 4, 6, 12):
        cols = [rank_columns(12, r, world) for r in range(world)]
        assert cols[0][0] == 0 and cols[-1][1] == 12
        assert all(a[1] == b[0] for a, b in zip(cols, cols[1:]))


def test_join_states_puts_streams_back_in_order():
    full = [[torch.arange(2 * 6 * 3.0).view(2, 6, 3), torch.randn(1, 6, 5)]]
    parts = [[[t[:, a:b] for t in layer] for layer in full] for a, b in (rank_columns(6, r, 3) for r in range(3))]
    joined = join_states(parts)
    assert all(torch.equal(x, y) for x, y in zip(joined[0], full[0]))
    assert join_states([None, None]) is None


def test_batch_that_ranks_cannot_share_is_one_line_error(capsys, corpus, tmp_path, monkeypatch):
    with pytest.raises(Exception, match=r"batch_size 10 cannot be divided among 4 ranks.*data.batch_size=8 or 12.*1, 2, 5, 10"):
        check_batch_for_ranks(10, 4)
    err = cli_error(capsys, "train", *BASE, "--data", corpus, "--out", tmp_path / "a", "--nproc", "3")
    assert "cannot be divided among 3 ranks" in err and "1, 2, 4" in err
    # Under a launcher that made 3 ranks: the same error, before any process group.
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    err = cli_error(capsys, "train", *BASE, "--data", corpus, "--out", tmp_path / "b")
    assert "cannot be divided among 3 ranks" in err
    assert not (tmp_path / "b").exists()


def test_rank_environment_without_launcher_is_one_line_error(capsys, corpus, tmp_path, monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    err = cli_error(capsys, "train", *BASE, "--data", corpus, "--out", tmp_path / "a")
    assert "launch data-parallel training with torchrun" in err
    monkeypatch.setenv("RANK", "two")
    assert "RANK='two' is not an integer" in cli_error(capsys, "train", *BASE, "--data", corpus, "--out", tmp_path / "b")
    monkeypatch.setenv("RANK", "2")
    assert "not a valid rank set" in cli_error(capsys, "train", *BASE, "--data", corpus, "--out", tmp_path / "c")


def test_env_ranks_reads_torchrun_variables(monkeypatch):
    for name, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    r = env_ranks()
    assert (r.rank, r.world_size, r.local_rank, r.local_world_size, r.is_main) == (3, 4, 1, 2, False)


# ---------------------------------------------------------------------------- equal to one process


@pytest.mark.slow
def test_two_ranks_equal_one_process_at_the_global_batch(one_process, two_ranks):
    """With every dropout off, 2 ranks at B/2 = 1 process at B: the same losses at every
    check, the NT-ASGD switch at the same step, an epoch boundary, the same weights."""
    phases = [c["phase"] for c in checks(one_process)]
    assert "sgd" in phases and "asgd" in phases
    assert len({c["epoch"] for c in checks(one_process)}) >= 2
    assert_same_run(one_process, two_ranks, tol=1e-5)
    # Only rank 0 wrote: one line per check, the config once, no temporaries, the lock released.
    assert len(checks(two_ranks)) == len(checks(one_process))
    assert not list(two_ranks.glob(".*tmp*")) and not (two_ranks / ".lock").exists()
    ckpt = checkpoint.load_checkpoint(two_ranks / "last.pt")
    assert len(ckpt["rng"]["ranks"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("model", [
    [],  # the tiny preset: every dropout of the paper on
    ["--set=model.rnn=qrnn", "--set=model.zoneout_p=0.1", "--set=model.head=split", "--set=model.split_cutoffs=8"],
    ["--set=model.rnn=lstm-cell", "--set=model.recurrent_p=0.2", "--set=model.dropout_masks=step",
     "--set=model.embed_dropout=element", "--set=model.head=sampled", "--set=model.num_sampled=8"],
], ids=["lstm", "qrnn-zoneout-split", "cell-step-masks-sampled"])
def test_two_ranks_equal_one_process_with_dropout(corpus, tmp_path, model):
    """With global masks (the default) each rank draws the masks of the whole batch and uses
    its part, so dropout on, 2 ranks at B/2 still equal 1 process at B: locked and per-step
    masks, embedding dropout, weight drop, zoneout, recurrent dropout, sampled negatives;
    an opaque per-layer state divided by streams; every head's gradients averaged."""
    extra = [*model, "--max-steps", 25]
    train(tmp_path / "one", corpus, *extra)
    train(tmp_path / "two", corpus, *extra, nproc=2)
    # The same masks and the same sums in another order: float rounding, amplified a little
    # by the 1 / (1 - p) scaling (different masks would differ by far more, see below).
    assert_same_run(tmp_path / "one", tmp_path / "two", tol=1e-4)


@pytest.mark.slow
def test_rank_masks_differ_from_one_process_but_train(corpus, tmp_path):
    """train.rank_masks=rank: each rank draws its own masks (not one process's run), and a
    resume on another number of ranks says that the masks do not continue."""
    train(tmp_path / "one", corpus, "--max-steps", 20)
    train(tmp_path / "two", corpus, "--set=train.rank_masks=rank", "--max-steps", 10, nproc=2)
    res = subprocess.run(cli_argv("train", "--out", tmp_path / "two", "--resume", "--max-steps", 20, "--no-eval"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "the dropout masks do not" in res.stderr
    a, b = checks(tmp_path / "one"), checks(tmp_path / "two")
    assert abs(a[0]["val_loss"] - b[0]["val_loss"]) > 1e-3 and all(math.isfinite(c["val_loss"]) for c in a + b)


@pytest.mark.slow
def test_resume_on_another_number_of_ranks(corpus, tmp_path):
    """Mid-epoch, dropout on: the streams' hidden state is divided anew and every rank takes
    the one generator state, so 2 ranks -> 1 process and 1 process -> 2 ranks both end where
    a straight one-process run does."""
    straight, a, b = tmp_path / "straight", tmp_path / "a", tmp_path / "b"
    train(straight, corpus, "--max-steps", 45)
    train(a, corpus, "--max-steps", 15, nproc=2)
    res = subprocess.run(cli_argv("train", "--out", a, "--resume", "--max-steps", 45, "--no-eval"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    train(b, corpus, "--max-steps", 15)
    res = torchrun("train", "--out", b, "--resume", "--max-steps", 45, "--no-eval")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "masks do not" not in res.stderr
    for run in (a, b):
        assert_same_run(straight, run, tol=1e-4)


def test_nproc_launches_ranks(capsys, corpus, tmp_path):
    """--nproc 2 runs the command as a two-rank torchrun job (and gives the same run)."""
    proc = subprocess.run(cli_argv("train", *BASE, *NO_DROPOUT, "--data", corpus, "--out", tmp_path / "r",
                                   "--max-steps", 12, "--nproc", 2),
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("stopped: max steps") == 1  # rank 0 reports for the job
    ckpt = checkpoint.load_checkpoint(tmp_path / "r" / "last.pt")
    assert len(ckpt["rng"]["ranks"]) == 2 and ckpt["hidden"][0][0].size(1) == 4


@pytest.mark.slow
def test_finetune_on_two_ranks(two_ranks, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_ranks, run)
    res = torchrun("finetune", run, "--max-epochs", 1, "--no-eval")
    assert res.returncode == 0, res.stderr[-3000:]
    assert checks(run / "finetune") and checks(run / "finetune")[0]["phase"] == "asgd"
    assert len(checkpoint.load_checkpoint(run / "finetune" / "last.pt")["rng"]["ranks"]) == 2


# ---------------------------------------------------------------------------- multi-node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_the_loopback_equal_one_node(corpus, two_ranks, tmp_path):
    """torchrun --nnodes 2 with a c10d rendezvous on 127.0.0.1, one process per "node"."""
    run = tmp_path / "run"
    port = free_port()
    launcher = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                f"--rdzv-id=test-{port}"]
    argv = torchrun_argv("train", *BASE, *NO_DROPOUT, "--data", corpus, "--out", run, "--max-steps", 60,
                         launcher=launcher)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in nodes]
    assert all(p.returncode == 0 for p in nodes), [o[1][-2000:] for o in outs]
    assert_same_run(two_ranks, run, tol=1e-6)


# ---------------------------------------------------------------------------- stops, kills, NaNs


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started (its children with RANK set)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != launcher_pid:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(stat.parent.name)
    return found


def saved_step(run: Path) -> int:
    try:
        return checkpoint.load_checkpoint(run / "last.pt")["progress"]["step"]
    except Exception:
        return -1


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_killed_rank_resumes_exactly_with_dropout(corpus, tmp_path):
    """Dropout on, each rank its own masks (so every rank's generator must be saved): kill
    rank 1 with SIGKILL at a random moment; the job ends, last.pt loads, and --resume ends
    where a run that never stopped does."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    limit = ["--max-steps", 80, "--set=train.rank_masks=rank"]
    train(straight, corpus, *limit, nproc=2)
    rng = random.Random()
    target = rng.choice([10, 20, 30, 40, 50])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(torchrun_argv("train", *BASE, "--data", corpus, "--out", run, *limit),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: last_check_step(run) >= target, f"the check of step {target}", proc=proc)
        time.sleep(rng.uniform(0, 0.2))
        pids = rank_pids(proc.pid)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # torchrun took the job down
    assert saved_step(run) >= target
    res = torchrun("train", "--out", run, "--resume", *limit[:2], "--no-eval")
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_run(straight, run, tol=0)


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_all_at_one_step(corpus, tmp_path):
    """A signal that reaches only rank 1 stops both ranks at the same step with a checkpoint
    (no rank left waiting in a collective); the run then resumes exactly."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    limit = ["--max-steps", 60]
    train(straight, corpus, *limit, nproc=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(torchrun_argv("train", *BASE, "--data", corpus, "--out", run, *limit),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: last_check_step(run) >= 20, "the check of step 20", proc=proc)
        pids = rank_pids(proc.pid)
        os.kill(pids[1], signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = saved_step(run)
    assert 20 <= step < 57, err[-2000:]
    ckpt = checkpoint.load_checkpoint(run / "last.pt")
    assert ckpt["progress"]["in_epoch"] and ckpt["hidden"][0][0].size(1) == 4  # every stream's state
    res = torchrun("train", "--out", run, "--resume", *limit, "--no-eval")
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_run(straight, run, tol=0)


@pytest.mark.slow
def test_time_limit_stops_every_rank_at_one_step(corpus, tmp_path):
    """The ranks' clocks differ; the time limit is agreed, so both stop after the same step
    and the job ends normally with a checkpoint to resume from."""
    run = tmp_path / "run"
    res = torchrun("train", *BASE, "--data", corpus, "--out", run, "--set=train.epochs=1000", "--max-minutes", 0.05)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped: time limit" in res.stdout
    assert saved_step(run) > 0
    final = [r for r in metrics(run) if r.get("final")]  # the agreed stop's check, written once
    assert len(final) <= 1 and all(r["step"] == saved_step(run) for r in final)


def _poisoned_rank(rank: int, world: int, port: int, corpus: str, out: str, queue) -> None:
    """One rank of an in-process job whose rank 1 gets a NaN loss at its 13th training step."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from awdlstm.cli import main

    if rank == 1:
        calls = {"n": 0}
        forward = AWDLSTM.forward

        def poisoned(self, tokens, state=None):
            out = forward(self, tokens, state)
            if self.training:
                calls["n"] += 1
                if calls["n"] == 13:
                    return out._replace(dropped_output=out.dropped_output * float("nan"))
            return out

        AWDLSTM.forward = poisoned
    queue.put((rank, main(["-q", "train", *BASE, "--data", corpus, "--out", out, "--max-steps", "30"])))


@pytest.mark.slow
def test_nan_on_one_rank_rolls_back_every_rank(corpus, tmp_path):
    run = tmp_path / "run"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_poisoned_rank, args=(r, 2, port, str(corpus), str(run), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    codes = dict(queue.get(timeout=5) for _ in procs)
    assert codes == {0: 0, 1: 0}
    rolled = [e for e in events(run) if e["event"] == "nonfinite"]
    assert len(rolled) == 1 and rolled[0]["at_step"] == 13 and rolled[0]["action"] == "rolled back"
    assert rolled[0]["step"] == 10  # back to the check before it, on both ranks
    assert checks(run)[-1]["step"] == 30


def test_sweep_runs_are_single_process_inside_a_launcher(capsys, corpus, tmp_path, monkeypatch):
    """A sweep started where torchrun's variables are set still runs each run alone."""
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "2"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(capsys, "sweep", "--preset", "tiny", "--data", corpus, "--out", tmp_path / "sw",
                             "--seeds", "1,2", "--max-steps", 3, "--no-eval", "--set", "data.batch_size=4")
    assert code == 0, (out, err)
    for seed in (1, 2):
        ckpt = checkpoint.load_checkpoint(tmp_path / "sw" / f"seed{seed}" / "last.pt")
        assert ckpt["progress"]["step"] == 3 and "ranks" not in ckpt["rng"]
