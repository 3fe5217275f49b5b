"""Fixtures and helpers shared by the test files (they import them with `from conftest import ...`)."""

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Optional real-data tests: a Mini-ImageNet folder (Ravi layout, a few images per class is enough) named
# by MAML_TEST_DATA. Without it they skip.
SAMPLE = Path(os.environ["MAML_TEST_DATA"]) if os.environ.get("MAML_TEST_DATA") else None

import cli  # noqa: E402  (after ROOT is on the path)
import data  # noqa: E402
import maml  # noqa: E402

DT = torch.float64  # the meta-gradient checks run in double precision
CLASSES = ["n01", "n02", "n03"]  # the training classes of `make_jpegs`; its val and test classes are n1*, n2*
PER_CLASS = 4  # images per class and split of `make_jpegs`


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "limit(size): run the case in a subprocess that may write at most size bytes a file"
    )
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; gpu_check.py runs `-m cuda`)")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own image cache and a quiet, 2-thread torch. The suite is a CPU suite, also
    on a machine with a GPU: '--device auto' means the CPU here (tests/test_gpu.py asks for cuda)."""
    monkeypatch.setenv("MAML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MAML_FAKE_CUDA_GRAPH", raising=False)  # gpu_check.py --smoke sets it for its stages
    torch.set_num_threads(2)
    real_resolve_device = cli.resolve_device
    monkeypatch.setattr(cli, "resolve_device", lambda name: real_resolve_device("cpu" if name == "auto" else name))


# --------------------------------------------------------------------------- the training script


def tiny_flags(out, *extra):
    """CLI flags of a run small enough for a test: 2-way, 16x16 images, 8 filters; `extra` comes last, so
    it overrides any of them."""
    return [
        "--device",
        "cpu",
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
        "--precision",  # plain float32 kernels: at these shapes oneDNN's overheads make 'fast' the slower one
        "highest",
        *extra,
    ]


def read_csv(path):
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- a small meta-learning problem


def micro_problem(tasks=3, ways=2, shots=2, queries=3, size=16, hidden=3, seed=0, dtype=DT):
    """Perturbed Conv-4 parameters (requiring grad) and one meta-batch of random images."""
    g = torch.Generator().manual_seed(seed)
    params = maml.init_params(ways, hidden, size, generator=g, dtype=dtype)
    params = {n: (p + 0.1 * torch.randn(p.shape, generator=g, dtype=dtype)).requires_grad_() for n, p in params.items()}
    episode = {
        "support_x": torch.randn(tasks, ways * shots, 3, size, size, generator=g, dtype=dtype),
        "support_y": torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1),
        "query_x": torch.randn(tasks, ways * queries, 3, size, size, generator=g, dtype=dtype),
        "query_y": torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1),
    }
    return params, episode


def meta_sgd_rates(params, seed=1):
    """Learnable per-entry rates of both signs, as Meta-SGD's become."""
    g = torch.Generator().manual_seed(seed)
    return {n: (0.05 * torch.randn(p.shape, generator=g, dtype=DT)).requires_grad_() for n, p in params.items()}


def method_rates(method, params, inner_params="all"):
    """The inner rates of `method`: MAML's fixed alpha = 0.1, or Meta-SGD's learnable `meta_sgd_rates`, for
    the parameters that `inner_params` adapts (all; head: ANIL; body: BOIL)."""
    adapting = maml.adapting(params, inner_params)
    return meta_sgd_rates(adapting) if method == "metasgd" else maml.init_inner_lrs(adapting, 0.1)


def learnable(rates):
    """The rates the meta-gradient is taken with respect to (Meta-SGD's; none of MAML's)."""
    return [r for r in rates.values() if r.requires_grad]


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


# --------------------------------------------------------------------------- datasets on disk


