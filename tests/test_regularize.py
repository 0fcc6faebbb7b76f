import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from awdlstm.regularize import (
    WeightDropLSTM,
    activation_reg,
    drop_connect,
    embed_with_dropout,
    embedding_dropout,
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
