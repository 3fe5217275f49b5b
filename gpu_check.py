"""The prepared GPU check: what a first session on a GPU machine runs, in one call of at most 8 minutes.

    python3 gpu_check.py DATA_DIR --out DIR   # on the GPU machine; DATA_DIR: a Mini-ImageNet folder (or sample)
    python3 gpu_check.py --smoke --out DIR    # the same stages at tiny sizes on the CPU (the test suite runs it)

Made for a machine that offers only a system python3 with torch (2.11 or newer), numpy, scipy,
matplotlib, tqdm, h5py and pytest, where nothing can be installed, and that returns only a few files
and the end of the output. Without a usable CUDA device it refuses to start (unless --smoke).

Stages, in order (the numbers that matter most first), each a subprocess in a process group of its own,
killed at its limit (what it measured by then is still reported), every one run even when an earlier
one failed:
{stages}
A stage fails when its command fails, when it is killed at its limit, when a capture of the CUDA graph
failed in it (an eager time is never reported as the graph's), or, for cuda-tests, when a CUDA test was
skipped (the tests did not see the GPU; under --smoke that reads "skipped (no GPU)").

What comes back: DIR (empty, or holding an earlier check's files) holds three files, rewritten after
every stage: summary.md, summary.json and logs-and-runs.tar.gz (every stage's log, the run folders and
report without checkpoints). The stages work in --work, unbuffered, which keeps the checkpoints: a later call with
--stages reruns those stages there (a probe finds its training's best.pt) and its summary keeps the other
stages' results; a call without --stages empties --work first. The output ends with the summary: versions,
precision switches, stage table, every bench row, training it/s (between the last two metrics.csv rows,
so the capture and the first validation are left out), test accuracy and probe pairs/s. Exit code 1
if any stage failed. --smoke rehearses the capture on the CPU (MAML_FAKE_CUDA_GRAPH=ok, gpu.rehearsal;
set it to fail to rehearse a failed capture).
"""

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

import cli
import data
import gpu

ROOT = Path(__file__).resolve().parent

# name: (time limit in seconds, the flag that adds it or None for always, what it runs). The limits come
# from an estimate (README: 324 GFLOP per second-order iteration at the paper's size, so 30-50 it/s on
# an H200 with the graph), and the stages that always run add up to 395 s, inside 8 minutes.
STAGES = {
    "cuda-tests": (60, None, "the tests that need a GPU (pytest -m cuda tests/test_gpu.py)"),
    "bench": (170, None, "bench.py --quick: paper size, MAML and Meta-SGD, loop/grouped/graph, 3 precisions, 8 seeds"),
    "train-maml": (
        120,
        None,
        "maml.py on DATA_DIR, 1,500 iterations at 84 px, the paper's settings, validated every 250",
    ),
    "probe-maml": (45, None, "probe.py of its best.pt, 2,000 iterations"),
    "train-metasgd": (120, "--metasgd", "the same training for Meta-SGD"),
    "probe-metasgd": (45, "--metasgd", "its probe"),
    "analyze": (30, "--metasgd", "analyze.py: the report of both runs"),
    "suite": (600, "--suite", "the rest of the test suite, after every measurement"),
}
SMOKE_RUN = ["--image-size", "16", "--hidden", "8", "--ways", "2", "--queries", "3", "--meta-batch", "2",
             "--inner-steps", "1", "--synthetic-per-class", "20", "--val-tasks", "4", "--test-tasks", "4",
             "--eval-steps", "1", "--eval-queries", "3", "--iterations", "4", "--eval-every", "2"]  # fmt: skip
SMOKE_BENCH = ["--configs", "tiny", "--methods", "maml", "--precisions", "fast", "--repeats", "1", "--seeds", "2"]
CAPTURE_FAILED = "cuda graph: capture failed"
PASSED = ("ok", "skipped (no GPU)")
ARCHIVE = "logs-and-runs.tar.gz"
RESULTS = (ARCHIVE, "summary.md", "summary.json")
BENCH_LINE = re.compile(r"device: |  \S.* ms/it |  sampling one meta-batch|  \d+ seeds in one process")  # its rows
STAGE_OUTPUTS = {  # what a stage writes in --work, removed before it runs again
    "train-maml": ["runs/maml"], "train-metasgd": ["runs/metasgd"], "analyze": ["report"],
    "probe-maml": ["runs/maml/probe.csv", "runs/maml/probe.json"],
    "probe-metasgd": ["runs/metasgd/probe.csv", "runs/metasgd/probe.json"],
}  # fmt: skip


