"""Damaged, foreign and mismatched checkpoints: every command that reads one ends with one
line that says what to do, and nothing in the run directory is overwritten."""

import hashlib
import random
import shutil

import pytest
import torch
from helpers import run_cli, train_tiny, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from awdlstm import checkpoint
from awdlstm.checkpoint import load_checkpoint
from awdlstm.errors import CheckpointError

READERS = [  # every command that reads a run's checkpoint, and the file it reads
    (["train", "--out", "{run}", "--resume", "--no-eval"], "last.pt"),
    (["evaluate", "{run}"], "best.pt"),
    (["finetune", "{run}", "--max-steps", "1"], "best.pt"),
    (["generate", "{run}", "--words", "3", "--seed", "1"], "best.pt"),
    (["cache", "{run}", "--split", "valid"], "best.pt"),
]


def digest(run):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained for a few steps (the real files, the real format)."""
    root = tmp_path_factory.mktemp("ckpt")
    corpus = write_corpus(root / "corpus", lines=200)
    return train_tiny(root / "run", corpus, "--max-steps", "4", "--set", "data.batch_size=4")


def copy_run(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def damage_both(run, data: bytes):
    for name in ("best.pt", "last.pt"):
        (run / name).write_bytes(data)


@pytest.mark.parametrize("argv, name", READERS)
@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "text"])
def test_every_reader_explains_a_damaged_checkpoint_and_overwrites_nothing(trained, tmp_path, capsys, argv, name, damage):
    run = copy_run(trained, tmp_path)
    good = (run / name).read_bytes()
    data = {"truncated": good[: len(good) * 2 // 3], "random bytes": random.Random(0).randbytes(5000),
            "empty": b"", "text": b"hello world\n"}[damage]
    damage_both(run, data)
    before = digest(run)
    code, _, err = run_cli(capsys, *[a.format(run=run) for a in argv])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {run / name}: ") and "use another checkpoint" in err[0], err[0]
    assert digest(run) == before


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_cut_or_corruption_of_a_checkpoint_is_a_checkpoint_error(trained, tmp_path_factory, data):
    good = (trained / "last.pt").read_bytes()
    kind = data.draw(st.sampled_from(["cut", "flip", "random"]))
    if kind == "cut":
        blob = good[: data.draw(st.integers(0, len(good) - 1))]
    elif kind == "flip":
        blob = bytearray(good)
        for i in data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=8)):
            blob[i] ^= data.draw(st.integers(1, 255))
        blob = bytes(blob)
    else:
        blob = data.draw(st.binary(max_size=3000))
    path = tmp_path_factory.mktemp("fuzz") / "last.pt"
    path.write_bytes(blob)
    try:
        load_checkpoint(path)  # a flipped byte inside tensor data may load: that is allowed
    except CheckpointError as err:
        assert "\n" not in str(err)
    else:
        assert kind == "flip"


def test_a_checkpoint_of_another_architecture_is_refused_on_resume(trained, tmp_path, capsys):
    """A last.pt from a run with other layer sizes, copied into this run."""
    run = copy_run(trained, tmp_path)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    other = dict(ckpt, model={k: torch.cat([v, v]) if "weight_hh" in k else v for k, v in ckpt["model"].items()})
    torch.save(other, run / "last.pt")
    before = digest(run)
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--no-eval")
    assert code == 2 and len(err) == 1
    assert err[0] == f"error: {run / 'last.pt'}: weights do not fit this model configuration: rnns.0.weight_hh_l0 " \
        "is (512, 64) in the checkpoint but (256, 64) in the model (and 2 more); the checkpoint belongs to another " \
        "architecture or vocabulary"
    assert digest(run) == before


def test_weights_that_do_not_match_their_own_config_are_refused_when_loaded(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["model"]["hidden_size"] += 8
    torch.save(ckpt, run / "best.pt")
    code, _, err = run_cli(capsys, "evaluate", str(run))
    assert code == 2 and len(err) == 1 and "weights do not fit this model configuration: rnns.0.weight_ih_l0 is" in err[0]


def test_a_run_from_another_format_version_names_the_versions(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["version"] = checkpoint.VERSION + 1
        torch.save(ckpt, run / name)
    before = digest(run)
    for argv, _name in READERS:
        code, _, err = run_cli(capsys, *[a.format(run=run) for a in argv])
        assert code == 2 and len(err) == 1
        assert f"checkpoint format version {checkpoint.VERSION + 1} but this awdlstm reads version " \
               f"{checkpoint.VERSION}" in err[0] and "release that wrote it" in err[0]
    assert digest(run) == before


def test_a_config_written_by_another_release_is_named_as_such(trained, tmp_path, capsys):
    """A key this release does not know (added by a later one) in the saved config."""
    run = copy_run(trained, tmp_path)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["config"]["model"]["mixture_size"] = 3
        torch.save(ckpt, run / name)
    for argv, name in READERS:
        code, _, err = run_cli(capsys, *[a.format(run=run) for a in argv])
        assert code == 2 and len(err) == 1
        assert f"{run / name}: its config does not fit this awdlstm" in err[0]
        assert "unknown key model.mixture_size" in err[0] and "release that wrote it" in err[0]
