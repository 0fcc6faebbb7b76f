import pytest

from awdlstm.config import Config, apply_overrides
from awdlstm.errors import ConfigError
from awdlstm.presets import PRESETS, get_preset


def test_overrides_parse_to_field_types():
    cfg = apply_overrides(get_preset("ptb"), [
        "model.weight_p=0", "data.batch_size=7", "data.variable_length=false", "data.max_seq_len=80",
        "optim.lr_drops=300,400", "optim.average_from_epoch=none", "data.name=wikitext-2",
    ])
    assert cfg.model.weight_p == 0.0 and isinstance(cfg.model.weight_p, float)
    assert cfg.data.batch_size == 7 and cfg.data.variable_length is False and cfg.data.max_seq_len == 80
    assert cfg.optim.lr_drops == [300, 400] and cfg.optim.average_from_epoch is None
    assert get_preset("ptb").model.weight_p == 0.5  # the preset itself is untouched


@pytest.mark.parametrize("override, message", [
    ("model.nope=1", "valid keys of model: emb_size"),
    ("modle.weight_p=1", "valid: data, model, optim, train"),
    ("model.weight_p=lots", "expects float"),
    ("data.batch_size=2.5", "expects int"),
    ("weight_p=0.3", "section.field=value"),
])
def test_bad_overrides_explain_themselves(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("ptb"), [override])


@pytest.mark.parametrize("override, message", [
    ("model.weight_p=1.0", r"model.weight_p must be in \[0, 1\)"),
    ("model.input_p=-0.1", r"model.input_p must be in \[0, 1\)"),
    ("data.bptt=0", "data.bptt must be > 0"),
    ("model.hidden_size=0", "model.hidden_size must be > 0"),
    ("optim.optimizer=rmsprop", "one of sgd, adam"),
    ("train.precision=fp8", "one of fp32, bf16, fp16"),
])
def test_out_of_range_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("ptb"), [override]).validate()


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: ptb, ptb-original"):
        get_preset("pbt")


def test_every_preset_is_valid_and_round_trips():
    for name in PRESETS:
        cfg = get_preset(name).validate()
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_paper_and_original_presets():
    ptb, wt2 = get_preset("ptb"), get_preset("wt2")
    assert (ptb.model.emb_size, ptb.model.hidden_size, ptb.model.num_layers) == (400, 1150, 3)
    assert (ptb.model.output_p, ptb.model.hidden_p, ptb.model.input_p, ptb.model.embed_p, ptb.model.weight_p) == (0.4, 0.3, 0.4, 0.1, 0.5)
    assert (ptb.data.batch_size, wt2.data.batch_size, wt2.model.input_p) == (40, 80, 0.65)
    assert (ptb.optim.lr, ptb.optim.clip, ptb.optim.weight_decay, ptb.optim.alpha, ptb.optim.beta) == (30, 0.25, 1.2e-6, 2, 1)
    assert ptb.train.epochs == 750 and ptb.data.bptt == 70
    orig = get_preset("ptb-original")
    assert (orig.data.batch_size, orig.train.epochs, orig.model.input_p, orig.model.hidden_p, orig.train.seed) == (20, 500, 0.4, 0.25, 141)
    w = get_preset("wt2-original")
    assert (w.model.hidden_p, w.train.seed) == (0.2, 1882)
    c = get_preset("ptb-char")
    assert (c.optim.optimizer, c.optim.lr, c.optim.lr_drops, c.data.bptt, c.data.batch_size) == ("adam", 2e-3, [300, 400], 150, 128)
