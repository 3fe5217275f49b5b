"""Bad input ends with one clear sentence on stderr and exit code 2, never a traceback, and never
damages a file that was there before.

The table `CASES` lists every bad input: each row is (script, setup, expected message) where `setup`
makes the bad input next to good ones and returns the script's flags. Most rows run the script's
main in this process through cli.run_cli; rows that need a limit on file size (a full disk) run it
in a subprocess."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import analyze
import bad_inputs as bad
import bench
import cli
import maml
import probe
from conftest import ROOT, make_jpegs, tiny_flags

SCRIPTS = {"maml": maml.main, "probe": probe.main, "analyze": analyze.main, "bench": bench.main}

# Runs a script with writes limited to LIMIT bytes per file, as a full disk would stop them
# (SIGXFSZ ignored, so a write past the limit fails with EFBIG instead of killing the process).
WITH_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
limit, script = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
sys.argv = [script, *sys.argv[3:]]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A finished MAML and Meta-SGD run, each probed, to copy into every test that needs one."""
    root = tmp_path_factory.mktemp("finished")
    for name, extra in (("maml", []), ("metasgd", ["--learn-lr", "--seed", "1"])):
        maml.main(tiny_flags(root / name, "--iterations", "2", "--eval-every", "2", *extra))
        probe.main(
            [str(root / name / "best.pt"), "--iterations", "8", "--batch", "4", "--queries", "3", "--no-progress"]
        )
    return root


def copy_finished_runs(finished_runs, tmp_path):
    """The finished runs, copied to `tmp_path / "runs"`; each probe summary names its copied checkpoint,
    as if the probe had been run there."""
    shutil.copytree(finished_runs, tmp_path / "runs", ignore=shutil.ignore_patterns("*.lock"))
    for summary in (tmp_path / "runs").glob("*/probe.json"):
        content = json.loads(summary.read_text())
        content["settings"]["checkpoint"] = str(summary.parent / "best.pt")
        summary.write_text(json.dumps(content, indent=2) + "\n")


def snapshot(folder):
    """{path: sha1 of the bytes} of every file under `folder` (lock files aside: they hold a PID)."""
    return {
        p: hashlib.sha1(p.read_bytes()).hexdigest()
        for p in Path(folder).rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }


def one_line_error(code, err):
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert code == 2, (code, err)
    return lines[0]


