"""The bad inputs of the error table (tests/test_cli_errors*.py). Each setup makes one bad input next to
good ones, in the test's folder `ctx.d` (which already holds a small Ravi-layout dataset, `ravi/`, and a
finished, probed MAML and Meta-SGD run, `runs/maml` and `runs/metasgd`), and returns the script's flags."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import make_omniglot, tiny_flags


def train(ctx, *extra, out="run"):
    return tiny_flags(ctx.d / out, "--iterations", "2", "--eval-every", "2", *extra)


def ravi(ctx, *extra):
    return train(ctx, "--data", str(ctx.d / "ravi"), "--queries", "1", "--eval-queries", "1", *extra)


def run_dir(ctx, name="maml"):
    return ctx.d / "runs" / name


def probe_flags(ctx, *extra, name="maml"):
    return [str(run_dir(ctx, name) / "best.pt"), "--iterations", "8", "--batch", "4", "--queries", "3",
            "--no-progress", *extra]  # fmt: skip


def resume_run(ctx, *extra):
    folder = run_dir(ctx)
    return tiny_flags(folder, "--iterations", "4", "--eval-every", "2", "--resume", *extra)


def resume_metasgd(ctx, *extra):
    return tiny_flags(run_dir(ctx, "metasgd"), "--iterations", "4", "--eval-every", "2", "--learn-lr", "--seed",
                      "1", "--resume", *extra)  # fmt: skip


def analyze_both(ctx):
    return [str(run_dir(ctx)), str(run_dir(ctx, "metasgd")), "--out", str(ctx.d / "report")]


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


def csv_with_a_row(split, row):
    """The split's CSV with one more row, as given."""

    def setup(ctx):
        path = ctx.d / "ravi" / f"{split}.csv"
        path.write_text(path.read_text() + row + "\n")
        return ravi(ctx)

    return setup


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
        return [str(run_dir(ctx)), "--out", str(out[where])]

    return setup


def disk_full_at_the_start(ctx):
    return train(ctx)


def disk_full_during_the_probe(ctx):
    return probe_flags(ctx, "--out", str(ctx.d / "probe-out"), "--iterations", "400")


def disk_full_writing_the_report(ctx):
    return analyze_both(ctx)


def second_training_run_while_the_first_runs(ctx):
    ctx.pid = hold_lock(ctx, run_dir(ctx) / "run.lock")
    return resume_run(ctx)


def second_probe_while_the_first_runs(ctx):
    ctx.pid = hold_lock(ctx, run_dir(ctx) / "probe.lock")
    return probe_flags(ctx, "--resume")


# --------------------------------------------------------------------------- setups: run files


def resume_with(*flags):
    def setup(ctx):
        return resume_run(ctx, *flags)

    return setup


def output_folder_holding_another_run(ctx):
    return tiny_flags(run_dir(ctx), "--iterations", "2", "--eval-every", "2")


def resume_without_a_checkpoint(ctx):
    return train(ctx, "--resume")


def empty_checkpoint_on_resume(ctx):
    (run_dir(ctx) / "ckpt.pt").write_bytes(b"")
    return resume_run(ctx)


def resume_to_fewer_iterations_than_done(ctx):
    return tiny_flags(run_dir(ctx), "--iterations", "1", "--eval-every", "2", "--resume")


def metrics_with_garbage_between_rows(ctx):
    path = run_dir(ctx) / "metrics.csv"
    lines = path.read_text().splitlines()
    write_damaged(path, "\n".join([lines[0], "#!garbage,row", *lines[1:]]) + "\n")
    return resume_run(ctx)


def metrics_with_nul_bytes_between_rows(ctx):
    path = run_dir(ctx) / "metrics.csv"
    lines = path.read_bytes().splitlines()
    write_damaged(path, b"\n".join([lines[0], lines[1], b"\0" * 40, *lines[2:]]) + b"\n")
    return resume_run(ctx)


