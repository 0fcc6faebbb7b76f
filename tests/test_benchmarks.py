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
def test_big_corpus_prepares_loads_and_maps_a_tiny_corpus(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.big_corpus", "--out", str(tmp_path / "data"),
                           "--tokens", "5000", "--results", str(tmp_path / "results")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "first preparation: " in proc.stdout and "CPU-s per wall-s" in proc.stdout
    (path,) = (tmp_path / "results").glob("big-corpus-*.json")
    rec = json.loads(path.read_text())
    made, prep = rec["corpus"], rec["prepare"]
    assert made["tokens"]["train"] == prep["train"] == 5000  # <eos> included, as WikiText counts
    assert (prep["valid"], prep["test"]) == (made["tokens"]["valid"], made["tokens"]["test"])
    assert all(r["vocab"] == prep["vocab"] and r["train"] == 5000 for r in rec["cached_loads"])
    mem = rec["memory"]
    assert mem["batchified_is_view_of_map"] and mem["batchified_dtype"] == "torch.int32"
    assert mem["window_tokens"] == (5000 // 80 - 1) * 80  # one whole epoch of windows
    assert mem["train_ids_file_mib"] == round(5000 * 4 / 2**20, 1)
