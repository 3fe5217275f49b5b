"""How the error table's rows run and what each must show, for its three files: tests/test_cli_errors.py
(output folders and run files), tests/error_rows_data.py (data) and tests/error_rows_flags.py
(flags). A row is (script, setup, expected message); `setup` (tests/bad_inputs.py) makes the bad input
next to good ones and returns the script's flags. Most rows run the script's main in this process
through cli.run_cli; rows that need a limit on file size (a full disk) run it in a subprocess."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import analyze
import bench
import cli
import evaluate
import gpu_check
import import_model
import maml
import probe
from conftest import ROOT, make_jpegs, tiny_flags

SCRIPTS = {"maml": maml.main, "probe": probe.main, "analyze": analyze.main, "bench": bench.main,
           "gpu_check": gpu_check.main, "import_model": import_model.main, "evaluate": evaluate.main}  # fmt: skip

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

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
LIMIT = "file size limit"  # marks the rows that run in a subprocess under RLIMIT_FSIZE

_FINISHED = {}  # the session's base temp folder -> its finished runs


def finished_runs(tmp_path_factory):
    """A finished MAML and Meta-SGD run, each probed, to copy into every test that needs one. Built once a
    session, however many of the table's files ask for it."""
    basetemp = tmp_path_factory.getbasetemp()
    if basetemp not in _FINISHED:
        root = tmp_path_factory.mktemp("finished")
        for name, extra in (("maml", []), ("metasgd", ["--learn-lr", "--seed", "1"])):
            maml.main(tiny_flags(root / name, "--iterations", "2", "--eval-every", "2", *extra))
            probe.main(
                [str(root / name / "best.pt"), "--iterations", "8", "--batch", "4", "--queries", "3", "--no-progress"]
            )
        _FINISHED[basetemp] = root
    return _FINISHED[basetemp]


def copy_finished_runs(tmp_path_factory, tmp_path):
    """The finished runs, copied to `tmp_path / "runs"`; each probe summary names its copied checkpoint,
    as if the probe had been run there."""
    shutil.copytree(finished_runs(tmp_path_factory), tmp_path / "runs", ignore=shutil.ignore_patterns("*.lock"))
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


def ends_in_one_line_and_damages_nothing(script, setup, message, tmp_path_factory, tmp_path, capsys, monkeypatch,
                                         request):  # fmt: skip
    """Runs one row of the table in `tmp_path` (a small Ravi-layout dataset, `ravi/`, and the finished
    runs, `runs/`): one stderr line matching `message`, exit code 2, and every file that was there before
    unchanged."""
    make_jpegs(tmp_path / "ravi")
    copy_finished_runs(tmp_path_factory, tmp_path)
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