def stage_list():
    rows = [f"    {n:14s}{s:4d} s  {w}{f' (only with {f})' if f else ''}" for n, (s, f, w) in STAGES.items()]
    always = sum(seconds for seconds, flag, _ in STAGES.values() if flag is None)
    added = sum(seconds for seconds, flag, _ in STAGES.values() if flag == "--metasgd")
    return "\n".join([*rows, f"The limits of the stages always run add up to {always} s; --metasgd adds {added} s."])


__doc__ = __doc__.format(stages=stage_list())


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


def refuse_without_cuda():
    """A one-line refusal when no CUDA device works here: a CPU-only torch, or a GPU torch cannot use."""
    found = (
        f"torch {torch.__version__}, torch.version.cuda {torch.version.cuda}, "
        f"torch.cuda.is_available() {torch.cuda.is_available()}"
    )
    try:
        if torch.cuda.is_available():
            torch.zeros(1, device="cuda").add_(1).item()
            return
    except RuntimeError as e:
        found += f", a first CUDA allocation failed ({(str(e).strip().splitlines() or [''])[0][:120]})"
    raise cli.ConfigError(f"no usable CUDA device ({found}); run this on a GPU machine, or pass --smoke to rehearse")


def stage_commands(args, work):
    """{stage: command} for every stage (the ones a flag adds too)."""
    python, device, runs = sys.executable, "cpu" if args.smoke else "cuda", work / "runs"
    pytest = [python, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]
    data_flags = [] if args.smoke else ["--data", str(Path(args.data).resolve())]  # the stages run in ROOT
    train = SMOKE_RUN if args.smoke else ["--iterations", "1500", "--eval-every", "250"]  # 2 timed rows by 500
    probe = ["--iterations", "20" if args.smoke else "2000", "--no-progress", "--device", device, *data_flags]
    commands = {
        "cuda-tests": [*pytest, "-m", "cuda", "tests/test_gpu.py"],
        "bench": [python, "bench.py", "--device", device, *(SMOKE_BENCH if args.smoke else ["--quick"])],
        "analyze": [python, "analyze.py", str(runs / "maml"), str(runs / "metasgd"), "--out", str(work / "report")],
        "suite": [*pytest, "-m", "not cuda", "tests"],
    }
    for method in ("maml", "metasgd"):
        run = [python, "maml.py", "--method", method, *data_flags, *train, "--device", device, "--no-progress"]
        commands[f"train-{method}"] = [*run, "--out", str(runs / method)]
        commands[f"probe-{method}"] = [python, "probe.py", str(runs / method / "best.pt"), *probe]
    return commands


def chosen_stages(args):
    """(name, limit) of the stages to run, in STAGES's order: --stages, or those always run and those a
    given flag adds."""
    flags = {"--metasgd": args.metasgd, "--suite": args.suite}
    chosen = args.stages or [n for n, (_, flag, _) in STAGES.items() if flag is None or flags[flag]]
    return [(name, args.limits.get(name, STAGES[name][0])) for name in STAGES if name in chosen]


def run_stage(name, command, limit, logs, env=None, smoke=False):
    """Run one stage in a process group of its own, its output going straight to logs/<name>.log (so a
    stage killed at its limit leaves what it printed); at the limit the whole group is killed (pytest's
    or torchrun's children too), as it is when this process is interrupted."""
    start, log = time.time(), logs / f"{name}.log"
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}  # a kill keeps what was printed
    with open(log, "w") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
        except BaseException:  # Ctrl-C, or SIGTERM (main turns it into SystemExit): the stage goes too
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    text = log.read_text(errors="replace")
    status = stage_status(name, code, limit, text, smoke)
    tail = "\n".join(text.strip().splitlines()[-40:])
    return {"stage": name, "status": status, "seconds": round(time.time() - start, 1), "limit": limit,
            "command": command, "tail": tail}  # fmt: skip


def stage_status(name, code, limit, text, smoke):
    """'ok', 'skipped (no GPU)' (cuda-tests under --smoke), or why the stage failed."""
    if code is None:
        return f"killed at its {limit:g} s limit"
    if code != 0:
        return f"failed (exit {code})"
    if CAPTURE_FAILED in text:
        return "failed: the CUDA graph capture failed (eager numbers are not the graph's)"
    skipped = re.findall(r"(\d+) skipped", text.strip().splitlines()[-1] if text.strip() else "")
    if name == "cuda-tests" and skipped:
        return "skipped (no GPU)" if smoke else f"failed: {skipped[0]} CUDA tests were skipped (no GPU seen by them)"
    return "ok"


