"""OpenSeq2Seq's dropout flavours in the model: each mask does what its name says."""

from __future__ import annotations

import pytest
import torch

from awdlstm.config import ModelConfig
from awdlstm.errors import ConfigError
from awdlstm.model import AWDLSTM

V = 30


def model_with(**kw) -> AWDLSTM:
    base = dict(emb_size=16, hidden_size=16, num_layers=3, embed_p=0.0, input_p=0.0, hidden_p=0.0, weight_p=0.0,
                output_p=0.0)
    cfg = ModelConfig(**{**base, **kw})
    cfg.validate()
    torch.manual_seed(0)
    return AWDLSTM(cfg, V).train()


def layer_inputs(model, tokens):
    """What each recurrent layer receives in one forward pass."""
    seen = []
    hooks = [r.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone())) for r in model.rnns]
    out = model(tokens)
    for h in hooks:
        h.remove()
    return seen, out


def zero_pattern(dropped, clean):
    return (dropped == 0) & (clean != 0)


def test_step_masks_change_over_time_and_locked_ones_do_not():
    tokens = torch.randint(V, (40, 4))
    for masks, constant in (("locked", True), ("step", False)):
        model = model_with(output_p=0.5, dropout_masks=masks)
        torch.manual_seed(3)
        out = model(tokens)
        zeros = out.dropped_output == 0  # (T, B, H); the raw output is never exactly 0
        assert zeros.any()
        same_over_time = bool((zeros == zeros[:1]).all())
        assert same_over_time is constant, masks


def test_element_embedding_dropout_drops_values_not_words():
    tokens = torch.full((30, 2), 7)  # the same word everywhere
    for kind in ("word", "element"):
        model = model_with(embed_p=0.5, embed_dropout=kind)
        clean = model.encoder.weight[7]
        torch.manual_seed(5)
        (x0, *_), _ = layer_inputs(model, tokens)
        dropped = zero_pattern(x0, clean.expand_as(x0))
        if kind == "word":  # the word is dropped everywhere or nowhere, all its values at once
            assert bool(dropped.all()) or not bool(dropped.any())
        else:  # single values at single positions
            assert dropped.any() and not dropped.all()
            assert not bool((dropped == dropped[:1]).all())


def test_last_input_p_masks_only_the_last_layers_input():
    tokens = torch.randint(V, (20, 3))
    quiet = model_with()
    loud = model_with(last_input_p=0.5)
    loud.load_state_dict(quiet.state_dict())
    (a0, a1, a2), _ = layer_inputs(quiet, tokens)
    torch.manual_seed(1)
    (b0, b1, b2), _ = layer_inputs(loud, tokens)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    dropped = zero_pattern(b2, a2)
    assert dropped.any() and torch.allclose(b2[~dropped], 2 * a2[~dropped])


def test_the_default_flavours_draw_the_same_masks_as_before():
    """Release 0.1's model: locked masks in the order embedding, input, between, output."""
    model = model_with(embed_p=0.1, input_p=0.3, hidden_p=0.2, output_p=0.4)
    tokens = torch.randint(V, (12, 2))
    torch.manual_seed(9)
    out = model(tokens)
    torch.manual_seed(9)
    assert torch.equal(model(tokens).dropped_output, out.dropped_output)
    assert (model_with(last_input_p=None).cfg.last_input_p, model.cfg.dropout_masks) == (None, "locked")


@pytest.mark.parametrize("field, value, message", [
    ("dropout_masks", "time", "model.dropout_masks must be one of locked, step"),
    ("embed_dropout", "row", "model.embed_dropout must be one of word, element"),
    ("last_input_p", 1.0, "model.last_input_p must be in [0, 1), got 1.0"),
])
def test_bad_flavours(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        model_with(**{field: value})
