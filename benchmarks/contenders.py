"""What is timed: our model through the real ``Trainer.train_step``, a plain ``nn.LSTM``
stack (the ceiling), and fastai's ``AWD_LSTM`` when fastai is importable.

Every contender gets the same windows of token ids and exposes ``train_step(i)`` and
``eval_step(i)``; neither synchronises the device (the caller does, to time).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awdlstm.config import Config
from awdlstm.data import Corpus, Vocab, Window, batchify, load_corpus
from awdlstm.model import detach_state
from awdlstm.optim import make_optimizer
from awdlstm.regularize import activation_reg, temporal_activation_reg
from awdlstm.runtime import Runtime
from awdlstm.train import Trainer

# Vocabulary sizes of the paper's corpora (used with synthetic token ids).
VOCAB_SIZES = {"ptb": 10000, "wikitext-2": 33278, "ptb-char": 50}


# ---------------------------------------------------------------------------- data


def synthetic_corpus(vocab_size: int, train_tokens: int, valid_tokens: int, seed: int = 0) -> Corpus:
    """Uniformly random token ids with the right vocabulary size. Speed depends on the
    shapes only, not on which words occur."""
    gen = torch.Generator().manual_seed(seed)
    words = ["<eos>", "<unk>"] + [f"w{i}" for i in range(2, vocab_size)]

    def ids(n: int) -> Tensor:
        return torch.randint(vocab_size, (n,), generator=gen, dtype=torch.long)

    return Corpus(Vocab(words), ids(train_tokens), ids(valid_tokens), ids(valid_tokens),
                  Path("<synthetic>"), {"train": 0, "valid": 0, "test": 0})


@dataclass
class Batches:
    """Fixed-length windows, shared by all contenders."""

    train: list[Window]
    """On the device (the Trainer keeps the training split there)."""
    eval: list[Window]
    """On the host, moved per window like ``evaluate`` does."""
    batch_size: int
    eval_batch_size: int
    bptt: int


def make_batches(train_data: Tensor, valid: Tensor, eval_batch_size: int, bptt: int) -> Batches:
    """train_data: the Trainer's batchified training split (device); valid: 1-D ids."""
    def windows(source: Tensor) -> list[Window]:
        out = []
        for i in range(0, source.size(0) - 1 - bptt + 1, bptt):
            out.append(Window(source[i:i + bptt], source[i + 1:i + 1 + bptt], 1.0, i + bptt))
        return out

    eval_source = batchify(valid, eval_batch_size, what="validation")
    return Batches(windows(train_data), windows(eval_source), train_data.size(1), eval_batch_size, bptt)


def tokens_needed(batch_size: int, bptt: int, windows: int) -> int:
    return (windows * bptt + 1) * batch_size


# ---------------------------------------------------------------------------- contenders


class Contender:
    name: str
    label: str
    """One line saying what this is."""
    model: nn.Module
    input_sizes: list[int]
    hidden_sizes: list[int]
    decoder_in: int

    def __init__(self, batches: Batches, runtime: Runtime) -> None:
        self.batches = batches
        self.rt = runtime
        self.eval_state = None
        self.last_loss: Tensor | None = None

    def train_step(self, i: int) -> None:
        raise NotImplementedError

    def eval_step(self, i: int) -> None:
        raise NotImplementedError

    def _train_window(self, i: int) -> Window:
        w = self.batches.train
        return w[i % len(w)]

    def _eval_window(self, i: int) -> tuple[Tensor, Tensor]:
        w = self.batches.eval[i % len(self.batches.eval)]
        dev = self.rt.device
        return w.inputs.to(dev, non_blocking=True), w.targets.to(dev, non_blocking=True)


