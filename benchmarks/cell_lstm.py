"""The step-by-step LSTM layer (``awdlstm.cell.CellLSTM``, ``model.rnn=lstm-cell``) against the
fused layer (``awdlstm.layers.WeightDropLSTM``, ``model.rnn=lstm``), side by side in one process.

Forward + backward (gradients for the input and every parameter) of one layer in training
mode with DropConnect on U (``weight_p`` 0.5), for:

- ``fused``: ``WeightDropLSTM``, the stock fused LSTM op (oneDNN on the CPU);
- ``cell``: ``CellLSTM`` with the options off but ``weight_p`` (its custom recurrence);
- ``cell-rd``: the same with recurrent dropout on the candidate (``recurrent_p`` 0.1);
- ``cell-ln``: the same with layer normalisation (plain autograd ops per step);
- ``autograd``: the cell's step written as plain autograd ops (what ``cell`` replaces).

Shapes are INPUTxHIDDENxTxB: by default OpenSeq2Seq's WikiText-103 layer scaled to the CPU
(400 -> 1024, T 96, B 20) and the AWD-LSTM PTB layer (400 -> 1150, T 70, B 20).

    python -m benchmarks.cell_lstm
    python -m benchmarks.cell_lstm --shapes 8x16x6x2 --steps 1 --rounds 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

from awdlstm.cell import CellLSTM
from awdlstm.layers import WeightDropLSTM
from awdlstm.regularize import drop_connect

from .common import RESULTS, write_result
from .forget_mult import parse_shape, report, timed

WEIGHT_P = 0.5
RECURRENT_P = 0.1


def autograd_cell(layer: CellLSTM, x: torch.Tensor) -> torch.Tensor:
    """The plain LSTM step as autograd ops, T small graphs."""
    T, B, _ = x.shape
    H = layer.hidden_size
    U = drop_connect(layer.weight_hh, layer.weight_p, True)
    xw = torch.addmm(layer.bias_ih + layer.bias_hh, x.reshape(T * B, -1), layer.weight_ih.t()).view(T, B, -1)
    h = c = x.new_zeros(B, H)
    ys = []
    for t in range(T):
        i, f, g, o = torch.addmm(xw[t], h, U.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys)


def bench_shape(inp: int, hidden: int, T: int, B: int, steps: int, rounds: int, threads: int) -> dict:
    torch.manual_seed(0)
    layers = {
        "fused": WeightDropLSTM(inp, hidden, WEIGHT_P),
        "cell": CellLSTM(inp, hidden, weight_p=WEIGHT_P),
        "cell-rd": CellLSTM(inp, hidden, weight_p=WEIGHT_P, recurrent_p=RECURRENT_P),
        "cell-ln": CellLSTM(inp, hidden, weight_p=WEIGHT_P, layer_norm=True),
    }
    x = torch.randn(T, B, inp, requires_grad=True)

    def run(layer):
        def fn():
            y, _ = layer(x)
            y.sum().backward()
        return fn

    variants = {name: run(layer.train()) for name, layer in layers.items()}
    plain = layers["cell"]
    variants["autograd"] = lambda: autograd_cell(plain, x).sum().backward()
    times, ivs = timed(variants, steps, rounds)
    rows = report(f"one layer {inp} -> {hidden}, T {T}, B {B}, forward + backward, weight_p {WEIGHT_P}",
                  variants, times, ivs, "fused", T * B, threads)
    ratios = {f"{name}_over_fused": round(rows["fused"]["ms_per_batch"] / rows[name]["ms_per_batch"], 3)
              for name in rows if name != "fused"}
    ratios["ln_over_cell"] = round(rows["cell"]["ms_per_batch"] / rows["cell-ln"]["ms_per_batch"], 3)
    print("  speed ratios (tokens/s of the median step): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return {"shape": {"input": inp, "hidden": hidden, "T": T, "B": B}, "variants": rows, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cell_lstm", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="400x1024x96x20,400x1150x70x20",
                   help="INPUTxHIDDENxTxB,... (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    started = dt.datetime.now().astimezone()
    shapes = [parse_shape(s, 4) for s in args.shapes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, cpu, {args.steps} steps x {args.rounds} rounds per variant")
    results = [bench_shape(*shape, args.steps, args.rounds, threads) for shape in shapes]
    figures = {"benchmark": {"steps": args.steps, "rounds": args.rounds, "threads": threads,
                             "weight_p": WEIGHT_P, "recurrent_p": RECURRENT_P}, "shapes": results}
    path = write_result("cell-lstm", figures, config=None, device="cpu", out=args.out, tag="cell-lstm_cpu",
                        started=started)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
