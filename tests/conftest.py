import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "data" / "mini-imagenet-sample"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own image cache and a quiet, 2-thread torch."""
    monkeypatch.setenv("MAML_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(2)


def tiny_flags(out, *extra):
    """CLI flags of a run small enough for a test: 2-way, 16x16 images, 8 filters."""
    return [
        "--image-size",
        "16",
        "--hidden",
        "8",
        "--ways",
        "2",
        "--shots",
        "1",
        "--queries",
        "3",
        "--meta-batch",
        "2",
        "--inner-steps",
        "1",
        "--synthetic-per-class",
        "12",
        "--val-tasks",
        "10",
        "--test-tasks",
        "10",
        "--eval-steps",
        "1",
        "--eval-queries",
        "3",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
