"""Dynamic evaluation: scoring before updating, lr = 0 as static evaluation, the update and
its statistics against hand computations, the cache on top, the command and the API."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import fake_run, write_corpus

from awdlstm.api import LanguageModel
from awdlstm.cache import CacheParams, cache_loss, model_trace
from awdlstm.cli import main
from awdlstm.config import DataConfig
from awdlstm.data import batchify, bptt_windows, load_corpus
from awdlstm.dynamic import (
    DynamicParams,
    GradStats,
    RMSDecayStep,
    dynamic_trace,
    gradient_stats,
    make_step,
    segment_scores,
    without_dropout,
)
from awdlstm.evaluate import evaluate
from awdlstm.loading import load_parts
from awdlstm.runtime import Runtime


@pytest.fixture(autouse=True)
def _one_thread():
    """Reading a text one segment at a time with a tiny model: a second thread only adds
    waiting (much of it when other processes share the cores)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyn")
    corpus = write_corpus(root / "corpus")
    run = fake_run(root / "run", corpus)
    model, vocab, cfg, _ = load_parts(run)
    data = load_corpus(cfg.data)
    stats = gradient_stats(model, data.train, batch_size=10)
    return run, model, data, stats


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- reading order


def test_lr_zero_is_static_evaluation(setup):
    _, model, data, stats = setup
    ids = data.test
    dyn = dynamic_trace(model, ids, stats, DynamicParams(lr=0.0, lam=0.002))
    ref = evaluate(model, batchify(ids, 1), DataConfig(bptt=70), Runtime(torch.device("cpu")))
    assert dyn.targets.numel() == ref.tokens
    assert -dyn.model_log_probs.mean().item() == pytest.approx(ref.loss, rel=1e-6)
    torch.testing.assert_close(dyn.model_log_probs, model_trace(model, ids).model_log_probs, atol=1e-5, rtol=0)
    # The decay alone leaves theta_0 as it is, bit for bit: no drift from rounding.
    frozen = dynamic_trace(model, ids, stats, DynamicParams(lr=0.0, lam=0.0))
    assert torch.equal(dyn.model_log_probs, frozen.model_log_probs)


def test_a_segment_is_scored_before_its_update_and_never_sees_later_text(setup):
    _, model, data, stats = setup
    params = DynamicParams(lr=3e-3, lam=0.002, bptt=5)  # big steps, so any peeking shows
    ids = data.test[:80].clone()
    base = dynamic_trace(model, ids, stats, params)
    static = model_trace(model, ids).model_log_probs
    # The first segment is the static model's; later ones have been adapted.
    torch.testing.assert_close(base.model_log_probs[:5], static[:5], atol=1e-5, rtol=0)
    assert (base.model_log_probs[5:] - static[5:]).abs().max() > 1e-3
    for k in (0, 3, 9):
        end = (k + 1) * params.bptt  # predictions 0 .. end - 1 read ids up to ids[end]
        changed = ids.clone()
        changed[end + 1 :] = (changed[end + 1 :] + 1) % model.vocab_size
        other = dynamic_trace(model, changed, stats, params)
        assert torch.equal(other.model_log_probs[:end], base.model_log_probs[:end])
        assert not torch.equal(other.model_log_probs[end:], base.model_log_probs[end:])


def test_the_model_handed_in_is_unchanged(setup):
    _, model, data, stats = setup
    before = state_copy(model)
    was_training = model.training
    dynamic_trace(model, data.test[:60], stats, DynamicParams(lr=1e-2), keep_hidden=True)
    gradient_stats(model, data.train[:300], batch_size=5)
    assert model.training == was_training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_without_dropout_zeroes_every_probability_and_keeps_weights(setup):
    _, model, _, _ = setup
    assert model.cfg.weight_p > 0 and model.cfg.embed_p > 0  # the fake run has dropout to remove
    quiet = without_dropout(model)
    probs = {k: v for k, v in vars(quiet.cfg).items() if k.endswith("_p")}
    assert probs and all(v == 0.0 for v in probs.values())
    assert quiet.training
    assert all(torch.equal(a, b) for a, b in zip(quiet.state_dict().values(), model.state_dict().values()))
    x = torch.randint(model.vocab_size, (7, 2))
    a = quiet.decoder(quiet(x).dropped_output)
    torch.testing.assert_close(quiet.decoder(quiet(x).dropped_output), a, rtol=0, atol=0)  # deterministic in train mode
    torch.testing.assert_close(a, model.decoder(model.eval()(x).dropped_output))


