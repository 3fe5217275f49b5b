"""The prepared GPU check: rehearsed end to end on the CPU (--smoke, capture path faked), what it leaves
and prints must fit what a remote job runner returns (a few files, the end of the output), and it never
reads success where there was no GPU, a failed capture or a stage over its limit."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import gpu_check
from conftest import ROOT


def check_command(out, *flags, work=None):
    work = work or out.parent / "work"
    return [sys.executable, str(ROOT / "gpu_check.py"), "--smoke", "--out", str(out), "--work", str(work), *flags]


def check(out, *flags, capture=None):
    env = {k: v for k, v in os.environ.items() if k not in ("MAML_FAKE_CUDA_GRAPH", "PYTHONUNBUFFERED")}
    env |= {"MAML_FAKE_CUDA_GRAPH": capture} if capture else {}
    done = subprocess.run(check_command(out, *flags), capture_output=True, text=True, cwd=ROOT, timeout=500, env=env)
    return done, json.loads((out / "summary.json").read_text())


def archived(out, name):
    """A file of the check's archive of logs and runs, as text."""
    with tarfile.open(out / gpu_check.ARCHIVE) as tar:
        return tar.extractfile(f"gpu-check/{name}").read().decode()


def test_the_smoke_check_leaves_few_shallow_files_and_ends_its_output_with_every_number(tmp_path):
    """A remote runner returns at most 6-8 plainly named files, two folders down at most, and the last
    12,000 characters of the output: every measured row must be in those."""
    out = tmp_path / "check"
    done, summary = check(out)  # --metasgd's stages are the same commands for Meta-SGD, and analyze.py's (below)
    stages = [s["stage"] for s in summary["stages"]]
    assert stages == ["cuda-tests", "bench", "train-maml", "probe-maml"]
    assert summary["failed"] == [], (done.stdout, [s["tail"] for s in summary["stages"] if s["status"] != "ok"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 6 and all(len(p.relative_to(out).parts) <= 3 for p in files), files
    assert done.returncode == 0 and done.stdout.rstrip().endswith((out / "summary.md").read_text().rstrip())
    assert done.stdout.strip().splitlines()[-1] == "failed stages: none"
    tail = done.stdout[-12000:]
    bench_rows = [line for line in archived(out, "logs/bench.log").splitlines() if line.startswith("  ")]
    assert len(bench_rows) >= 12 and all(row in tail for row in bench_rows)
    assert "rehearsal, eager" in tail and " cuda-graph " not in tail  # the graph's name is never an eager time's
    for number in ("maml training", "maml test accuracy", "maml probe"):
        assert f'"{number}"' in tail, number
    assert "torch" in tail and "precision switches" in tail and "The CUDA tests were skipped: no GPU" in tail
    assert "| cuda-tests | skipped (no GPU) |" in tail
    assert "iteration" in archived(out, "runs/maml/metrics.csv")
    with tarfile.open(out / gpu_check.ARCHIVE) as tar:
        assert not [n for n in tar.getnames() if n.endswith(".pt")]  # no checkpoints come back
    # a stage rerun alone, in a second call, here with a failed capture (what bench.py labels such a row:
    # tests/test_bench.py): the stage fails, and the summary keeps every other stage's result
    done, again = check(tmp_path / "again", "--stages", "train-maml", capture="fail")
    assert done.returncode == 1 and again["failed"] == ["train-maml"]
    assert "CUDA graph capture failed" in next(s for s in again["stages"] if s["stage"] == "train-maml")["status"]
    assert [s["stage"] for s in again["stages"]] == stages
    assert [s["seconds"] for s in again["stages"] if s["stage"] != "train-maml"] == [
        s["seconds"] for s in summary["stages"] if s["stage"] != "train-maml"
    ]


def test_metasgd_adds_its_training_its_probe_and_the_report_of_both_runs(tmp_path):
    args = gpu_check.parse_args(["--smoke", "--metasgd", "--out", str(tmp_path / "out")])
    assert [name for name, _ in gpu_check.chosen_stages(args)][-3:] == ["train-metasgd", "probe-metasgd", "analyze"]
    commands = gpu_check.stage_commands(args, tmp_path)
    maml_run, metasgd_run = commands["train-maml"], commands["train-metasgd"]
    assert metasgd_run == [a.replace("maml", "metasgd") if a in ("maml", str(tmp_path / "runs" / "maml")) else a
                           for a in maml_run]  # fmt: skip
    assert commands["probe-metasgd"][2] == str(tmp_path / "runs" / "metasgd" / "best.pt")
    runs = tmp_path / "runs"
    assert commands["analyze"][1:] == ["analyze.py", str(runs / "maml"), str(runs / "metasgd"), "--out",
                                       str(tmp_path / "report")]  # fmt: skip


def test_without_cuda_and_without_smoke_the_check_refuses_in_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine that has one
    command = [sys.executable, str(ROOT / "gpu_check.py"), str(tmp_path / "data"), "--out", str(tmp_path / "check")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no usable CUDA device" in done.stderr and "torch.cuda.is_available() False" in done.stderr
    assert not (tmp_path / "check").exists()  # without DATA_DIR too: tests/error_rows_flags.py, in process


def test_skipped_cuda_tests_fail_the_stage_unless_smoke(tmp_path):
    """All CUDA tests skipping (a CPU-only torch, a hidden GPU) is no success."""
    command = gpu_check.stage_commands(SimpleNamespace(smoke=False, data="unused"), tmp_path)["cuda-tests"]
    result = gpu_check.run_stage("cuda-tests", command, 120, tmp_path, smoke=False)
    assert re.fullmatch(r"failed: \d+ CUDA tests were skipped \(no GPU seen by them\)", result["status"]), result
    text = (tmp_path / "cuda-tests.log").read_text()
    assert gpu_check.stage_status("cuda-tests", 0, 120, text, smoke=True) == "skipped (no GPU)"


def test_training_speed_is_read_between_two_metrics_rows(tmp_path):
    """Not from the start: the iteration-0 validation, the first save and the capture are left out."""
    rows = [(0, 0.0), (500, 40.0), (1000, 52.5), (1500, 65.0)]  # 40 s to 500: capture and first validation
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", "train_loss", "val_acc", "elapsed_s"])
        writer.writerows([(i, "", 0.5, s) for i, s in rows])
    assert gpu_check.training_speed(tmp_path) == {"iterations": 1500, "between": [1000, 1500], "iterations_per_s": 40.0}
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        f.write("iteration,elapsed_s\n0,0.0\n500,40.0\n")  # one timed row: no rate yet
    assert gpu_check.training_speed(tmp_path) is None


def test_the_stage_table_in_help_and_reference_holds_the_limits():
    reference, readme = (ROOT / "docs" / "reference.md").read_text(), (ROOT / "README.md").read_text()
    for name, (seconds, _, _) in gpu_check.STAGES.items():
        assert f"| `{name}` | {seconds} s |" in reference, name
        assert f"{name:14s}{seconds:4d} s" in gpu_check.__doc__
        assert name == "suite" or f"`{name}` {seconds} s" in readme, name
    always = sum(s for s, flag, _ in gpu_check.STAGES.values() if flag is None)
    assert always <= 8 * 60 and f"add up to {always} s" in gpu_check.__doc__


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


def test_a_stage_killed_at_its_limit_keeps_what_it_printed_without_flushing(tmp_path):
    """Python buffers a stage's output to its log by 8 KiB unless told not to: a kill would lose it all."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    code = "import time; print('  paper  maml 2nd-order  loop  fast  41.0 ms/it'); time.sleep(60)"
    result = gpu_check.run_stage("bench", [sys.executable, "-c", code], 3, tmp_path, env)
    assert result["status"] == "killed at its 3 s limit" and "41.0 ms/it" in result["tail"]


def writers_of(log):
    """The processes that hold `log` open as their standard output."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/1"):
        try:
            if os.readlink(fd) == str(log):
                found.append(fd.parent.parent.name)
        except OSError:  # a process that ended meanwhile
            continue
    return found


def test_an_interrupted_check_takes_its_running_stage_with_it(tmp_path):
    log = tmp_path / "work" / "logs" / "bench.log"
    process = subprocess.Popen(check_command(tmp_path / "check", "--stages", "bench"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (log.exists() and "device:" in log.read_text()):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    assert writers_of(log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    time.sleep(0.5)
    assert writers_of(log) == []  # bench.py went with it
