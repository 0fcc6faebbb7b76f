"""Typed configuration: one dataclass per concern, built once and passed down.

Every field can be overridden from the command line with ``--set section.field=value``;
the value is parsed to the field's declared type. Names stay unchanged from the command
line to the code that uses them. The dropout probabilities map to the paper and to the
flags of the original code (salesforce/awd-lstm-lm) as follows:

=========  ==========================================  =============
ours       paper (Merity et al. 2018)                  original flag
=========  ==========================================  =============
embed_p    embedding dropout (Sec. 4.3)                ``dropoute``
input_p    variational dropout on the embedding output ``dropouti``
hidden_p   variational dropout between LSTM layers     ``dropouth``
weight_p   DropConnect on hidden-to-hidden weights     ``wdrop``
output_p   variational dropout on the last LSTM output ``dropout``
=========  ==========================================  =============

``input_weight_p``, ``recurrent_p`` and ``layer_norm`` are OpenSeq2Seq's LSTM options
(``input_weight_keep_prob``, ``recurrent_keep_prob``, its layer-normalised cell); the last two
need the step-by-step layer, ``model.rnn=lstm-cell`` (cell.py).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass
class DataConfig:
    name: str = "ptb"
    """Corpus: a name (ptb, wikitext-2, ptb-char) or a directory with train/valid/test.txt."""
    root: str | None = None
    """Where corpus names are looked up first (then $AWDLSTM_DATA, ./data, ../shared/data)."""
    batch_size: int = 40
    """Parallel streams for training."""
    eval_batch_size: int = 10
    """Streams for validation (the paper: 10)."""
    test_batch_size: int = 1
    """Streams for the test split (the paper: 1)."""
    bptt: int = 70
    """Base length of a truncated-BPTT window."""
    variable_length: bool = True
    """Draw each window's length as the paper does (Sec. 4.1), rescaling the lr."""
    full_bptt_p: float = 0.95
    """Probability that a window's base length is bptt rather than bptt/2."""
    length_std: float = 5.0
    """Standard deviation of the Normal around the base length."""
    min_seq_len: int = 5
    """Shortest window drawn."""
    max_seq_len: int | None = None
    """Longest window drawn (None: no cap)."""
    random_start: bool = False
    """Start each epoch at a random offset in [0, bptt) (OpenSeq2Seq's random start)."""
    min_freq: int = 1
    """Words seen fewer times in train map to <unk> (own corpora)."""
    max_vocab: int | None = None
    """Keep only the most frequent words (None: all); the rest map to <unk>."""

    def validate(self) -> None:
        _finite(self)
        if not self.name:
            raise ConfigError("data.name must be a corpus name (ptb, wikitext-2, ptb-char) or a directory, got ''")
        _positive(self, "batch_size", "eval_batch_size", "test_batch_size")
        self.validate_windows()
        _positive(self, "min_freq")
        if self.max_vocab is not None and self.max_vocab < 2:
            raise ConfigError(f"data.max_vocab must be >= 2 or none, got {self.max_vocab}")

    def validate_windows(self) -> None:
        """The fields of the BPTT windows; bptt_windows and epoch_start check them too, as a
        DataConfig made in code is not validated (a window of 0 tokens never ends an epoch)."""
        _positive(self, "bptt", "min_seq_len")
        _probability(self, "full_bptt_p", upper_inclusive=True)
        if not 0 <= self.length_std <= MAX_SEQ_LEN:
            raise ConfigError(f"data.length_std must be in [0, 2**40], got {self.length_std}")
        if self.max_seq_len is not None and self.max_seq_len < self.min_seq_len:
            raise ConfigError(
                f"data.max_seq_len must be >= data.min_seq_len ({self.min_seq_len}), "
                f"got {self.max_seq_len}"
            )
        for name in ("bptt", "min_seq_len", "max_seq_len"):
            value = getattr(self, name)
            if value is not None and value > MAX_SEQ_LEN:
                raise ConfigError(f"data.{name} must be at most 2**40 tokens, got {value}")


HEADS = ("full", "split", "sampled")
"""The output layers of heads.py, by name."""

MAX_SEQ_LEN = 2**40
"""Bound on window lengths (and their spread), far above any corpus: torch draws a length as a
float32 (1e39 is infinite) and an epoch's random start as an int64 (2**63 overflows)."""


