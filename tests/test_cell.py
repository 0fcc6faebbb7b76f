"""The step-by-step LSTM layer (cell.py, model.rnn=lstm-cell) and DropConnect on the input
matrix of the fused layer."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import write_corpus
from torch import nn

import awdlstm.cell as cell_module
import awdlstm.layers as layers_module
from awdlstm.cell import CellLSTM
from awdlstm.cli import main
from awdlstm.config import apply_overrides
from awdlstm.errors import ConfigError
from awdlstm.layers import WeightDropLSTM
from awdlstm.model import AWDLSTM
from awdlstm.presets import tiny

T, B, IN, H = 6, 3, 5, 4


def state(batch=B, hidden=H, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, batch, hidden, generator=gen), torch.randn(1, batch, hidden, generator=gen)


def reference(x, h, c, W, U, b, g_mask=None, ln=None):
    """The step written out with autograd ops, from the formulas of cell.py's docstring."""
    h, c, ys = h[0], c[0], []
    for t in range(x.size(0)):
        a = x[t] @ W.t() + h @ U.t() + (0 if b is None else b)
        ai, af, ag, ao = a.chunk(4, 1)
        if ln is not None:  # a normalisation per gate over its H units, then gain and shift
            gain, shift = ln["gates_weight"].chunk(4), ln["gates_bias"].chunk(4)
            ai, af, ag, ao = [(v - v.mean(1, keepdim=True)) / (v.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
                              * gain[k] + shift[k] for k, v in enumerate((ai, af, ag, ao))]
        g = torch.tanh(ag) * (1 if g_mask is None else g_mask[t])
        c = torch.sigmoid(af) * c + torch.sigmoid(ai) * g
        if ln is not None:
            c = (c - c.mean(1, keepdim=True)) / (c.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt() \
                * ln["cell_weight"] + ln["cell_bias"]
        h = torch.sigmoid(ao) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h, c


def test_with_every_option_off_it_is_nn_lstm():
    torch.manual_seed(0)
    layer, ref = CellLSTM(IN, H), nn.LSTM(IN, H)
    assert [n for n, _ in layer.named_parameters()] == [n.removesuffix("_l0") for n, _ in ref.named_parameters()]
    bound = 1 / H ** 0.5
    assert all(p.abs().max() <= bound for p in layer.parameters())
    with torch.no_grad():
        for name, p in layer.named_parameters():
            getattr(ref, name + "_l0").copy_(p)
    x = torch.randn(T, B, IN, requires_grad=True)
    h0, c0 = state()
    for mode in ("train", "eval"):
        getattr(layer, mode)(), getattr(ref, mode)()
        y, (h, c) = layer(x, (h0, c0))
        y_ref, (h_ref, c_ref) = ref(x, (h0, c0))
        for a, b in ((y, y_ref), (h, h_ref), (c, c_ref)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
        weights = torch.randn_like(y)
        grads = torch.autograd.grad((y * weights).sum() + c.sum(), [x, *layer.parameters()])
        grads_ref = torch.autograd.grad((y_ref * weights).sum() + c_ref.sum(), [x, *ref.parameters()])
        for a, b in zip(grads, grads_ref):
            assert torch.allclose(a, b, atol=1e-5)


def test_state_defaults_to_zeros_and_carries_over():
    torch.manual_seed(0)
    layer = CellLSTM(IN, H).eval()
    x = torch.randn(2 * T, B, IN)
    y, (h, c) = layer(x)
    y1, s1 = layer(x[:T], layer.init_state(B, x))
    y2, (h2, c2) = layer(x[T:], s1)
    assert torch.allclose(torch.cat([y1, y2]), y, atol=1e-6) and torch.allclose(c2, c, atol=1e-6)
    assert torch.equal(h, y[-1:]) and h.shape == c.shape == (1, B, H)


def record_drop_connect(monkeypatch, module):
    """Replace drop_connect in ``module`` by one that draws a visible mask and records it."""
    calls = []
    gen = torch.Generator().manual_seed(5)

    def fake(weight, p, training):
        if not training or p == 0:
            return weight
        mask = (torch.rand(weight.shape, generator=gen) >= p).to(weight.dtype) / (1 - p)
        calls.append((weight, p, mask))
        return weight * mask

    monkeypatch.setattr(module, "drop_connect", fake)
    return calls


def test_dropconnect_masks_one_per_call_and_constant_over_time(monkeypatch):
    calls = record_drop_connect(monkeypatch, cell_module)
    torch.manual_seed(0)
    layer = CellLSTM(IN, H, weight_p=0.5, input_weight_p=0.3).train()
    x = torch.randn(T, B, IN)
    h0, c0 = state()
    for draw in range(2):
        y, (h, c) = layer(x, (h0, c0))
        assert len(calls) == 2 * (draw + 1)  # one mask for W and one for U per call
        (w_ih, p_ih, m_ih), (w_hh, p_hh, m_hh) = calls[-2:]
        assert w_ih is layer.weight_ih and p_ih == 0.3 and w_hh is layer.weight_hh and p_hh == 0.5
        # the same masked matrices at every step reproduce the whole sequence
        y_ref, _, c_ref = reference(x, h0, c0, layer.weight_ih * m_ih, layer.weight_hh * m_hh,
                                    layer.bias_ih + layer.bias_hh)
        assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(c[0], c_ref, atol=1e-6)
    assert not torch.equal(calls[0][2], calls[2][2])  # a fresh mask on the next call
    layer.eval()
    layer(x, (h0, c0))
    assert len(calls) == 4


def test_fused_layer_drops_its_input_matrix_once_per_call(monkeypatch):
    calls = record_drop_connect(monkeypatch, layers_module)
    torch.manual_seed(0)
    fused = WeightDropLSTM(IN, H, weight_p=0.0, input_weight_p=0.4).train()
    x = torch.randn(T, B, IN)
    h0, c0 = state()
    y, (h, c) = fused(x, (h0, c0))
    ((weight, p, mask),) = calls
    assert weight is fused.weight_ih_l0 and p == 0.4
    y_ref, _, c_ref = reference(x, h0, c0, fused.weight_ih_l0 * mask, fused.weight_hh_l0,
                                fused.bias_ih_l0 + fused.bias_hh_l0)
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(c[0], c_ref, atol=1e-5)
    fused(x, (h0, c0))
    assert len(calls) == 2 and not torch.equal(calls[1][2], mask)
    # p = 0 on both matrices: the stock forward, bit for bit
    plain = WeightDropLSTM(IN, H, weight_p=0.0, input_weight_p=0.0).train()
    stock = nn.LSTM(IN, H)
    stock.load_state_dict(plain.state_dict())
    assert torch.equal(plain(x, (h0, c0))[0], stock(x, (h0, c0))[0]) and len(calls) == 2


def test_recurrent_dropout_acts_on_the_candidate_only_and_only_in_training():
    torch.manual_seed(0)
    p = 0.5
    layer = CellLSTM(IN, H, recurrent_p=p)
    with torch.no_grad():  # i = 1, f = 0, o = 1 whatever the input: c_t = d(g_t), h_t = tanh(c_t)
        layer.weight_ih[:H].zero_(), layer.weight_ih[H:2 * H].zero_(), layer.weight_ih[3 * H:].zero_()
        layer.weight_hh[:H].zero_(), layer.weight_hh[H:2 * H].zero_(), layer.weight_hh[3 * H:].zero_()
        layer.bias_ih.zero_(), layer.bias_hh.zero_()
        layer.bias_ih[:H] = 50.0
        layer.bias_ih[H:2 * H] = -50.0
        layer.bias_ih[3 * H:] = 50.0
    x = torch.randn(40, 8, IN)
    y, (h, c) = layer.eval()(x)
    g = torch.tanh(torch.cat([torch.zeros(1, 8, H), y[:-1]]) @ layer.weight_hh[2 * H:3 * H].t()
                   + x @ layer.weight_ih[2 * H:3 * H].t())
    assert torch.allclose(y, torch.tanh(g), atol=1e-5)  # eval: no dropout at all
    torch.manual_seed(1)
    y, (h, c) = layer.train()(x)
    # c_t = d(g_t) is recovered from h_t = tanh(c_t); each entry is 0 or g_t / (1 - p)
    c_all = torch.atanh(y.clamp(-1 + 1e-6, 1 - 1e-6))
    g = torch.tanh(torch.cat([torch.zeros(1, 8, H), y[:-1]]) @ layer.weight_hh[2 * H:3 * H].t()
                   + x @ layer.weight_ih[2 * H:3 * H].t())
    dropped = c_all.abs() < 1e-5
    assert torch.allclose(c_all[~dropped], g[~dropped] / (1 - p), atol=1e-3)
    assert 0.35 < dropped.float().mean() < 0.65
    # a fresh mask per step: the dropped units differ between steps of one sequence
    assert not all(torch.equal(dropped[0], dropped[t]) for t in range(1, 40))
    per_seq = CellLSTM(IN, H, recurrent_p=p, recurrent_per_sequence=True)
    per_seq.load_state_dict(layer.state_dict())
    y = per_seq.train()(x)[0]
    dropped = torch.atanh(y.clamp(-1 + 1e-6, 1 - 1e-6)).abs() < 1e-5
    assert all(torch.equal(dropped[0], dropped[t]) for t in range(1, 40))


def test_recurrent_dropout_gradient_matches_the_reference_with_the_same_mask(monkeypatch):
    masks = []
    original = cell_module.keep_mask

    def keep(like, shape, p):
        masks.append(original(like, shape, p))
        return masks[-1]

    monkeypatch.setattr(cell_module, "keep_mask", keep)
    torch.manual_seed(0)
    layer = CellLSTM(IN, H, recurrent_p=0.4).train()
    x = torch.randn(T, B, IN, requires_grad=True)
    h0, c0 = state()
    y, (h, c) = layer(x, (h0, c0))
    (mask,) = masks
    assert mask.shape == (T, B, H)
    y_ref, _, c_ref = reference(x, h0, c0, layer.weight_ih, layer.weight_hh, layer.bias_ih + layer.bias_hh, mask)
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(c[0], c_ref, atol=1e-6)
    grads = torch.autograd.grad(y.sum() + c.sum(), [x, layer.weight_hh])
    grads_ref = torch.autograd.grad(y_ref.sum() + c_ref.sum(), [x, layer.weight_hh])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, grads_ref))


def test_layer_norm_follows_the_tensorflow_cell():
    torch.manual_seed(0)
    layer = CellLSTM(IN, H, layer_norm=True)
    names = [n for n, _ in layer.named_parameters()]
    assert names == ["weight_ih", "weight_hh", "ln_gates_weight", "ln_gates_bias", "ln_cell_weight", "ln_cell_bias"]
    assert torch.equal(layer.ln_gates_bias, torch.tensor([0.0] * H + [1.0] * H + [0.0] * 2 * H))  # forget bias 1
    with torch.no_grad():  # gains and shifts away from their start, so each one is checked
        for p in (layer.ln_gates_weight, layer.ln_gates_bias, layer.ln_cell_weight, layer.ln_cell_bias):
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(T, B, IN, requires_grad=True)
    h0, c0 = state()
    y, (h, c) = layer(x, (h0, c0))
    ln = {k: getattr(layer, "ln_" + k) for k in ("gates_weight", "gates_bias", "cell_weight", "cell_bias")}
    y_ref, _, c_ref = reference(x, h0, c0, layer.weight_ih, layer.weight_hh, None, ln=ln)
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(c[0], c_ref, atol=1e-5)
    # each gate is normalised on its own: scaling one gate's rows of W and U changes nothing
    with torch.no_grad():
        layer.weight_ih[H:2 * H] *= 7.0
        layer.weight_hh[H:2 * H] *= 7.0
    assert torch.allclose(layer(x, (h0, c0))[0], y, atol=1e-4)


@pytest.mark.parametrize("options", [{}, {"recurrent_p": 0.3}, {"layer_norm": True},
                                     {"layer_norm": True, "recurrent_p": 0.3}])
def test_gradcheck_in_float64(options):
    torch.manual_seed(0)
    layer = CellLSTM(3, 2, **options).double().train()
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(1, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    params = list(layer.parameters())

    def fn(x, h0, c0, *ps):
        with torch.no_grad():
            for p, v in zip(params, ps):
                p.copy_(v)
        torch.manual_seed(7)  # the same recurrent-dropout mask on every evaluation
        out = torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], ps)),
                                         (x, (h0, c0)))
        y, (h, c) = out
        return y, h, c

    inputs = (x, h0, c0, *(p.detach().clone().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    for options in ({}, {"layer_norm": True}):
        a, b = CellLSTM(IN, H, **options), CellLSTM(IN, H, **options)
        b.load_state_dict(a.state_dict())
        x = torch.randn(T, B, IN)
        assert torch.equal(a.eval()(x)[0], b.eval()(x)[0])
    with pytest.raises(RuntimeError):  # a layer-normalised state dict does not fit a plain layer
        CellLSTM(IN, H).load_state_dict(CellLSTM(IN, H, layer_norm=True).state_dict())


def test_config_fields_and_their_errors():
    for override, message in (
            ("model.input_weight_p=1", "model.input_weight_p must be in [0, 1), got 1.0"),
            ("model.recurrent_p=-0.1", "model.recurrent_p must be in [0, 1), got -0.1"),
            ("model.recurrent_p=0.1", "model.recurrent_p needs model.rnn=lstm-cell; the lstm layer cannot apply it"),
            ("model.layer_norm=true", "model.layer_norm needs model.rnn=lstm-cell; the lstm layer cannot apply it")):
        with pytest.raises(ConfigError) as err:
            apply_overrides(tiny(), ["model.rnn=lstm", override]).validate()
        assert str(err.value) == message
    with pytest.raises(ConfigError, match="model.input_weight_p needs model.rnn=lstm or lstm-cell"):
        apply_overrides(tiny(), ["model.rnn=qrnn", "model.input_weight_p=0.2"]).validate()
    cfg = apply_overrides(tiny(), ["model.rnn=lstm-cell", "model.recurrent_p=0.25", "model.layer_norm=on",
                                   "model.input_weight_p=0.1"]).validate()
    model = AWDLSTM(cfg.model, 30)
    assert all(isinstance(r, CellLSTM) and r.layer_norm and r.recurrent_p == 0.25 and r.input_weight_p == 0.1
               and r.weight_p == cfg.model.weight_p for r in model.rnns)
    fused = AWDLSTM(apply_overrides(tiny(), ["model.input_weight_p=0.2"]).validate().model, 30)
    assert all(r.input_weight_p == 0.2 for r in fused.rnns)


CELL = ["--preset", "tiny", "--set", "model.rnn=lstm-cell", "--set", "model.emb_size=16",
        "--set", "model.hidden_size=24", "--set", "model.recurrent_p=0.1", "--set", "model.layer_norm=true",
        "--set", "model.input_weight_p=0.1", "--set", "data.batch_size=8", "--set", "data.bptt=10",
        "--set", "optim.check_every=6", "--no-eval"]


def test_a_tiny_cell_model_trains_and_resumes_through_the_cli(tmp_path):
    corpus = write_corpus(tmp_path / "c", lines=120)

    def train(out, *extra):
        assert main(["-q", "train", *CELL, "--data", str(corpus), "--out", str(out), *extra]) == 0
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    rows = train(tmp_path / "run", "--max-steps", "12")
    assert all(torch.isfinite(torch.tensor(r["val_loss"])) for r in rows if "val_loss" in r)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert any(k.endswith("ln_cell_weight") for k in state["model"])
    split = tmp_path / "split"
    train(split, "--max-steps", "7")
    assert main(["-q", "train", "--out", str(split), "--resume", "--max-steps", "12", "--no-eval"]) == 0
    resumed = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    key = [r["val_loss"] for r in rows if "val_loss" in r and not r.get("final")]
    assert key and key == [r["val_loss"] for r in resumed if "val_loss" in r and not r.get("final")]