class Ours(Contender):
    """awdlstm.model.AWDLSTM trained by the real ``Trainer.train_step`` (every regularizer,
    cross-entropy + AR + TAR, backward, clipping, SGD with the lr rescale, NT-ASGD hook),
    evaluated by the loop body of ``awdlstm.evaluate.evaluate``."""

    def __init__(self, name: str, cfg: Config, corpus: Corpus, runtime: Runtime,
                 batches: Batches | None = None, compile: bool = False, onednn: bool = True) -> None:
        run_dir = Path(tempfile.gettempdir()) / "awdlstm-bench-unused"  # train_step writes nothing
        if compile:  # as `awdlstm train --compile` does it
            cfg = replace(cfg, train=replace(cfg.train, compile=True))
        self.trainer = Trainer(cfg, corpus, runtime, run_dir)
        if batches is None:
            batches = make_batches(self.trainer.train_data, corpus.valid, cfg.data.eval_batch_size, cfg.data.bptt)
        super().__init__(batches, runtime)
        self.name = name
        self.compiled = compile
        self.onednn = onednn
        self.label = ("awdlstm AWDLSTM via Trainer.train_step" + (" (torch.compile)" if compile else "")
                      + ("" if onednn else " (oneDNN off: torch.backends.mkldnn.flags(enabled=False))"))
        self.model = self.trainer.model
        sizes = list(self.trainer.model.layer_sizes)
        self.hidden_sizes = sizes
        self.input_sizes = [cfg.model.emb_size] + sizes[:-1]
        self.decoder_in = sizes[-1]

    def _backend(self):
        return contextlib.nullcontext() if self.onednn else torch.backends.mkldnn.flags(enabled=False)

    def train_step(self, i: int) -> None:
        with self._backend():
            self.last_loss = self.trainer.train_step(self._train_window(i))

    def eval_step(self, i: int) -> None:
        with self._backend():
            self._eval_step(i)

    @torch.no_grad()
    def _eval_step(self, i: int) -> None:
        # The body of awdlstm.evaluate.evaluate's loop.
        model = self.trainer.ntasgd.eval_model() if not self.compiled else self.trainer.step_model
        model.eval()
        inputs, targets = self._eval_window(i)
        if self.eval_state is None:
            self.eval_state = model.init_state(inputs.size(1))
        with self.rt.autocast():
            out = model(inputs, self.eval_state)
        loss = F.cross_entropy(out.logits.float().view(-1, out.logits.size(-1)), targets.reshape(-1), reduction="sum")
        self.last_loss = loss.double() / targets.numel()
        self.eval_state = detach_state(out.state)


class PlainLM(nn.Module):
    """Embedding -> stack of single-layer nn.LSTM (same sizes as ours) -> tied decoder.
    No dropout of any kind, no AR/TAR: what the same shapes cost with nothing added."""

    def __init__(self, vocab: int, emb: int, sizes: list[int]) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb)
        ins = [emb] + sizes[:-1]
        self.rnns = nn.ModuleList(nn.LSTM(i, h) for i, h in zip(ins, sizes))
        self.decoder = nn.Linear(sizes[-1], vocab)
        if sizes[-1] == emb:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_state(self, batch: int):
        w = self.encoder.weight
        return [(w.new_zeros(1, batch, r.hidden_size), w.new_zeros(1, batch, r.hidden_size)) for r in self.rnns]

    def forward(self, tokens: Tensor, state):
        x = self.encoder(tokens)
        new = []
        for rnn, s in zip(self.rnns, state):
            x, hc = rnn(x, s)
            new.append(hc)
        return self.decoder(x), new


class Plain(Contender):
    """The ceiling: PlainLM with the same loss (cross-entropy), clipping, SGD and weight
    decay as our step, but no dropout, no AR/TAR."""

    def __init__(self, name: str, cfg: Config, vocab: int, runtime: Runtime, batches: Batches,
                 sizes: list[int]) -> None:
        super().__init__(batches, runtime)
        self.name = name
        self.label = "plain nn.LSTM stack, no dropout, no AR/TAR (ceiling)"
        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)
        self.model = PlainLM(vocab, cfg.model.emb_size, sizes).to(runtime.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.optim)
        self.state = None
        self.hidden_sizes = list(sizes)
        self.input_sizes = [cfg.model.emb_size] + sizes[:-1]
        self.decoder_in = sizes[-1]

    def train_step(self, i: int) -> None:
        win = self._train_window(i)
        model, cfg = self.model, self.cfg
        model.train()
        if self.state is None:
            self.state = model.init_state(win.inputs.size(1))
        with self.rt.autocast():
            logits, state = model(win.inputs, self.state)
        self.state = detach_state(state)
        ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), win.targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        self.rt.scaler.scale(ce).backward()
        if cfg.optim.clip > 0:
            self.rt.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr * win.lr_scale
        self.rt.scaler.step(self.optimizer)
        self.rt.scaler.update()
        self.last_loss = ce.detach()

    @torch.no_grad()
    def eval_step(self, i: int) -> None:
        model = self.model
        model.eval()
        inputs, targets = self._eval_window(i)
        if self.eval_state is None:
            self.eval_state = model.init_state(inputs.size(1))
        with self.rt.autocast():
            logits, state = model(inputs, self.eval_state)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
        self.last_loss = loss.double() / targets.numel()
        self.eval_state = detach_state(state)


def fastai_available() -> tuple[bool, str]:
    try:
        from fastai.text.models.awdlstm import AWD_LSTM, RNNDropout  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        return False, f"fastai not importable ({type(err).__name__}: {err}); skipped"
    return True, ""