@dataclass
class ModelConfig:
    emb_size: int = 400
    """Embedding size; with tied weights also the last LSTM layer's size."""
    hidden_size: int = 1150
    """Size of every LSTM layer but the last (when tied)."""
    num_layers: int = 3
    """Stacked single-layer LSTMs."""
    tie_weights: bool = True
    """Share the embedding and softmax matrices (Inan et al.; Press and Wolf)."""
    embed_p: float = 0.1
    """Embedding dropout: whole word rows of the embedding (dropoute)."""
    input_p: float = 0.4
    """Locked dropout on the embedding output (dropouti)."""
    hidden_p: float = 0.3
    """Locked dropout between LSTM layers (dropouth)."""
    weight_p: float = 0.5
    """DropConnect on the hidden-to-hidden matrices (wdrop)."""
    output_p: float = 0.4
    """Locked dropout on the last LSTM layer's output (dropout)."""
    rnn: str = "lstm"
    """The recurrent layer, by name: lstm (the weight-dropped LSTM), qrnn (the original
    code's --model QRNN; weight_p is then DropConnect on its input-to-gates matrix) or
    lstm-cell (an LSTM run step by step, for recurrent_p and layer_norm; cell.py)."""
    input_weight_p: float = 0.0
    """LSTMs: DropConnect on the input-to-hidden matrices (OpenSeq2Seq's input_weight_keep_prob = 1 - p)."""
    recurrent_p: float = 0.0
    """lstm-cell: dropout on the candidate g_t before the cell, per step (OpenSeq2Seq's recurrent_keep_prob = 1 - p)."""
    layer_norm: bool = False
    """lstm-cell: layer-normalised gates and cell (OpenSeq2Seq's use of TF's LayerNormBasicLSTMCell)."""
    qrnn_window: int = 2
    """QRNN: how many inputs the first layer sees at each step (x_{t-1}, x_t); later layers see 1."""
    zoneout_p: float = 0.0
    """QRNN: zoneout on the forget gates (each set to 0, keeping the cell, with this probability)."""
    head: str = "full"
    """The output layer: full (softmax over the vocabulary), split (the original code's split
    softmax for large vocabularies, exact and tied) or sampled (sampled softmax in training,
    exact in evaluation)."""
    split_cutoffs: list[int] = field(default_factory=list)
    """Split head: where the frequency-ordered vocabulary is cut into clusters (empty: the
    original code's 2,800/20,000/76,000 above 75k words, 4,200/35,000/180,000 above 500k,
    none below: a full softmax)."""
    num_sampled: int = 8192
    """Sampled head: negative words drawn per training step (OpenSeq2Seq's 8,192)."""
    last_input_p: float | None = None
    """Dropout on the last layer's input (None: hidden_p like the other layers' inputs), to set
    it apart as OpenSeq2Seq's ``encoder_last_input_keep_prob`` does."""
    dropout_masks: str = "locked"
    """locked: the paper's variational masks, shared over time; step: a new mask at every
    step, as OpenSeq2Seq's layer dropouts (input_p, hidden_p, last_input_p, output_p)."""
    embed_dropout: str = "word"
    """word: embed_p drops whole words (the paper); element: it drops single embedding
    values at each position (OpenSeq2Seq's ``encoder_emb_keep_prob``)."""

    def validate(self) -> None:
        from .layers import RNN_LAYERS  # the registry imports this module

        _finite(self)
        _positive(self, "emb_size", "hidden_size", "num_layers")
        _probability(self, "embed_p", "input_p", "hidden_p", "weight_p", "output_p", "zoneout_p",
                     "input_weight_p", "recurrent_p")
        if self.rnn not in RNN_LAYERS:
            raise ConfigError(f"model.rnn must be one of {', '.join(RNN_LAYERS)}; got {self.rnn!r}")
        _positive(self, "qrnn_window")
        if self.last_input_p is not None:
            _probability(self, "last_input_p")
        if self.dropout_masks not in ("locked", "step"):
            raise ConfigError(f"model.dropout_masks must be one of locked, step; got {self.dropout_masks!r}")
        if self.embed_dropout not in ("word", "element"):
            raise ConfigError(f"model.embed_dropout must be one of word, element; got {self.embed_dropout!r}")
        for name, on, layers in (("recurrent_p", self.recurrent_p > 0, ("lstm-cell",)),
                                 ("layer_norm", self.layer_norm, ("lstm-cell",)),
                                 ("input_weight_p", self.input_weight_p > 0, ("lstm", "lstm-cell"))):
            if on and self.rnn not in layers:
                raise ConfigError(f"model.{name} needs model.rnn={' or '.join(layers)}; the {self.rnn} "
                                  f"layer cannot apply it")
        if self.head not in HEADS:
            raise ConfigError(f"model.head must be one of {', '.join(HEADS)}; got {self.head!r}")
        _positive(self, "num_sampled")
        cuts = self.split_cutoffs
        if any(c < 1 for c in cuts) or any(b <= a for a, b in zip(cuts, cuts[1:])):
            raise ConfigError(f"model.split_cutoffs must be increasing word counts >= 1, got {cuts}")


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    """sgd (the paper, with NT-ASGD) or adam (the original's char-level commands)."""
    lr: float = 30.0
    """Learning rate."""
    clip: float = 0.25
    """Gradient-norm clipping threshold (0: none)."""
    weight_decay: float = 1.2e-6
    """L2 penalty on all weights."""
    alpha: float = 2.0
    """AR: weight of the mean square of the last layer's dropped output."""
    beta: float = 1.0
    """TAR: weight of the mean square of h_t - h_{t-1} of the last layer's raw output."""
    ntasgd: bool = True
    """Switch to averaged SGD on the non-monotone trigger (paper, Algorithm 1)."""
    nonmono: int = 5
    """n of the non-monotone trigger: compare with the best check before the last n."""
    check_every: int = 0
    """Validate (one NT-ASGD check) every this many batches; 0: once per epoch (L = epoch)."""
    average_from_epoch: float | None = None
    """Start averaging at this epoch even if the trigger has not fired (None: trigger only)."""
    lr_drops: list[int] = field(default_factory=list)
    """Epochs after which the lr is divided by lr_drop_factor (the original's --when)."""
    lr_drop_factor: float = 10.0
    """Divisor applied at each epoch in lr_drops."""

    def validate(self) -> None:
        _finite(self)
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optim.optimizer must be one of sgd, adam; got {self.optimizer!r}")
        _positive(self, "lr", "nonmono", "lr_drop_factor")
        for name in ("clip", "weight_decay", "alpha", "beta", "check_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.average_from_epoch is not None and self.average_from_epoch < 0:
            raise ConfigError(f"optim.average_from_epoch must be >= 0 or none, got {self.average_from_epoch}")
        if any(epoch < 1 for epoch in self.lr_drops):
            raise ConfigError(f"optim.lr_drops must be epochs >= 1, got {self.lr_drops}")


@dataclass
class TrainConfig:
    epochs: int = 750
    """Epochs to train (an epoch is one pass over the training split)."""
    seed: int = 141
    """Seed for every random number generator."""
    max_minutes: float | None = None
    """Stop cleanly, resumably, at the first batch boundary after this many minutes."""
    finetune_epochs: int = 750
    """Upper bound on epochs of `awdlstm finetune` (it stops on the trigger first)."""
    finetune_seed: int | None = None
    """Seed of `awdlstm finetune` (None: the training seed; the original QRNN commands use 404)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: str = "fp32"
    """fp32, bf16, fp16 or auto: autocast on CUDA, with a gradient scaler for fp16; AR/TAR and
    the loss stay fp32. The CPU runs fp32 only (no bf16 LSTM kernel on AVX2, see benchmarks);
    auto is bf16 on a GPU that has it (else fp16) and fp32 on the CPU."""
    compile: bool = False
    """torch.compile the model for the training step (off: on the CPU the LSTMs and the
    random masks break the graph and the compiled step was slower, benchmarks/README.md)."""
    threads: int = 0
    """CPU threads for PyTorch (0: one per physical core)."""
    rank_masks: str = "global"
    """Data-parallel dropout masks. global: every rank draws the masks of the whole global
    batch (the same random numbers as one process) and applies its streams' part, so N ranks
    compute what one process does at the global batch (up to float rounding); rank: each rank draws only
    its own streams' masks from a rank-offset generator (less drawing with per-step masks at
    large batches; the same in distribution, not in value)."""
    log_every: int = 200
    """Batches between progress-bar refreshes of the running loss."""
    max_rollbacks: int = 3
    """Times a NaN or infinite loss or gradient may send the run back to its last checkpoint
    with the learning rate halved, before it stops."""

    def validate(self) -> None:
        _finite(self)
        _positive(self, "epochs", "finetune_epochs", "log_every")
        for name in ("seed", "finetune_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**64:  # what torch's generators accept
                raise ConfigError(f"train.{name} must be in [0, 2**64), got {value}")
        if self.max_rollbacks < 0:
            raise ConfigError(f"train.max_rollbacks must be >= 0, got {self.max_rollbacks}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0 or none, got {self.max_minutes}")
        if self.rank_masks not in ("global", "rank"):
            raise ConfigError(f"train.rank_masks must be global or rank, got {self.rank_masks!r}")
        if self.precision not in ("fp32", "bf16", "fp16", "auto"):
            raise ConfigError(f"train.precision must be one of fp32, bf16, fp16, auto; got {self.precision!r}")
        if not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"train.threads must be in [0, {MAX_THREADS}] (0: one per physical core), "
                              f"got {self.threads}")


MAX_THREADS = 1024  # far more makes PyTorch's thread pool fail (a million crashed the process)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        for section in SECTIONS:
            getattr(self, section).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        cfg = cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"a config is a mapping of the sections {', '.join(SECTIONS)}; got {_brief(raw)}")
        for section, values in raw.items():
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section {section!r}; valid: {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section} must map keys to values; got {_brief(values)}")
            for key, value in values.items():
                _set_field(getattr(cfg, section), section, key, value)
        return cfg


SECTIONS = ("data", "model", "optim", "train")


def _brief(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters for a one-line message (a cut one ends in
    "...", never in a space)."""
    text = repr(value)
    return text if len(text) <= width else text[:width].rstrip() + "..."


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings, parsing each value to its field's type."""
    cfg = dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. model.weight_p=0.3")
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r}; valid: {', '.join(SECTIONS)}")
        obj = getattr(cfg, section)
        hint = _field_types(type(obj)).get(name)
        if hint is None:
            valid = ", ".join(f.name for f in dataclasses.fields(obj))
            raise ConfigError(f"unknown key {_key(section, name)}; valid keys of {section}: {valid}")
        setattr(obj, name, coerce(text.strip(), hint, f"{section}.{name}", text=True))
    return cfg