# ---------------------------------------------------------------------------- the update


def test_decay_rates_by_hand():
    stats = GradStats({"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0])}, tokens=10, batches=2)
    rates = stats.decay_rates(0.1)  # means 2 + 2 = 4
    torch.testing.assert_close(rates["a"], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(rates["b"], torch.tensor([0.5]))
    clipped = stats.decay_rates(2.0)  # clipped at 1 / lambda = 0.5
    torch.testing.assert_close(clipped["a"], torch.tensor([0.25, 0.5]))


def test_update_formula_by_hand():
    theta0 = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([[0.3]])]
    params = [t.clone() for t in theta0]
    rms = [torch.tensor([0.1, 0.2, 0.0]), torch.tensor([[1.0]])]
    decay = [torch.tensor([0.5, 1.0, 2.0]), torch.tensor([[0.25]])]
    lr, lam, eps = 0.01, 0.4, 1e-3
    step = RMSDecayStep(params, rms, decay, lr, lam, eps)
    moved = [torch.tensor([1.5, -1.0, 0.0]), torch.tensor([[-0.7]])]
    for p, m in zip(params, moved):
        p.copy_(m)
    grads = [torch.tensor([0.3, -0.1, 2.0]), torch.tensor([[5.0]])]
    step(grads)
    for p, m, t0, r, d, g in zip(params, moved, theta0, rms, decay, grads):
        want = m - lr * g / (r + eps) + lam * d * (t0 - m)
        torch.testing.assert_close(p, want)


def test_decay_alone_pulls_back_to_the_trained_weights():
    theta0 = [torch.tensor([1.0, -1.0, 2.0])]
    params = [theta0[0].clone()]
    decay = [torch.tensor([0.5, 1.0, 2.0])]
    step = RMSDecayStep(params, [torch.ones(3)], decay, 0.0, 0.1, 2e-5)
    params[0].copy_(torch.tensor([3.0, 0.0, -2.0]))
    dist = [(params[0] - theta0[0]).abs()]
    for _ in range(5):
        step([torch.full((3,), 7.0)])  # ignored at lr 0
        dist.append((params[0] - theta0[0]).abs())
    for a, b in zip(dist, dist[1:]):
        assert (b < a).all()
    torch.testing.assert_close(dist[-1], dist[0] * (1 - 0.1 * decay[0]) ** 5)


def test_the_tied_matrix_is_one_parameter_updated_once(setup):
    _, model, data, stats = setup
    assert model.cfg.tie_weights
    work = without_dropout(model)
    tensors, step = make_step(work, stats, DynamicParams(lr=1e-3, lam=0.0))
    assert sum(t is work.encoder.weight for t in tensors) == 1
    assert not any(t is work.decoder.weight and t is not work.encoder.weight for t in tensors)
    ids = data.test[:6]
    seg = segment_scores(work, ids[:5, None], ids[1:6], work.init_state(1))
    seg.nll.mean().backward()  # both uses of the matrix add into one gradient
    g = work.encoder.weight.grad.clone()
    before = work.encoder.weight.detach().clone()
    step([t.grad for t in tensors])
    want = before - 1e-3 * g / (stats.rms["encoder.weight"] + 2e-5)
    torch.testing.assert_close(work.decoder.weight.detach(), want)


def test_gradient_stats_against_a_plain_loop(setup):
    _, model, data, _ = setup
    ids = data.train[:400]
    stats = gradient_stats(model, ids, batch_size=4, bptt=5)
    assert "decoder.weight" not in stats.rms and "encoder.weight" in stats.rms  # tied: once
    # The same thing the slow way: eval mode (no dropout), .backward(), p.grad.
    ref = load_parts(setup[0])[0].eval()
    source = batchify(ids, 4)
    squares = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    state, batches = ref.init_state(4), 0
    for win in bptt_windows(source, DataConfig(bptt=5), gen=None):
        ref.zero_grad()
        out = ref(win.inputs, state)
        logits = ref.decoder(out.dropped_output)
        F.cross_entropy(logits.view(-1, ref.vocab_size), win.targets.reshape(-1)).backward()
        for n, p in ref.named_parameters():
            squares[n] += p.grad**2
        state = [tuple(t.detach() for t in layer) for layer in out.state]
        batches += 1
    assert stats.batches == batches and stats.tokens == (source.size(0) - 1) * 4
    for n, sq in squares.items():
        torch.testing.assert_close(stats.rms[n], (sq / batches).sqrt(), rtol=1e-4, atol=1e-7)
    assert GradStats.from_dict(stats.to_dict()).rms.keys() == stats.rms.keys()


def test_gradient_stats_need_two_tokens_a_stream(setup):
    from awdlstm.errors import DataError

    _, model, data, _ = setup
    with pytest.raises(DataError, match="gradstat-batch"):
        gradient_stats(model, data.train[:150], batch_size=100)


# ---------------------------------------------------------------------------- the cache on top


def test_dynamic_with_cache_is_cache_loss_of_the_adapted_trace(setup):
    run, model, data, stats = setup
    from awdlstm.dynamic import evaluate_dynamic

    ids = data.test
    params = CacheParams(50, 0.5, 0.2)
    at_zero = evaluate_dynamic(run, "test", lr=0.0, cache=True, window=50, theta=0.5, lam_cache=0.2,
                               gradstat_batch=10)
    static = model_trace(model, ids)
    assert at_zero["cache_perplexity"] == pytest.approx(math.exp(cache_loss(static, params)), rel=1e-9)
    assert at_zero["dynamic_cache_perplexity"] == pytest.approx(at_zero["cache_perplexity"], rel=1e-5)
    assert at_zero["perplexity"] == pytest.approx(at_zero["model_perplexity"], rel=1e-5)
    dyn = dynamic_trace(model, ids, stats, DynamicParams(lr=0.0), keep_hidden=True)
    torch.testing.assert_close(dyn.hidden, static.hidden, atol=1e-5, rtol=0)
    moving = evaluate_dynamic(run, "test", lr=1e-3, cache=True, window=50, theta=0.5, lam_cache=0.2,
                              gradstat_batch=10)
    adapted = dynamic_trace(model, ids, stats, DynamicParams(lr=1e-3), keep_hidden=True)
    assert moving["dynamic_cache_perplexity"] == pytest.approx(math.exp(cache_loss(adapted, params)), rel=1e-9)
    assert moving["dynamic_cache_perplexity"] != pytest.approx(at_zero["dynamic_cache_perplexity"], rel=1e-6)


# ---------------------------------------------------------------------------- the command and the API


def cli(capsys, *argv):
    capsys.readouterr()
    code = main(["-q", *map(str, argv)])
    return code, capsys.readouterr()


def test_cli_json_fields(setup, capsys):
    run = setup[0]
    code, out = cli(capsys, "dynamic-eval", run, "--json", "--cache", "--search", "--lrs", "0,1e-3",
                    "--lambdas", "0.002", "--limit", "120", "--gradstat-batch", "10")
    assert code == 0
    res = json.loads(out.out)
    for key in ("perplexity", "model_perplexity", "tokens", "lr", "lambda", "bptt", "eps", "cache_perplexity",
                "dynamic_cache_perplexity", "gradstat", "search"):
        assert key in res, key
    assert res["tokens"] == 119 and res["bptt"] == 5
    assert [(r["lr"], r["lambda"]) for r in res["search"]["grid"]] == [(0.0, 0.002), (1e-3, 0.002)]
    best = min(res["search"]["grid"], key=lambda r: r["loss"])
    assert (res["lr"], res["lambda"]) == (best["lr"], best["lambda"]) == (res["search"]["best"]["lr"], best["lambda"])
    assert res["search"]["grid"][0]["perplexity"] == pytest.approx(res["search"]["model_perplexity"], rel=1e-5)
    code, out = cli(capsys, "dynamic-eval", run, "--limit", "50", "--gradstat-batch", "10")
    assert code == 0 and "static" in out.out and "dynamic" in out.out and "cache" not in out.out


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr"),
    (["--lambda", "-0.1"], "--lambda"),
    (["--eps", "0"], "--eps"),
    (["--bptt", "0"], "--bptt"),
    (["--limit", "1"], "--limit"),
    (["--gradstat-tokens", "1"], "--gradstat-tokens"),
    (["--gradstat-batch", "0"], "--gradstat-batch"),
    (["--search", "--lrs", ""], "--lrs"),
    (["--search", "--lambdas", "1e-3,-1"], "--lambda"),
    (["--lrs", "1e-5"], "--search"),
    (["--window", "10"], "--cache"),
    (["--cache", "--lambda-cache", "2"], "--lambda"),
])
def test_cli_errors(setup, capsys, argv, message):
    code, out = cli(capsys, "dynamic-eval", setup[0], *argv)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_api_dynamic_perplexity(setup):
    run, _, data, stats = setup
    lm = LanguageModel.load(run)
    stats_here = lm.gradient_stats((data.path / "train.txt").read_text(), batch_size=10)
    assert stats_here.rms.keys() == stats.rms.keys()
    text = "the cat sat on the mat\nthe dog ran under the big table\n" * 6
    assert lm.dynamic_perplexity(text, stats_here, lr=0.0) == pytest.approx(lm.perplexity(text), rel=1e-5)
    # Repeated text: adapting to what was read makes the repeats likelier.
    assert lm.dynamic_perplexity(text, stats_here, lr=1e-3) < lm.perplexity(text)