def run_in_process(script, argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(SCRIPTS[script], argv)
    return one_line_error(exit_info.value.code, capsys.readouterr().err)


def run_with_file_size_limit(script, argv, limit, cwd):
    cmd = [sys.executable, "-c", WITH_FILE_SIZE_LIMIT, str(limit), str(ROOT / f"{script}.py"), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    return one_line_error(out.returncode, out.stderr)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
LIMIT = "file size limit"  # marks the rows that run in a subprocess under RLIMIT_FSIZE

CASES = [
    # ---- maml.py: data
    pytest.param("maml", bad.missing_folder, "does not exist", id="missing data folder"),
    pytest.param("maml", bad.empty_folder, "found: nothing", id="empty data folder"),
    pytest.param("maml", bad.folder_in_no_layout, "learn2learn pickles", id="folder in no layout"),
    pytest.param("maml", bad.data_that_is_a_file, "is a file; expected a folder", id="data that is a file"),
    pytest.param("maml", bad.csv_naming_an_absent_image, "n01train0002.jpg", id="csv naming absent images"),
    pytest.param(
        "maml",
        bad.csv_with_images_prefix_naming_an_absent_image,
        "n01train0099.jpg",
        id="csv with images/ prefix naming an absent image",
    ),  # fmt: skip
    pytest.param(
        "maml", bad.csv_with_bom_and_wrong_header, "header 'filename,label'", id="csv with bom and wrong header"
    ),
    pytest.param(
        "maml", bad.csv_with_a_row("val", "lonely.jpg"), "row without a label: lonely.jpg", id="csv row without label"
    ),
    pytest.param("maml", bad.latin1_csv, r"train.csv is not UTF-8 text \(line 2", id="latin-1 csv"),
    pytest.param("maml", bad.truncated_image, "cannot read image .*n02train0001.jpg", id="truncated image"),
    pytest.param(
        "maml",
        bad.truncated_image_with_a_non_utf8_name,
        r"cannot read image .*caf\\xe9.jpg",
        id="truncated image with a non-utf-8 name",
    ),  # fmt: skip
    pytest.param("maml", bad.image_far_over_the_pixel_limit, "DecompressionBombError", id="image far over pixel limit"),
    pytest.param(
        "maml", bad.float_image_out_of_range, r"mode F with values in \[300, 300\]", id="float image out of range"
    ),
    pytest.param("maml", bad.pickle_that_is_an_html_page, "HTML", id="pickle that is an html page"),
    pytest.param(
        "maml", bad.pickle_of_floats_out_of_range, r"float32 values in \[2.5, 2.5\]", id="float pickle out of range"
    ),
    pytest.param(
        "maml",
        bad.leaky_test_csv,
        "class n01 is in both the train and the test split",
        id="class leakage: test.csv is train.csv",
    ),  # fmt: skip
    pytest.param("maml", bad.missing_test_split, "no 'test' split", id="missing test split"),
    pytest.param(
        "maml",
        bad.small_test_split,
        "test split has 1 classes, fewer than the 2 ways",
        id="test split with too few classes",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.class_folders_with_images_in_subfolders,
        r"1 more class folders hold their images in subfolders",
        id="class folders with images in subfolders",
    ),  # fmt: skip
    pytest.param(
        "maml", bad.train_flags("--ways", "20"), "16 classes, fewer than the 20 ways", id="fewer classes than ways"
    ),
    pytest.param(
        "maml",
        bad.train_flags("--queries", "12"),
        "12 images, fewer than the 13",
        id="fewer images than shots plus queries",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.train_flags("--eval-queries", "12"),
        "val split has 12 images, fewer than the 13",
        id="fewer val images than shots plus eval queries",
    ),  # fmt: skip
    # ---- maml.py: flags
    pytest.param("maml", bad.train_flags("--ways", "0"), "--ways must be at least", id="zero ways"),
    pytest.param(
        "maml", bad.train_flags("--inner-steps", "-1"), "--inner-steps cannot be negative", id="negative inner steps"
    ),
    pytest.param("maml", bad.train_flags("--inner-lr", "nan"), "--inner-lr must be a finite number", id="inner lr nan"),
    pytest.param("maml", bad.train_flags("--image-size", "8"), "--image-size must be at least 16", id="image size 8"),
    pytest.param(
        "maml", bad.train_flags("--device", "cuda:0"), "no CUDA GPU", id="gpu that is not there", marks=NO_GPU
    ),
    pytest.param("maml", bad.train_flags("--device", "tpu?"), "is not a device name", id="device that is no name"),
    pytest.param(
        "maml",
        bad.train_flags("--cuda-graph", "on"),
        "--cuda-graph on needs a CUDA device",
        id="cuda graph on without a gpu",
        marks=NO_GPU,
    ),  # fmt: skip
    pytest.param("maml", bad.train_flags("--seeds", "1", "2", "1"), "names a seed twice", id="a seed given twice"),
    pytest.param(
        "maml",
        bad.train_flags("--seeds", "1", "2", "--task-batching", "loop"),
        "drop --task-batching loop",
        id="seeds with the task loop",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.train_flags("--clip-grad", "0"),
        "--clip-grad must be a positive",
        id="clip grad that is not positive",
    ),
    pytest.param(
        "maml", bad.train_flags("--rotations"), "--rotations applies to Omniglot only", id="rotations without omniglot"
    ),
    pytest.param(
        "maml",
        bad.omniglot_split_file_with_a_bad_line,
        "expected lines like Alphabet/character01/rot090",
        id="omniglot split file with a bad line",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.flags("--inner-lr", "abc"),
        "argument --inner-lr: invalid float value: 'abc'; see --help",
        id="inner lr abc",
    ),  # fmt: skip
    pytest.param(
        "maml", bad.flags("--ways", "five"), "argument --ways: invalid int value: 'five'; see --help", id="ways five"
    ),  # fmt: skip
    pytest.param(
        "maml", bad.flags("--way", "5", "--lern-lr"), "unrecognized arguments: --lern-lr; see --help", id="typo'd flags"
    ),  # fmt: skip
    pytest.param(
        "maml", bad.flags("--task-batching", "fast"), "argument --task-batching: invalid choice", id="bad choice"
    ),
    pytest.param(
        "maml", bad.flags("--lr-init-range", "0.1"), "expected 2 arguments; see --help", id="one of two values"
    ),
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
    # ---- round 3: data
    pytest.param(
        "maml",
        bad.csv_listing_every_image_twice,
        r"names n\d+train0000.jpg twice \(lines 2 and 1[0-9]\)",
        id="csv listing every image twice",
    ),
    pytest.param(
        "maml",
        bad.test_csv_naming_training_images,
        "image n01train0000.jpg is in both the train and the test",
        id="test.csv naming train.csv's images",
    ),
    pytest.param(
        "maml",
        bad.csv_with_a_row("train", " ,n01"),
        r"train.csv line 14 has an empty file name",
        id="csv row with an empty file name",
    ),
    pytest.param(
        "maml",
        bad.pickle_naming_an_image_past_its_images,
        r"class_dict\['b'\] names image 7 outside",
        id="pickle naming an image past its images",
    ),
    pytest.param(
        "maml",
        bad.hdf5_class_with_other_dimensions,
        r"class b is stored as \(4, 9, 9, 3\)",
        id="hdf5 class with other dimensions",
    ),
    # ---- round 3, the independent tester's inputs
    pytest.param("maml", bad.pickle_with({}), "class_dict is empty", id="pickle of no classes"),
    pytest.param("maml", bad.hdf5_naming_no_classes, "names no classes", id="hdf5 naming no classes"),
    pytest.param(
        "maml",
        bad.pickle_with({"a": [0, 0, 1], "b": [2, 3]}),
        r"names image_data\[0\] more than once",
        id="pickle naming an image twice",
    ),
    pytest.param(
        "maml", bad.pickle_with({"a": [0, 1, -1], "b": [2, 3]}), "names image -1 outside", id="pickle negative index"
    ),
    pytest.param(
        "maml",
        bad.pickle_with({"a": [0.0, 1.0], "b": [2.0, 3.0]}),
        "holds float64 indices; expected integer",
        id="pickle of float indices",
    ),
    pytest.param(
        "maml",
        bad.csv_naming_an_image_again_by_another_path,
        r"names n01train0000.jpg twice \(lines 2 and 14\)",
        id="csv naming an image again by another path",
    ),
    pytest.param(
        "maml",
        bad.csv_with_a_row("train", "new.jpg, "),
        "train.csv line 14 has an empty label",
        id="csv row with an empty label",
    ),
    # ---- round 3: flags, every script
    pytest.param(
        "maml",
        bad.train_flags("--lr-init-range", "nan", "0.1"),
        "--lr-init-range must be two finite",
        id="lr init range nan",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--lr-init-range", "0.1", "-0.1"),
        r"LOW <= HIGH \(got 0.1 -0.1\)",
        id="lr init range reversed",
    ),
    pytest.param(
        "maml", bad.train_flags("--meta-lr", "0"), "--meta-lr must be a positive finite number", id="meta lr 0"
    ),
    pytest.param("maml", bad.train_flags("--meta-lr=-0.001"), "--meta-lr must be a positive", id="negative meta lr"),
    pytest.param("maml", bad.train_flags("--meta-lr", "inf"), "--meta-lr must be a positive finite", id="meta lr inf"),
    pytest.param(
        "maml", bad.train_flags("--seeds", "0", "1", "--seed", "3"), "--seed 3 beside --seeds", id="seed beside seeds"
    ),
    pytest.param(
        "maml",
        bad.train_flags("--eval-queries", "0"),
        "--eval-queries must be at least 1",
        id="zero evaluation queries",
    ),
    pytest.param(
        "maml", bad.train_flags("--seed", "-1"), r"--seed must be in 0..4294967295 \(got -1\)", id="negative seed"
    ),
    pytest.param(
        "maml",
        bad.train_flags("--seed", "18446744073709551615"),
        "--seed must be in 0..",
        id="seed whose derived seeds overflow",
    ),
    pytest.param("maml", bad.train_flags("--seeds", "0", "99999999999"), "--seeds must be in 0..", id="seeds overflow"),
    pytest.param("maml", bad.train_flags("--clip-grad", "-1"), "--clip-grad must be a positive", id="negative clip"),
    pytest.param("maml", bad.train_flags("--val-tasks", "0"), "--val-tasks must be at least 1", id="zero val tasks"),
    pytest.param("maml", bad.train_flags("--log-every", "0"), "--log-every must be at least 1", id="zero log every"),
    pytest.param(
        "maml",
        bad.train_flags("--synthetic-per-class", "-3"),
        "--synthetic-per-class must be at least 1",
        id="negative synthetic per class",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--image-size", "100000"),
        r"ask for about [\d,]+ GiB, more than this machine",
        id="image size no memory holds",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--meta-batch", "1000000000"),
        "--meta-batch, --image-size and --hidden ask",
        id="meta-batch no memory holds",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--hidden", "100000000"),
        "--meta-batch, --image-size and --hidden ask",
        id="width no memory holds",
    ),
    pytest.param("maml", bad.train_flags("--device", "mps"), "runs on cpu or cuda .*not on mps", id="maml device mps"),
    pytest.param("maml", bad.train_flags("--device", "xpu:0"), "not on xpu", id="maml device xpu"),
    pytest.param("maml", bad.train_flags("--device", "meta"), "not on meta", id="maml device meta"),
    pytest.param("probe", bad.probe_with("--device", "mps"), "not on mps", id="probe device mps"),
    pytest.param("bench", bad.flags("--device", "mps"), "not on mps", id="bench device mps"),
    pytest.param(
        "probe", bad.probe_with("--seed", "-1"), r"--seed must be in 0..4294967295 \(got -1\)", id="probe negative seed"
    ),
    pytest.param(
        "probe", bad.probe_with("--seed", "18446744073709551615"), "--seed must be in 0..", id="probe seed overflow"
    ),
    pytest.param("probe", bad.probe_with("--queries", "0"), "--queries must be at least 1", id="probe zero queries"),
    pytest.param("probe", bad.probe_with("--steps", "-2"), "--steps not negative", id="probe negative steps"),
    pytest.param(
        "probe", bad.probe_with("--batch", "-1"), "--batch and --steps not negative", id="probe negative batch"
    ),
    pytest.param(
        "probe",
        bad.probe_with("--inner-lr", "inf", "--rates", "fixed"),
        "--inner-lr must be a finite",
        id="probe infinite fixed rate",
    ),
    pytest.param("bench", bad.flags("--repeats", "0"), "--repeats must be at least 1", id="bench zero repeats"),
    pytest.param("bench", bad.flags("--repeats", "-5"), "--repeats must be at least 1", id="bench negative repeats"),
    pytest.param("bench", bad.flags("--seeds", "-2"), "--seeds not negative", id="bench negative seeds"),
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
    # ---- bench.py
    pytest.param("bench", bad.flags("--quik"), "unrecognized arguments: --quik; see --help", id="bench typo'd flag"),
    pytest.param(
        "bench", bad.flags("--repeats", "many"), "invalid int value: 'many'; see --help", id="bench repeats many"
    ),
]


@pytest.mark.parametrize("script, setup, message", CASES)
def test_bad_input_ends_in_one_line_and_damages_nothing(script, setup, message, finished_runs, tmp_path, capsys,
                                                        monkeypatch, request):  # fmt: skip
    make_jpegs(tmp_path / "ravi")
    copy_finished_runs(finished_runs, tmp_path)
    ctx = SimpleNamespace(d=tmp_path, monkeypatch=monkeypatch, request=request, pid=None)
    argv = setup(ctx)
    before = snapshot(tmp_path)
    limit = request.node.get_closest_marker("limit")
    if limit:
        line = run_with_file_size_limit(script, argv, limit.args[0], tmp_path)
        assert not list(tmp_path.rglob("*.tmp*")), "a temporary file was left behind"
    else:
        line = run_in_process(script, argv, capsys)
    assert re.search(message.format(pid=ctx.pid), line), line
    after = snapshot(tmp_path)
    assert {p: h for p, h in after.items() if p in before} == before, "an existing file was changed or removed"


def test_the_table_covers_at_least_100_inputs():
    assert len(CASES) >= 100


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


def test_a_failed_probe_resume_keeps_the_finished_summary(finished_runs, tmp_path, capsys):
    copy_finished_runs(finished_runs, tmp_path)
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