def parse_value(text: str, hint: Any, where: str) -> Any:
    """Parse a command-line string to the type ``hint`` (int, float, bool, str, X | None, list[int])."""
    return coerce(text, hint, where, text=True)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce(value: Any, hint: Any, where: str, *, text: bool) -> Any:
    """The value of a field of type ``hint``: with ``text``, ``value`` is command-line text to
    parse (``none``, ``true``/``off``, ``300,400``); without, a value read from a config file
    (JSON), whose type must already fit (an int is accepted for a float). A ConfigError that
    names ``where`` otherwise."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None or (text and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where, text=text)
    if typing.get_origin(hint) is list:
        (inner,) = args
        if text:
            try:
                return [coerce(t.strip(), inner, where, text=True) for t in value.split(",") if t.strip()]
            except ConfigError:
                raise ConfigError(f"{where} expects comma-separated {inner.__name__}s, "
                                  f"like 1,2,3; got {value!r}") from None
        if isinstance(value, list):
            return [coerce(v, inner, where, text=False) for v in value]
    elif hint not in (bool, int, float, str):
        raise ConfigError(f"{where}: unsupported type {hint}")
    elif text:
        low = value.lower()
        if hint is str:
            return value
        if hint is bool and low in _TRUE + _FALSE:
            return low in _TRUE
        try:
            if hint is int:
                return int(value)
            if hint is float:
                return float(value)
        except ValueError:
            pass
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float):
            return value
        try:
            return float(value)
        except OverflowError:  # an int beyond the largest float
            pass
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where} expects {getattr(hint, '__name__', hint)}, got {_brief(value)}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _key(section: str, name: Any) -> str:
    """section.name for a message, quoted if a line break or other unprintable character in
    it would break the one-line message."""
    key = f"{section}.{name}"
    return key if key.isprintable() else repr(key)


def _set_field(obj: Any, section: str, key: str, value: Any) -> None:
    hints = _field_types(type(obj))
    if key not in hints:
        valid = ", ".join(hints)
        raise ConfigError(f"unknown key {_key(section, key)}; valid keys of {section}: {valid}")
    setattr(obj, key, coerce(value, hints[key], f"{section}.{key}", text=False))


def _finite(obj: Any) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{f.name} must be a finite number, got {value}")


def _positive(obj: Any, *names: str) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value}")


def _probability(obj: Any, *names: str, upper_inclusive: bool = False) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(obj, name)
        ok = 0 <= value <= 1 if upper_inclusive else 0 <= value < 1
        if not ok:
            bracket = "]" if upper_inclusive else ")"
            raise ConfigError(f"{section}.{name} must be in [0, 1{bracket}, got {value}")