# ---------------------------------------------------------------------------- on real text


@pytest.mark.slow
@pytest.mark.corpus
def test_dynamic_evaluation_lowers_a_trained_models_test_perplexity(tmp_path, small_ptb, capsys):
    """A tiny model trained for 300 steps on real PTB text; the authors' default settings,
    the statistics from the first 3,000 training tokens (--limit caps every split)."""
    run = tmp_path / "run"
    assert main(["-q", "train", "--preset", "tiny", "--no-eval", "--data", str(small_ptb), "--out", str(run),
                 "--max-steps", "300"]) == 0
    code, out = cli(capsys, "dynamic-eval", run, "--json", "--limit", "3000")
    assert code == 0
    res = json.loads(out.out)
    assert res["perplexity"] < res["model_perplexity"] < 2000


@pytest.mark.slow
def test_benchmark_smoke(setup, tmp_path):
    from benchmarks import dynamic_bench

    assert dynamic_bench.main([str(setup[0]), "--limit", "60", "--gradstat-tokens", "300", "--gradstat-batch", "10",
                               "--rounds", "1", "--profile-tokens", "20", "--threads", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*_dynamic-*.json")
    rec = json.loads(path.read_text())
    assert rec["tokens"] == 59 and rec["dynamic"]["seconds"] > 0 and rec["plain"]["seconds"] > 0
    assert rec["dynamic_over_plain"] == pytest.approx(rec["dynamic"]["seconds"] / rec["plain"]["seconds"])
    assert rec["profile_dynamic"] and rec["hardware"] and rec["versions"]["torch"]


@pytest.mark.gpu
def test_on_cuda_matches_the_cpu(setup):
    """cuDNN refuses the RNN backward pass in eval mode: the dropout-free copy runs in train
    mode, and its weights stay in cuDNN's flat layout through the in-place updates."""
    _, model, data, stats = setup
    params = DynamicParams(lr=1e-3)
    cpu = dynamic_trace(model, data.test[:100], stats, params, keep_hidden=True)
    gpu_model = load_parts(setup[0])[0].cuda()
    gpu = dynamic_trace(gpu_model, data.test[:100], stats, params, keep_hidden=True)
    torch.testing.assert_close(gpu.model_log_probs.cpu(), cpu.model_log_probs, atol=1e-3, rtol=0)
    gpu_stats = gradient_stats(gpu_model, data.train, batch_size=10)
    for name, rms in stats.rms.items():
        torch.testing.assert_close(gpu_stats.rms[name].cpu(), rms, atol=1e-5, rtol=1e-3)
