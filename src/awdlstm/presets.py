"""Presets: plain functions returning a full Config; variants are built from a base.

``ptb`` and ``wt2`` follow the paper (Merity et al. 2018, Sec. 5); ``*-original`` follow
the commands of the original code's README, which differ from the paper as noted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from .config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from .errors import ConfigError


def ptb() -> Config:
    """Paper, PTB: 3 x (400, 1150, 400), batch 40, 750 epochs, dropouts 0.4/0.3/0.4/0.1/0.5."""
    return Config(
        data=DataConfig(name="ptb", batch_size=40, eval_batch_size=10, test_batch_size=1, bptt=70),
        model=ModelConfig(emb_size=400, hidden_size=1150, num_layers=3, embed_p=0.1,
                          input_p=0.4, hidden_p=0.3, weight_p=0.5, output_p=0.4),
        optim=OptimConfig(lr=30.0, clip=0.25, weight_decay=1.2e-6, alpha=2.0, beta=1.0),
        train=TrainConfig(epochs=750, seed=141),
    )


def ptb_original() -> Config:
    """Original README, PTB: batch 20, 500 epochs, between-layer dropout 0.25, seed 141."""
    cfg = ptb()
    cfg.data = replace(cfg.data, batch_size=20)
    cfg.model = replace(cfg.model, input_p=0.4, hidden_p=0.25)
    cfg.train = replace(cfg.train, epochs=500, finetune_epochs=500, seed=141)
    return cfg


def wt2() -> Config:
    """Paper, WikiText-2: as PTB but batch 80 and input dropout 0.65."""
    cfg = ptb()
    cfg.data = replace(cfg.data, name="wikitext-2", batch_size=80)
    cfg.model = replace(cfg.model, input_p=0.65)
    return cfg


def wt2_original() -> Config:
    """Original README, WikiText-2: between-layer dropout 0.2, seed 1882."""
    cfg = wt2()
    cfg.model = replace(cfg.model, hidden_p=0.2)
    cfg.train = replace(cfg.train, seed=1882)
    return cfg


def ptb_char() -> Config:
    """Original README, PTB characters: 3 x (200, 1000, 200), bptt 150, batch 128, Adam 2e-3
    divided by 10 after epochs 300 and 400, no AR/TAR or embedding dropout, 500 epochs."""
    return Config(
        data=DataConfig(name="ptb-char", batch_size=128, eval_batch_size=10, test_batch_size=1, bptt=150),
        model=ModelConfig(emb_size=200, hidden_size=1000, num_layers=3, embed_p=0.0,
                          input_p=0.1, hidden_p=0.25, weight_p=0.5, output_p=0.1),
        optim=OptimConfig(optimizer="adam", lr=2e-3, clip=0.25, weight_decay=1.2e-6, alpha=0.0,
                          beta=0.0, ntasgd=False, lr_drops=[300, 400]),
        train=TrainConfig(epochs=500, seed=1111),
    )


def tiny() -> Config:
    """For tests: every technique on, a model small enough to train in seconds on a CPU."""
    cfg = ptb()
    cfg.data = replace(cfg.data, batch_size=20, eval_batch_size=10, bptt=20)
    cfg.model = replace(cfg.model, emb_size=32, hidden_size=64, num_layers=3)
    cfg.optim = replace(cfg.optim, lr=20.0, nonmono=2)
    cfg.train = replace(cfg.train, epochs=2, seed=1, log_every=50)
    return cfg


def demo() -> Config:
    """The README's CPU demo: the full technique set on real PTB, ending with the test
    perplexity within 15 minutes on a 2-core CPU. Tuned for that budget (see README)."""
    # In a budget of ~3 epochs the number of updates, not capacity, limits the perplexity,
    # so: 2 layers, short windows, small batches, light dropout and AR, and averaging over
    # the last ~55% of the run (the tuning runs are in benchmarks/README.md).
    cfg = ptb()
    cfg.data = replace(cfg.data, batch_size=10, bptt=35)
    cfg.model = replace(cfg.model, emb_size=200, hidden_size=400, num_layers=2,
                        embed_p=0.02, input_p=0.05, hidden_p=0.05, weight_p=0.05, output_p=0.05)
    cfg.optim = replace(cfg.optim, alpha=1.0, beta=1.0, check_every=1000, average_from_epoch=1.4)
    cfg.train = replace(cfg.train, epochs=4, max_minutes=13.7)
    return cfg


def wt103() -> Config:
    """WikiText-103 (OpenSeq2Seq's recipe as described): 3 x 1024 LSTM, emb 400 tied, bptt 96
    with a random start, split softmax, dropouts 0.1-0.15, mixed precision on a GPU, Adam 1e-3."""
    return Config(
        data=DataConfig(name="wikitext-103", batch_size=64, eval_batch_size=10, test_batch_size=1, bptt=96,
                        variable_length=False, random_start=True),
        model=ModelConfig(emb_size=400, hidden_size=1024, num_layers=3, embed_p=0.0, input_p=0.1,
                          hidden_p=0.15, weight_p=0.2, output_p=0.15, head="split"),
        optim=OptimConfig(optimizer="adam", lr=1e-3, clip=0.25, weight_decay=2e-6, alpha=0.0, beta=0.0,
                          ntasgd=False),
        train=TrainConfig(epochs=14, seed=1111, precision="auto"),
    )


def wt103_openseq2seq() -> Config:
    """OpenSeq2Seq's released lstm-wkt103-mixed config: 3 x 1024 layer-normalised LSTM cells
    with recurrent dropout 0.3, emb 320 tied, per-step output dropout 0.15, element-wise
    embedding dropout 0.2, sampled softmax (8,192), Adam 1e-3, L2 2e-6, fp16, batch 224 a GPU."""
    cfg = wt103()
    cfg.data = replace(cfg.data, batch_size=224)
    cfg.model = replace(cfg.model, rnn="lstm-cell", layer_norm=True, emb_size=320, embed_p=0.2,
                        embed_dropout="element", input_p=0.0, hidden_p=0.15, last_input_p=0.0, output_p=0.15,
                        weight_p=0.0, recurrent_p=0.3, dropout_masks="step", head="sampled", num_sampled=8192)
    cfg.optim = replace(cfg.optim, clip=0.0, weight_decay=2e-6)
    cfg.train = replace(cfg.train, epochs=1500, precision="fp16")
    return cfg


def ptb_qrnn() -> Config:
    """Original README, PTB QRNN: 4 x (400, 1550, 1550, 1550, 400), batch 20, clip 0.2, weight
    drop 0.1, dropouts 0.4/0.3, seed 9001, 550 epochs (fine-tuning: seed 404, 300 epochs)."""
    cfg = ptb_original()
    cfg.model = replace(cfg.model, rnn="qrnn", num_layers=4, hidden_size=1550, weight_p=0.1,
                        input_p=0.4, hidden_p=0.3)
    cfg.optim = replace(cfg.optim, clip=0.2)
    cfg.train = replace(cfg.train, epochs=550, seed=9001, finetune_epochs=300, finetune_seed=404)
    return cfg


def wt2_qrnn() -> Config:
    """Original README, WikiText-2 QRNN: 4 x 1550, batch 40, clip 0.25, weight drop 0.1,
    dropouts 0.4/0.2, seed 4002, 500 epochs."""
    cfg = wt2()
    cfg.data = replace(cfg.data, batch_size=40)
    cfg.model = replace(cfg.model, rnn="qrnn", num_layers=4, hidden_size=1550, weight_p=0.1,
                        input_p=0.4, hidden_p=0.2)
    cfg.train = replace(cfg.train, epochs=500, seed=4002, finetune_epochs=500)
    return cfg


def wt103_qrnn() -> Config:
    """Original README (Merity et al., *An Analysis of Neural Language Modeling at Multiple
    Scales*), WikiText-103 QRNN: 4 x 2500, emb 400, bptt 140, batch 60, dropouts 0.1, no AR/TAR,
    weight drop or decay, Adam 1e-3 divided by 10 after epoch 12, 14 epochs, split softmax."""
    return Config(
        data=DataConfig(name="wikitext-103", batch_size=60, eval_batch_size=10, test_batch_size=1, bptt=140),
        model=ModelConfig(rnn="qrnn", emb_size=400, hidden_size=2500, num_layers=4, embed_p=0.0,
                          input_p=0.1, hidden_p=0.1, weight_p=0.0, output_p=0.1, head="split"),
        optim=OptimConfig(optimizer="adam", lr=1e-3, clip=0.25, weight_decay=0.0, alpha=0.0, beta=0.0,
                          ntasgd=False, lr_drops=[12]),
        train=TrainConfig(epochs=14, seed=1111),
    )


def demo_qrnn() -> Config:
    """The CPU demo with QRNN layers: the same budget as ``demo`` (see README)."""
    # The demo's budget and training with two QRNN layers of 600 and lr 20. Two layers of 600
    # cost less per step than the demo's two LSTM layers of 400 (1.14x its training tokens/s
    # on one thread) and learn as fast per step as three of 600 or two of 1,000. At lr 30 every
    # QRNN tried learned more slowly per step than the LSTM; at lr 20 it is close early
    # (validation perplexity after 2,000 steps 209 against the demo's 201; 233 at lr 30) and a
    # little ahead once averaged (111.0 against 113.1 after 8,000). In the budget on one core:
    # test 105.1 against the demo's 109.6 (README: demo against demo-qrnn; the tuning runs are
    # in benchmarks/README.md).
    cfg = demo()
    cfg.model = replace(cfg.model, rnn="qrnn", num_layers=2, hidden_size=600)
    cfg.optim = replace(cfg.optim, lr=20.0)
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "ptb": ptb,
    "ptb-original": ptb_original,
    "wt2": wt2,
    "wt2-original": wt2_original,
    "ptb-char": ptb_char,
    "wt103": wt103,
    "wt103-openseq2seq": wt103_openseq2seq,
    "ptb-qrnn": ptb_qrnn,
    "wt2-qrnn": wt2_qrnn,
    "wt103-qrnn": wt103_qrnn,
    "tiny": tiny,
    "demo": demo,
    "demo-qrnn": demo_qrnn,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
