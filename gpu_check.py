"""The prepared GPU check: what a first session on a GPU machine should run, in one call of 5 minutes.

    python3 gpu_check.py DATA_DIR     # on the GPU machine; DATA_DIR: a Mini-ImageNet folder (or sample)
    python3 gpu_check.py --smoke      # the same stages at tiny sizes on the CPU (the test suite runs it)

Made for a machine that offers only a system python3 with torch (2.11 or newer), numpy, scipy,
matplotlib, tqdm, h5py and pytest, where nothing can be installed. Stages, each a subprocess in a
process group of its own with its own time limit, every one run even when an earlier one failed:
    cuda-tests    the tests that need a GPU (`pytest -m cuda tests/test_gpu.py`), first
    bench         bench.py on the device: every variant, precision and method (ms/it, it/s, memory,
                  meta-gradient difference from the loop and from float64), 8 seeds against one
    train-*       MAML and Meta-SGD, 1,000 iterations each on DATA_DIR at 84 px, the paper's settings
    probe-*       the three-regime probe of each best.pt, 2,000 iterations
    analyze       the report of both runs
    suite         (only with --suite) the rest of the test suite, after every measurement
A stage fails when its command fails, when it is killed at its limit (the whole process group, and
what it measured by then is still reported), or when a capture of the CUDA graph failed in it: an
eager time is never reported as the graph's. --smoke rehearses the capture on the CPU
(MAML_FAKE_CUDA_GRAPH=ok, see gpu.rehearsal; =fail in the environment rehearses a failed capture).
Everything goes into one folder ($OUT when it is set, else gpu-check/<UTC time>): a log per stage,
the runs and the report, summary.md and summary.json. The summary table prints last, since only the
end of the output may come back from the machine. The exit code is 1 if any stage failed.
"""

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import gpu

ROOT = Path(__file__).resolve().parent

# Stage time limits in seconds, sized so that each stage also finishes when the CUDA graph falls back to
# eager, and the whole check fits in 5 minutes on one H100 or H200 (a lease is 15 minutes of device
# time, start-up and a rerun included).
LIMITS = {"cuda-tests": 50, "bench": 90, "train": 50, "probe": 15, "analyze": 15, "suite": 600}
SMOKE_RUN = ["--image-size", "16", "--hidden", "8", "--ways", "2", "--queries", "3", "--meta-batch", "2",
             "--inner-steps", "1", "--synthetic-per-class", "20", "--val-tasks", "4", "--test-tasks", "4",
             "--eval-steps", "1", "--eval-queries", "3", "--iterations", "4", "--eval-every", "2"]  # fmt: skip
CAPTURE_FAILED = "cuda graph: capture failed"


def environment():
    """What the machine offers, as text."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}"]
    if torch.cuda.is_available():
        lines += [f"GPU {i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    else:
        lines.append("no CUDA GPU")
    lines.append(f"precision switches at start: {gpu.precision_report()}")
    return "\n".join(lines)


def stages(args, out):
    """(name, command, time limit) of every stage to run, in order."""
    python, device = sys.executable, "cpu" if args.smoke else "cuda"
    pytest, runs = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], out / "runs"
    data = [] if args.smoke else ["--data", str(args.data)]
    train = SMOKE_RUN if args.smoke else ["--iterations", "1000", "--eval-every", "500"]
    probe = ["--iterations", "20" if args.smoke else "2000", "--no-progress", "--device", device]
    bench = ["--configs", "tiny", "--methods", "maml", "--precisions", "fast", "--repeats", "1", "--seeds", "2"]
    bench = bench if args.smoke else ["--configs", "paper"]
    result = [("cuda-tests", [*pytest, "-m", "cuda", "tests/test_gpu.py"]),
              ("bench", [python, "bench.py", "--device", device, *bench])]  # fmt: skip
    for method, flags in (("maml", []), ("metasgd", ["--learn-lr"])):
        command = [python, "maml.py", *data, *train, *flags, "--device", device, "--no-progress"]
        result.append((f"train-{method}", [*command, "--out", str(runs / method)]))
    for method in ("maml", "metasgd"):
        result.append((f"probe-{method}", [python, "probe.py", str(runs / method / "best.pt"), *probe, *data]))
    result.append(
        ("analyze", [python, "analyze.py", *(str(runs / m) for m in ("maml", "metasgd")), "--out", str(out / "report")])
    )
    result += [("suite", [*pytest, "-m", "not cuda", "tests"])] if args.suite else []
    limit = lambda name: args.limits.get(name, LIMITS[name.split("-")[0] if name[:5] in ("train", "probe") else name])
    return [(name, command, limit(name)) for name, command in result if not args.stages or name in args.stages]


def run_stage(name, command, limit, logs, env=None):
    """Run one stage in a process group of its own, its output going straight to logs/<name>.log (so a
    stage killed at its limit leaves what it printed); at the limit the whole group is killed (pytest's
    or torchrun's children too). Never raises."""
    start, log = time.time(), logs / f"{name}.log"
    with open(log, "w") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=limit)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = f"killed at its {limit} s limit"
    text = log.read_text(errors="replace")
    if status == "ok" and CAPTURE_FAILED in text:
        status = "failed: the CUDA graph capture failed (eager numbers are not the graph's)"
    tail = "\n".join(text.strip().splitlines()[-40:])
    return {"stage": name, "status": status, "seconds": round(time.time() - start, 1), "command": command, "tail": tail}


