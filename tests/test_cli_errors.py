"""Bad input ends with one clear sentence on stderr and exit code 2, never a traceback."""

import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

import maml
import probe
from conftest import ROOT, make_jpegs, make_omniglot, tiny_flags


def run_script(main_fn, argv, capsys, errors=()):
    with pytest.raises(SystemExit) as exit_info:
        maml.run_cli(main_fn, argv, errors)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return exit_info.value.code, lines[0]


@pytest.fixture
def datasets(tmp_path):
    make_jpegs(tmp_path / "ravi")
    return tmp_path


def train_args(tmp_path, *extra):
    return tiny_flags(tmp_path / "run", "--iterations", "2", "--eval-every", "2", *extra)


# Setups that make a broken dataset next to the good one in `datasets` and return the flags that use it.


def missing_folder(d):
    return ["--data", str(d / "nope")]


def empty_folder(d):
    (d / "empty").mkdir()
    return ["--data", str(d / "empty")]


def folder_in_no_layout(d):
    (d / "odd").mkdir()
    (d / "odd" / "x.txt").write_text("x")
    return ["--data", str(d / "odd")]


def csv_naming_an_absent_image(d):
    os.remove(d / "ravi" / "images" / "n01train0002.jpg")
    return ["--data", str(d / "ravi")]


def truncated_image(d):
    (d / "ravi" / "images" / "n02train0001.jpg").write_bytes(b"\xff\xd8\xff")
    return ["--data", str(d / "ravi")]


def pickle_that_is_an_html_page(d):
    (d / "pk").mkdir()
    (d / "pk" / "mini-imagenet-cache-train.pkl").write_text("<html>Sign in</html>")
    return ["--data", str(d / "pk")]


def omniglot_split_file_with_a_bad_line(d):
    make_omniglot(d / "omniglot", vinyals=True)
    (d / "omniglot" / "splits" / "vinyals" / "train.txt").write_text("Alpha/character01\n")
    return ["--data", str(d / "omniglot")]


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.mark.parametrize(
    "flags, message",
    [
        pytest.param(missing_folder, "does not exist", id="missing data folder"),
        pytest.param(empty_folder, "found: nothing", id="empty data folder"),
        pytest.param(folder_in_no_layout, "learn2learn pickles", id="folder in no layout"),
        pytest.param(csv_naming_an_absent_image, "n01train0002.jpg", id="csv naming absent images"),
        pytest.param(truncated_image, "cannot read image .*n02train0001.jpg", id="truncated image"),
        pytest.param(pickle_that_is_an_html_page, "HTML", id="pickle that is an html page"),
        pytest.param(["--ways", "20"], "16 classes, fewer than the 20 ways", id="fewer classes than ways"),
        pytest.param(["--queries", "12"], "12 images, fewer than the 13", id="fewer images than shots plus queries"),
        pytest.param(["--ways", "0"], "--ways must be at least", id="zero ways"),
        pytest.param(["--inner-steps", "-1"], "--inner-steps cannot be negative", id="negative inner steps"),
        pytest.param(["--inner-lr", "nan"], "--inner-lr must be a finite number", id="inner lr that is not finite"),
        pytest.param(["--device", "cuda:0"], "no CUDA GPU", id="gpu that is not there", marks=NO_GPU),
        pytest.param(["--clip-grad", "0"], "--clip-grad must be a positive", id="clip grad that is not positive"),
        pytest.param(["--rotations"], "--rotations applies to Omniglot only", id="rotations without omniglot"),
        pytest.param(
            omniglot_split_file_with_a_bad_line,
            "expected lines like Alphabet/character01/rot090",
            id="omniglot split file with a bad line",
        ),  # fmt: skip
    ],
)
def test_bad_training_input_ends_in_one_line(flags, message, datasets, capsys):
    if callable(flags):
        flags = flags(datasets)
    code, line = run_script(maml.main, train_args(datasets, *flags), capsys)
    assert code == 2
    assert re.search(message, line), line


def test_inner_lr_that_is_not_a_number_is_refused_by_the_parser(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "maml.py"), "--inner-lr", "abc"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "argument --inner-lr: invalid float value: 'abc'" in out.stderr


def test_hdf5_without_h5py_says_to_install_it(tmp_path):
    (tmp_path / "train_data.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (tmp_path / "train_labels.json").write_text("[]")
    code = (
        "import sys; sys.modules['h5py'] = None; sys.argv = ['maml.py', '--data', sys.argv[1]]; "
        "import maml; maml.run_cli(maml.main)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "needs h5py: pip install h5py" in out.stderr


def test_resume_with_other_shape_flags_is_refused(tmp_path, capsys):
    maml.main(train_args(tmp_path))
    for flags, message in (
        (["--ways", "3"], "--ways 3 disagrees with the checkpoint's 2"),
        (["--image-size", "20"], "--image-size 20 disagrees"),
        (["--shots", "2"], "--shots 2 disagrees"),
    ):
        code, line = run_script(maml.main, train_args(tmp_path, "--resume", *flags), capsys)
        assert code == 2 and message in line


def test_output_folder_holding_another_run_is_refused(tmp_path, capsys):
    maml.main(train_args(tmp_path))
    code, line = run_script(maml.main, train_args(tmp_path), capsys)
    assert code == 2 and "already holds a run; pass --resume" in line


def test_resume_without_a_checkpoint_is_explained(tmp_path, capsys):
    code, line = run_script(maml.main, train_args(tmp_path, "--resume"), capsys)
    assert code == 2 and "no checkpoint" in line


@pytest.mark.parametrize(
    "kind", ["truncated", "empty", "other program", "pickle of something else", "directory", "missing"]
)
def test_bad_checkpoint_is_explained_by_the_probe(kind, tmp_path, capsys):
    maml.main(train_args(tmp_path))
    good = tmp_path / "run" / "best.pt"
    path = tmp_path / "bad.pt"
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
    code, line = run_script(probe.main, [str(path), "--iterations", "2", "--no-progress"], capsys)
    assert code == 2
    assert str(path) in line and ("checkpoint" in line)


def test_probe_with_negative_rates_on_maml_checkpoint_is_explained(tmp_path, capsys):
    maml.main(train_args(tmp_path))
    code, line = run_script(
        probe.main, [str(tmp_path / "run" / "best.pt"), "--rates", "negative", "--iterations", "2"], capsys
    )
    assert code == 2 and "needs a Meta-SGD checkpoint" in line


def test_debug_flag_shows_the_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "maml.py"), "--data", str(tmp_path / "nope"), "--debug"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode != 0 and "Traceback" in out.stderr and "DataError" in out.stderr


def test_analyze_of_a_folder_without_a_run_is_explained(tmp_path, capsys):
    import analyze

    (tmp_path / "empty").mkdir()
    code, line = run_script(
        analyze.main, [str(tmp_path / "empty"), "--out", str(tmp_path / "r")], capsys, errors=(analyze.AnalysisError,)
    )
    assert code == 2 and "holds no checkpoint" in line
