"""What only a CUDA GPU can show: weight drop on cuDNN without weight copies, mixed precision.
Skipped (and reported as skipped) without a GPU: pytest -m gpu on a GPU machine."""

import warnings

import pytest
import torch

from awdlstm.config import ModelConfig
from awdlstm.layers import WeightDropLSTM, flat_layout
from awdlstm.model import AWDLSTM
from awdlstm.runtime import Runtime

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_weight_drop_reaches_cudnn_as_one_chunk_without_warnings_or_reflattening():
    torch.manual_seed(0)
    layer = WeightDropLSTM(400, 1150, weight_p=0.5).to(CUDA).train()
    assert flat_layout(layer._flat_weights) is not None  # flatten_parameters put them in one buffer
    before = [w.data_ptr() for w in layer._flat_weights]
    x = torch.randn(70, 20, 400, device=CUDA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "not part of single contiguous chunk of memory" would raise
        for _ in range(3):
            out, _ = layer(x)
            out.float().pow(2).mean().backward()
        layer.eval()
        with torch.no_grad():
            layer(x)
    assert [w.data_ptr() for w in layer._flat_weights] == before  # never re-flattened (copied)


def test_the_one_chunk_path_equals_separate_weights_on_cuda():
    torch.manual_seed(0)
    flat = WeightDropLSTM(16, 32, weight_p=0.5).to(CUDA).train()
    loose = WeightDropLSTM(16, 32, weight_p=0.5).to(CUDA).train()
    for name in flat._flat_weights_names:  # separate tensors: not one chunk
        setattr(loose, name, torch.nn.Parameter(getattr(flat, name).detach().clone()))
    assert flat_layout(loose._flat_weights) is None
    x = torch.randn(9, 4, 16, device=CUDA)
    torch.cuda.manual_seed(3)
    a, _ = flat(x)
    torch.cuda.manual_seed(3)
    b, _ = loose(x)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(flat.weight_hh_l0.grad, loose.weight_hh_l0.grad)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_is_finite_and_close_to_fp32(precision):
    cfg = ModelConfig(emb_size=64, hidden_size=128, num_layers=3, embed_p=0, input_p=0, hidden_p=0, weight_p=0,
                      output_p=0)
    torch.manual_seed(0)
    model = AWDLSTM(cfg, 1000).to(CUDA).eval()
    tokens = torch.randint(1000, (35, 8), device=CUDA)
    ref = model.decoder(model(tokens).dropped_output).float()
    with Runtime(CUDA, precision).autocast():
        out = model.decoder(model(tokens).dropped_output).float()
    assert torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < 2e-2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="data-parallel on GPUs needs 2 of them")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_two_gpu_ranks_with_nccl_match_one_gpu(precision, tmp_path):
    """NCCL, each rank on its LOCAL_RANK GPU, under autocast (fp16 with its scaler): 2 ranks
    at B/2 end close to one GPU at B (dropout off; cuDNN and mixed precision are not bitwise)."""
    import os
    import subprocess
    import sys

    from helpers import checks, cli_argv, write_corpus

    corpus = write_corpus(tmp_path / "corpus", lines=400)
    argv = ["train", "--preset", "tiny", "--data", corpus, "--device", "cuda", "--precision", precision,
            "--set=data.batch_size=4", "--set=optim.check_every=10", "--max-steps", "30", "--no-eval",
            *[f"--set=model.{p}=0" for p in ("embed_p", "input_p", "hidden_p", "weight_p", "output_p")]]
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"run{n}"
        cmd = cli_argv(*argv, "--out", out)
        if n == 2:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *cmd[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
        assert res.returncode == 0, res.stderr[-3000:]
        runs[n] = [c["val_loss"] for c in checks(out)]
    assert len(runs[1]) == len(runs[2]) == 3
    tol = 1e-4 if precision == "fp32" else 3e-2
    assert all(abs(a - b) <= tol for a, b in zip(runs[1], runs[2])), runs
