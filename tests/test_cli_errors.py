"""Bad input ends with one clear sentence on stderr and exit code 2, never a traceback, and never
damages a file that was there before.

The error table lists every bad input: each row is (script, setup, expected message) where `setup`
(tests/bad_inputs.py) makes the bad input next to good ones and returns the script's flags. Its rows
live in three files by family: this one (output folders and run files: writing, resuming, damaged
checkpoints, logs and JSON, a second writer, a full disk), tests/error_rows_data.py (data) and
tests/error_rows_flags.py (flags); tests/cli_errors_harness.py runs a row and checks it."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from error_rows_folders import FOLDER_CASES
from error_rows_import import IMPORT_CASES

import bad_inputs as bad
from cli_errors_harness import copy_finished_runs, ends_in_one_line_and_damages_nothing, one_line_error, run_in_process
from conftest import ROOT, make_jpegs, tiny_flags
from error_rows_data import DATA_CASES
from error_rows_flags import FLAG_CASES

CASES = [
    # ---- maml.py: output folder
    pytest.param("maml", bad.out_that_is_a_file, "--out .*afile is a file", id="out that is a file"),
    pytest.param("maml", bad.out_under_proc, "lies under /proc", id="out under /proc"),
    pytest.param("maml", bad.out_under_sys, "lies under /sys", id="out under /sys"),
    pytest.param("maml", bad.out_that_cannot_be_created, "afile/run cannot be created", id="out below a file"),
    pytest.param(
        "maml",
        bad.disk_full_at_the_start,
        "cannot write .*: File too large; no checkpoint was written yet",
        id="disk full at the start",
        marks=pytest.mark.limit(2000),
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.second_training_run_while_the_first_runs,
        "is in use: another process \\(PID {pid}\\)",
        id="second writer of a run",
    ),  # fmt: skip
    # ---- maml.py: resuming
    pytest.param(
        "maml",
        bad.output_folder_holding_another_run,
        "already holds a run; pass --resume",
        id="output folder holding another run",
    ),  # fmt: skip
    pytest.param("maml", bad.resume_without_a_checkpoint, "no checkpoint", id="resume without a checkpoint"),
    pytest.param(
        "maml", bad.empty_checkpoint_on_resume, "cannot be read as a checkpoint", id="empty ckpt.pt on resume"
    ),
    pytest.param(
        "maml", bad.resume_with("--ways", "3"), "--ways 3 disagrees with the checkpoint's 2", id="resume other ways"
    ),
    pytest.param(
        "maml", bad.resume_with("--image-size", "20"), "--image-size 20 disagrees", id="resume other image size"
    ),
    pytest.param("maml", bad.resume_with("--shots", "2"), "--shots 2 disagrees", id="resume other shots"),
    pytest.param(
        "maml",
        bad.resume_to_fewer_iterations_than_done,
        "--iterations 1 is below iteration 2",
        id="resume to fewer iterations than done",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.metrics_with_garbage_between_rows,
        r"metrics.csv line 2 is damaged .* whole rows follow",
        id="metrics.csv garbage row between rows",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.metrics_with_nul_bytes_between_rows,
        r"metrics.csv line 3 is damaged \(NUL bytes\)",
        id="metrics.csv NUL bytes between rows",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.lr_stats_with_garbage_between_rows,
        r"lr_stats.csv line 4 is damaged \(count is",
        id="lr_stats.csv garbage row between rows",
    ),  # fmt: skip
    # ---- probe.py
    pytest.param(
        "probe", bad.bad_checkpoint("truncated"), "bad.pt cannot be read as a checkpoint", id="truncated ckpt"
    ),
    pytest.param("probe", bad.bad_checkpoint("empty"), "bad.pt cannot be read as a checkpoint", id="empty ckpt"),
    pytest.param(
        "probe", bad.bad_checkpoint("other program"), "bad.pt is a torch file but not", id="other program's ckpt"
    ),
    pytest.param("probe", bad.bad_checkpoint("pickle of something else"), "bad.pt cannot be read", id="pickled list"),
    pytest.param(
        "probe", bad.bad_checkpoint("directory"), "bad.pt is not a checkpoint file", id="ckpt that is a folder"
    ),
    pytest.param("probe", bad.bad_checkpoint("missing"), "bad.pt is not a checkpoint file", id="missing ckpt"),
    pytest.param(
        "probe", bad.probe_with("--rates", "negative"), "needs a Meta-SGD checkpoint", id="negative rates of maml"
    ),
    pytest.param(
        "probe", bad.probe_with("--rates", "fixed"), "--rates fixed needs --inner-lr", id="fixed rates, no lr"
    ),
    pytest.param(
        "probe", bad.probe_with("--iterations", "0"), "--iterations and --queries must be", id="zero iterations"
    ),
    pytest.param(
        "probe", bad.nine_way_checkpoint_on_the_val_split, "at least 18", id="too few classes for disjoint tasks"
    ),
    pytest.param(
        "probe", bad.flags("ckpt.pt", "--iterations", "x"), "invalid int value: 'x'; see --help", id="probe int x"
    ),
    pytest.param(
        "probe",
        bad.flags(),
        "the following arguments are required: checkpoint; see --help",
        id="probe without a checkpoint",
    ),  # fmt: skip
    pytest.param("probe", bad.probe_out("file"), "--out .*afile is a file", id="probe out that is a file"),
    pytest.param("probe", bad.probe_out("proc"), "lies under /proc", id="probe out under /proc"),
    pytest.param("probe", bad.probe_out("sys"), "lies under /sys", id="probe out under /sys"),
    pytest.param("probe", bad.probe_out("below a file"), "cannot be created", id="probe out below a file"),
    pytest.param(
        "probe", bad.probe_over_finished_records, "already holds probe records", id="probe over finished records"
    ),
    pytest.param(
        "probe", bad.probe_resume_with_other_settings, "the settings differ", id="probe resume, other settings"
    ),
    pytest.param("probe", bad.probe_resume_with_the_data_moved, "moved does not exist", id="probe resume, data moved"),
    pytest.param(
        "probe",
        bad.probe_records_with_garbage_between_rows,
        r"probe.csv line 3 is damaged",
        id="probe.csv garbage row between rows",
    ),  # fmt: skip
    pytest.param("probe", bad.corrupt_probe_json_on_resume, r"probe.json line 1 is damaged", id="corrupt probe.json"),
    pytest.param(
        "probe",
        bad.second_probe_while_the_first_runs,
        "is in use: another process \\(PID {pid}\\)",
        id="second writer of a probe",
    ),  # fmt: skip
    pytest.param(
        "probe",
        bad.disk_full_during_the_probe,
        "cannot write .*probe.csv: File too large; its finished chunks",
        id="disk full during the probe",
        marks=pytest.mark.limit(20000),
    ),  # fmt: skip
    # ---- analyze.py
    pytest.param("analyze", bad.analyze_folder_without_a_run, "holds no checkpoint", id="analyze folder without a run"),
    pytest.param("analyze", bad.analyze_mixed_shapes, "mix task shapes", id="analyze mixed shapes"),
    pytest.param(
        "analyze", bad.analyze_foreign_checkpoint, "not a checkpoint of this project", id="analyze foreign ckpt"
    ),
    pytest.param("analyze", bad.analyze_one_run_twice, "is given twice", id="analyze one run twice"),
    pytest.param(
        "analyze", bad.analyze_a_copied_run, "have the same config and seed", id="analyze identical config+seed"
    ),
    pytest.param(
        "analyze",
        bad.damaged_for_analyze("metrics.csv", "torn last row"),
        r"metrics.csv line 3 is damaged",
        id="analyze metrics.csv torn last row",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        bad.damaged_for_analyze("lr_stats.csv", "NUL padding"),
        r"lr_stats.csv line \d+ is damaged",
        id="analyze lr_stats.csv NUL padding",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        bad.damaged_for_analyze("probe.csv", "garbage row"),
        r"probe.csv line 3 is damaged",
        id="analyze probe.csv garbage row",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        bad.damaged_for_analyze("probe.json", "corrupt json"),
        r"probe.json line \d+ is damaged",
        id="analyze corrupt probe.json",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        bad.damaged_for_analyze("test.json", "corrupt json"),
        r"test.json line \d+ is damaged",
        id="analyze corrupt test.json",
    ),  # fmt: skip
    pytest.param("analyze", bad.analyze_out("file"), "--out .*afile is a file", id="analyze out that is a file"),
    pytest.param("analyze", bad.analyze_out("proc"), "lies under /proc", id="analyze out under /proc"),
    pytest.param("analyze", bad.analyze_out("sys"), "lies under /sys", id="analyze out under /sys"),
    pytest.param("analyze", bad.analyze_out("below a file"), "cannot be created", id="analyze out below a file"),
    pytest.param(
        "analyze",
        bad.flags("--outt", "x"),
        "the following arguments are required: runs|unrecognized",
        id="analyze typo'd flag",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        bad.disk_full_writing_the_report,
        "cannot write .*report.*: File too large",
        id="disk full writing the report",
        marks=pytest.mark.limit(3000),
    ),  # fmt: skip
    # ---- round 3: resuming
    pytest.param(
        "maml",
        bad.resume_on_other_data,
        "not the data the run trained on .*layout synthetic then, ravi now",
        id="resume on other data",
    ),
    pytest.param(
        "maml",
        bad.resume_with_a_default_that_disagrees,
        "--ways 5 disagrees with the checkpoint's 2",
        id="resume naming a default that disagrees",
    ),
    pytest.param(
        "maml",
        bad.resume_single_seed_folder_as_seeds,
        "holds a single-seed run",
        id="resume a single-seed folder as seeds",
    ),
    pytest.param(
        "maml",
        bad.resume_seeds_folder_as_one_run,
        "holds the runs of --seeds 0 1",
        id="resume a seeds folder as one run",
    ),
    pytest.param("maml", bad.resume_with("--lr-init-range", "0.2", "0.1"), "LOW <= HIGH", id="resume reversed range"),
    pytest.param(
        "probe",
        bad.probe_resume_with_fewer_iterations,
        "--iterations 4 is below the 8 iterations",
        id="probe resume with fewer iterations",
    ),
    pytest.param(
        "probe",
        bad.probe_resume_with_other_queries,
        r"settings differ .*\(queries: 3 then, 2 now\)",
        id="probe resume with other settings says which",
    ),
]


@pytest.mark.parametrize("script, setup, message", CASES + DATA_CASES + FLAG_CASES + IMPORT_CASES + FOLDER_CASES)
def test_bad_input_ends_in_one_line_and_damages_nothing(script, setup, message, tmp_path_factory, tmp_path, capsys,
                                                        monkeypatch, request):  # fmt: skip
    ends_in_one_line_and_damages_nothing(
        script, setup, message, tmp_path_factory, tmp_path, capsys, monkeypatch, request
    )


def test_the_table_covers_at_least_100_inputs():
    assert len(CASES) + len(DATA_CASES) + len(FLAG_CASES) >= 100


def test_hdf5_without_h5py_says_to_install_it(tmp_path):
    (tmp_path / "train_data.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (tmp_path / "train_labels.json").write_text("[]")
    code = (
        "import sys; sys.modules['h5py'] = None; sys.argv = ['maml.py', '--data', sys.argv[1]]; "
        "import cli, maml; cli.run_cli(maml.main)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    line = one_line_error(out.returncode, out.stderr)
    assert "needs h5py: pip install h5py" in line


def test_debug_flag_shows_the_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "maml.py"), "--data", str(tmp_path / "nope"), "--debug"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode != 0 and "Traceback" in out.stderr and "DataError" in out.stderr


def test_a_refused_start_leaves_no_run_folder_behind(tmp_path, capsys):
    make_jpegs(tmp_path / "ravi")
    os.remove(tmp_path / "ravi" / "test.csv")
    ctx = SimpleNamespace(d=tmp_path)
    run_in_process("maml", bad.ravi(ctx), capsys)
    assert not (tmp_path / "run").exists()  # the missing test split was found before any training


def test_a_failed_probe_resume_keeps_the_finished_summary(tmp_path_factory, tmp_path, capsys):
    copy_finished_runs(tmp_path_factory, tmp_path)
    summary = tmp_path / "runs" / "maml" / "probe.json"
    argv = bad.probe_resume_with_the_data_moved(SimpleNamespace(d=tmp_path))
    before = summary.read_bytes()
    line = run_in_process("probe", argv, capsys)
    assert "does not exist" in line
    assert summary.read_bytes() == before and b"paired_t_on_vs_off" in before


def test_a_size_no_memory_holds_is_refused_before_any_run_folder_is_made(tmp_path, capsys):
    line = run_in_process("maml", tiny_flags(tmp_path / "run", "--image-size", "200000"), capsys)
    assert "--synthetic-per-class and --image-size ask for about" in line and "GiB" in line
    assert not (tmp_path / "run").exists()
