"""The error table's rows for what a run or report folder accepts as its own and for leftovers of the
environment (issue 29): another run's files in a run folder, a log whose columns changed, a probe of
another run, a report folder in use, torchrun's variables without torchrun, empty folder names. How a row
runs and what it must show: tests/cli_errors_harness.py."""

import shutil

import pytest

import bad_inputs as bad


def another_runs_checkpoint_copied_in(ctx):
    shutil.copy(bad.run_dir(ctx, "metasgd") / "ckpt.pt", bad.run_dir(ctx) / "ckpt.pt")
    return bad.resume_run(ctx)


def another_runs_log_copied_in(ctx):
    shutil.copy(bad.run_dir(ctx, "metasgd") / "metrics.csv", bad.run_dir(ctx) / "metrics.csv")
    return bad.resume_run(ctx)


def another_runs_test_json_copied_in(ctx):
    shutil.copy(bad.run_dir(ctx, "metasgd") / "test.json", bad.run_dir(ctx) / "test.json")
    return bad.analyze_both(ctx)


def column_appended_by_awk_to_crlf_lines(ctx):
    path = bad.run_dir(ctx) / "metrics.csv"  # csv writes \r\n; awk keeps the \r before what it appends
    lines = path.read_bytes().decode().split("\n")[:-1]
    path.write_bytes("".join(f"{line},{'note' if i == 0 else 'x'}\n" for i, line in enumerate(lines)).encode())
    return bad.resume_run(ctx)


def run_json_deleted(ctx):
    (bad.run_dir(ctx) / "run.json").unlink()
    return bad.resume_run(ctx)


def column_deleted(log, column):
    def setup(ctx):
        path = bad.run_dir(ctx, "metasgd") / log
        rows = [line.split(",") for line in path.read_text().splitlines()]
        path.write_text("".join(",".join(r[:column] + r[column + 1 :]) + "\n" for r in rows))
        return bad.resume_metasgd(ctx)

    return setup


def with_environment(variables, run=bad.resume_run):
    def setup(ctx):
        for name, value in variables.items():
            ctx.monkeypatch.setenv(name, value)
        return run(ctx)

    return setup


TORCHRUN = {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}


def probe_of_another_run_in_a_folder(ctx):
    for name in ("probe.csv", "probe.json"):
        shutil.copy(bad.run_dir(ctx, "metasgd") / name, bad.run_dir(ctx) / name)
    return bad.analyze_both(ctx)


def metrics_without(column):
    def setup(ctx):
        path = bad.run_dir(ctx) / "metrics.csv"
        rows = [line.split(",") for line in path.read_text().splitlines()]
        index = rows[0].index(column)
        path.write_text("".join(",".join(r[:index] + r[index + 1 :]) + "\n" for r in rows))
        return bad.analyze_both(ctx)

    return setup


def second_report_while_the_first_is_written(ctx):
    (ctx.d / "report").mkdir()
    ctx.pid = bad.hold_lock(ctx, ctx.d / "report" / "report.lock")
    return bad.analyze_both(ctx)


def empty_out(script):
    def setup(ctx):
        flags = {"maml": bad.train(ctx), "probe": bad.probe_flags(ctx), "analyze": bad.analyze_both(ctx)}[script]
        return [*flags, "--out", ""]  # the last --out wins

    return setup


FOLDER_CASES = [
    # ---- maml.py: a run folder holds one run
    pytest.param(
        "maml",
        another_runs_checkpoint_copied_in,
        r"ckpt.pt is run \w+, but .*run.json is run \w+: a run folder holds one run's files",
        id="another run's ckpt.pt copied in",
    ),  # fmt: skip
    pytest.param(
        "maml",
        another_runs_log_copied_in,
        "metrics.csv is another run's log \\(its rows up to iteration 2 are not the ones this checkpoint was saved",
        id="another run's metrics.csv copied in",
    ),  # fmt: skip
    pytest.param(
        "maml",
        column_appended_by_awk_to_crlf_lines,
        "metrics.csv does not have the columns this program writes \\(its first line is not CSV",
        id="metrics.csv column appended by awk to CRLF lines",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        another_runs_test_json_copied_in,
        "test.json is run \\w+, not the run of .*ckpt.pt \\(run \\w+\\); a run folder holds one run's files",
        id="another run's test.json in a report",
    ),  # fmt: skip
    pytest.param("maml", run_json_deleted, "metrics.csv is a run that run.json does not name", id="run.json deleted"),
    pytest.param(
        "maml",
        column_deleted("metrics.csv", 3),
        "metrics.csv does not have the columns this program writes \\(it lacks val_acc",
        id="metrics.csv column deleted",
    ),  # fmt: skip
    pytest.param(
        "maml",
        column_deleted("lr_stats.csv", 1),
        "lr_stats.csv does not have the columns this program writes \\(it lacks name",
        id="lr_stats.csv column deleted",
    ),  # fmt: skip
    # ---- torchrun's variables without torchrun
    pytest.param("maml", with_environment({"RANK": "1"}), "has RANK=1 but not WORLD_SIZE", id="RANK=1 alone"),
    pytest.param(
        "maml", with_environment({"WORLD_SIZE": "2"}), "has WORLD_SIZE=2 but not RANK", id="WORLD_SIZE=2 alone"
    ),
    pytest.param(
        "maml",
        with_environment({"WORLD_SIZE": "2", "RANK": "0"}),
        "but not LOCAL_RANK, MASTER_ADDR, MASTER_PORT, which torchrun sets together",
        id="WORLD_SIZE and RANK without a rendezvous address",
    ),  # fmt: skip
    pytest.param(
        "maml",
        with_environment({**TORCHRUN, "WORLD_SIZE": "two"}),
        "WORLD_SIZE=two .* must be whole numbers",
        id="WORLD_SIZE=two",
    ),  # fmt: skip
    pytest.param(
        "maml",
        with_environment({**TORCHRUN, "WORLD_SIZE": "2", "RANK": "2"}),
        "with RANK below WORLD_SIZE",
        id="RANK not below WORLD_SIZE",
    ),  # fmt: skip
    pytest.param(
        "probe", with_environment({"RANK": "1"}, bad.probe_flags), "has RANK=1 but not", id="probe with RANK=1 alone"
    ),
    # ---- analyze.py: a report folder holds one report of runs that are what they say
    pytest.param(
        "analyze",
        probe_of_another_run_in_a_folder,
        "probe.json is a probe of .*metasgd/best.pt \\(run \\w+\\), not of this folder's run",
        id="probe of another run in a run folder",
    ),  # fmt: skip
    pytest.param(
        "analyze", metrics_without("val_acc"), "metrics.csv has no val_acc column", id="metrics.csv without val_acc"
    ),
    pytest.param(
        "analyze",
        second_report_while_the_first_is_written,
        "report is in use: another process \\(PID {pid}\\) is writing a report",
        id="second report into one folder",
    ),  # fmt: skip
    *(
        pytest.param(script, empty_out(script), "argument --out: is empty", id=f"{script} --out ''")
        for script in ("maml", "probe", "analyze")
    ),
]