def make_jpegs(folder, size=20, seed=0):
    """Ravi layout with real JPEGs; returns {training class: [decoded HxWx3 arrays, in file order]}."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    decoded = {c: [] for c in CLASSES}
    for k, split in enumerate(data.SPLITS):
        rows = ["filename,label"]
        for c in (name.replace("n0", f"n{k}") for name in CLASSES):  # each split has its own classes
            for i in range(PER_CLASS):
                name = f"{c}{split}{i:04d}.jpg"
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "images" / name)
                rows.append(f"{name},{c}")
                if split == "train":
                    decoded[c].append(np.asarray(Image.open(folder / "images" / name).convert("RGB")))
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return decoded


# Omniglot as it ships, in small: (part, alphabet) -> number of characters. 14 background characters,
# so the lake split holds out round(0.15 * 14) = 2 for validation.
OMNIGLOT_ALPHABETS = {
    ("images_background", "Alpha"): 7,
    ("images_background", "Beta_(script)"): 7,
    ("images_evaluation", "Gamma"): 5,
}
OMNIGLOT_PER_CHARACTER = 4
# The vinyals split files: split -> characters (each listed with all four rotations).
OMNIGLOT_VINYALS = {
    "train": [f"Alpha/character{i:02d}" for i in range(1, 8)] + ["Beta_(script)/character01"],
    "val": [f"Beta_(script)/character{i:02d}" for i in range(2, 5)],
    "test": [f"Gamma/character{i:02d}" for i in range(1, 6)] + ["Beta_(script)/character05"],
}


def make_omniglot(folder, vinyals=False, size=105, seed=0):
    """Omniglot's own layout: 1-bit PNGs (black strokes on white) in <part>/<Alphabet>/<characterNN>/,
    a .DS_Store or two, and with `vinyals` the split files splits/vinyals/{train,val,test}.txt.
    Each character is a few random black bars, so its images differ from other characters'."""
    rng = np.random.default_rng(seed)
    for (part, alphabet), n_characters in OMNIGLOT_ALPHABETS.items():
        for c in range(1, n_characters + 1):
            char_dir = folder / part / alphabet / f"character{c:02d}"
            char_dir.mkdir(parents=True)
            bars = rng.integers(0, size - 20, (3, 2))
            for i in range(OMNIGLOT_PER_CHARACTER):
                paper = np.ones((size, size), dtype=bool)
                for y, x in bars + rng.integers(-3, 4, (3, 2)):
                    paper[max(y, 0) : y + 20, max(x, 0) : x + 6] = False  # a stroke: black
                Image.fromarray(paper).convert("1").save(char_dir / f"{c:04d}_{i + 1:02d}.png")
        (folder / part / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "images_background" / "Alpha" / "character01" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    if vinyals:
        (folder / "splits" / "vinyals").mkdir(parents=True)
        for split, characters in OMNIGLOT_VINYALS.items():
            lines = [f"{c}/rot{d:03d}" for c in characters for d in (0, 90, 180, 270)]
            (folder / "splits" / "vinyals" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


# --------------------------------------------------------------------------- a run state for the training step

STEP_FLAGS = ["--seed", "3", "--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "2", "--hidden", "6",
              "--image-size", "16", "--inner-lr", "0.05", "--inner-steps", "2", "--precision", "fast"]  # fmt: skip


def step_run(learn_lr):
    """A fresh run state on the CPU, built as maml.py builds it, on a small synthetic training split."""
    import flags
    import run_start

    config = vars(flags.build_parser().parse_args(STEP_FLAGS + (["--learn-lr"] if learn_lr else [])))
    config["channels"] = 3
    split = data.synthetic_split("train", 16, per_class=6)
    host = {"train": split, "val": split, "test": split}
    return run_start.new_run(config, None, host, host, maml.init_model, torch.device("cpu"), cuda_graph=False)


def run_tensors(run):
    """theta, alpha and Adam's state of a run state."""
    adam = [t for state in run.optimizer.state.values() for t in state.values()]
    return [*run.params.values(), *run.inner_lrs.values(), *adam]
