import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from awdlstm.layers import WeightDropLSTM, flat_layout, one_chunk
from awdlstm.regularize import (
    activation_reg,
    drop_connect,
    embed_with_dropout,
    embedding_dropout,
    lane_probability,
    locked_dropout,
    temporal_activation_reg,
)


def test_locked_dropout_mask_is_constant_over_time():
    torch.manual_seed(0)
    x = torch.ones(50, 8, 16)
    out = locked_dropout(x, 0.5, training=True)
    assert torch.equal(out, out[:1].expand_as(out))  # same mask at every step
    assert set(out.unique().tolist()) == {0.0, 2.0}  # survivors rescaled by 1/(1-p)
    assert not torch.equal(out[:, 0], out[:, 1])  # but a different mask per sequence


def test_locked_dropout_is_identity_in_eval_and_at_p0():
    x = torch.randn(5, 3, 4)
    assert locked_dropout(x, 0.5, training=False) is x
    assert locked_dropout(x, 0.0, training=True) is x


def test_locked_dropout_keeps_expectation():
    torch.manual_seed(1)
    x = torch.ones(1, 2000, 50)
    assert locked_dropout(x, 0.3, True).mean().item() == pytest.approx(1.0, abs=0.02)


def test_embedding_dropout_drops_whole_rows_and_rescales():
    torch.manual_seed(0)
    w = torch.randn(1000, 8)
    out = embedding_dropout(w, 0.25, training=True)
    dropped = (out == 0).all(dim=1)
    kept = ~dropped
    assert torch.allclose(out[kept], w[kept] / 0.75)
    assert ((out == 0).any(dim=1) == dropped).all()  # no partially dropped row
    assert 0.18 < dropped.float().mean().item() < 0.32
    assert embedding_dropout(w, 0.25, training=False) is w


