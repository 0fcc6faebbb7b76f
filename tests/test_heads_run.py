"""The output heads inside the model and every command (model.head = full | split | sampled)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import write_corpus

from awdlstm import LanguageModel
from awdlstm.cli import main
from awdlstm.heads import FullHead, SampledHead, SplitHead
from awdlstm.model import AWDLSTM
from awdlstm.presets import tiny


def small_model(head="full", **kw):
    cfg = tiny().model
    cfg.emb_size, cfg.hidden_size, cfg.num_layers, cfg.head = 12, 16, 2, head
    for k, v in kw.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return AWDLSTM(cfg, 40)


def test_the_full_head_gives_release_0_1_numbers_bit_for_bit():
    model = small_model().train()
    x, y = torch.randint(40, (9, 3)), torch.randint(40, (9, 3))
    torch.manual_seed(1)
    out = model(x)
    logits = model.decoder(out.dropped_output)  # what release 0.1 returned as out.logits
    assert torch.equal(model.loss(out, y), F.cross_entropy(logits.float().view(-1, 40), y.reshape(-1)))
    assert torch.equal(model.loss(out, y, "sum"),
                       F.cross_entropy(logits.float().view(-1, 40), y.reshape(-1), reduction="sum"))
    assert torch.equal(model.log_probs(out), F.log_softmax(logits.float(), dim=-1))


def test_heads_by_name_share_the_tied_decoder():
    full, split, sampled = small_model(), small_model("split", split_cutoffs=[10, 25]), small_model("sampled", num_sampled=8)
    assert isinstance(full.head, FullHead) and isinstance(split.head, SplitHead) and isinstance(sampled.head, SampledHead)
    for m in (full, split, sampled):
        assert m.head.decoder is m.decoder and m.decoder.weight is m.encoder.weight
    assert {k for k in split.state_dict() if k.startswith("head.")} == {"head.tail_weight", "head.tail_bias"}
    assert not any(k.startswith("head.") for k in full.state_dict())
    split.eval()
    x, y = torch.randint(40, (6, 2)), torch.randint(40, (6, 2))
    out = split(x)
    lp = split.log_probs(out)  # (T, B, V), exact
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(6, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(split.token_nll(out, y), -lp.gather(2, y[..., None])[..., 0], atol=1e-5, rtol=1e-5)


def test_bad_head_settings_are_one_line_errors(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c")
    base = ["-q", "train", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "r")]
    for sets, message in ((["model.head=soft"], "model.head must be one of full, split, sampled; got 'soft'"),
                          (["model.head=split", "model.split_cutoffs=8,4"],
                           "model.split_cutoffs must be increasing word counts >= 1, got [8, 4]"),
                          (["model.head=split", "model.split_cutoffs=4,500"], "< the vocabulary size"),
                          (["model.num_sampled=0"], "model.num_sampled must be > 0, got 0")):
        assert main([*base, *[a for s in sets for a in ("--set", s)]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("head", ["split", "sampled"])
def test_every_command_on_a_run_with_another_head(tmp_path, capsys, head):
    corpus = write_corpus(tmp_path / "c", lines=300)
    run = tmp_path / "run"
    sets = ["model.emb_size=12", "model.hidden_size=16", "data.bptt=10", "data.batch_size=8",
            f"model.head={head}", "model.split_cutoffs=6,12", "model.num_sampled=5", "optim.check_every=10"]
    argv = ["-q", "train", "--preset", "tiny", "--data", str(corpus), "--out", str(run), "--max-steps", "30",
            *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if head == "split":  # exact: it learns as the full softmax does
        assert rows[-1]["val_ppl"] < rows[0]["val_ppl"]
    else:  # an estimate of the loss from 5 negatives: trained, evaluated exactly
        assert all(math.isfinite(r["val_loss"]) for r in rows)
    results = json.loads((run / "results.json").read_text())
    capsys.readouterr()
    # Evaluation is exact whatever the head: the perplexity from the full distribution.
    lm = LanguageModel.load(run)
    assert lm.perplexity((corpus / "test.txt").read_text()) > 1
    assert main(["-q", "evaluate", str(run), "--split", "valid", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] == pytest.approx(results["valid"]["perplexity"])
    assert main(["-q", "cache", str(run), "--split", "valid", "--window", "20", "--json"]) == 0
    cache = json.loads(capsys.readouterr().out)
    assert main(["-q", "evaluate", str(run), "--split", "valid", "--batch-size", "1", "--json"]) == 0
    assert cache["model_perplexity"] == pytest.approx(json.loads(capsys.readouterr().out)["perplexity"], rel=1e-5)
    assert main(["-q", "generate", str(run), "--words", "5", "--seed", "1"]) == 0
    (tmp_path / "s.txt").write_text("the cat\n")
    assert main(["-q", "score", str(run), str(tmp_path / "s.txt"), "--json"]) == 0
    assert main(["-q", "export", str(run), str(tmp_path / "export")]) == 0
    again = LanguageModel.load(tmp_path / "export")
    assert again.score(["the cat"]).total.log_prob == pytest.approx(lm.score(["the cat"]).total.log_prob, rel=1e-6)
    assert main(["-q", "finetune", str(run), "--max-epochs", "1", "--no-eval"]) == 0
    assert main(["-q", "dynamic-eval", str(run), "--split", "valid", "--limit", "60", "--gradstat-batch", "4",
                 "--json"]) == 0
