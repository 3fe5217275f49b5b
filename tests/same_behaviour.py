"""Does a change of the code keep every number? Runs a fixed matrix of short float32 runs with one tree's
scripts, then compares two such outputs file by file.

    python tests/same_behaviour.py run TREE OUT          # the matrix with TREE's scripts, into OUT
    python tests/same_behaviour.py compare BEFORE AFTER  # every file of two outputs; exit code 1 if any differs
    python tests/same_behaviour.py compare BEFORE AFTER --added inner_params  # AFTER's new setting left out

The matrix: MAML and Meta-SGD with the task loop and grouped, first order with clipping and no conv
biases, float64, `--seeds 0 1` for both methods, ANIL and BOIL (loop and grouped) and both with learned
rates (BOIL's over `--seeds 0 1`), two runs in their default folders (`run_start.default_out`, one of them
stacked seeds), torchrun with 2 processes (gloo), a resumed run, a tiny Ravi-layout dataset, probes (one
with `--rates flipped`, one under torchrun, seven with `--similarity`), reports over one seed, over two
seeds per method, over MAML, Meta-SGD, ANIL and BOIL, and over the four methods with learned rates or
none besides MAML; the default folder names and resume commands of all six methods
(`run_start.default_out`, `run_start.resume_command`, into runs/names.json); and a run of the BEFORE
output resumed and probed by TREE's code (old checkpoints load, probe and resume). Each command runs in
OUT with relative paths, so checkpoints and reports of two trees are comparable whole. A refactor that
keeps behaviour shows "identical" for all. Not a test (it takes several minutes): run it before and after
every step of a refactor.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY = ["--device", "cpu", "--image-size", "16", "--hidden", "8", "--ways", "2", "--shots", "1", "--queries", "3",
        "--meta-batch", "2", "--inner-steps", "2", "--synthetic-per-class", "12", "--val-tasks", "10",
        "--test-tasks", "10", "--eval-steps", "2", "--eval-queries", "3", "--no-progress", "--iterations", "6",
        "--eval-every", "3", "--save-every", "2"]  # fmt: skip
TRAININGS = {
    "maml-loop": ["--task-batching", "loop"],
    "maml-grouped": ["--task-batching", "grouped"],
    "metasgd-loop": ["--learn-lr", "--task-batching", "loop"],
    "metasgd-grouped": ["--learn-lr", "--task-batching", "grouped", "--lr-init-range", "-0.02", "0.03"],
    "metasgd-fo-clip": ["--learn-lr", "--first-order", "--clip-grad", "0.5", "--no-conv-bias"],
    "metasgd-float64": ["--learn-lr", "--dtype", "float64", "--seed", "3"],
    "seeds-maml": ["--seeds", "0", "1"],
    "seeds-metasgd": ["--seeds", "0", "1", "--learn-lr"],
    "ravi": ["--learn-lr", "--data", "ravi", "--queries", "1", "--eval-queries", "1"],
    "anil": ["--inner-params", "head", "--task-batching", "loop"],
    "boil": ["--inner-params", "body", "--task-batching", "grouped"],
    "anil-metasgd": ["--learn-lr", "--inner-params", "head"],
    "boil-metasgd": ["--learn-lr", "--inner-params", "body", "--seeds", "0", "1"],
}
DEFAULT_FOLDERS = {  # trained without --out: into run_start.default_out's folders under runs/
    "default-metasgd": ["--learn-lr", "--seed", "4"],
    "default-boil-seeds": ["--inner-params", "body", "--seeds", "5", "6"],
}
SIMILARITY = ["anil", "boil", "anil-metasgd", "boil-metasgd/seed0", "boil-metasgd/seed1", "metasgd-2w1s-seed4",
              "boil-2w1s-seed5"]  # fmt: skip
# The default folder and resume command of every method, single-seed and stacked, with and without --out.
NAMES = """
import argparse, json, sys
sys.path.insert(0, sys.argv[1])
import run_start
rows = {}
for learn_lr in (False, True):
    for inner_params in ("all", "head", "body"):
        for seeds, out in ((None, None), (None, "runs/x"), ([0, 1], None), ([0, 1], "runs/x")):
            args = argparse.Namespace(learn_lr=learn_lr, inner_params=inner_params, ways=5, shots=1, seed=3,
                                      seeds=seeds, out=out)
            outs = [run_start.default_out({**vars(args), "seed": s}) for s in (seeds or [3])]
            rows[f"{learn_lr} {inner_params} {seeds} {out}"] = [outs, run_start.resume_command(args, outs)]
with open("runs/names.json", "w") as f:
    json.dump(rows, f, indent=1)