def training_speed(run):
    """Meta-iterations per second between the last two timed rows of a run's metrics.csv (a validation
    and a save between them included, the capture and the first validation left out): what a training
    stage measured, even one killed at its limit. None before two timed rows exist."""
    if not (run / "metrics.csv").exists():
        return None
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("elapsed_s") not in (None, "") and float(r["elapsed_s"]) > 0]
    if len(rows) < 2 or float(rows[-1]["elapsed_s"]) <= float(rows[-2]["elapsed_s"]):
        return None
    (a, b), seconds = rows[-2:], float(rows[-1]["elapsed_s"]) - float(rows[-2]["elapsed_s"])
    per_s = (int(b["iteration"]) - int(a["iteration"])) / seconds
    return {"iterations": int(b["iteration"]), "between": [int(a["iteration"]), int(b["iteration"])],
            "iterations_per_s": round(per_s, 2)}  # fmt: skip


def key_numbers(work):
    """The numbers a reader wants first, read from the files the stages wrote."""
    numbers = {}
    for method in ("maml", "metasgd"):
        run = work / "runs" / method
        numbers[f"{method} training"] = training_speed(run)
        if (run / "test.json").exists():
            numbers[f"{method} test accuracy"] = json.loads((run / "test.json").read_text())["test_acc"]
        if (run / "probe.json").exists():
            summary = json.loads((run / "probe.json").read_text())
            if "on_change" in summary:
                numbers[f"{method} probe"] = {k: summary[k]["mean"] for k in ("on_change", "off_change")}
                numbers[f"{method} probe"]["pairs_per_s"] = summary.get("iterations_per_second")
    return {k: v for k, v in numbers.items() if v is not None}


def measured_lines(logs):
    """Every measured line of the bench and cuda-tests logs: bench's rows and notes, and the difference
    from float64 that each GPU precision test prints."""
    lines = []
    for name in ("cuda-tests", "bench"):
        log = logs / f"{name}.log"
        text = log.read_text(errors="replace").splitlines()[1:] if log.exists() else []
        if name == "cuda-tests":
            lines += [m.group(0) for line in text for m in re.finditer(r"\w+ \w+: \S+ from float64", line)]
        else:
            lines += [line for line in text if BENCH_LINE.match(line)]
    return lines


def summary_text(env, results, lines, numbers):
    """The summary, as summary.md holds it and as the output ends."""
    failed = [r["stage"] for r in results if r["status"] not in PASSED]
    table = ["| stage | status | seconds | limit |", "|---|---|---|---|"]
    table += [f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['limit']:g} |" for r in results]
    text = ["# GPU check", "", "```", env, "```", "", *table, "", "Measured (bench.py rows; cuda-tests):", "```"]
    text += [*lines, "```", "", "Key numbers:", "```", json.dumps(numbers, indent=1), "```", ""]
    if any(r["status"] == "skipped (no GPU)" for r in results):
        text.append("The CUDA tests were skipped: no GPU (--smoke).")
    return "\n".join([*text, f"failed stages: {', '.join(failed) or 'none'}"]), failed


def write_results(out, work, env, results):
    """summary.md, summary.json and the archive of logs and runs (no checkpoints), each written whole; and
    the stage results in --work, for a later rerun of some stages."""
    cli.atomic_write(work / "stages.json", lambda tmp: tmp.write_text(cli.json_text(results)))
    lines, numbers = measured_lines(work / "logs"), key_numbers(work)
    text, failed = summary_text(env, results, lines, numbers)
    cli.atomic_write(out / "summary.md", lambda tmp: tmp.write_text(text + "\n"))
    summary = {"environment": env, "stages": results, "failed": failed, "measured": lines, "numbers": numbers}
    cli.atomic_write(out / "summary.json", lambda tmp: tmp.write_text(cli.json_text(summary)))
    keep = lambda info: None if info.name.endswith((".pt", ".lock")) or ".tmp" in info.name else info

    def archive(tmp):
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(work, arcname="gpu-check", filter=keep)

    cli.atomic_write(out / ARCHIVE, archive)
    return text, failed


