"""Bad input ends with one clear sentence on stderr and exit code 2, never a traceback, and never
damages a file that was there before.

The table `CASES` lists every bad input: each row is (script, setup, expected message) where `setup`
makes the bad input next to good ones and returns the script's flags. Most rows run the script's
main in this process through cli.run_cli; rows that need a limit on file size (a full disk) run it
in a subprocess."""

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import analyze
import bench
import cli
import maml
import probe
from conftest import ROOT, make_jpegs, make_omniglot, tiny_flags

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


def train(ctx, *extra, out="run"):
    return tiny_flags(ctx.d / out, "--iterations", "2", "--eval-every", "2", *extra)


def ravi(ctx, *extra):
    return train(ctx, "--data", str(ctx.d / "ravi"), "--queries", "1", "--eval-queries", "1", *extra)


def run_folder(ctx, name="maml"):
    return ctx.d / "runs" / name


def probe_flags(ctx, *extra, name="maml"):
    return [str(run_folder(ctx, name) / "best.pt"), "--iterations", "8", "--batch", "4", "--queries", "3",
            "--no-progress", *extra]  # fmt: skip


def resume_run(ctx, *extra):
    folder = run_folder(ctx)
    return tiny_flags(folder, "--iterations", "4", "--eval-every", "2", "--resume", *extra)


def resume_metasgd(ctx, *extra):
    return tiny_flags(run_folder(ctx, "metasgd"), "--iterations", "4", "--eval-every", "2", "--learn-lr", "--seed",
                      "1", "--resume", *extra)  # fmt: skip


def analyze_both(ctx):
    return [str(run_folder(ctx)), str(run_folder(ctx, "metasgd")), "--out", str(ctx.d / "report")]


def hold_lock(ctx, lock_file):
    """Start a process that holds the lock on `lock_file` (as a running writer would) until the test ends."""
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()}\\n'.encode()); print('held', flush=True); "
        "time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    ctx.request.addfinalizer(lambda: (holder.kill(), holder.wait()))
    assert holder.stdout.readline().strip() == "held"
    return holder.pid


def write_damaged(path, text):
    Path(path).write_bytes(text if isinstance(text, bytes) else text.encode())


# --------------------------------------------------------------------------- setups: training data


def missing_folder(ctx):
    return train(ctx, "--data", str(ctx.d / "nope"))


def empty_folder(ctx):
    (ctx.d / "empty").mkdir()
    return train(ctx, "--data", str(ctx.d / "empty"))


def folder_in_no_layout(ctx):
    (ctx.d / "odd").mkdir()
    (ctx.d / "odd" / "x.txt").write_text("x")
    return train(ctx, "--data", str(ctx.d / "odd"))


def data_that_is_a_file(ctx):
    return train(ctx, "--data", str(ctx.d / "ravi" / "train.csv"))


def csv_naming_an_absent_image(ctx):
    os.remove(ctx.d / "ravi" / "images" / "n01train0002.jpg")
    return ravi(ctx)


def csv_with_images_prefix_naming_an_absent_image(ctx):
    path = ctx.d / "ravi" / "train.csv"
    path.write_text(path.read_text().replace("n01train0002.jpg", "images/n01train0099.jpg"))
    return ravi(ctx)


def csv_with_bom_and_wrong_header(ctx):
    path = ctx.d / "ravi" / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"filename,label", b"file,class"))
    return ravi(ctx)


def csv_row_without_label(ctx):
    path = ctx.d / "ravi" / "val.csv"
    path.write_text(path.read_text() + "lonely.jpg\n")
    return ravi(ctx)


def latin1_csv(ctx):
    path = ctx.d / "ravi" / "train.csv"
    path.write_bytes(path.read_bytes().replace(b"n01train0000.jpg,n01", b"n01train0000.jpg,caf\xe9"))
    return ravi(ctx)


def truncated_image(ctx):
    (ctx.d / "ravi" / "images" / "n02train0001.jpg").write_bytes(b"\xff\xd8\xff")
    return ravi(ctx)


