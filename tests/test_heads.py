"""Output heads: exactness of the split softmax, parity of the full head with release 0.1,
the sampled softmax against a naive reference, and how a head lives inside a model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.flop_counter import FlopCounterMode

from awdlstm.errors import ConfigError
from awdlstm.heads import (
    FullHead,
    SampledHead,
    SplitHead,
    build_head,
    check_cutoffs,
    default_cutoffs,
    log_uniform_log_prob,
    log_uniform_sample,
)


def make_decoder(vocab: int, hidden: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    dec = nn.Linear(hidden, vocab)
    nn.init.uniform_(dec.weight, -0.5, 0.5)
    nn.init.uniform_(dec.bias, -0.5, 0.5)
    return dec


def zipf_targets(n: int, vocab: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return log_uniform_sample(n, vocab, generator=gen)


class TinyLM(nn.Module):
    """Embedding tied to the decoder, and a head borrowing the decoder, as the model holds them."""

    def __init__(self, vocab: int, hidden: int, kind: str, cutoffs=None) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, hidden)
        self.decoder = nn.Linear(hidden, vocab)
        self.decoder.weight = self.encoder.weight
        self.head = build_head(kind, self.decoder, vocab, cutoffs, num_sampled=16)

    def forward(self, tokens, targets):
        return self.head.nll(self.encoder(tokens), targets)


# ------------------------------------------------------------------ cutoffs and build_head


def test_default_cutoffs_follow_the_original_table():
    assert default_cutoffs(10_000) == []
    assert default_cutoffs(75_000) == []
    assert default_cutoffs(75_001) == [2800, 20_000, 76_000]
    assert default_cutoffs(267_735) == [2800, 20_000, 76_000]
    assert default_cutoffs(500_000) == [2800, 20_000, 76_000]
    assert default_cutoffs(793_471) == [4200, 35_000, 180_000]


@pytest.mark.parametrize("cutoffs", [[0, 10], [10, 10], [20, 10], [10, 100], [-1], [5, 2.5], [True]])
def test_bad_cutoffs_are_one_line_config_errors(cutoffs):
    with pytest.raises(ConfigError) as err:
        check_cutoffs(cutoffs, 100)
    msg = str(err.value)
    assert "model.split_cutoffs" in msg and "\n" not in msg


def test_good_cutoffs_pass():
    assert check_cutoffs([1, 50, 99], 100) == [1, 50, 99]
    assert check_cutoffs([], 100) == []


def test_build_head_kinds_and_unknown_kind():
    dec = make_decoder(100_000, 4)
    assert type(build_head("full", dec, 100_000, None, 8)) is FullHead
    split = build_head("split", dec, 100_000, None, 8)
    assert isinstance(split, SplitHead) and split.cutoffs == [2800, 20_000, 76_000]
    assert build_head("split", dec, 100_000, [10], 8).cutoffs == [10]
    assert build_head("sampled", dec, 100_000, None, 8).num_sampled == 8
    with pytest.raises(ConfigError) as err:
        build_head("adaptive", dec, 100_000, None, 8)
    msg = str(err.value)
    assert "model.head" in msg and "full, split, sampled" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="model.num_sampled"):
        build_head("sampled", dec, 100_000, None, 0)


# ------------------------------------------------------------------ full head


def test_full_head_is_bitwise_release_0_1():
    V, H, T, B = 97, 12, 7, 5
    dec = make_decoder(V, H)
    hidden = torch.randn(T, B, H)
    targets = torch.randint(V, (T, B))
    # Release 0.1: logits = model.decoder(dropped); F.cross_entropy(logits.float().view(-1, V), targets)
    logits = dec(hidden)
    ref_mean = F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1))
    ref_none = F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1), reduction="none")
    nll = FullHead(dec).nll(hidden.view(-1, H), targets.reshape(-1))
    assert nll.dtype == torch.float32 and nll.shape == (T * B,)
    assert torch.equal(nll, ref_none)
    assert torch.equal(nll.mean(), ref_mean)


# ------------------------------------------------------------------ split head


@pytest.fixture
def split_case():
    V, H, N = 300, 16, 400
    dec = make_decoder(V, H)
    head = SplitHead(dec, [40, 120, 250])
    torch.manual_seed(3)
    hidden = torch.randn(N, H)
    targets = zipf_targets(N, V)
    return head, hidden, targets


def test_split_log_probs_are_a_distribution(split_case):
    head, hidden, _ = split_case
    lp = head.log_probs(hidden)
    assert lp.shape == (hidden.size(0), head.vocab_size) and lp.dtype == torch.float32
    assert torch.allclose(lp.logsumexp(dim=1), torch.zeros(hidden.size(0)), atol=1e-5)


def test_split_nll_matches_log_probs(split_case):
    head, hidden, targets = split_case
    # every cluster has targets, so every path of nll is exercised
    cluster = torch.bucketize(targets, torch.tensor(head.cutoffs), right=True)
    assert set(cluster.tolist()) == {0, 1, 2, 3}
    expected = -head.log_probs(hidden).gather(1, targets.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(head.nll(hidden, targets), expected, atol=1e-5, rtol=0)


def test_split_without_cutoffs_is_the_full_head():
    V, H, N = 50, 8, 30
    dec = make_decoder(V, H)
    hidden, targets = torch.randn(N, H), torch.randint(V, (N,))
    split, full = SplitHead(dec, []), FullHead(dec)
    assert torch.equal(split.nll(hidden, targets), full.nll(hidden, targets))
    assert torch.equal(split.log_probs(hidden), full.log_probs(hidden))


def test_split_gradients_reach_tail_rows_and_only_the_used_decoder_rows():
    V, H = 300, 16
    dec = make_decoder(V, H)
    head = SplitHead(dec, [40, 120, 250])
    torch.manual_seed(4)
    hidden = torch.randn(6, H, requires_grad=True)
    targets = torch.tensor([3, 7, 50, 60, 260, 299])  # head, cluster 1, cluster 3; none in 2
    head.nll(hidden, targets).sum().backward()
    g = dec.weight.grad
    assert g[:40].abs().sum(1).gt(0).all()  # head words: every row in the head softmax
    assert g[40:120].abs().sum(1).gt(0).all()
    assert g[120:250].abs().sum() == 0  # cluster 2 had no target: never computed
    assert g[250:].abs().sum(1).gt(0).all()
    assert dec.bias.grad[120:250].abs().sum() == 0 and dec.bias.grad[250:].abs().gt(0).all()
    assert head.tail_weight.grad.abs().sum(1).gt(0).all()
    assert head.tail_bias.grad.abs().gt(0).all()
    assert hidden.grad.abs().sum(1).gt(0).all()


def test_split_nll_gradients_match_autograd_through_log_probs(split_case):
    head, hidden, targets = split_case
    dec = head.decoder
    params = [dec.weight, dec.bias, head.tail_weight, head.tail_bias]
    weights = torch.rand(targets.numel())  # an uneven incoming gradient
    h = hidden.clone().requires_grad_()
    (head.nll(h, targets) * weights).sum().backward()
    written = [h.grad] + [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    h2 = hidden.clone().requires_grad_()
    nll = -head.log_probs(h2).gather(1, targets.unsqueeze(1)).squeeze(1)
    (nll * weights).sum().backward()
    for got, want in zip(written, [h2.grad] + [p.grad for p in params]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_split_nll_costs_only_the_clusters_of_the_targets(split_case):
    head, hidden, targets = split_case
    N, H = hidden.shape
    with FlopCounterMode(display=False) as fc:
        head.nll(hidden, targets)
    counts = [int(((targets >= a) & (targets < b)).sum()) for a, b in zip(head.splits[1:], head.splits[2:])]
    sizes = [b - a for a, b in zip(head.splits[1:], head.splits[2:])]
    expected = 2 * H * (N * (head.head_size + len(head.cutoffs)) + sum(n * s for n, s in zip(counts, sizes)))
    assert fc.get_total_flops() == expected
    assert expected < 0.6 * 2 * H * N * head.vocab_size


def test_split_under_bf16_autocast_is_fp32_and_close(split_case):
    head, hidden, targets = split_case
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head.nll(hidden.bfloat16(), targets)
        lp = head.log_probs(hidden.bfloat16())
    assert low.dtype == torch.float32 and lp.dtype == torch.float32
    torch.testing.assert_close(low, head.nll(hidden, targets), atol=0.1, rtol=0.02)
    h = hidden.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head.nll(h, targets).mean()
    loss.backward()
    assert h.grad.dtype == torch.bfloat16 and head.decoder.weight.grad.dtype == torch.float32
    grad_bf16 = head.decoder.weight.grad.clone()
    head.decoder.weight.grad = None
    head.nll(hidden, targets).mean().backward()
    assert F.cosine_similarity(grad_bf16.flatten(), head.decoder.weight.grad.flatten(), dim=0) > 0.99
    assert torch.allclose(lp.logsumexp(dim=1), torch.zeros(hidden.size(0)), atol=1e-4)


# ------------------------------------------------------------------ the head inside a model


@pytest.mark.parametrize("kind", ["full", "split", "sampled"])
def test_head_does_not_register_the_decoder(kind):
    model = TinyLM(100, 8, kind, cutoffs=[10, 40])
    names = [n for n, _ in model.named_parameters()]
    assert "decoder.weight" not in names  # tied: listed once, as the embedding
    assert {"encoder.weight", "decoder.bias"} <= set(names)
    assert not any(n.startswith("head.") and "decoder" in n for n in names)
    keys = set(model.state_dict())
    assert {"encoder.weight", "decoder.weight", "decoder.bias"} <= keys
    extra = {"head.tail_weight", "head.tail_bias"} if kind == "split" else set()
    assert keys - {"encoder.weight", "decoder.weight", "decoder.bias"} == extra
    assert list(model.head.children()) == []


@pytest.mark.parametrize("kind", ["full", "split", "sampled"])
def test_deepcopy_and_averaged_model_keep_the_head_on_the_copy(kind):
    model = TinyLM(100, 8, kind, cutoffs=[10, 40])
    clone = copy.deepcopy(model)
    assert clone.head.decoder is clone.decoder and clone.decoder is not model.decoder
    assert clone.decoder.weight is clone.encoder.weight
    avg = AveragedModel(model)
    assert avg.module.head.decoder is avg.module.decoder
    # the copy's head follows the copy's weights, not the original's
    h = torch.randn(3, 8)
    before = model.head.log_probs(h)
    assert torch.equal(clone.head.log_probs(h), before)
    with torch.no_grad():
        clone.decoder.bias[:5].add_(3.0)  # a uniform shift would not change a softmax
    assert torch.equal(model.head.log_probs(h), before)
    assert not torch.allclose(clone.head.log_probs(h), before, atol=1e-3)


@pytest.mark.parametrize("overwrite", [False, True])
def test_to_moves_what_the_head_sees(overwrite):
    old = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    try:
        model = TinyLM(100, 8, "split", cutoffs=[10, 40]).to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(old)
    assert model.head.decoder is model.decoder
    assert model.head.decoder.weight.dtype == torch.float64 and model.head.tail_weight.dtype == torch.float64
    assert model.decoder.weight is model.encoder.weight or overwrite
    nll = model(torch.tensor([1, 2, 3]), torch.tensor([4, 50, 99]))
    assert nll.shape == (3,) and torch.isfinite(nll).all()


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["full", "split", "sampled"])
def test_heads_on_cuda_under_bf16(kind):
    model = TinyLM(1000, 32, kind, cutoffs=[100, 400]).cuda()
    tokens = torch.randint(1000, (64,), device="cuda")
    targets = zipf_targets(64, 1000).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        nll = model(tokens, targets)
        lp = model.head.log_probs(model.encoder(tokens))
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()
    nll.mean().backward()
    assert model.encoder.weight.grad is not None
    assert torch.allclose(lp.float().logsumexp(1), torch.zeros(64, device="cuda"), atol=1e-4)


# ------------------------------------------------------------------ sampled head


def test_log_uniform_distribution_and_sampler():
    V = 30
    lp = log_uniform_log_prob(torch.arange(V), V)
    assert math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-6)
    assert (lp[1:] < lp[:-1]).all()  # more frequent ids are likelier
    ids = log_uniform_sample(200_000, V, generator=torch.Generator().manual_seed(0))
    assert ids.min() >= 0 and ids.max() < V
    freq = torch.bincount(ids, minlength=V).double() / ids.numel()
    p = lp.double().exp()
    # binomial standard error per id; 5 sigma
    assert ((freq - p).abs() < 5 * (p * (1 - p) / ids.numel()).sqrt()).all()


def test_sampled_head_in_eval_is_the_full_head():
    V, H, N = 200, 8, 40
    dec = make_decoder(V, H)
    hidden, targets = torch.randn(N, H), torch.randint(V, (N,))
    head = SampledHead(dec, num_sampled=16).eval()
    assert torch.equal(head.nll(hidden, targets), FullHead(dec).nll(hidden, targets))
    assert torch.equal(head.train().log_probs(hidden), FullHead(dec).log_probs(hidden))


def test_sampled_loss_matches_a_naive_reference():
    V, H, N, S = 60, 8, 24, 40
    dec = make_decoder(V, H)
    hidden = torch.randn(N, H)
    targets = zipf_targets(N, V)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    loss = SampledHead(dec, S, generator=gen).train().nll(hidden, targets)
    sampled = log_uniform_sample(S, V, generator=torch.Generator().set_state(state))
    z = dec(hidden).detach().double()  # (N, V)
    q = lambda k: (math.log(k + 2) - math.log(k + 1)) / math.log(V + 1)
    hits = 0
    for i in range(N):
        t = int(targets[i])
        row = [z[i, t].item() - math.log(S * q(t))]
        for k in sampled.tolist():
            hits += k == t
            row.append(-math.inf if k == t else z[i, k].item() - math.log(S * q(k)))
        ref = -(row[0] - math.log(sum(math.exp(x) for x in row)))
        assert math.isclose(loss[i].item(), ref, rel_tol=1e-4, abs_tol=1e-4), (i, loss[i].item(), ref)
    assert hits > 0  # the case exercised accidental hits


def test_sampled_loss_converges_to_its_limit_with_many_samples():
    # With S samples the normaliser sum_j exp(z_j) / (S P(j)) over candidates estimates
    # sum_{j != target} exp(z_j), so the loss tends to -z_t + log(exp(z_t) + S P(t) sum_{j != t} exp(z_j)).
    V, H, N, S = 20, 8, 32, 400_000
    dec = make_decoder(V, H)
    hidden, targets = torch.randn(N, H), torch.randint(V, (N,))
    loss = SampledHead(dec, S, generator=torch.Generator().manual_seed(0)).train().nll(hidden, targets)
    z = dec(hidden).detach().double()
    zt = z.gather(1, targets.unsqueeze(1)).squeeze(1)
    others = z.exp().sum(1) - zt.exp()
    sp = S * log_uniform_log_prob(targets, V).double().exp()
    limit = -zt + torch.log(zt.exp() + sp * others)
    torch.testing.assert_close(loss.double(), limit, atol=0.03, rtol=0)


def test_sampled_gradient_points_like_the_full_gradient():
    V, H, N, S = 50, 16, 64, 5000
    dec = make_decoder(V, H)
    hidden, targets = torch.randn(N, H), zipf_targets(N, V)
    SampledHead(dec, S, generator=torch.Generator().manual_seed(0)).train().nll(hidden, targets).mean().backward()
    sampled = torch.cat([dec.weight.grad.flatten(), dec.bias.grad])
    dec.zero_grad()
    FullHead(dec).nll(hidden, targets).mean().backward()
    full = torch.cat([dec.weight.grad.flatten(), dec.bias.grad])
    assert torch.isfinite(sampled).all()
    assert F.cosine_similarity(sampled, full, dim=0) > 0.95


def test_sampled_draws_from_the_global_rng_without_a_generator():
    V, H, N = 500, 8, 10
    head = SampledHead(make_decoder(V, H), 64).train()
    hidden, targets = torch.randn(N, H), torch.randint(V, (N,))
    torch.manual_seed(11)
    a = head.nll(hidden, targets)
    torch.manual_seed(11)
    b = head.nll(hidden, targets)
    c = head.nll(hidden, targets)
    assert torch.equal(a, b) and not torch.equal(b, c)


# ------------------------------------------------------------------ the benchmark runner


@pytest.mark.slow
def test_heads_benchmark_runs_and_records_everything(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, "-m", "benchmarks.heads", "--vocab", "3000", "--emb", "8", "--bptt", "4",
                           "--batch-size", "2", "--cutoffs", "100,1000", "--num-sampled", "32", "--steps", "1",
                           "--warmup", "1", "--rounds", "1", "--memory-steps", "1", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    rec = json.loads(path.read_text())
    assert set(rec["train"]) == set(rec["memory"]) == {"full", "split", "sampled"}
    for kind, r in rec["train"].items():
        assert r["tokens_per_s"] > 0 and math.isfinite(r["loss_last"]) and "cpu_per_wall" in r
        assert rec["memory"][kind]["extra_mib"] >= 0
    assert rec["ratios"]["split"]["speed_over_full"] == pytest.approx(
        rec["train"]["split"]["tokens_per_s"] / rec["train"]["full"]["tokens_per_s"], rel=1e-2)
    assert rec["heads_config"]["cutoffs"] == [100, 1000] and rec["hardware"] and rec["versions"]["torch"]
