"""The QRNN layer and its ForgetMult recurrence (awdlstm.qrnn)."""

import copy

import pytest
import torch

from awdlstm.errors import ConfigError
from awdlstm.qrnn import QRNNLayer, forget_mult


def reference(f, z, c0):
    """The recurrence step by step, plain autograd."""
    c = torch.zeros_like(f[0]) if c0 is None else c0
    out = []
    for t in range(f.size(0)):
        c = f[t] * z[t] + (1 - f[t]) * c
        out.append(c)
    return torch.stack(out)


def gates(T, B=3, H=5, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f = torch.rand(T, B, H, generator=gen, dtype=dtype).requires_grad_()
    z = (2 * torch.rand(T, B, H, generator=gen, dtype=dtype) - 1).requires_grad_()
    c0 = torch.randn(B, H, generator=gen, dtype=dtype).requires_grad_()
    return f, z, c0


@pytest.mark.parametrize("T", [1, 2, 35, 200])
def test_forget_mult_matches_the_step_by_step_loop(T):
    f, z, c0 = gates(T, B=4, H=7, seed=T)
    grad = torch.randn(T, 4, 7, generator=torch.Generator().manual_seed(1))
    ours = forget_mult(f, z, c0)
    ref = reference(f, z, c0)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(ours, (f, z, c0), grad)
    g_ref = torch.autograd.grad(ref, (f, z, c0), grad)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_forget_mult_passes_gradcheck_in_float64():
    f, z, c0 = gates(6, B=2, H=3, dtype=torch.float64)
    with torch.no_grad():
        f.clamp_(0.05, 0.95)  # keep the finite differences away from f's interesting edges
    assert torch.autograd.gradcheck(forget_mult, (f, z, c0))


def test_forget_mult_gradient_through_non_contiguous_output_use():
    # The gradient arriving at the output may be non-contiguous (here a transpose's).
    f, z, c0 = gates(5)
    w = torch.randn(5, 5)
    (forget_mult(f, z, c0).transpose(0, 2) @ w).sum().backward()
    gf = f.grad.clone()
    f.grad = None
    (reference(f, z, c0).transpose(0, 2) @ w).sum().backward()
    torch.testing.assert_close(gf, f.grad)


def test_forget_mult_without_c0_starts_from_zeros():
    f, z, _ = gates(9)
    torch.testing.assert_close(forget_mult(f, z), forget_mult(f, z, torch.zeros(3, 5)))
    torch.testing.assert_close(forget_mult(f, z), reference(f, z, None))


def test_forget_mult_keeps_the_input_dtype_and_computes_half_inputs_in_fp32():
    f, z, c0 = gates(50)
    fb, zb = f.detach().bfloat16(), z.detach().bfloat16()
    out = forget_mult(fb, zb, c0.detach())
    assert out.dtype == torch.bfloat16
    exact = reference(fb.float(), zb.float(), c0.detach())  # same inputs, fp32 arithmetic
    torch.testing.assert_close(out, exact.bfloat16(), rtol=0, atol=0)


def test_forget_mult_rejects_mismatched_shapes():
    f, z, c0 = gates(4)
    with pytest.raises(ValueError, match="one shape"):
        forget_mult(f, z[:3])
    with pytest.raises(ValueError, match="c0"):
        forget_mult(f, z, c0[:2])


@pytest.mark.gpu
def test_forget_mult_on_cuda_under_bf16_autocast_matches_fp32():
    f, z, c0 = (t.detach().cuda().requires_grad_() for t in gates(200, B=8, H=64))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fb, zb = f.bfloat16(), z.bfloat16()  # as a bf16 linear layer would hand them over
        out = forget_mult(fb, zb, c0)
    assert out.dtype == torch.bfloat16
    ref = reference(fb.float(), zb.float(), c0)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    grad = torch.randn_like(ref)
    g_ours = torch.autograd.grad(out.float(), (f, z, c0), grad)
    g_ref = torch.autograd.grad(ref, (f, z, c0), grad)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------- the layer


def layer(window=2, weight_p=0.0, zoneout_p=0.0, seed=0):
    torch.manual_seed(seed)
    return QRNNLayer(6, 8, window=window, weight_p=weight_p, zoneout_p=zoneout_p)


def test_layer_shapes_and_state_keys():
    for window in (1, 2, 3):
        m = layer(window)
        y, (c, x_prev) = m(torch.randn(7, 4, 6))
        assert y.shape == (7, 4, 8) and c.shape == (1, 4, 8) and x_prev.shape == (window - 1, 4, 6)
        assert m.linear.in_features == window * 6 and m.linear.out_features == 3 * 8
        assert set(m.state_dict()) == {"linear.weight", "linear.bias"}


def test_layer_computes_the_qrnn_formulas():
    m = layer(window=2).eval()
    x, state = torch.randn(5, 2, 6), m.init_state(2, torch.empty(0))
    x_prev = torch.randn(1, 2, 6)
    c0 = torch.randn(1, 2, 8)
    y, (c_last, _) = m(x, (c0, x_prev))
    source = torch.cat([torch.cat([x_prev, x[:-1]]), x], dim=2)  # [x_{t-1}, x_t]
    zg, fg, og = (source @ m.linear.weight.T + m.linear.bias).chunk(3, dim=2)
    c = reference(torch.sigmoid(fg), torch.tanh(zg), c0[0])
    torch.testing.assert_close(y, torch.sigmoid(og) * c)
    torch.testing.assert_close(c_last, c[-1:])
    assert state[0].abs().sum() == 0 and state[1].shape == (1, 2, 6)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_two_halves_with_the_state_carried_equal_the_whole(window):
    m = layer(window).eval()
    x = torch.randn(10, 3, 6)
    whole, (c_w, xp_w) = m(x)
    first, state = m(x[:4])
    second, (c_h, xp_h) = m(x[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(c_h, c_w)
    torch.testing.assert_close(xp_h, xp_w)
    torch.testing.assert_close(xp_w, x[10 - (window - 1):])


def test_window_two_uses_the_carried_input():
    m = layer(2).eval()
    x = torch.randn(4, 3, 6)
    c0 = torch.zeros(1, 3, 8)
    y_zero, _ = m(x, (c0, torch.zeros(1, 3, 6)))
    y_prev, _ = m(x, (c0, torch.randn(1, 3, 6)))
    assert not torch.allclose(y_zero[0], y_prev[0])  # the first step sees x_prev


def test_state_is_not_detached_by_the_layer():
    m = layer(2)
    x = torch.randn(4, 3, 6, requires_grad=True)
    _, (c, x_prev) = m(x)
    assert c.requires_grad and x_prev.requires_grad
    x_prev.sum().backward()
    assert x.grad[-1].abs().sum() > 0 and x.grad[:-1].abs().sum() == 0


def test_any_batch_size_works_with_its_own_state():
    m = layer(2).eval()
    for batch in (1, 5, 11):
        x = torch.randn(3, batch, 6)
        y, state = m(x, m.init_state(batch, x))
        assert y.shape == (3, batch, 8)
        y2, _ = m(x, state)
        assert y2.shape == (3, batch, 8)
    with pytest.raises(ValueError, match="state for batch 2"):
        m(torch.randn(3, 2, 6), m.init_state(3, x))


def test_init_state_follows_like():
    m = layer(3)
    c, x_prev = m.init_state(4, torch.empty(0, dtype=torch.float64))
    assert c.dtype == x_prev.dtype == torch.float64
    assert c.shape == (1, 4, 8) and x_prev.shape == (2, 4, 6)
    assert c.abs().sum() == 0 and x_prev.abs().sum() == 0
    _, x_prev1 = layer(1).init_state(4, torch.empty(0))
    assert x_prev1.shape == (0, 4, 6)


def test_weight_drop_leaves_weights_untouched_and_acts_only_in_training():
    m = layer(2, weight_p=0.5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(5, 3, 6)
    m.train()
    y_train, _ = m(x)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    m.eval()
    y_eval, _ = m(x)
    plain = copy.deepcopy(m)
    plain.weight_p = 0.0
    torch.testing.assert_close(y_eval, plain(x)[0])
    assert not torch.allclose(y_train, y_eval)


def test_weight_drop_draws_one_mask_per_call():
    m = layer(2, weight_p=0.5).train()
    x = torch.randn(5, 3, 6)
    a, _ = m(x)
    b, _ = m(x)
    assert not torch.allclose(a, b)


def test_weight_drop_with_an_all_kept_mask_equals_the_plain_linear(monkeypatch):
    import awdlstm.qrnn as qrnn

    calls = []

    def keep_all(weight, p, training):
        calls.append((p, training))
        return weight  # every weight kept (and the scale of a kept mask is 1 here)

    m = layer(2, weight_p=0.5).train()
    x = torch.randn(5, 3, 6)
    monkeypatch.setattr(qrnn, "drop_connect", keep_all)
    y, _ = m(x)
    assert calls == [(0.5, True)]  # one mask per call, on the linear weight
    plain = copy.deepcopy(m)
    plain.weight_p = 0.0
    torch.testing.assert_close(y, plain(x)[0])


def test_zoneout_zeroes_forget_gates_in_training_only():
    m = layer(1, zoneout_p=0.999)
    x = torch.randn(6, 3, 6)
    c0 = torch.randn(1, 3, 8)
    m.train()
    _, (c_last, _) = m(x, (c0, torch.zeros(0, 3, 6)))
    # With every forget gate zeroed (p = 0.999: nearly all), c keeps c0.
    assert (c_last == c0).float().mean() > 0.9
    m.eval()
    _, (c_eval, _) = m(x, (c0, torch.zeros(0, 3, 6)))
    plain = layer(1, zoneout_p=0.0).eval()
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(c_eval, plain(x, (c0, torch.zeros(0, 3, 6)))[1][0])


def test_zoneout_draws_a_fresh_mask_per_call():
    m = layer(1, zoneout_p=0.5).train()
    x = torch.randn(6, 3, 6)
    assert not torch.allclose(m(x)[0], m(x)[0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(window=0), "model.qrnn_window"),
    (dict(window=1.5), "model.qrnn_window"),
    (dict(zoneout_p=1.0), "model.zoneout_p"),
    (dict(zoneout_p=-0.1), "model.zoneout_p"),
    (dict(weight_p=1.0), "model.weight_p"),
    (dict(weight_p=-0.5), "model.weight_p"),
    (dict(input_size=0), "input size"),
    (dict(hidden_size=0), "hidden size"),
])
def test_bad_settings_raise_config_errors_naming_the_setting(kwargs, name):
    args = dict(input_size=6, hidden_size=8) | kwargs
    with pytest.raises(ConfigError, match=name) as err:
        QRNNLayer(**args)
    assert "\n" not in str(err.value)


def test_train_eval_train_and_gradients_reach_the_parameters():
    m = layer(2, weight_p=0.3, zoneout_p=0.1)
    x = torch.randn(5, 3, 6)
    for mode in (True, False, True):
        m.train(mode)
        m.zero_grad()
        y, _ = m(x)
        y.pow(2).sum().backward()
        assert m.linear.weight.grad.abs().sum() > 0 and m.linear.bias.grad.abs().sum() > 0


def test_deepcopy_and_state_dict_round_trip():
    m = layer(2, weight_p=0.4).eval()
    x = torch.randn(5, 3, 6)
    y, _ = m(x)
    twin = copy.deepcopy(m)
    torch.testing.assert_close(twin(x)[0], y)
    fresh = layer(2, weight_p=0.4, seed=1).eval()
    assert not torch.allclose(fresh(x)[0], y)
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh(x)[0], y)
    assert "window=2" in repr(m) and "weight_p=0.4" in repr(m)

