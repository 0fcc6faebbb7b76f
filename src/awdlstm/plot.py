"""Learning curves of one or more runs, or of a sweep, as one PNG.

Four panels: validation perplexity against epoch and against wall time (log scale),
training perplexity against epoch (validation dashed beside it, for the gap), and the
learning rate. A dotted vertical line marks where averaging started (NT-ASGD's switch, or
``optim.average_from_epoch``). matplotlib is an optional extra: ``pip install 'awdlstm[plot]'``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError

FIGSIZE = (12.0, 8.0)
"""Inches; at the default 100 dpi the PNG is 1200 x 800 pixels."""


@dataclass
class Metrics:
    """What a run's metrics.jsonl holds, split by kind of line."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    """One per validation check, in order (epoch, step, train_loss, val_loss, val_ppl, lr, phase, ...)."""
    final: dict[str, Any] | None = None
    """Validation of the weights at the stop (the line with ``"final": true``), if any."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Lines with an ``"event"`` key (e.g. a rollback after a non-finite loss)."""


def read_metrics(run_dir: Path) -> Metrics:
    """Parse RUN/metrics.jsonl; a torn or foreign line is skipped, as training does."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir}: no metrics.jsonl; is it a run directory (or a sweep with sweep.json)?") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from None
    m = Metrics()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if "event" in rec:
            m.events.append(rec)
        elif rec.get("final"):
            m.final = rec
        elif isinstance(rec.get("val_loss"), (int, float)) and isinstance(rec.get("step"), int):
            m.checks.append(rec)
    return m


@dataclass
class Curve:
    label: str
    metrics: Metrics


# ---------------------------------------------------------------------------- which runs


def collect(paths: list[Path]) -> list[Curve]:
    """Runs to plot: each path is a run directory or a sweep folder (all its runs)."""
    groups = []
    for p in map(Path, paths):
        if (p / "sweep.json").is_file():
            groups.append((p, _sweep_runs(p)))
        elif p.is_dir() or (p / "metrics.jsonl").exists():
            groups.append((p, [(None, p)]))
        else:
            raise ConfigError(f"{p}: no such run directory")
    names = _short_names([g[0] for g in groups])
    curves = []
    for name, (_, runs) in zip(names, groups):
        for label, run in runs:
            full = label if len(groups) == 1 and label else f"{name}: {label}" if label else name
            m = read_metrics(run)
            if m.checks:
                curves.append(Curve(full, m))
    if not curves:
        raise CheckpointError(f"no validation checks to plot in {', '.join(map(str, paths))}; "
                              "a run writes one per check (see optim.check_every)")
    return curves


def _sweep_runs(sweep: Path) -> list[tuple[str, Path]]:
    """(label, directory) of each started run, labelled by the overrides that differ between them."""
    try:
        plan = json.loads((sweep / "sweep.json").read_text(encoding="utf-8"))
        runs = [(str(r["name"]), [str(o) for o in r["overrides"]]) for r in plan["runs"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{sweep / 'sweep.json'}: not a sweep plan written by `awdlstm sweep`") from None
    settings = [dict(o.partition("=")[::2] for o in ovs) for _, ovs in runs]
    keys = {k for s in settings for k in s}
    differ = sorted(k for k in keys if len({s.get(k) for s in settings}) > 1)
    out = []
    for (name, _), s in zip(runs, settings):
        run = sweep / name
        if not (run / "metrics.jsonl").is_file():
            continue  # not started yet
        shown = [f"{k.split('.', 1)[-1]}={s[k]}" for k in differ if k in s]
        out.append((", ".join(shown) or name, run))
    return out


def _short_names(paths: list[Path]) -> list[str]:
    """The fewest trailing path parts that tell the paths apart."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


# ---------------------------------------------------------------------------- axes


