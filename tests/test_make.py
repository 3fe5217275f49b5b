"""The Makefile's study: `make paper` refuses what would fail later before training, trains each method's
seeds in one process (--seeds), probes each best.pt and writes one report with per-seed and across-seed
rows; with no DATA it means Mini-ImageNet by name."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, make_omniglot, tiny_flags


def paper_command(tmp_path):
    """`make paper` at toy size on a small Omniglot folder, its runs and report under `tmp_path`."""
    data = make_omniglot(tmp_path / "omni glot")  # a space in a path is one argument
    flags = tiny_flags(tmp_path / "unused", "--iterations", "2", "--eval-every", "2")
    out_at = flags.index("--out")
    del flags[out_at : out_at + 2]  # make paper names each run's folder
    return ["make", "-s", "paper", f"DATA={data}", f"PAPER_FLAGS={' '.join(flags)}",
            "PROBE_FLAGS=--iterations 4 --queries 3 --no-progress", f"RUNS={tmp_path / 'runs'}",
            f"REPORT={tmp_path / 'report'}", f"PY={sys.executable}", "STAMP=requirements.txt"]  # fmt: skip


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_paper_refuses_bad_methods_and_flags_before_any_training(tmp_path):
    command, runs = paper_command(tmp_path), tmp_path / "runs"
    paper_flags = next(c for c in command if c.startswith("PAPER_FLAGS=")) + " --inner-params=head"
    refusals = {("METHODS=maml protonet",): "error: argument --method: invalid choice: 'protonet'",
                ("METHODS=maml anil maml",): "METHODS names a method twice (maml anil maml)",
                ("RUNS=",): "RUNS and REPORT may not be empty",
                ("REPORT=my report",): "RUNS and REPORT may not hold a space",
                ("DATA=/data/it's here",): "DATA may not hold a quote",
                ('DATA=/data/a "b"',): "DATA may not hold a quote",
                ("METHODS=anil boil", paper_flags): "error: --method boil means --inner-params body, which "
                "--inner-params contradicts"}  # fmt: skip
    for bad, message in refusals.items():  # before any training, of anil too (its flags agree)
        refused = subprocess.run([*command, *bad], cwd=ROOT, capture_output=True, text=True, timeout=60)
        said = [line for line in (refused.stdout + refused.stderr).splitlines() if not line.startswith("make")]
        assert refused.returncode == 2 and len(said) == 1 and said[0].startswith(message), said
        assert not runs.exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_paper_over_two_seeds_and_the_methods_it_is_given_writes_one_report(tmp_path):
    """Each method's seeds in one process (--seeds), each best.pt probed, one report with per-seed and
    across-seed rows, the methods in the order given."""
    runs, report = tmp_path / "runs", tmp_path / "report"
    command = [*paper_command(tmp_path), "SEEDS=0 1", "METHODS=maml boil"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = sorted(str(p.relative_to(runs)) for p in runs.glob("*/seed*"))
    assert folders == [f"{m}/seed{s}" for m in ("boil", "maml") for s in (0, 1)]
    for run in runs.glob("*/seed*"):
        assert json.loads((run / "probe.json").read_text())["settings"]["checkpoint_file"] == "best.pt"
    result = json.loads((report / "stats.json").read_text())
    assert list(result["methods"]) == ["maml", "boil"] and list(result["between_methods"]) == ["boil"]
    for method in ("maml", "boil"):
        probe = result["methods"][method]["probes"]["probe"]
        assert [s["seed"] for s in probe["per_seed"]] == [0, 1] and probe["across_seeds"]["seeds"] == 2
    between = result["between_methods"]["boil"]["probe"]
    assert [s["seed"] for s in between["per_seed"]] == [0, 1] and between["across_seeds"]["seeds"] == 2
    assert "similarity" in result["methods"]["boil"]["probes"]["probe"]["per_seed"][0]
    text = (report / "report.md").read_text()
    assert "n = 2 seeds" in text and "(seeds: " in text and "Omniglot, lake split" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_paper_refuses_data_given_empty_in_one_line():
    """Only an absent DATA means mini-imagenet (fetched by name); DATA= is a mistake, not a default."""
    command = ["make", "-s", "paper", "DATA=", f"PY={sys.executable}", "STAMP=requirements.txt"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    said = [line for line in done.stderr.splitlines() if not line.startswith("make")]  # on stderr, as every refusal
    assert (
        done.returncode == 2
        and not done.stdout
        and said
        == ["DATA is empty: give a dataset folder or name (DATA=omniglot), or leave DATA out for mini-imagenet"]
    )
    shown = subprocess.run(["make", "-n", "paper", f"PY={sys.executable}", "STAMP=requirements.txt"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "maml.py --data 'mini-imagenet'" in shown.stdout
