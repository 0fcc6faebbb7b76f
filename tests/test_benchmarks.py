"""The benchmark runners work from a clean checkout (tiny sizes; no timing is asserted:
speed is measured by the runners themselves, never in tests)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def bench(tmp_path, module, *argv):
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *argv, "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    return proc.stdout, json.loads(path.read_text())


@pytest.mark.slow
def test_run_times_ours_against_plain_and_records_everything(tmp_path):
    out, rec = bench(tmp_path, "run", "--preset", "tiny", "--steps", "2", "--warmup", "1", "--rounds", "2",
                     "--device", "cpu", "--peak-size", "256")
    assert "train ours/plain = " in out and "eval  ours/plain = " in out
    for phase in ("train", "eval"):
        assert set(rec[phase]) == {"ours", "plain"}
        for r in rec[phase].values():
            assert r["tokens_per_s"] > 0 and r["loss_finite"] and len(r["step_ms"]) == 2
        ratio = rec["ratios"][phase]
        assert ratio["ours_over_plain"] == pytest.approx(
            rec[phase]["ours"]["tokens_per_s"] / rec[phase]["plain"]["tokens_per_s"], rel=1e-3)
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