def truncated_image_with_a_non_utf8_name(ctx):
    folder = ctx.d / "folders" / "train" / "c1"
    folder.mkdir(parents=True)
    (ctx.d / "folders" / "val" / "c2").mkdir(parents=True)
    (ctx.d / "folders" / "test" / "c3").mkdir(parents=True)
    Path(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg")).write_bytes(b"\xff\xd8\xff")
    return train(ctx, "--data", str(ctx.d / "folders"))


def image_far_over_the_pixel_limit(ctx):
    ctx.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 20x20 is over twice that: PIL refuses it
    return ravi(ctx)


def float_image_out_of_range(ctx):
    Image.fromarray(np.full((4, 4), 300.0, np.float32), "F").save(ctx.d / "ravi" / "images" / "n01train0001.tif")
    path = ctx.d / "ravi" / "train.csv"
    path.write_text(path.read_text().replace("n01train0001.jpg", "n01train0001.tif"))
    return ravi(ctx)


def pickle_that_is_an_html_page(ctx):
    (ctx.d / "pk").mkdir()
    (ctx.d / "pk" / "mini-imagenet-cache-train.pkl").write_text("<html>Sign in</html>")
    return train(ctx, "--data", str(ctx.d / "pk"))


def pickle_of_floats_out_of_range(ctx):
    (ctx.d / "pk").mkdir()
    with open(ctx.d / "pk" / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": np.full((2, 8, 8, 3), 2.5, np.float32), "class_dict": {"a": [0, 1]}}, f)
    return train(ctx, "--data", str(ctx.d / "pk"))


def leaky_test_csv(ctx):
    (ctx.d / "ravi" / "test.csv").write_text((ctx.d / "ravi" / "train.csv").read_text())
    return ravi(ctx)


def omniglot_split_file_with_a_bad_line(ctx):
    make_omniglot(ctx.d / "omniglot", vinyals=True)
    (ctx.d / "omniglot" / "splits" / "vinyals" / "train.txt").write_text("Alpha/character01\n")
    return train(ctx, "--data", str(ctx.d / "omniglot"))


def missing_test_split(ctx):
    os.remove(ctx.d / "ravi" / "test.csv")
    return ravi(ctx)


def small_test_split(ctx):
    path = ctx.d / "ravi" / "test.csv"
    path.write_text(
        "\n".join(line for line in path.read_text().splitlines() if ",n22" not in line and ",n23" not in line)
    )
    return ravi(ctx)


def class_folders_with_images_in_subfolders(ctx):
    for split, classes in (("train", "ab"), ("val", "cd"), ("test", "ef")):
        for c in classes:
            folder = ctx.d / "folders" / split / c / ("nested" if c in "bdf" else "")
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
    return train(ctx, "--data", str(ctx.d / "folders"), "--queries", "1", "--eval-queries", "1")


# --------------------------------------------------------------------------- setups: output folders


def out_that_is_a_file(ctx):
    (ctx.d / "afile").write_text("mine")
    return train(ctx, out="afile")


def out_under_proc(ctx):
    return tiny_flags("/proc/self/negative-lr-run", "--iterations", "2")


def out_under_sys(ctx):
    return tiny_flags("/sys/negative-lr-run", "--iterations", "2")


def out_that_cannot_be_created(ctx):
    (ctx.d / "afile").write_text("mine")
    return train(ctx, out="afile/run")


def probe_out(where):
    def setup(ctx):
        (ctx.d / "afile").write_text("mine")
        out = {"file": ctx.d / "afile", "proc": "/proc/1/x", "sys": "/sys/kernel/x", "below a file": ctx.d / "afile/x"}
        return probe_flags(ctx, "--out", str(out[where]))

    return setup


def analyze_out(where):
    def setup(ctx):
        (ctx.d / "afile").write_text("mine")
        out = {"file": ctx.d / "afile", "proc": "/proc/x", "sys": "/sys/x", "below a file": ctx.d / "afile/x"}
        return [str(run_folder(ctx)), "--out", str(out[where])]

    return setup


def disk_full_at_the_start(ctx):
    return train(ctx)


def disk_full_during_the_probe(ctx):
    return probe_flags(ctx, "--out", str(ctx.d / "probe-out"), "--iterations", "400")


def disk_full_writing_the_report(ctx):
    return analyze_both(ctx)


def second_training_run_while_the_first_runs(ctx):
    ctx.pid = hold_lock(ctx, run_folder(ctx) / "run.lock")
    return resume_run(ctx)


def second_probe_while_the_first_runs(ctx):
    ctx.pid = hold_lock(ctx, run_folder(ctx) / "probe.lock")
    return probe_flags(ctx, "--resume")


# --------------------------------------------------------------------------- setups: run files


def resume_with(*flags):
    def setup(ctx):
        return resume_run(ctx, *flags)

    return setup


def output_folder_holding_another_run(ctx):
    return tiny_flags(run_folder(ctx), "--iterations", "2", "--eval-every", "2")


def resume_without_a_checkpoint(ctx):
    return train(ctx, "--resume")


def empty_checkpoint_on_resume(ctx):
    (run_folder(ctx) / "ckpt.pt").write_bytes(b"")
    return resume_run(ctx)


def resume_to_fewer_iterations_than_done(ctx):
    return tiny_flags(run_folder(ctx), "--iterations", "1", "--eval-every", "2", "--resume")


def metrics_with_garbage_between_rows(ctx):
    path = run_folder(ctx) / "metrics.csv"
    lines = path.read_text().splitlines()
    write_damaged(path, "\n".join([lines[0], "#!garbage,row", *lines[1:]]) + "\n")
    return resume_run(ctx)


def metrics_with_nul_bytes_between_rows(ctx):
    path = run_folder(ctx) / "metrics.csv"
    lines = path.read_bytes().splitlines()
    write_damaged(path, b"\n".join([lines[0], lines[1], b"\0" * 40, *lines[2:]]) + b"\n")
    return resume_run(ctx)


def lr_stats_with_garbage_between_rows(ctx):
    path = run_folder(ctx, "metasgd") / "lr_stats.csv"
    lines = path.read_text().splitlines()
    lines[3] = "2,conv1,layer,not-a-count,0,0,0,0,0"
    write_damaged(path, "\n".join(lines) + "\n")
    return resume_metasgd(ctx)


def probe_records_with_garbage_between_rows(ctx):
    path = run_folder(ctx) / "probe.csv"
    lines = path.read_text().splitlines()
    lines[2] = "garbage"
    write_damaged(path, "\n".join(lines) + "\n")
    return probe_flags(ctx, "--resume", "--iterations", "12")


def corrupt_probe_json_on_resume(ctx):
    write_damaged(run_folder(ctx) / "probe.json", '{"settings": {"checkpoint": ')
    return probe_flags(ctx, "--resume", "--iterations", "12")


def probe_resume_with_the_data_moved(ctx):
    """A probe of a run trained on a data folder that has since moved (the checkpoint and the finished
    probe's summary both name the old place)."""
    folder, moved = run_folder(ctx), str(ctx.d / "moved")
    ckpt = torch.load(folder / "best.pt", weights_only=True)
    ckpt["config"]["data"] = moved
    torch.save(ckpt, folder / "best.pt")
    summary = json.loads((folder / "probe.json").read_text())
    summary["settings"]["data"] = moved
    (folder / "probe.json").write_text(json.dumps(summary, indent=2) + "\n")
    return probe_flags(ctx, "--resume")


def probe_resume_with_other_settings(ctx):
    return probe_flags(ctx, "--resume", "--queries", "4")


def probe_over_finished_records(ctx):
    return probe_flags(ctx)


def bad_checkpoint(kind):
    def setup(ctx):
        good = run_folder(ctx) / "best.pt"
        path = ctx.d / "bad.pt"
        if kind == "truncated":
            path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "other program":
            torch.save({"model": {"w": torch.zeros(2)}}, path)
        elif kind == "pickle of something else":
            path.write_bytes(pickle.dumps(["not", "a", "checkpoint"]))
        elif kind == "directory":
            path.mkdir()
        return [str(path), "--iterations", "2", "--no-progress"]

    return setup


def damaged_for_analyze(file, damage):
    def setup(ctx):
        folder = run_folder(ctx, "metasgd")
        path = folder / file
        raw = path.read_bytes()
        if damage == "torn last row":
            write_damaged(path, raw[:-7])
        elif damage == "NUL padding":
            write_damaged(path, raw + b"\0" * 64)
        elif damage == "garbage row":
            lines = raw.splitlines()
            write_damaged(path, b"\n".join([*lines[:2], b"<<garbage>>", *lines[2:]]) + b"\n")
        elif damage == "corrupt json":
            write_damaged(path, raw[: len(raw) // 2])
        return analyze_both(ctx)

    return setup


def analyze_one_run_twice(ctx):
    return [str(run_folder(ctx)), str(run_folder(ctx)) + "/", "--out", str(ctx.d / "report")]


def analyze_a_copied_run(ctx):
    shutil.copytree(run_folder(ctx), ctx.d / "copy")
    return [str(run_folder(ctx)), str(ctx.d / "copy"), "--out", str(ctx.d / "report")]


def analyze_mixed_shapes(ctx):
    shutil.copytree(run_folder(ctx), ctx.d / "tenway")
    ckpt = torch.load(ctx.d / "tenway" / "ckpt.pt", weights_only=True)
    ckpt["config"]["ways"] = 10
    torch.save(ckpt, ctx.d / "tenway" / "ckpt.pt")
    return [str(run_folder(ctx)), str(ctx.d / "tenway"), "--out", str(ctx.d / "report")]


def analyze_foreign_checkpoint(ctx):
    torch.save({"something": 1}, ctx.d / "foreign.pt")
    return [str(ctx.d / "foreign.pt"), "--out", str(ctx.d / "report")]


def analyze_folder_without_a_run(ctx):
    (ctx.d / "empty").mkdir()
    return [str(ctx.d / "empty"), "--out", str(ctx.d / "report")]


def nine_way_checkpoint_on_the_val_split(ctx):
    ckpt = torch.load(run_folder(ctx) / "best.pt", weights_only=True)
    ckpt["config"]["ways"] = 9
    torch.save(ckpt, ctx.d / "nine.pt")
    return [str(ctx.d / "nine.pt"), "--split", "val", "--iterations", "2", "--no-progress"]


def flags(*argv):
    def setup(ctx):
        return list(argv)

    return setup


def train_flags(*extra):
    def setup(ctx):
        return train(ctx, *extra)

    return setup


def probe_with(*extra):
    def setup(ctx):
        return probe_flags(ctx, *extra)

    return setup


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
LIMIT = "file size limit"  # marks the rows that run in a subprocess under RLIMIT_FSIZE

CASES = [
    # ---- maml.py: data
    pytest.param("maml", missing_folder, "does not exist", id="missing data folder"),
    pytest.param("maml", empty_folder, "found: nothing", id="empty data folder"),
    pytest.param("maml", folder_in_no_layout, "learn2learn pickles", id="folder in no layout"),
    pytest.param("maml", data_that_is_a_file, "is a file; expected a folder", id="data that is a file"),
    pytest.param("maml", csv_naming_an_absent_image, "n01train0002.jpg", id="csv naming absent images"),
    pytest.param(
        "maml",
        csv_with_images_prefix_naming_an_absent_image,
        "n01train0099.jpg",
        id="csv with images/ prefix naming an absent image",
    ),  # fmt: skip
    pytest.param("maml", csv_with_bom_and_wrong_header, "header 'filename,label'", id="csv with bom and wrong header"),
    pytest.param("maml", csv_row_without_label, "row without a label: lonely.jpg", id="csv row without label"),
    pytest.param("maml", latin1_csv, r"train.csv is not UTF-8 text \(line 2", id="latin-1 csv"),
    pytest.param("maml", truncated_image, "cannot read image .*n02train0001.jpg", id="truncated image"),
    pytest.param(
        "maml",
        truncated_image_with_a_non_utf8_name,
        r"cannot read image .*caf\\xe9.jpg",
        id="truncated image with a non-utf-8 name",
    ),  # fmt: skip
    pytest.param("maml", image_far_over_the_pixel_limit, "DecompressionBombError", id="image far over pixel limit"),
    pytest.param(
        "maml", float_image_out_of_range, r"mode F with values in \[300, 300\]", id="float image out of range"
    ),
    pytest.param("maml", pickle_that_is_an_html_page, "HTML", id="pickle that is an html page"),
    pytest.param(
        "maml", pickle_of_floats_out_of_range, r"float32 values in \[2.5, 2.5\]", id="float pickle out of range"
    ),
    pytest.param(
        "maml",
        leaky_test_csv,
        "class n01 is in both the train and the test split",
        id="class leakage: test.csv is train.csv",
    ),  # fmt: skip
    pytest.param("maml", missing_test_split, "no 'test' split", id="missing test split"),
    pytest.param(
        "maml",
        small_test_split,
        "test split has 1 classes, fewer than the 2 ways",
        id="test split with too few classes",
    ),  # fmt: skip
    pytest.param(
        "maml",
        class_folders_with_images_in_subfolders,
        r"1 more class folders hold their images in subfolders",
        id="class folders with images in subfolders",
    ),  # fmt: skip
    pytest.param(
        "maml", train_flags("--ways", "20"), "16 classes, fewer than the 20 ways", id="fewer classes than ways"
    ),
    pytest.param(
        "maml",
        train_flags("--queries", "12"),
        "12 images, fewer than the 13",
        id="fewer images than shots plus queries",
    ),  # fmt: skip
    pytest.param(
        "maml",
        train_flags("--eval-queries", "12"),
        "val split has 12 images, fewer than the 13",
        id="fewer val images than shots plus eval queries",
    ),  # fmt: skip
    # ---- maml.py: flags
    pytest.param("maml", train_flags("--ways", "0"), "--ways must be at least", id="zero ways"),
    pytest.param(
        "maml", train_flags("--inner-steps", "-1"), "--inner-steps cannot be negative", id="negative inner steps"
    ),
    pytest.param("maml", train_flags("--inner-lr", "nan"), "--inner-lr must be a finite number", id="inner lr nan"),
    pytest.param("maml", train_flags("--image-size", "8"), "--image-size must be at least 16", id="image size 8"),
    pytest.param("maml", train_flags("--device", "cuda:0"), "no CUDA GPU", id="gpu that is not there", marks=NO_GPU),
    pytest.param("maml", train_flags("--device", "tpu?"), "is not a device name", id="device that is no name"),
    pytest.param(
        "maml",
        train_flags("--cuda-graph", "on"),
        "--cuda-graph on needs a CUDA device",
        id="cuda graph on without a gpu",
        marks=NO_GPU,
    ),  # fmt: skip
    pytest.param("maml", train_flags("--seeds", "1", "2", "1"), "names a seed twice", id="a seed given twice"),
    pytest.param(
        "maml",
        train_flags("--seeds", "1", "2", "--task-batching", "loop"),
        "drop --task-batching loop",
        id="seeds with the task loop",
    ),  # fmt: skip
    pytest.param(
        "maml", train_flags("--clip-grad", "0"), "--clip-grad must be a positive", id="clip grad that is not positive"
    ),
    pytest.param(
        "maml", train_flags("--rotations"), "--rotations applies to Omniglot only", id="rotations without omniglot"
    ),
    pytest.param(
        "maml",
        omniglot_split_file_with_a_bad_line,
        "expected lines like Alphabet/character01/rot090",
        id="omniglot split file with a bad line",
    ),  # fmt: skip
    pytest.param(
        "maml",
        flags("--inner-lr", "abc"),
        "argument --inner-lr: invalid float value: 'abc'; see --help",
        id="inner lr abc",
    ),  # fmt: skip
    pytest.param(
        "maml", flags("--ways", "five"), "argument --ways: invalid int value: 'five'; see --help", id="ways five"
    ),  # fmt: skip
    pytest.param(
        "maml", flags("--way", "5", "--lern-lr"), "unrecognized arguments: --lern-lr; see --help", id="typo'd flags"
    ),  # fmt: skip
    pytest.param("maml", flags("--task-batching", "fast"), "argument --task-batching: invalid choice", id="bad choice"),
    pytest.param("maml", flags("--lr-init-range", "0.1"), "expected 2 arguments; see --help", id="one of two values"),
    # ---- maml.py: output folder
    pytest.param("maml", out_that_is_a_file, "--out .*afile is a file", id="out that is a file"),
    pytest.param("maml", out_under_proc, "lies under /proc", id="out under /proc"),
    pytest.param("maml", out_under_sys, "lies under /sys", id="out under /sys"),
    pytest.param("maml", out_that_cannot_be_created, "afile/run cannot be created", id="out below a file"),
    pytest.param(
        "maml",
        disk_full_at_the_start,
        "cannot write .*: File too large; no checkpoint was written yet",
        id="disk full at the start",
        marks=pytest.mark.limit(2000),
    ),  # fmt: skip
    pytest.param(
        "maml",
        second_training_run_while_the_first_runs,
        "is in use: another process \\(PID {pid}\\)",
        id="second writer of a run",
    ),  # fmt: skip
    # ---- maml.py: resuming
    pytest.param(
        "maml",
        output_folder_holding_another_run,
        "already holds a run; pass --resume",
        id="output folder holding another run",
    ),  # fmt: skip
    pytest.param("maml", resume_without_a_checkpoint, "no checkpoint", id="resume without a checkpoint"),
    pytest.param("maml", empty_checkpoint_on_resume, "cannot be read as a checkpoint", id="empty ckpt.pt on resume"),
    pytest.param(
        "maml", resume_with("--ways", "3"), "--ways 3 disagrees with the checkpoint's 2", id="resume other ways"
    ),
    pytest.param("maml", resume_with("--image-size", "20"), "--image-size 20 disagrees", id="resume other image size"),
    pytest.param("maml", resume_with("--shots", "2"), "--shots 2 disagrees", id="resume other shots"),
    pytest.param(
        "maml",
        resume_to_fewer_iterations_than_done,
        "--iterations 1 is below iteration 2",
        id="resume to fewer iterations than done",
    ),  # fmt: skip
    pytest.param(
        "maml",
        metrics_with_garbage_between_rows,
        r"metrics.csv line 2 is damaged .* whole rows follow",
        id="metrics.csv garbage row between rows",
    ),  # fmt: skip
    pytest.param(
        "maml",
        metrics_with_nul_bytes_between_rows,
        r"metrics.csv line 3 is damaged \(NUL bytes\)",
        id="metrics.csv NUL bytes between rows",
    ),  # fmt: skip
    pytest.param(
        "maml",
        lr_stats_with_garbage_between_rows,
        r"lr_stats.csv line 4 is damaged \(count is",
        id="lr_stats.csv garbage row between rows",
    ),  # fmt: skip
    # ---- probe.py
    pytest.param("probe", bad_checkpoint("truncated"), "bad.pt cannot be read as a checkpoint", id="truncated ckpt"),
    pytest.param("probe", bad_checkpoint("empty"), "bad.pt cannot be read as a checkpoint", id="empty ckpt"),
    pytest.param("probe", bad_checkpoint("other program"), "bad.pt is a torch file but not", id="other program's ckpt"),
    pytest.param("probe", bad_checkpoint("pickle of something else"), "bad.pt cannot be read", id="pickled list"),
    pytest.param("probe", bad_checkpoint("directory"), "bad.pt is not a checkpoint file", id="ckpt that is a folder"),
    pytest.param("probe", bad_checkpoint("missing"), "bad.pt is not a checkpoint file", id="missing ckpt"),
    pytest.param(
        "probe", probe_with("--rates", "negative"), "needs a Meta-SGD checkpoint", id="negative rates of maml"
    ),
    pytest.param("probe", probe_with("--rates", "fixed"), "--rates fixed needs --inner-lr", id="fixed rates, no lr"),
    pytest.param("probe", probe_with("--iterations", "0"), "--iterations and --queries must be", id="zero iterations"),
    pytest.param("probe", nine_way_checkpoint_on_the_val_split, "at least 18", id="too few classes for disjoint tasks"),
    pytest.param(
        "probe", flags("ckpt.pt", "--iterations", "x"), "invalid int value: 'x'; see --help", id="probe int x"
    ),
    pytest.param(
        "probe",
        flags(),
        "the following arguments are required: checkpoint; see --help",
        id="probe without a checkpoint",
    ),  # fmt: skip
    pytest.param("probe", probe_out("file"), "--out .*afile is a file", id="probe out that is a file"),
    pytest.param("probe", probe_out("proc"), "lies under /proc", id="probe out under /proc"),
    pytest.param("probe", probe_out("sys"), "lies under /sys", id="probe out under /sys"),
    pytest.param("probe", probe_out("below a file"), "cannot be created", id="probe out below a file"),
    pytest.param("probe", probe_over_finished_records, "already holds probe records", id="probe over finished records"),
    pytest.param("probe", probe_resume_with_other_settings, "the settings differ", id="probe resume, other settings"),
    pytest.param("probe", probe_resume_with_the_data_moved, "moved does not exist", id="probe resume, data moved"),
    pytest.param(
        "probe",
        probe_records_with_garbage_between_rows,
        r"probe.csv line 3 is damaged",
        id="probe.csv garbage row between rows",
    ),  # fmt: skip
    pytest.param("probe", corrupt_probe_json_on_resume, r"probe.json line 1 is damaged", id="corrupt probe.json"),
    pytest.param(
        "probe",
        second_probe_while_the_first_runs,
        "is in use: another process \\(PID {pid}\\)",
        id="second writer of a probe",
    ),  # fmt: skip
    pytest.param(
        "probe",
        disk_full_during_the_probe,
        "cannot write .*probe.csv: File too large; its finished chunks",
        id="disk full during the probe",
        marks=pytest.mark.limit(20000),
    ),  # fmt: skip
    # ---- analyze.py
    pytest.param("analyze", analyze_folder_without_a_run, "holds no checkpoint", id="analyze folder without a run"),
    pytest.param("analyze", analyze_mixed_shapes, "mix task shapes", id="analyze mixed shapes"),
    pytest.param("analyze", analyze_foreign_checkpoint, "not a checkpoint of this project", id="analyze foreign ckpt"),
    pytest.param("analyze", analyze_one_run_twice, "is given twice", id="analyze one run twice"),
    pytest.param("analyze", analyze_a_copied_run, "have the same config and seed", id="analyze identical config+seed"),
    pytest.param(
        "analyze",
        damaged_for_analyze("metrics.csv", "torn last row"),
        r"metrics.csv line 3 is damaged",
        id="analyze metrics.csv torn last row",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        damaged_for_analyze("lr_stats.csv", "NUL padding"),
        r"lr_stats.csv line \d+ is damaged",
        id="analyze lr_stats.csv NUL padding",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        damaged_for_analyze("probe.csv", "garbage row"),
        r"probe.csv line 3 is damaged",
        id="analyze probe.csv garbage row",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        damaged_for_analyze("probe.json", "corrupt json"),
        r"probe.json line \d+ is damaged",
        id="analyze corrupt probe.json",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        damaged_for_analyze("test.json", "corrupt json"),
        r"test.json line \d+ is damaged",
        id="analyze corrupt test.json",
    ),  # fmt: skip
    pytest.param("analyze", analyze_out("file"), "--out .*afile is a file", id="analyze out that is a file"),
    pytest.param("analyze", analyze_out("proc"), "lies under /proc", id="analyze out under /proc"),
    pytest.param("analyze", analyze_out("sys"), "lies under /sys", id="analyze out under /sys"),
    pytest.param("analyze", analyze_out("below a file"), "cannot be created", id="analyze out below a file"),
    pytest.param(
        "analyze",
        flags("--outt", "x"),
        "the following arguments are required: runs|unrecognized",
        id="analyze typo'd flag",
    ),  # fmt: skip
    pytest.param(
        "analyze",
        disk_full_writing_the_report,
        "cannot write .*report.*: File too large",
        id="disk full writing the report",
        marks=pytest.mark.limit(3000),
    ),  # fmt: skip
    # ---- bench.py
    pytest.param("bench", flags("--quik"), "unrecognized arguments: --quik; see --help", id="bench typo'd flag"),
    pytest.param("bench", flags("--repeats", "many"), "invalid int value: 'many'; see --help", id="bench repeats many"),
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


def test_the_table_covers_at_least_60_inputs():
    assert len(CASES) >= 60


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
    run_in_process("maml", ravi(ctx), capsys)
    assert not (tmp_path / "run").exists()  # the missing test split was found before any training


def test_a_failed_probe_resume_keeps_the_finished_summary(finished_runs, tmp_path, capsys):
    copy_finished_runs(finished_runs, tmp_path)
    summary = tmp_path / "runs" / "maml" / "probe.json"
    argv = probe_resume_with_the_data_moved(SimpleNamespace(d=tmp_path))
    before = summary.read_bytes()
    line = run_in_process("probe", argv, capsys)
    assert "does not exist" in line
    assert summary.read_bytes() == before and b"paired_t_on_vs_off" in before