def test_embedding_dropout_drops_a_word_everywhere_in_the_batch():
    from awdlstm.config import ModelConfig
    from awdlstm.model import AWDLSTM

    torch.manual_seed(3)
    cfg = ModelConfig(emb_size=6, hidden_size=8, num_layers=1, embed_p=0.5, input_p=0, hidden_p=0, weight_p=0, output_p=0)
    model = AWDLSTM(cfg, 20).train()
    seen = []
    model.rnns[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    tokens = torch.tensor([[3, 3], [5, 3], [3, 5]])
    for _ in range(20):
        model(tokens)
    for emb in seen:
        rows3 = emb[tokens == 3]
        # word 3 is either zero at all its positions or at none
        assert (rows3 == 0).all(1).all() or (rows3 != 0).any(1).all()


def _plain_copy(layer: WeightDropLSTM) -> nn.LSTM:
    plain = nn.LSTM(layer.input_size, layer.hidden_size)
    plain.load_state_dict(layer.state_dict())
    return plain


def test_weight_drop_leaves_first_step_unchanged_and_changes_later_steps():
    torch.manual_seed(0)
    layer = WeightDropLSTM(4, 6, weight_p=0.5).train()
    plain = _plain_copy(layer)
    x = torch.randn(7, 3, 4)
    out, _ = layer(x)
    ref, _ = plain(x)
    # With a zero initial state U h_0 = 0, so the dropped U cannot matter at t = 0.
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    assert not torch.allclose(out[1:], ref[1:], atol=1e-4)


def test_weight_drop_uses_one_mask_for_all_steps_and_batch_elements():
    torch.manual_seed(0)
    layer = WeightDropLSTM(4, 6, weight_p=0.5).train()
    x = torch.randn(9, 5, 4)
    torch.manual_seed(42)
    out, (h, c) = layer(x)
    torch.manual_seed(42)
    dropped = drop_connect(layer.weight_hh_l0.detach(), 0.5, training=True)  # the same draw
    plain = _plain_copy(layer)
    with torch.no_grad():
        plain.weight_hh_l0.copy_(dropped)
    ref, (h_ref, c_ref) = plain(x)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(c, c_ref, atol=1e-6)


def test_weight_drop_resamples_its_mask_on_each_call():
    torch.manual_seed(0)
    layer = WeightDropLSTM(4, 6, weight_p=0.5).train()
    x = torch.randn(6, 2, 4)
    a, _ = layer(x)
    b, _ = layer(x)
    assert not torch.allclose(a[1:], b[1:])


def test_weight_drop_is_identity_in_eval_and_survives_train_eval_train():
    torch.manual_seed(0)
    layer = WeightDropLSTM(4, 6, weight_p=0.5)
    plain = _plain_copy(layer)
    x = torch.randn(6, 2, 4)
    layer.train()
    layer(x)
    layer.eval()
    assert torch.allclose(layer(x)[0], plain(x)[0], atol=1e-6)
    layer.train()
    out, _ = layer(x)
    out.sum().backward()
    assert layer.weight_hh_l0.grad is not None and layer.weight_hh_l0.grad.abs().sum() > 0
    layer.eval()
    assert torch.allclose(layer(x)[0], plain(x)[0], atol=1e-6)


def test_weight_drop_state_dict_matches_stock_lstm_and_loads_weights_only():
    layer = WeightDropLSTM(4, 6, weight_p=0.5)
    assert list(layer.state_dict()) == list(nn.LSTM(4, 6).state_dict())
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = WeightDropLSTM(4, 6, weight_p=0.5)
    other.load_state_dict(state)
    other.eval()
    layer.eval()
    x = torch.randn(3, 2, 4)
    assert torch.equal(other(x)[0], layer(x)[0])
    clone = copy.deepcopy(layer).train()
    clone(x)[0].sum().backward()  # a deep copy still drops weights and trains


def test_drop_connect_rescales_and_is_identity_in_eval():
    torch.manual_seed(0)
    w = torch.ones(200, 200)
    d = drop_connect(w, 0.5, training=True)
    assert set(d.unique().tolist()) == {0.0, 2.0}
    assert drop_connect(w, 0.5, training=False) is w


def test_activation_regularizers_match_their_formulas():
    h = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]], [[0.0, 1.0]]])  # (T=3, B=1, H=2)
    # AR: alpha * mean(h^2) = 2 * (1 + 4 + 9 + 0 + 0 + 1) / 6
    assert activation_reg(h, 2.0).item() == pytest.approx(2 * 15 / 6)
    # TAR: beta * mean((h_t - h_{t-1})^2): diffs (2, 2) and (-3, 1) -> (4 + 4 + 9 + 1) / 4
    assert temporal_activation_reg(h, 0.5).item() == pytest.approx(0.5 * 18 / 4)
    assert temporal_activation_reg(h[:1], 1.0).item() == 0.0  # one step: no NaN
    assert activation_reg(h, 0.0).item() == 0.0


def test_embed_with_dropout_equals_masking_the_matrix():
    w = torch.randn(50, 6, requires_grad=True)
    tokens = torch.randint(50, (7, 4))
    torch.manual_seed(5)
    fast = embed_with_dropout(tokens, w, 0.4, training=True)
    torch.manual_seed(5)
    ref = F.embedding(tokens, embedding_dropout(w, 0.4, training=True))
    assert torch.allclose(fast, ref)
    assert (fast == 0).all(-1).any()  # some words were dropped
    g1, = torch.autograd.grad(fast.sum(), w)
    g2, = torch.autograd.grad(ref.sum(), w)
    assert torch.allclose(g1, g2)
    assert torch.equal(embed_with_dropout(tokens, w, 0.4, training=False), F.embedding(tokens, w))


@pytest.mark.parametrize("p", [0.5, 0.65, 0.1, 0.01])
def test_cpu_masks_keep_each_weight_with_probability_1_minus_p(p):
    """Each of the four 16-bit lanes of a 64-bit draw is its own Bernoulli trial."""
    torch.manual_seed(0)
    w = torch.ones(1000, 1000)
    d = drop_connect(w, p, training=True)
    q = lane_probability(p)
    assert abs(q - p) <= 2 ** -17
    values = d.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - q))
    kept = (d != 0).float().view(-1, 4)  # columns: the lane's place in its 64-bit word
    sigma = (p * (1 - p) / kept.size(0)) ** 0.5
    for frac in kept.mean(0).tolist():
        assert abs(frac - (1 - p)) < 5 * sigma
    # neighbouring lanes are independent: P(both kept) = (1 - p)^2
    both = (kept[:, 0] * kept[:, 1]).mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * sigma
    assert d.mean().item() == pytest.approx(1.0, abs=0.01)  # the expectation is unchanged