def lr_stats_with_garbage_between_rows(ctx):
    path = run_dir(ctx, "metasgd") / "lr_stats.csv"
    lines = path.read_text().splitlines()
    lines[3] = "2,conv1,layer,not-a-count,0,0,0,0,0"
    write_damaged(path, "\n".join(lines) + "\n")
    return resume_metasgd(ctx)


def probe_records_with_garbage_between_rows(ctx):
    path = run_dir(ctx) / "probe.csv"
    lines = path.read_text().splitlines()
    lines[2] = "garbage"
    write_damaged(path, "\n".join(lines) + "\n")
    return probe_flags(ctx, "--resume", "--iterations", "12")


def corrupt_probe_json_on_resume(ctx):
    write_damaged(run_dir(ctx) / "probe.json", '{"settings": {"checkpoint": ')
    return probe_flags(ctx, "--resume", "--iterations", "12")


def probe_resume_with_the_data_moved(ctx):
    """A probe of a run trained on a data folder that has since moved (the checkpoint and the finished
    probe's summary both name the old place)."""
    folder, moved = run_dir(ctx), str(ctx.d / "moved")
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
        good = run_dir(ctx) / "best.pt"
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
        folder = run_dir(ctx, "metasgd")
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
    return [str(run_dir(ctx)), str(run_dir(ctx)) + "/", "--out", str(ctx.d / "report")]


def analyze_a_copied_run(ctx):
    shutil.copytree(run_dir(ctx), ctx.d / "copy")
    return [str(run_dir(ctx)), str(ctx.d / "copy"), "--out", str(ctx.d / "report")]


def analyze_mixed_shapes(ctx):
    shutil.copytree(run_dir(ctx), ctx.d / "tenway")
    ckpt = torch.load(ctx.d / "tenway" / "ckpt.pt", weights_only=True)
    ckpt["config"]["ways"] = 10
    torch.save(ckpt, ctx.d / "tenway" / "ckpt.pt")
    return [str(run_dir(ctx)), str(ctx.d / "tenway"), "--out", str(ctx.d / "report")]


def analyze_foreign_checkpoint(ctx):
    torch.save({"something": 1}, ctx.d / "foreign.pt")
    return [str(ctx.d / "foreign.pt"), "--out", str(ctx.d / "report")]


def analyze_folder_without_a_run(ctx):
    (ctx.d / "empty").mkdir()
    return [str(ctx.d / "empty"), "--out", str(ctx.d / "report")]


def nine_way_checkpoint_on_the_val_split(ctx):
    ckpt = torch.load(run_dir(ctx) / "best.pt", weights_only=True)
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


# --------------------------------------------------------------------------- setups of round 3


def csv_listing_every_image_twice(ctx):
    path = ctx.d / "ravi" / "train.csv"
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows + rows[1:]) + "\n")
    return ravi(ctx)


def test_csv_naming_training_images(ctx):
    """test.csv lists train.csv's images under test class names: no class is shared, the images are."""
    train_rows = (ctx.d / "ravi" / "train.csv").read_text().splitlines()[1:]
    rows = [f"{row.split(',')[0]},{row.split(',')[1].replace('n0', 'n2')}" for row in train_rows]
    (ctx.d / "ravi" / "test.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    return ravi(ctx)


def pickle_naming_an_image_past_its_images(ctx):
    (ctx.d / "pk").mkdir()
    with open(ctx.d / "pk" / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((2, 8, 8, 3), np.uint8), "class_dict": {"a": [0, 1], "b": [7]}}, f)
    return train(ctx, "--data", str(ctx.d / "pk"))


def pickle_with(class_dict, images=4):
    """A train pickle of `images` black images whose class_dict is `class_dict`."""

    def setup(ctx):
        (ctx.d / "pk").mkdir()
        with open(ctx.d / "pk" / "mini-imagenet-cache-train.pkl", "wb") as f:
            pickle.dump({"image_data": np.zeros((images, 8, 8, 3), np.uint8), "class_dict": class_dict}, f)
        return train(ctx, "--data", str(ctx.d / "pk"))

    return setup


