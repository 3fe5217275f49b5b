"""The prepared GPU check: everything a first session on a GPU machine should run, in one go.

    python3 gpu_check.py DATA_DIR          # on the GPU machine; DATA_DIR: a Mini-ImageNet folder (or sample)
    python3 gpu_check.py --smoke           # the same stages at tiny sizes on the CPU (run by the test suite)

Made for a machine that offers only a system python3 with torch (2.11 or newer), numpy, scipy,
matplotlib, tqdm, h5py and pytest, where nothing can be installed. Stages, each a subprocess with its
own time limit, every one run even when an earlier one failed:
    environment   GPU, torch, CUDA and cuDNN versions, the TF32 switches
    tests         the test suite (tests that need CUDA run there and skip on the CPU)
    bench         bench.py on the device: every variant, precision and method, ms/it, it/s, memory,
                  meta-gradient difference from the loop and from float64
    train-*       MAML and Meta-SGD, 2,000 iterations each on DATA_DIR at 84 px with the paper's settings
    probe-*       the three-regime probe of each best.pt, 2,000 iterations
    analyze       the report of both runs
Everything goes into one folder ($OUT when it is set, else gpu-check/<UTC time>): a log per stage,
the runs and the report, summary.md and summary.json. The exit code is 1 if any stage failed.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent

# Stage time limits in seconds: the whole check must fit in 8 minutes on one H100 or H200.
LIMITS = {"tests": 180, "bench": 90, "train": 65, "probe": 20, "analyze": 15}
SMOKE_RUN = ["--image-size", "16", "--hidden", "8", "--ways", "2", "--queries", "3", "--meta-batch", "2",
             "--inner-steps", "1", "--synthetic-per-class", "20", "--val-tasks", "4", "--test-tasks", "4",
             "--eval-steps", "1", "--eval-queries", "3", "--iterations", "4", "--eval-every", "2"]  # fmt: skip


def environment():
    """What the machine offers, as text."""
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}"]  # fmt: skip
    if torch.cuda.is_available():
        lines += [f"GPU {i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    else:
        lines.append("no CUDA GPU")
    lines.append(f"TF32 switches: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                 f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
                 f"float32_matmul_precision={torch.get_float32_matmul_precision()}")  # fmt: skip
    return "\n".join(lines)


def stages(args, out):
    """(name, command, time limit) of every stage after `environment`."""
    python, device = sys.executable, "cpu" if args.smoke else "cuda"
    data = [] if args.smoke else ["--data", str(args.data)]
    runs = out / "runs"
    train = SMOKE_RUN if args.smoke else ["--iterations", "2000", "--eval-every", "500"]
    probe = ["--iterations", "20" if args.smoke else "2000", "--no-progress", "--device", device]
    bench = ["--configs", "tiny", "--precisions", "fast", "--repeats", "1", "--seeds", "2"] if args.smoke else []
    bench = bench or ["--configs", "paper"]  # and 8 seeds against one, at the paper's size
    tests = ["tests/test_gpu.py"] if args.smoke else ["tests"]
    result = [("tests", [python, "-m", "pytest", "-q", *tests], LIMITS["tests"]),
              ("bench", [python, "bench.py", "--device", device, *bench], LIMITS["bench"])]  # fmt: skip
    for method, flags in (("maml", []), ("metasgd", ["--learn-lr"])):
        command = [python, "maml.py", *data, *train, *flags, "--device", device, "--no-progress"]
        result.append((f"train-{method}", [*command, "--out", str(runs / method)], LIMITS["train"]))
    for method in ("maml", "metasgd"):
        command = [python, "probe.py", str(runs / method / "best.pt"), *probe, *data]
        result.append((f"probe-{method}", command, LIMITS["probe"]))
    analyze = [python, "analyze.py", str(runs / "maml"), str(runs / "metasgd"), "--out", str(out / "report")]
    return result + [("analyze", analyze, LIMITS["analyze"])]


def run_stage(name, command, limit, logs):
    """Run one stage; its whole output goes to logs/<name>.log. Never raises."""
    start = time.time()
    log = logs / f"{name}.log"
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        status, text = ("ok" if done.returncode == 0 else f"failed (exit {done.returncode})"), done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {limit} s"
        text = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    log.write_text(" ".join(command) + "\n\n" + text)
    tail = "\n".join(text.strip().splitlines()[-40:])
    return {"stage": name, "status": status, "seconds": round(time.time() - start, 1), "command": command,
            "tail": tail}  # fmt: skip


def key_numbers(out):
    """The numbers a reader wants first, read from the files the stages wrote."""
    numbers = {}
    for method in ("maml", "metasgd"):
        run = out / "runs" / method
        if (run / "test.json").exists():
            numbers[f"{method} test accuracy"] = json.loads((run / "test.json").read_text())["test_acc"]
        if (run / "metrics.csv").exists():
            numbers[f"{method} metrics.csv"] = (run / "metrics.csv").read_text().strip().splitlines()
        if (run / "probe.json").exists():
            summary = json.loads((run / "probe.json").read_text())
            numbers[f"{method} probe"] = {k: summary[k]["mean"] for k in ("on_change", "off_change")}
    return numbers


def write_summary(out, env, results, numbers):
    failed = [r["stage"] for r in results if r["status"] != "ok"]
    lines = ["# GPU check", "", "```", env, "```", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in results]
    lines += ["", f"Failed stages: {', '.join(failed) or 'none'}", ""]
    for r in results:
        lines += [f"## {r['stage']}", "", "`" + " ".join(r["command"]) + "`", "", "```", r["tail"], "```", ""]
    lines += ["## Key numbers", "", "```", json.dumps(numbers, indent=2), "```", ""]
    (out / "summary.md").write_text("\n".join(lines))
    summary = {"environment": env, "stages": results, "failed": failed, "numbers": numbers}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return failed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="Mini-ImageNet folder (any supported layout)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, synthetic data: checks the plumbing")
    p.add_argument("--out", default=None, help="results folder (default: $OUT, else gpu-check/<UTC time>)")
    args = p.parse_args(argv)
    if not args.smoke and args.data is None:
        p.error("give DATA_DIR (a Mini-ImageNet folder), or --smoke")
    out = Path(args.out or os.environ.get("OUT") or ROOT / "gpu-check" / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = environment()
    print(env, flush=True)
    results = []
    for name, command, limit in stages(args, out):
        results.append(run_stage(name, command, limit, out / "logs"))
        print(f"{name}: {results[-1]['status']} ({results[-1]['seconds']} s)", flush=True)
    failed = write_summary(out, env, results, key_numbers(out))
    print(f"summary: {out / 'summary.md'}; failed stages: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
