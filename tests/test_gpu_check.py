"""The prepared GPU check runs end to end on the CPU in its smoke mode, capture path rehearsed, so its
plumbing keeps working; a failed capture and a stage over its limit are reported as such."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gpu_check
from conftest import ROOT


def check(out, *flags, capture=None):
    env = {k: v for k, v in os.environ.items() if k != "MAML_FAKE_CUDA_GRAPH"}
    env |= {"MAML_FAKE_CUDA_GRAPH": capture} if capture else {}
    command = [sys.executable, str(ROOT / "gpu_check.py"), "--smoke", "--out", str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=400, env=env)
    return done, json.loads((out / "summary.json").read_text())


def test_gpu_check_smoke_mode_runs_every_stage_and_writes_its_summary(tmp_path):
    done, summary = check(tmp_path / "check")
    stages = [s["stage"] for s in summary["stages"]]
    assert stages == ["cuda-tests", "bench", "train-maml", "train-metasgd", "probe-maml", "probe-metasgd", "analyze"]
    assert summary["failed"] == [], (done.stdout, [s["tail"] for s in summary["stages"] if s["status"] != "ok"])
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "failed stages: none"  # the table is last
    assert "torch" in summary["environment"] and "precision switches" in summary["environment"]
    bench = (tmp_path / "check" / "logs" / "bench.log").read_text()
    assert "from float64" in bench and "rehearsal, eager" in bench and " cuda-graph " not in bench
    assert (tmp_path / "check" / "report" / "report.md").exists() and (tmp_path / "check" / "summary.md").exists()
    assert summary["numbers"]["maml training"]["iterations"] == 4 and "metasgd probe" in summary["numbers"]


def test_a_failed_capture_fails_its_stage_and_is_never_timed_as_the_graph(tmp_path):
    done, summary = check(tmp_path / "check", "--stages", "bench", capture="fail")
    assert done.returncode == 1 and summary["failed"] == ["bench"]
    assert "CUDA graph capture failed" in summary["stages"][0]["status"]
    bench = (tmp_path / "check" / "logs" / "bench.log").read_text()
    assert "eager, capture failed" in bench and " cuda-graph " not in bench and "rehearsal" not in bench


def alive(pid):
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] not in ("Z", "X")


def test_a_stage_over_its_limit_is_killed_with_its_children_and_keeps_what_it_printed(tmp_path):
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(tmp_path / 'child')!r}, 'w').write(str(child.pid)); print('measured 7 it/s', flush=True); "
        "time.sleep(60)"
    )
    start = time.time()
    result = gpu_check.run_stage("slow", [sys.executable, "-c", code], 2, tmp_path)
    assert result["status"] == "killed at its 2 s limit" and time.time() - start < 30
    assert "measured 7 it/s" in result["tail"]
    time.sleep(0.5)
    assert not alive(int((tmp_path / "child").read_text()))  # the whole process group went