def hdf5_naming_no_classes(ctx):
    import h5py

    (ctx.d / "h5").mkdir()
    with h5py.File(ctx.d / "h5" / "train_data.hdf5", "w") as f:
        f.create_group("datasets")
    (ctx.d / "h5" / "train_labels.json").write_text("[]")
    return train(ctx, "--data", str(ctx.d / "h5"))


def csv_naming_an_image_again_by_another_path(ctx):
    """The first image again, by an absolute path that spells its folder another way."""
    path = ctx.d / "ravi" / "train.csv"
    name, label = path.read_text().splitlines()[1].split(",")
    path.write_text(path.read_text() + f"{ctx.d / 'ravi' / 'images' / '..' / 'images' / name},{label}\n")
    return ravi(ctx)


def hdf5_class_with_other_dimensions(ctx):
    import h5py

    (ctx.d / "h5").mkdir()
    with h5py.File(ctx.d / "h5" / "train_data.hdf5", "w") as f:
        f.create_dataset("datasets/a", data=np.zeros((4, 8, 8, 3), np.uint8))
        f.create_dataset("datasets/b", data=np.zeros((4, 9, 9, 3), np.uint8))
    (ctx.d / "h5" / "train_labels.json").write_text('["a", "b"]')
    return train(ctx, "--data", str(ctx.d / "h5"))


def resume_on_other_data(ctx):
    return resume_run(ctx, "--data", str(ctx.d / "ravi"))


def resume_with_a_default_that_disagrees(ctx):
    return [*resume_run(ctx), "--ways", "5"]


def resume_single_seed_folder_as_seeds(ctx):
    return resume_run(ctx, "--seeds", "0", "1")


def resume_seeds_folder_as_one_run(ctx):
    train_seeds = tiny_flags(ctx.d / "seeds", "--iterations", "2", "--eval-every", "2", "--seeds", "0", "1")
    import maml  # made here, so that the folder exists before the snapshot of existing files

    maml.main(train_seeds)
    return tiny_flags(ctx.d / "seeds", "--iterations", "4", "--eval-every", "2", "--resume")


def probe_resume_with_fewer_iterations(ctx):
    return probe_flags(ctx, "--iterations", "4", "--resume")


def probe_resume_with_other_queries(ctx):
    return probe_flags(ctx, "--queries", "2", "--resume")


# ---- gpu_check.py: its command line is refused before any stage runs (a typo would waste a GPU start)


def gpu_check_flags(*argv, env=None):
    """gpu_check.py --smoke with `argv` (its output folder in the row's folder), and `env` set."""

    def setup(ctx):
        for name, value in (env or {}).items():
            ctx.monkeypatch.setenv(name, value)
        return ["--smoke", "--out", str(ctx.d / "check"), "--work", str(ctx.d / "work"), *argv]

    return setup


def gpu_check_out_that_is_a_file(ctx):
    (ctx.d / "afile").write_text("mine")
    return ["--smoke", "--out", str(ctx.d / "afile")]


def gpu_check_without_a_gpu(data):
    """gpu_check.py for the GPU (no --smoke), with or without a data folder, where CUDA is unavailable."""

    def setup(ctx):
        ctx.monkeypatch.setattr("torch.cuda.is_available", lambda: False)
        return [str(ctx.d / "ravi")] if data else []

    return setup


def gpu_check_out_with_other_files(ctx):
    (ctx.d / "check").mkdir()
    (ctx.d / "check" / "notes.txt").write_text("mine")
    return ["--smoke", "--out", str(ctx.d / "check"), "--work", str(ctx.d / "work")]


def gpu_check_on_a_gpu(*argv, env=None):
    """gpu_check.py for the GPU (no --smoke) where CUDA is taken to work, with `argv` and `env`."""

    def setup(ctx):
        ctx.monkeypatch.setattr("gpu_check.refuse_without_cuda", lambda: None)
        for name, value in (env or {}).items():
            ctx.monkeypatch.setenv(name, value)
        return [a.format(d=ctx.d) for a in argv] + ["--out", str(ctx.d / "check"), "--work", str(ctx.d / "work")]

    return setup
