"""The benchmark runners and benchmarks/gpu.sh work from a clean checkout (tiny sizes; no
timing is asserted: speed is measured by the runners themselves, never in tests)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO


def bench(tmp_path, module, *argv):
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *argv, "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    return proc.stdout, json.loads(path.read_text())


def gpu_sh(tmp_path, *argv, **env):
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": str(tmp_path / "runs"),
           "RESULTS": str(tmp_path / "results"), **env}
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_run_times_ours_against_plain_and_records_everything(tmp_path):
    out, rec = bench(tmp_path, "run", "--preset", "tiny", "--steps", "2", "--warmup", "1", "--rounds", "2",
                     "--device", "cpu", "--peak-reps", "1")
    assert "train ours/plain = " in out and "eval  ours/plain = " in out
    assert rec["kind"] == "run" and rec["schema"] == 2
    measured = rec["peak"]["measured"]["fp32"]
    for phase in ("train", "eval"):
        assert set(rec[phase]) == {"ours", "plain"}
        for r in rec[phase].values():
            assert r["tokens_per_s"] > 0 and r["loss_finite"] and len(r["step_ms"]) == 2
            # never above the measured peak: a faster step raises the peak, and the file says so
            assert 0 < r["fraction_of_measured_peak"] <= 1
            assert r["gflops_per_s"] <= measured["gflops_per_s"]
        ratio = rec["ratios"][phase]
        assert ratio["ours_over_plain"] == pytest.approx(
            rec[phase]["ours"]["tokens_per_s"] / rec[phase]["plain"]["tokens_per_s"], rel=1e-3)
    kernels = [k["kernel"] for k in measured["kernels"]]
    assert any(k.startswith("mm ") for k in kernels) and any(k.startswith("lstm train") for k in kernels)
    if measured["raised"] is not None:
        assert measured["raised"]["to"] == measured["gflops_per_s"] and rec["peak_notes"]
    assert rec["memory"]["ours"]["train_peak_mib"] >= 0
    assert rec["config"]["model"]["weight_p"] > 0 and rec["benchmark"]["malloc"].startswith("freed memory kept")
    assert rec["hardware"] and rec["versions"]["torch"]


@pytest.mark.slow
def test_concurrent_sums_the_runs(tmp_path):
    out, rec = bench(tmp_path, "concurrent", "--preset", "tiny", "--runs", "1,2", "--seconds", "1", "--device", "cpu")
    one, two = rec["rows"]
    assert one["runs"] == 1 and two["runs"] == 2 and len(two["per_run"]) == 2
    assert two["total_tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in two["per_run"]))
    assert two["threads_per_run"] >= 1 and all(r["steps"] > 0 for r in two["per_run"])
    assert rec["kind"] == "concurrent" and rec["config"]["model"]["hidden_size"] == 64


def test_write_result_holds_metadata_and_figures(tmp_path):
    from benchmarks.common import write_result

    first = write_result("demo-kind", {"figure": float("nan"), "rows": [1, 2]}, config={"a": 1}, out=tmp_path,
                         command="python -m benchmarks.demo")
    second = write_result("demo-kind", {"figure": 1.5}, config=None, out=tmp_path)
    assert first != second and first.name.endswith("_demo-kind.json")  # never overwritten
    rec = json.loads(first.read_text())
    assert rec["kind"] == "demo-kind" and rec["config"] == {"a": 1} and rec["command"] == "python -m benchmarks.demo"
    assert rec["figure"] is None and rec["rows"] == [1, 2]
    assert rec["versions"]["torch"] == torch.__version__ and rec["hardware"]["cpu_count"] >= 1
    with pytest.raises(ValueError, match="hardware"):
        write_result("x", {"hardware": 1}, config=None, out=tmp_path)


def test_raised_peak_is_reported_never_exceeded():
    from benchmarks.common import raise_peak

    peak = {"gflops_per_s": 100.0, "kernel": "mm (1, 2) x (2, 3)", "raised": None}
    assert not raise_peak(peak, 90.0, "ours train step") and peak["raised"] is None
    assert raise_peak(peak, 120.0, "ours train step")
    assert peak["gflops_per_s"] == 120.0 and peak["raised"] == {
        "from": 100.0, "from_kernel": "mm (1, 2) x (2, 3)", "to": 120.0, "by": "ours train step"}


def test_gpu_sh_usage_and_no_gpu(tmp_path):
    proc = gpu_sh(tmp_path)
    assert proc.returncode == 2 and "usage: bash benchmarks/gpu.sh check|bench|train MINUTES" in proc.stderr
    proc = gpu_sh(tmp_path, "train")
    assert proc.returncode == 2 and "train needs the minutes" in proc.stderr
    if torch.cuda.is_available():
        return
    proc = gpu_sh(tmp_path, "check")
    assert proc.returncode == 2 and "PyTorch sees no CUDA GPU" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_gpu_sh_bench_smoke_on_the_cpu(tmp_path):
    proc = gpu_sh(tmp_path, "bench", DEVICE="cpu", PRESET="tiny", BATCH_SIZES="20", STEPS="1")
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    results = tmp_path / "results"
    kinds = sorted(json.loads(p.read_text())["kind"] for p in results.glob("*.json"))
    assert kinds == ["concurrent", "run"]
    log = (results / "gpu.log").read_text()
    assert "torch " + torch.__version__ in log and "benchmarks.run --preset tiny --batch-size 20" in log


@pytest.mark.slow
def test_forget_mult_benchmark_compares_every_variant(tmp_path):
    out, rec = bench(tmp_path, "forget_mult", "--shapes", "9x3x5", "--layer", "8x16x6x2", "--steps", "1",
                     "--rounds", "1")
    assert "plain/this" in out and "lstm/this" in out
    (shape,) = rec["forget_mult"]
    assert set(shape["variants"]) == {"plain", "ours", "passes", "block", "scan"}
    for r in shape["variants"].values():
        assert r["max_abs_diff_from_plain"] < 1e-5 and r["ms_per_batch"] > 0 and "cpu_per_wall" in r
    assert set(rec["layer"]["variants"]) == {"qrnn", "lstm"} and rec["layer"]["shape"]["window"] == 2


@pytest.mark.slow
def test_big_corpus_prepares_loads_and_maps_a_tiny_corpus(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.big_corpus", "--out", str(tmp_path / "data"),
                           "--tokens", "5000", "--results", str(tmp_path / "results")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "first preparation: " in proc.stdout and "CPU-s per wall-s" in proc.stdout
    (path,) = (tmp_path / "results").glob("*_big-corpus-*.json")
    rec = json.loads(path.read_text())
    made, prep = rec["corpus"], rec["prepare"]
    assert made["tokens"]["train"] == prep["train"] == 5000  # <eos> included, as WikiText counts
    assert (prep["valid"], prep["test"]) == (made["tokens"]["valid"], made["tokens"]["test"])
    assert all(r["vocab"] == prep["vocab"] and r["train"] == 5000 for r in rec["cached_loads"])
    mem = rec["memory"]
    assert mem["batchified_is_view_of_map"] and mem["batchified_dtype"] == "torch.int32"
    assert mem["window_tokens"] == (5000 // 80 - 1) * 80  # one whole epoch of windows
    assert mem["train_ids_file_mib"] == round(5000 * 4 / 2**20, 1)
def test_cell_lstm_benchmark_compares_the_cell_with_the_fused_layer(tmp_path):
    out, rec = bench(tmp_path, "cell_lstm", "--shapes", "8x16x6x2", "--steps", "1", "--rounds", "1")
    assert rec["kind"] == "cell-lstm" and "speed ratios" in out
    (shape,) = rec["shapes"]
    assert set(shape["variants"]) == {"fused", "cell", "cell-rd", "cell-ln", "autograd"}
    assert shape["ratios"]["cell_over_fused"] == pytest.approx(
        shape["variants"]["fused"]["ms_per_batch"] / shape["variants"]["cell"]["ms_per_batch"], abs=2e-3)


@pytest.mark.slow
def test_layers_compares_presets_side_by_side(tmp_path):
    out, rec = bench(tmp_path, "layers", "--presets", "tiny,tiny", "--steps", "1", "--rounds", "1",
                     "--batch-size", "4", "--bptt", "8")
    assert rec["kind"] == "layers" and set(rec["rows"]) == {"tiny"}
    row = rec["rows"]["tiny"]
    assert row["train"]["tokens_per_s"] > 0 and row["eval"]["tokens_per_s_over_first"] == 1.0


@pytest.mark.slow
def test_ddp_times_ranks_against_one_process_and_the_communication(tmp_path):
    out, rec = bench(tmp_path, "ddp", "--preset", "tiny", "--ranks", "1,2", "--steps", "2", "--warmup", "1",
                     "--rounds", "1", "--set", "data.bptt=8")
    assert rec["kind"] == "ddp" and [r["ranks"] for r in rec["rows"]] == [1, 2]
    one, two = rec["rows"]
    assert one["batch_per_rank"] == 20 and two["batch_per_rank"] == 10  # the same global batch, split
    assert two["tokens_per_s"] > 0 and 0 <= two["ms_per_step_without_communication"]
    assert "communication_share" in two and "communication_share" not in one
    assert len(two["cpu_per_wall_per_rank"]) == 2


def test_layers_takes_presets_with_overrides_as_variants(tmp_path):
    out, rec = bench(tmp_path, "layers", "--presets", "tiny", "--variant", "small=tiny model.hidden_size=32 optim.lr=5",
                     "--steps", "1", "--rounds", "1", "--batch-size", "4", "--bptt", "8")
    assert set(rec["rows"]) == {"tiny", "small"} and rec["presets"] == ["tiny"]
    assert rec["variants"] == {"small": {"preset": "tiny", "overrides": ["model.hidden_size=32", "optim.lr=5"]}}
    assert rec["config"]["small"]["model"]["hidden_size"] == 32 and rec["config"]["tiny"]["model"]["hidden_size"] == 64