def epoch_axis(checks: list[dict]) -> list[float] | None:
    """Fractional epoch of each check; None when the run has not yet reached a second epoch.

    A check knows its epoch and step but not where the epoch began, so each epoch boundary
    is put halfway between the epoch's last check and the next epoch's first, and the last
    epoch is given the median length of the others."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for c in checks:
        first.setdefault(c["epoch"], c["step"])
        last[c["epoch"]] = c["step"]
    epochs = sorted(first)
    if len(epochs) < 2:
        return None
    if all(first[e] == last[e] for e in epochs):  # one check per epoch: at its end (check_every=0)
        return [float(c["epoch"]) for c in checks]
    ends = {e: (last[e] + first[n]) / 2 for e, n in zip(epochs, epochs[1:])}
    starts = {e: ends.get(e - 1, 0.0) for e in epochs}
    lengths = [ends[e] - starts[e] for e in epochs[:-1] if ends[e] > starts[e]]
    if not lengths:
        return None
    ends[epochs[-1]] = max(last[epochs[-1]], starts[epochs[-1]] + statistics.median(lengths))
    out = []
    for c in checks:
        e = c["epoch"]
        span = ends[e] - starts[e]
        frac = 1.0 if span <= 0 else (c["step"] - starts[e]) / span
        out.append(e - 1 + min(max(frac, 0.0), 1.0))
    return out


def hours_axis(checks: list[dict]) -> list[float]:
    """Cumulative training and validation time in hours (``seconds`` is per interval)."""
    total, out = 0.0, []
    for c in checks:
        total += float(c.get("seconds") or 0.0)
        out.append(total / 3600)
    return out


def averaging_start(checks: list[dict]) -> int | None:
    """Index of the first check made after averaging began (None: never, or from the start)."""
    for i, c in enumerate(checks):
        if c.get("phase") == "asgd":
            return i if i > 0 else None
    return None


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


# ---------------------------------------------------------------------------- the figure


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("awdlstm plot needs matplotlib: pip install 'awdlstm[plot]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_runs(paths: list[Path], out: Path, *, title: str | None = None, dpi: int = 100) -> Path:
    """Draw the learning curves of ``paths`` (runs or sweeps) into the PNG ``out``."""
    plt = _pyplot()  # before reading anything: a missing extra is the first thing to hear
    curves = collect(paths)
    epochs = [epoch_axis(c.metrics.checks) for c in curves]
    by_epoch = all(e is not None for e in epochs)
    xs = epochs if by_epoch else [[float(c["step"]) for c in cv.metrics.checks] for cv in curves]
    x_label = "epoch" if by_epoch else "optimizer steps (every run is still in its first epoch)"
    hours = [hours_axis(c.metrics.checks) for c in curves]
    t_scale, t_unit = (60.0, "minutes") if max(h[-1] for h in hours) < 2 else (1.0, "hours")

    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE, dpi=dpi)
    (ax_val, ax_time), (ax_train, ax_lr) = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (cv, x, h) in enumerate(zip(curves, xs, hours)):
        color = colors[i % len(colors)]
        checks = cv.metrics.checks
        val = [c.get("val_ppl") or _ppl(c["val_loss"]) for c in checks]
        best = min(val)
        label = f"{cv.label} (best {best:.1f})"
        ax_val.plot(x, val, color=color, marker="." if len(x) < 60 else None, label=label)
        ax_time.plot([t * t_scale for t in h], val, color=color, label=label)
        train = [_ppl(c["train_loss"]) for c in checks]
        ax_train.plot(x, train, color=color, label=cv.label)
        ax_train.plot(x, val, color=color, linestyle="--", alpha=0.5)
        ax_lr.plot(x, [c["lr"] for c in checks], color=color, drawstyle="steps-post", label=cv.label)
        start = averaging_start(checks)
        if start is not None:
            for ax, xv in ((ax_val, x[start]), (ax_time, h[start] * t_scale), (ax_train, x[start]), (ax_lr, x[start])):
                ax.axvline(xv, color=color, linestyle=":", linewidth=1.2)
    from matplotlib.ticker import LogFormatter

    for ax in (ax_val, ax_time, ax_train):
        ax.set_yscale("log")
        # Plain numbers (800, not 8 x 10^2) on the decades and, where few, between them.
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.grid(True, which="both", alpha=0.3)
    ax_lr.set_ylim(bottom=0)
    ax_lr.grid(True, alpha=0.3)
    ax_val.set(title="validation perplexity", xlabel=x_label, ylabel="perplexity (log scale)")
    ax_time.set(title="validation perplexity against time", xlabel=f"training + validation time ({t_unit})",
                ylabel="perplexity (log scale)")
    ax_train.set(title="training perplexity (solid), validation (dashed)", xlabel=x_label,
                 ylabel="perplexity (log scale)")
    ax_lr.set(title="learning rate", xlabel=x_label, ylabel="base learning rate")
    ax_val.legend(fontsize="small", title="run (best valid ppl)", title_fontsize="small")
    ax_time.plot([], [], color="gray", linestyle=":", label="averaging starts")
    ax_time.legend(handles=ax_time.get_lines()[-1:], fontsize="small", loc="upper right")
    if title is None:
        title = _title(paths, curves)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def _title(paths: list[Path], curves: list[Curve]) -> str:
    names = ", ".join(_short_names([Path(p) for p in paths]))
    if len(curves) == 1:
        c = curves[0].metrics.checks
        best = min(c, key=lambda r: r["val_loss"])
        return f"{names}: best validation perplexity {_ppl(best['val_loss']):.2f} (epoch {best['epoch']}, step {best['step']})"
    return f"{names}: {len(curves)} runs"