def parse_limits(items):
    """--limit STAGE=SECONDS items as {stage: seconds}, each checked."""
    limits = {}
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in STAGES:
            raise cli.ConfigError(f"--limit {item}: expected STAGE=SECONDS with STAGE one of {', '.join(STAGES)}")
        try:
            limits[name] = float(seconds)
        except ValueError:
            limits[name] = float("nan")
        if not 0 < limits[name] < float("inf"):
            raise cli.ConfigError(f"--limit {item}: SECONDS must be a positive number of seconds, e.g. {name}=200")
    return limits


def parse_args(argv):
    p = cli.argument_parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # the stage table as written
    p.add_argument("data", nargs="?", default=None, help="Mini-ImageNet folder (any supported layout)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, synthetic data: checks the plumbing")
    p.add_argument(
        "--out", type=cli.folder_name, default=None, help="results folder (default: $OUT, else gpu-check/<UTC time>)"
    )
    p.add_argument("--work", default=str(ROOT / "gpu-check" / "work"), help="the stages' folder (default: %(default)s)")
    p.add_argument("--metasgd", action="store_true", help="also train and probe Meta-SGD, and write the report")
    p.add_argument("--suite", action="store_true", help="run the rest of the test suite last (CI runs it anyway)")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), metavar="STAGE", help="rerun only these (any above)")
    p.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS", help="another stage time limit")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = p.parse_args(argv)
    args.limits = parse_limits(args.limit)
    rehearsal = gpu.rehearsal()  # a value it does not know is refused here, before any stage
    if not args.smoke:
        refuse_without_cuda()
        if rehearsal is not None:
            raise cli.ConfigError(f"MAML_FAKE_CUDA_GRAPH={rehearsal} would rehearse every capture instead of timing "
                                  "the graph; unset it for the GPU check (it is for --smoke)")  # fmt: skip
        if not args.data or not Path(args.data).is_dir():
            raise cli.ConfigError(f"DATA_DIR {args.data!r} is not a folder; give a Mini-ImageNet folder, or --smoke")
        data.detect_layout(args.data)
    return args


def results_folder(args):
    """--out (else $OUT, else gpu-check/<UTC time>), checked: a folder, empty or holding only what an
    earlier check left, so that what comes back is this check's three files."""
    given, flag = (args.out, "--out") if args.out else (os.environ.get("OUT"), "$OUT")
    out = Path(given or ROOT / "gpu-check" / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    cli.check_out_folder(out, flag)
    others = sorted(p.name for p in out.iterdir() if p.name not in RESULTS)
    if others:
        raise cli.ConfigError(f"{flag} {out} holds other files ({', '.join(others[:3])}); give an empty folder")
    return out


def earlier_results(work, rerun):
    """The stage results an earlier check left in --work, for a rerun of some stages; without --stages the
    folder is emptied (the lock file aside) and there are none."""
    if not rerun:
        for path in work.iterdir():
            if path.name != "check.lock":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    (work / "logs").mkdir(exist_ok=True)
    saved = work / "stages.json"
    return json.loads(saved.read_text()) if rerun and saved.exists() else []


def main(argv=None):
    args = parse_args(argv)
    out, work = results_folder(args), Path(args.work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as Ctrl-C: the running stage is killed too
    with cli.lock_outputs(work, "check.lock", "a GPU check", flag="--work"):
        results, env = earlier_results(work, bool(args.stages)), environment()
        print(env, flush=True)
        stage_env = dict(os.environ)
        if args.smoke:  # the CUDA graph's capture path, rehearsed on the CPU (=fail rehearses a failed one)
            stage_env["MAML_FAKE_CUDA_GRAPH"] = os.environ.get("MAML_FAKE_CUDA_GRAPH") or "ok"
        for name, limit in chosen_stages(args):
            for output in STAGE_OUTPUTS.get(name, []):
                shutil.rmtree(work / output) if (work / output).is_dir() else (work / output).unlink(missing_ok=True)
            result = run_stage(name, stage_commands(args, work)[name], limit, work / "logs", stage_env, args.smoke)
            print(f"{name}: {result['status']} ({result['seconds']} s)", flush=True)
            results = [r for r in results if r["stage"] != name] + [result]
            results.sort(key=lambda r: list(STAGES).index(r["stage"]))
            text, failed = write_results(out, work, env, results)
    for r in results:  # what went wrong first, so that the summary is last
        if r["status"] not in PASSED:
            print(f"\n--- {r['stage']}: {r['status']}; the end of its log ---\n{r['tail']}")
    print(f"\nfiles: {out} ({', '.join(sorted(p.name for p in out.iterdir()))})\n\n{text}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main))