"""
PROBE = ["--iterations", "16", "--batch", "4", "--queries", "3", "--no-progress", "--device", "cpu"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# wall-clock time (and the digest of logs that hold it), and the random id each run gets at its start
# (checkpoints, test.json, run.json, probe settings)
VOLATILE = {"elapsed", "elapsed_s", "seconds_this_session", "iterations_per_second", "run_id", "checkpoint_run_id",
            "logs_digest"}  # fmt: skip


def make_ravi(folder):
    """A tiny Ravi-layout dataset: 4 classes per split, 4 random 20x20 JPEGs each."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    for k, split in enumerate(("train", "val", "test")):
        rows = ["filename,label"]
        for c in range(4):
            for i in range(4):
                name = f"n{k}{c}{i:04d}.jpg"
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "images" / name)
                rows.append(f"{name},n{k}{c}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def commands(tree, old):
    """(name, command) of the whole matrix, in order; `old` holds the BEFORE output's runs."""
    py = [sys.executable]
    script = {name: str(Path(tree) / f"{name}.py") for name in ("maml", "probe", "analyze")}
    result = [
        (name, [*py, script["maml"], *TINY, *flags, "--out", f"runs/{name}"]) for name, flags in TRAININGS.items()
    ]
    torchrun = [*TINY, "--learn-lr", "--meta-batch", "4", "--out", "runs/torchrun"]
    result += [(name, [*py, script["maml"], *TINY, *flags]) for name, flags in DEFAULT_FOLDERS.items()]
    result.append(("names", [*py, "-c", NAMES, str(Path(tree).resolve())]))
    result.append(("torchrun", [*TORCHRUN, script["maml"], *torchrun]))
    resumed = [*TINY, "--learn-lr", "--out", "runs/resumed"]
    result += [("resumed-start", [*py, script["maml"], *resumed, "--iterations", "3"]),
               ("resumed", [*py, script["maml"], *resumed, "--resume"])]  # fmt: skip
    if old is not None:
        result.append(("old-resumed", [*py, script["maml"], *TINY, "--learn-lr", "--task-batching", "loop",
                                       "--out", "runs/old", "--iterations", "9", "--resume"]))  # fmt: skip
    probed = ["maml-loop", "metasgd-loop", "ravi", *(f"seeds-{m}/seed{s}" for m in ("maml", "metasgd") for s in (0, 1))]
    probed += ["old"] if old is not None else []
    result += [(f"probe {run}", [*py, script["probe"], f"runs/{run}/best.pt", *PROBE]) for run in probed]
    result.append(
        ("probe flipped", [*py, script["probe"], "runs/metasgd-grouped/best.pt", *PROBE, "--rates", "flipped"])
    )
    result += [
        (f"probe similarity {run}", [*py, script["probe"], f"runs/{run}/best.pt", *PROBE, "--similarity"])
        for run in SIMILARITY
    ]
    result.append(("probe torchrun", [*TORCHRUN, script["probe"], "runs/torchrun/best.pt", *PROBE, "--out", "runs/tp"]))
    seeds = [f"runs/seeds-{m}/seed{s}" for m in ("maml", "metasgd") for s in (0, 1)]
    result += [("report", [*py, script["analyze"], "runs/maml-loop", "runs/metasgd-loop", "--out", "report/one"]),
               ("report seeds", [*py, script["analyze"], *seeds, "--out", "report/seeds"])]  # fmt: skip
    four = ["runs/maml-loop", "runs/metasgd-loop", "runs/anil", "runs/boil"]
    learned = [f"runs/{run}" for run in SIMILARITY if run != "boil"]  # no MAML: no between-method tests
    result += [("report four", [*py, script["analyze"], *four, "--out", "report/four"]),
               ("report learned", [*py, script["analyze"], *learned, "--out", "report/learned"])]  # fmt: skip
    return result


def run_matrix(tree, out, old):
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    make_ravi(out / "ravi")
    if old is not None:
        shutil.copytree(
            Path(old) / "runs" / "metasgd-loop", out / "runs" / "old", ignore=shutil.ignore_patterns("*.lock", "probe*")
        )
    env = {**os.environ, "MAML_CACHE_DIR": str(out / "cache"), "OMP_NUM_THREADS": "2"}
    failed = []
    for name, command in commands(tree, old):
        done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True)
        (out / "logs" / f"{name.replace(' ', '_').replace('/', '_')}.log").write_text(done.stdout + done.stderr)
        print(f"{name}: exit {done.returncode}", flush=True)
        if done.returncode:
            failed.append(name)
            print(done.stderr[-2000:])
    return failed


def same(a, b, where):
    """The differences between two loaded values, as lines (tensors: exact, dtype included)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        ok = torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape
        ok = ok and torch.equal(a, b)
        return [] if ok else [f"{where}: tensors differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        b = {k: v for k, v in b.items() if k in a or k not in ADDED}  # settings the AFTER tree added
        if list(a) != list(b):
            return [f"{where}: keys {list(a)} != {list(b)}"]
        return [line for k in a if k not in VOLATILE for line in same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in same(x, y, f"{where}[{i}]")]
    return [] if a == b or (a != a and b != b) else [f"{where}: {a!r} != {b!r}"]


def load(path):
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return path.read_bytes()


ADDED = set()  # compare --added KEY: a key only the AFTER output has (a new setting), left out of the comparison


def compare(before, after):
    files = {p.relative_to(before) for p in Path(before).rglob("*") if p.is_file()}
    files |= {p.relative_to(after) for p in Path(after).rglob("*") if p.is_file()}
    files = sorted(f for f in files if f.parts[0] in ("runs", "report") and f.suffix != ".lock")
    problems = []
    for f in files:
        a, b = Path(before) / f, Path(after) / f
        if not (a.exists() and b.exists()):
            problems.append(f"{f}: only in {'before' if a.exists() else 'after'}")
            continue
        problems += same(load(a), load(b), str(f))
    for line in problems:
        print(line)
    print(f"{len(files)} files compared: {'identical' if not problems else f'{len(problems)} differences'}")
    return 1 if problems else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("verb", choices=["run", "compare"])
    p.add_argument("first", help="run: the tree whose scripts run; compare: the BEFORE output")
    p.add_argument("second", help="run: the output folder; compare: the AFTER output")
    p.add_argument("--old", default=None, help="run: a BEFORE output whose Meta-SGD run this tree resumes and probes")
    p.add_argument(
        "--added", nargs="*", default=[], help="compare: keys only AFTER has (a new setting's), not compared"
    )
    args = p.parse_args()
    ADDED.update(args.added)
    if args.verb == "compare":
        return compare(args.first, args.second)
    failed = run_matrix(args.first, args.second, args.old)
    print(f"failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