def test_lane_probability_is_exact_on_multiples_of_2_to_the_minus_16():
    assert lane_probability(0.5) == 0.5 and lane_probability(0.25) == 0.25 and lane_probability(0.0) == 0.0
    assert lane_probability(0.999999) < 1.0  # never drops everything (a scale of infinity)


def test_weight_drop_trains_the_stock_parameters_without_swapping_them():
    """Nothing is reassigned, so nn.LSTM never re-flattens (copies) its weights for the
    next call, as it must when functional_call or setattr swap them."""
    torch.manual_seed(0)
    layer = WeightDropLSTM(4, 6, weight_p=0.5).train()
    params = [getattr(layer, n) for n in layer._flat_weights_names]
    layer(torch.randn(5, 2, 4))[0].sum().backward()
    assert not layer._weights_have_changed()
    assert all(a is b for a, b in zip(layer._flat_weights, params))
    assert all(p.grad is not None for p in params)


def _flatten_with_gaps(layer: nn.LSTM, gap: int = 3) -> list[int]:
    """Make the layer's parameters views of one buffer, a gap before each, as cuDNN's
    flatten_parameters arranges them on a GPU (possibly with padding)."""
    names = layer._flat_weights_names
    sizes = [getattr(layer, n).numel() for n in names]
    offsets, end = [], 0
    for n in sizes:
        offsets.append(end + gap)
        end += gap + n
    buf = torch.zeros(end + gap)
    for name, off in zip(names, offsets):
        old = getattr(layer, name)
        view = buf[off:off + old.numel()].view_as(old)
        view.copy_(old.detach())
        setattr(layer, name, nn.Parameter(view))
    return offsets


def test_flattened_weights_reach_the_kernel_as_one_chunk_with_the_same_results():
    torch.manual_seed(0)
    layer = WeightDropLSTM(4, 6, weight_p=0.5).train()
    flat = copy.deepcopy(layer)
    offsets = _flatten_with_gaps(flat)
    assert flat_layout(flat._flat_weights) == (offsets, offsets[-1] + flat.bias_hh_l0.numel() + 3)
    assert flat_layout(layer._flat_weights) is None  # separate tensors: passed as they are
    seen = []
    real_lstm = torch.lstm
    torch.lstm = lambda *a: seen.append(a[2]) or real_lstm(*a)
    try:
        x, h0 = torch.randn(7, 3, 4), (torch.randn(1, 3, 6), torch.randn(1, 3, 6))
        torch.manual_seed(9)
        out, (h, c) = layer(x, h0)
        torch.manual_seed(9)
        out_f, (h_f, c_f) = flat(x, h0)
    finally:
        torch.lstm = real_lstm
    weights = seen[1]
    base = weights[0].untyped_storage().data_ptr()
    assert all(w.untyped_storage().data_ptr() == base for w in weights)
    assert [w.storage_offset() for w in weights] == offsets
    assert torch.allclose(out, out_f) and torch.allclose(h, h_f) and torch.allclose(c, c_f)
    (out.sum() + c.sum()).backward()
    (out_f.sum() + c_f.sum()).backward()
    for name in layer._flat_weights_names:
        assert torch.allclose(getattr(layer, name).grad, getattr(flat, name).grad, atol=1e-6), name


def test_one_chunk_fills_gaps_and_differentiates():
    a = torch.randn(2, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    va, vb = one_chunk([a, b], [8, 1], 16)
    assert va.untyped_storage().data_ptr() == vb.untyped_storage().data_ptr()
    flat = torch.empty(0).set_(va.untyped_storage())
    assert flat.numel() == 16 and torch.equal(flat[1:5], b) and torch.equal(flat[8:14], a.flatten())
    assert flat[[0, 5, 6, 7, 14, 15]].eq(0).all()
    (va.sum() * 2 + vb.sum()).backward()
    assert torch.equal(a.grad, torch.full_like(a, 2.0)) and torch.equal(b.grad, torch.ones_like(b))
