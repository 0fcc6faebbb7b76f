from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("AWDLSTM_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    """Each test gets its own corpus cache and a fixed thread count."""
    monkeypatch.setenv("AWDLSTM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ptb" / "train.txt").is_file():
        pytest.fail(f"benchmark corpora not found at {SHARED_DATA}; set AWDLSTM_TEST_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_ptb(shared_data, tmp_path_factory) -> Path:
    """Real PTB text, cut to a size that trains in seconds: the first 3,000 training lines
    and the first 400 lines of valid and test."""
    out = tmp_path_factory.mktemp("small_ptb")
    for split, n in (("train", 3000), ("valid", 400), ("test", 400)):
        lines = (shared_data / "ptb" / f"{split}.txt").read_text(encoding="utf-8").split("\n")[:n]
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def pytest_collection_modifyitems(config, items):
    """Tests that read the benchmark corpora carry the corpus marker (so that
    ``-m "not corpus"`` runs without them). Tests marked gpu need CUDA; without it they are
    reported as skipped, never as passed."""
    unmarked = [item.nodeid for item in items
                if {"shared_data", "small_ptb"} & set(getattr(item, "fixturenames", ())) and "corpus" not in item.keywords]
    if unmarked:
        raise pytest.UsageError(f"tests that read the benchmark corpora need @pytest.mark.corpus: {', '.join(unmarked)}")
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible); run on a GPU machine: pytest -m gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
