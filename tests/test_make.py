"""The Makefile's study over seeds: `make paper` trains each method's seeds in one process (--seeds),
probes each best.pt and writes one report with per-seed and across-seed rows."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, make_omniglot, tiny_flags


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_paper_over_two_seeds_writes_one_report_with_per_seed_and_across_seed_rows(tmp_path):
    data = make_omniglot(tmp_path / "omniglot")
    flags = tiny_flags(tmp_path / "unused", "--iterations", "2", "--eval-every", "2")
    out_at = flags.index("--out")
    del flags[out_at : out_at + 2]  # make paper names each run's folder
    runs, report = tmp_path / "runs", tmp_path / "report"
    command = ["make", "-s", "paper", f"DATA={data}", "SEEDS=0 1", f"PAPER_FLAGS={' '.join(flags)}",
               "PROBE_FLAGS=--iterations 4 --queries 3 --no-progress", f"RUNS={runs}", f"REPORT={report}",
               f"PY={sys.executable}", "STAMP=requirements.txt"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = sorted(str(p.relative_to(runs)) for p in runs.glob("*/seed*"))
    assert folders == ["maml/seed0", "maml/seed1", "metasgd/seed0", "metasgd/seed1"]  # one process per method
    for run in runs.glob("*/seed*"):
        assert json.loads((run / "probe.json").read_text())["settings"]["checkpoint_file"] == "best.pt"
    result = json.loads((report / "stats.json").read_text())
    for method in ("maml", "metasgd"):
        probe = result["methods"][method]["probes"]["probe"]
        assert [s["seed"] for s in probe["per_seed"]] == [0, 1] and probe["across_seeds"]["seeds"] == 2
    between = result["between_methods"]["metasgd"]["probe"]
    assert [s["seed"] for s in between["per_seed"]] == [0, 1] and between["across_seeds"]["seeds"] == 2
    text = (report / "report.md").read_text()
    assert "n = 2 seeds" in text and "mean ± sd over 2 seeds" in text and "Omniglot, lake split" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_paper_trains_probes_and_reports_the_methods_it_is_given(tmp_path):
    data = make_omniglot(tmp_path / "omniglot")
    flags = tiny_flags(tmp_path / "unused", "--iterations", "2", "--eval-every", "2")
    out_at = flags.index("--out")
    del flags[out_at : out_at + 2]
    runs, report = tmp_path / "runs", tmp_path / "report"
    command = ["make", "-s", "paper", f"DATA={data}", f"PAPER_FLAGS={' '.join(flags)}", "METHODS=maml anil boil",
               "PROBE_FLAGS=--iterations 4 --queries 3 --no-progress", f"RUNS={runs}", f"REPORT={report}",
               f"PY={sys.executable}", "STAMP=requirements.txt"]  # fmt: skip
    refused = subprocess.run(
        [*command[:-4], "METHODS=maml protonet", *command[-4:]], cwd=ROOT, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "invalid choice: 'protonet'" in refused.stderr
    paper_flags = f"PAPER_FLAGS={' '.join(flags)} --inner-params=head"  # anil's: fine for anil, not for boil
    refusals = {("METHODS=maml anil maml",): "METHODS names a method twice (maml anil maml)",
                ("METHODS=anil boil", paper_flags): "error: --method boil means --inner-params body, which "
                "--inner-params contradicts"}  # fmt: skip
    for bad, message in refusals.items():  # before any training, of anil too
        refused = subprocess.run([*command, *bad], cwd=ROOT, capture_output=True, text=True, timeout=60)
        said = [line for line in (refused.stdout + refused.stderr).splitlines() if not line.startswith("make")]
        assert refused.returncode == 2 and len(said) == 1 and said[0].startswith(message), said
        assert not runs.exists()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(str(p.relative_to(runs)) for p in runs.glob("*/seed*")) == ["anil/seed0", "boil/seed0", "maml/seed0"]
    result = json.loads((report / "stats.json").read_text())
    assert list(result["methods"]) == ["maml", "anil", "boil"] and list(result["between_methods"]) == ["anil", "boil"]
    assert "similarity" in result["methods"]["boil"]["probes"]["probe"]["per_seed"][0]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_paper_refuses_data_given_empty_in_one_line():
    """Only an absent DATA means mini-imagenet (fetched by name); DATA= is a mistake, not a default."""
    command = ["make", "-s", "paper", "DATA=", f"PY={sys.executable}", "STAMP=requirements.txt"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout.strip() == (
        "DATA is empty: give a dataset folder or name (DATA=omniglot), or leave DATA out for mini-imagenet"
    )
    shown = subprocess.run(["make", "-n", "paper", f"PY={sys.executable}", "STAMP=requirements.txt"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "maml.py --data mini-imagenet" in shown.stdout
