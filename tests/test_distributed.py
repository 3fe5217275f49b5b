"""torchrun: several processes (gloo on the CPU) train and probe exactly what one process does."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import distributed
import maml
import probe
import run_folder
from conftest import ROOT, read_csv, tiny_flags

# float64, 4 tasks per meta-batch (2 per process), second order, 3 iterations, 30 validation tasks
# in chunks of 25 (so the two processes evaluate different chunks).
EXACT = ["--dtype", "float64", "--meta-batch", "4", "--inner-steps", "2", "--iterations", "3",
         "--eval-every", "2", "--val-tasks", "30", "--cache-dir", "none"]  # fmt: skip


def torchrun(script, *args, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run([*command, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def rank_environment(rank, world, port):
    """What torchrun gives each process."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved_iteration(path):
    return run_folder.load_checkpoint(path)["iteration"] if path.exists() else -1


def largest_difference(a, b):
    return {name: (a[name] - b[name]).abs().max().item() for name in a}


@pytest.mark.parametrize("method, conv_bias", [("maml", True), ("metasgd", False)])
def test_two_processes_train_the_same_model_as_one(method, conv_bias, tmp_path):
    flags = EXACT + (["--learn-lr"] if method == "metasgd" else []) + ([] if conv_bias else ["--no-conv-bias"])
    maml.main(tiny_flags(tmp_path / "one", *flags))
    torchrun("maml.py", *tiny_flags(tmp_path / "two", *flags))
    one, two = (run_folder.load_checkpoint(tmp_path / run / "ckpt.pt") for run in ("one", "two"))
    assert one["iteration"] == two["iteration"] == 3
    params = largest_difference(one["params"], two["params"])
    rates = largest_difference(one["inner_lrs"], two["inner_lrs"])
    # A conv bias is followed by batch-statistics BatchNorm, so its meta-gradient is pure rounding
    # noise (~1e-16 here) whose sum depends on how the tasks were split, and Adam divides it by its
    # eps (1e-8): a few 1e-11. Every other parameter (all of them with --no-conv-bias) and every
    # rate agrees to 1e-12.
    dead = [name for name in params if name.startswith("conv") and name.endswith("bias")]
    assert bool(dead) == conv_bias
    assert max(d for name, d in params.items() if name not in dead) < 1e-12
    assert max([params[name] for name in dead], default=0) < 1e-9
    assert max(rates.values()) < 1e-12
    rows_one, rows_two = read_csv(tmp_path / "one" / "metrics.csv"), read_csv(tmp_path / "two" / "metrics.csv")
    assert [r["iteration"] for r in rows_one] == [r["iteration"] for r in rows_two] == ["0", "2", "3"]
    for a, b in zip(rows_one, rows_two):
        assert abs(float(a["val_acc"]) - float(b["val_acc"])) < 1e-12
    assert one["best_val"] == two["best_val"]
    assert (tmp_path / "two" / "test.json").exists() and (tmp_path / "two" / "best.pt").exists()


def test_two_process_probe_writes_the_records_of_one_process(tmp_path):
    maml.main(tiny_flags(tmp_path / "run", "--learn-lr", "--iterations", "2", "--eval-every", "2"))
    probe_flags = ["--iterations", "20", "--queries", "5", "--batch", "3", "--no-progress", "--cache-dir", "none",
                   "--device", "cpu"]  # fmt: skip
    checkpoint = str(tmp_path / "run" / "best.pt")
    probe.main([checkpoint, *probe_flags, "--out", str(tmp_path / "one")])  # one process, no torchrun
    torchrun("probe.py", checkpoint, *probe_flags, "--out", str(tmp_path / "two"))
    records_one, records_two = (tmp_path / out / "probe.csv" for out in ("one", "two"))
    assert len(read_csv(records_one)) == 20
    assert records_one.read_text() == records_two.read_text()


def test_a_killed_process_stops_the_other_with_one_line_and_one_process_resumes(tmp_path):
    out, port = tmp_path / "run", free_port()
    flags = tiny_flags(out, "--meta-batch", "4", "--iterations", "400", "--eval-every", "50", "--save-every", "10",
                       "--log-every", "5", "--cache-dir", "none")  # fmt: skip
    ranks = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "maml.py"), *flags],
            env=rank_environment(rank, 2, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        for rank in range(2)
    ]
    deadline = time.time() + 120
    while saved_iteration(out / "ckpt.pt") < 10 and time.time() < deadline:
        time.sleep(0.2)
    ranks[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, stderr = ranks[0].communicate(timeout=90)
    assert ranks[0].returncode not in (0, None)
    assert time.time() - killed_at < 60
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2") and "--resume" in lines[0], stderr
    saved = run_folder.load_checkpoint(out / "ckpt.pt")
    assert 0 < saved["iteration"] < 400
    maml.main(flags + ["--iterations", str(saved["iteration"] + 10), "--resume"])
    assert run_folder.load_checkpoint(out / "ckpt.pt")["iteration"] == saved["iteration"] + 10


def test_a_meta_batch_that_does_not_split_over_the_processes_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "maml.py"), *tiny_flags(out, "--meta-batch", "3")],
        env=rank_environment(0, 2, free_port()), capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2
    assert lines == ["error: --meta-batch 3 cannot be split evenly over 2 processes; use a multiple of 2"]
    assert not out.exists()


def test_one_process_without_torchrun_never_joins_a_process_group():
    assert distributed.join_processes(torch.device("cpu")) == (0, 1, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