def training_speed(run):
    """Meta-iterations per second from a run's metrics.csv so far (validation time included): what a
    training stage measured, even one killed at its limit."""
    if not (run / "metrics.csv").exists():
        return None
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("elapsed_s") not in (None, "")]
    last = rows[-1] if rows else None
    if not last or float(last["elapsed_s"]) <= 0:
        return None
    return {
        "iterations": int(last["iteration"]),
        "iterations_per_s": round(int(last["iteration"]) / float(last["elapsed_s"]), 2),
    }


def key_numbers(out):
    """The numbers a reader wants first, read from the files the stages wrote."""
    numbers = {}
    for method in ("maml", "metasgd"):
        run = out / "runs" / method
        numbers[f"{method} training"] = training_speed(run)
        if (run / "test.json").exists():
            numbers[f"{method} test accuracy"] = json.loads((run / "test.json").read_text())["test_acc"]
        if (run / "probe.json").exists():
            summary = json.loads((run / "probe.json").read_text())
            if "on_change" in summary:
                numbers[f"{method} probe"] = {k: summary[k]["mean"] for k in ("on_change", "off_change")}
                numbers[f"{method} probe"]["iterations_per_s"] = summary.get("iterations_per_second")
    return {k: v for k, v in numbers.items() if v is not None}


def write_summary(out, env, results, numbers):
    failed = [r["stage"] for r in results if r["status"] != "ok"]
    table = ["| stage | status | seconds |", "|---|---|---|"] + [
        f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in results
    ]
    lines = ["# GPU check", "", "```", env, "```", "", *table, "", f"Failed stages: {', '.join(failed) or 'none'}", ""]
    for r in results:
        lines += [f"## {r['stage']}", "", "`" + " ".join(r["command"]) + "`", "", "```", r["tail"], "```", ""]
    lines += ["## Key numbers", "", "```", json.dumps(numbers, indent=2), "```", ""]
    (out / "summary.md").write_text("\n".join(lines))
    summary = {"environment": env, "stages": results, "failed": failed, "numbers": numbers}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return table, failed


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="Mini-ImageNet folder (any supported layout)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, synthetic data: checks the plumbing")
    p.add_argument("--out", default=None, help="results folder (default: $OUT, else gpu-check/<UTC time>)")
    p.add_argument("--suite", action="store_true", help="run the rest of the test suite last (CI runs it anyway)")
    p.add_argument("--stages", nargs="+", default=None, metavar="STAGE", help="run only these stages")
    p.add_argument(
        "--limit", action="append", default=[], metavar="STAGE=SECONDS", help="another time limit for a stage"
    )
    args = p.parse_args(argv)
    if not args.smoke and args.data is None:
        p.error("give DATA_DIR (a Mini-ImageNet folder), or --smoke")
    args.limits = {stage: float(seconds) for stage, seconds in (item.split("=", 1) for item in args.limit)}
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "gpu-check" / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = environment()
    print(env, flush=True)
    stage_env = dict(os.environ)
    if args.smoke:  # the CUDA graph's capture path, rehearsed on the CPU (unless a rehearsal is set already)
        stage_env.setdefault("MAML_FAKE_CUDA_GRAPH", "ok")
    results = []
    for name, command, limit in stages(args, out):
        results.append(run_stage(name, command, limit, out / "logs", stage_env))
        print(f"{name}: {results[-1]['status']} ({results[-1]['seconds']} s)", flush=True)
    numbers = key_numbers(out)
    table, failed = write_summary(out, env, results, numbers)
    print(f"\nsummary: {out / 'summary.md'}\n" + json.dumps(numbers, indent=1) + "\n" + "\n".join(table))
    print(f"failed stages: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