class FastAI(Contender):
    """fastai's AWD_LSTM (batch-first, hidden state kept inside the module) with the same
    sizes and dropouts, an output RNNDropout, a decoder tied to its embedding, and the same
    loss (cross-entropy + AR + TAR), clipping and SGD as our step."""

    def __init__(self, name: str, cfg: Config, vocab: int, runtime: Runtime, batches: Batches) -> None:
        from fastai.text.models.awdlstm import AWD_LSTM, RNNDropout

        super().__init__(batches, runtime)
        self.name = name
        self.label = "fastai.text.models.awdlstm.AWD_LSTM"
        self.cfg = cfg
        m = cfg.model
        torch.manual_seed(cfg.train.seed)
        self.encoder = AWD_LSTM(vocab, m.emb_size, m.hidden_size, m.num_layers, pad_token=1,
                                hidden_p=m.hidden_p, input_p=m.input_p, embed_p=m.embed_p,
                                weight_p=m.weight_p).to(runtime.device)
        self.output_dp = RNNDropout(m.output_p)
        self.bias = nn.Parameter(torch.zeros(vocab, device=runtime.device))
        self.model = nn.ModuleDict({"encoder": self.encoder, "output_dp": self.output_dp})
        self.params = list(self.encoder.parameters()) + [self.bias]
        self.optimizer = make_optimizer(self.params, cfg.optim)
        sizes = [m.hidden_size] * (m.num_layers - 1) + [m.emb_size]
        self.hidden_sizes = sizes
        self.input_sizes = [m.emb_size] + sizes[:-1]
        self.decoder_in = m.emb_size
        # fastai is batch-first: transpose the shared windows once, outside the timing.
        self.train_bt = [(w.inputs.t().contiguous(), w.targets.t().contiguous()) for w in batches.train]
        self.eval_bt = [(w.inputs.t().contiguous(), w.targets.t().contiguous()) for w in batches.eval]
        self._mode = None

    def _set_mode(self, mode: str) -> None:
        if self._mode != mode:  # fastai keeps one hidden state; start it afresh per phase
            self.encoder.reset()
            self._mode = mode

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raw = self.encoder(x)  # (B, T, E), hidden state detached inside
        dropped = self.output_dp(raw)
        return F.linear(dropped, self.encoder.encoder.weight, self.bias), raw, dropped

    def train_step(self, i: int) -> None:
        cfg = self.cfg
        x, y = self.train_bt[i % len(self.train_bt)]
        self._set_mode("train")
        self.model.train()
        with self.rt.autocast():
            logits, raw, dropped = self._logits(x)
        ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss = (ce + activation_reg(dropped, cfg.optim.alpha)
                + temporal_activation_reg(raw.transpose(0, 1), cfg.optim.beta))
        self.optimizer.zero_grad(set_to_none=True)
        self.rt.scaler.scale(loss).backward()
        if cfg.optim.clip > 0:
            self.rt.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.clip)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr
        self.rt.scaler.step(self.optimizer)
        self.rt.scaler.update()
        self.last_loss = ce.detach()

    @torch.no_grad()
    def eval_step(self, i: int) -> None:
        x, y = self.eval_bt[i % len(self.eval_bt)]
        x = x.to(self.rt.device, non_blocking=True)
        y = y.to(self.rt.device, non_blocking=True)
        self._set_mode("eval")
        self.model.eval()
        with self.rt.autocast():
            logits, _, _ = self._logits(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        self.last_loss = loss.double() / y.numel()


# ---------------------------------------------------------------------------- building


def bench_config(cfg: Config, batch_size: int | None, bptt: int | None, eval_batch_size: int | None,
                 threads: int, device: str, precision: str) -> Config:
    data = replace(cfg.data)
    if batch_size is not None:
        data.batch_size = batch_size
    if bptt is not None:
        data.bptt = bptt
    if eval_batch_size is not None:
        data.eval_batch_size = eval_batch_size
    train = replace(cfg.train, threads=threads, device=device, precision=precision)
    return replace(cfg, data=data, model=replace(cfg.model), optim=replace(cfg.optim), train=train)


def make_corpus(cfg: Config, data: str | None, train_windows: int, eval_windows: int) -> tuple[Corpus, str]:
    """A real corpus when ``data`` names one, else synthetic ids with the preset's vocabulary size."""
    if data:
        corpus = load_corpus(replace(cfg.data, name=data))
        return corpus, str(corpus.path)
    vocab = VOCAB_SIZES.get(cfg.data.name, 10000)
    train = tokens_needed(cfg.data.batch_size, cfg.data.bptt, train_windows)
    valid = tokens_needed(cfg.data.eval_batch_size, cfg.data.bptt, eval_windows)
    return synthetic_corpus(vocab, train, valid, seed=cfg.train.seed), "synthetic"
