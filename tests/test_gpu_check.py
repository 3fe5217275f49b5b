"""The prepared GPU check runs end to end on the CPU in its smoke mode, so its plumbing keeps working."""

import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_smoke_mode_runs_every_stage_and_writes_its_summary(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(ROOT / "gpu_check.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=400)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    stages = [s["stage"] for s in summary["stages"]]
    assert stages == ["tests", "bench", "train-maml", "train-metasgd", "probe-maml", "probe-metasgd", "analyze"]
    assert summary["failed"] == [], (done.stdout, [s["tail"] for s in summary["stages"] if s["status"] != "ok"])
    assert done.returncode == 0
    assert "torch" in summary["environment"] and "TF32 switches" in summary["environment"]
    assert "from float64" in (out / "logs" / "bench.log").read_text()
    assert (out / "report" / "report.md").exists() and (out / "summary.md").exists()
    assert set(summary["numbers"]) >= {"maml test accuracy", "metasgd probe"}
