"""The WikiText-103 presets, scaled down to a tiny corpus, train and evaluate on the CPU."""

from __future__ import annotations

import json
import math

import pytest
from helpers import write_corpus

from awdlstm.cli import main
from awdlstm.presets import get_preset

SCALED = ["--set", "model.emb_size=16", "--set", "model.hidden_size=24", "--set", "data.batch_size=6",
          "--set", "data.bptt=12", "--set", "model.num_sampled=8", "--set", "model.split_cutoffs=5,12",
          "--set", "optim.check_every=6", "--max-steps", "12"]


def test_the_presets_say_what_they_are():
    a, b = get_preset("wt103"), get_preset("wt103-openseq2seq")
    assert (a.model.num_layers, a.model.hidden_size, a.model.emb_size, a.model.tie_weights) == (3, 1024, 400, True)
    assert (a.data.bptt, a.data.random_start, a.data.variable_length, a.model.head) == (96, True, False, "split")
    assert a.train.precision == "auto" and a.data.name == "wikitext-103"
    assert (b.model.rnn, b.model.layer_norm, b.model.recurrent_p, b.model.emb_size) == ("lstm-cell", True, 0.3, 320)
    assert (b.model.head, b.model.num_sampled, b.model.dropout_masks, b.model.embed_dropout) == (
        "sampled", 8192, "step", "element")
    assert (b.optim.optimizer, b.optim.lr, b.optim.clip, b.optim.weight_decay) == ("adam", 1e-3, 0.0, 2e-6)
    assert b.train.precision == "fp16" and b.data.batch_size == 224


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["wt103", "wt103-openseq2seq", "wt103-qrnn"])
def test_a_wt103_preset_scaled_down_trains_on_the_cpu(tmp_path, capsys, preset):
    corpus = write_corpus(tmp_path / "c", lines=300)
    precision = ["--precision", "fp32"] if preset == "wt103-openseq2seq" else []  # fp16 is for CUDA
    run = tmp_path / "run"
    assert main(["-q", "train", "--preset", preset, "--data", str(corpus), "--out", str(run), *SCALED, *precision]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and all(math.isfinite(r["val_loss"]) for r in rows)
    results = json.loads((run / "results.json").read_text())
    assert math.isfinite(results["test"]["perplexity"])
