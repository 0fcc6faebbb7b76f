"""The neural cache pointer: the vectorised code against a per-token loop over explicit
vocabulary distributions, its edge cases, and the `awdlstm cache` command."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import fake_run, run_cli, small_config, write_corpus

from awdlstm.cache import (
    CacheParams,
    cache_log_probs,
    cache_loss,
    grid_search,
    mix,
    model_trace,
    naive_cache_log_probs,
)
from awdlstm.config import DataConfig
from awdlstm.evaluate import evaluate
from awdlstm.model import AWDLSTM
from awdlstm.runtime import Runtime


def random_inputs(n=40, dim=6, vocab=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=gen)
    # A small vocabulary, so most targets were seen in the window (many cache hits).
    targets = torch.randint(vocab, (n,), generator=gen)
    log_probs = F.log_softmax(torch.randn(n, vocab, generator=gen), dim=-1)
    return hidden, targets, log_probs


@pytest.mark.parametrize("window", [1, 2, 7, 39, 40, 100])
@pytest.mark.parametrize("chunk, block", [(1, 1), (5, 2), (512, 64), (16, 16)])
def test_vectorised_equals_naive(window, chunk, block):
    hidden, targets, log_probs = random_inputs()
    model_lp = log_probs.gather(1, targets[:, None])[:, 0]
    thetas = [0.0, 0.7, 3.0]
    fast = cache_log_probs(hidden, targets, window, thetas, chunk=chunk, block=block)
    for theta, cache_lp in zip(thetas, fast):
        for lam in (0.0, 0.25, 1.0):
            got = mix(model_lp, cache_lp, lam)
            want = naive_cache_log_probs(hidden.double(), targets, log_probs.double(), window, theta, lam)
            assert torch.equal(torch.isfinite(got), torch.isfinite(want))  # lambda = 1 and no hit: p = 0
            ok = torch.isfinite(want)
            torch.testing.assert_close(got[ok], want[ok].double(), atol=1e-5, rtol=0)


def test_naive_start_offset_matches_whole():
    hidden, targets, log_probs = random_inputs()
    whole = naive_cache_log_probs(hidden, targets, log_probs, 5, 1.0, 0.3)
    parts = torch.cat([naive_cache_log_probs(hidden, targets, log_probs[s : s + 13], 5, 1.0, 0.3, start=s)
                       for s in range(0, 40, 13)])
    torch.testing.assert_close(parts, whole)


def test_cache_distribution_sums_to_one_over_the_vocabulary():
    """At the last position the target is in no later cache, so it can be set to every
    word in turn: p_cache summed over all words is 1."""
    hidden, targets, _ = random_inputs(n=25, vocab=6)
    total = 0.0
    for w in range(6):
        t = targets.clone()
        t[-1] = w
        total += cache_log_probs(hidden, t, 10, [0.8])[0, -1].exp().item()
    assert total == pytest.approx(1.0, abs=1e-6)


def test_window_holds_exactly_the_previous_w_positions():
    """Position 5 with W = 2 sees positions 3 and 4 only (their next words)."""
    hidden = torch.zeros(6, 2)  # equal scores: p_cache is the share of matching positions
    targets = torch.tensor([7, 7, 7, 1, 7, 7])
    lp = cache_log_probs(hidden, targets, 2, [1.0])[0]
    assert lp[5].exp().item() == pytest.approx(0.5)  # targets[3] = 1, targets[4] = 7
    assert lp[4].exp().item() == pytest.approx(0.5)  # positions 2 and 3
    assert lp[1].exp().item() == pytest.approx(1.0)  # only position 0 exists yet
    assert lp[0].item() == -math.inf  # empty cache...
    assert mix(torch.full((6,), -2.0), lp, 0.5)[0].item() == -2.0  # ...so the model alone


def test_lambda_zero_is_the_model_and_the_trace_is_evaluate_at_batch_one(tmp_path):
    corpus = write_corpus(tmp_path / "c")
    cfg = small_config(corpus)
    torch.manual_seed(0)
    model = AWDLSTM(cfg.model, 20).eval()
    ids = torch.randint(20, (150,))
    trace = model_trace(model, ids, seq_len=17)
    # The state is carried: the same as one forward pass over the whole stream.
    with torch.no_grad():
        full = model(ids[:-1, None])
    torch.testing.assert_close(trace.hidden, full.raw_output[:, 0], atol=1e-5, rtol=1e-5)
    model_loss = -trace.model_log_probs.mean().item()
    assert cache_loss(trace, CacheParams(30, 1.0, 0.0)) == pytest.approx(model_loss, abs=1e-12)
    ref = evaluate(model, ids[:, None], DataConfig(bptt=11), Runtime(torch.device("cpu")))
    assert ref.tokens == trace.targets.numel()
    assert model_loss == pytest.approx(ref.loss, rel=1e-5)


def test_grid_search_finds_the_best_setting():
    hidden, targets, log_probs = random_inputs(n=60)
    from awdlstm.cache import Trace

    trace = Trace(hidden, targets, log_probs.gather(1, targets[:, None])[:, 0].double())
    rows = grid_search(trace, [3, 20], [0.0, 0.5, 2.0], [0.0, 0.1, 0.5])
    assert len(rows) == 18
    best = min(rows, key=lambda r: r["loss"])
    assert cache_loss(trace, CacheParams(best["window"], best["theta"], best["lambda"])) == pytest.approx(best["loss"])
    model_only = [r["loss"] for r in rows if r["lambda"] == 0]
    assert max(model_only) - min(model_only) < 1e-12  # lambda = 0: the window and theta do not matter


# ---------------------------------------------------------------------------- the command


def test_cache_command(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c")
    run = fake_run(tmp_path / "run", corpus)
    code, out, _ = run_cli(capsys, "cache", run, "--window", 20, "--theta", 0.5, "--lambda", 0.2, "--json")
    res = json.loads(out)
    assert code == 0 and (res["window"], res["theta"], res["lambda"]) == (20, 0.5, 0.2)
    code, out, _ = run_cli(capsys, "evaluate", run, "--split", "test", "--batch-size", 1, "--json")
    assert res["tokens"] == json.loads(out)["tokens"]
    assert res["model_perplexity"] == pytest.approx(json.loads(out)["perplexity"], rel=1e-5)
    code, out, _ = run_cli(capsys, "cache", run, "--lambda", 0, "--json")
    res = json.loads(out)
    assert res["window"] == 500 and res["perplexity"] == pytest.approx(res["model_perplexity"], rel=1e-12)


def test_cache_search(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c")
    run = fake_run(tmp_path / "run", corpus)
    code, out, _ = run_cli(capsys, "cache", run, "--search", "--thetas", "0.1,1", "--lambdas", "0,0.3,0.6",
                           "--windows", "5,50", "--json")
    res = json.loads(out)
    best = res["search"]["best"]
    assert code == 0 and res["search"]["settings"] == 12
    assert best["loss"] == min(r["loss"] for r in res["search"]["grid"])
    assert (res["window"], res["theta"], res["lambda"]) == (best["window"], best["theta"], best["lambda"])
    assert res["split"] == "test"
    code, out, _ = run_cli(capsys, "cache", run, "--search", "--thetas", "0.5", "--lambdas", "0.1", "--window", 7)
    assert code == 0 and "best window 7, theta 0.5, lambda 0.1" in out
    assert out.strip().splitlines()[-1].startswith("test:")


@pytest.mark.parametrize("argv, message", [
    (["--window", "0"], "--window must be an integer >= 1, got 0"),
    (["--theta", "-1"], "--theta must be >= 0, got -1.0"),
    (["--lambda", "1.5"], "--lambda must be in [0, 1], got 1.5"),
    (["--lambda", "-0.1"], "--lambda must be in [0, 1], got -0.1"),
    (["--search", "--lambdas", "0,2"], "--lambda must be in [0, 1], got 2.0"),
    (["--search", "--thetas", "a,b"], "--thetas expects comma-separated floats, like 1,2,3; got 'a,b'"),
    (["--thetas", "1,2"], "grids for --search; add --search"),
    (["--limit", "1"], "--limit must be >= 2"),
])
def test_cache_bad_values(tmp_path, capsys, argv, message):
    run = fake_run(tmp_path / "run", write_corpus(tmp_path / "c"))
    code, _, err = run_cli(capsys, "cache", run, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cache_run_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "cache", tmp_path / "empty")
    assert code == 2 and len(err) == 1 and "no best.pt" in err[0]
