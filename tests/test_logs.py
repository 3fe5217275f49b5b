"""logs.py: a damaged log is repaired at its tail, or refused naming its file and line; every JSON file the
project writes parses strictly."""

import json
import re

import pytest

import analyze
import evaluate
import flags
import logs
import maml
import probe
from cli import CheckpointError
from conftest import tiny_flags

GOOD_LOG = "iteration,train_loss,train_acc,val_acc,val_ci95,elapsed_s\r\n0,,,0.5,0.1,0.0\r\n2,0.7,0.5,0.6,0.1,1.5\r\n"


@pytest.mark.parametrize(
    "tail, line, what",
    [
        pytest.param("4,0.6,0.5,0.6,0.1,2.", 4, "a torn last row, without a line end", id="torn last row"),
        pytest.param("\0" * 100, 4, "NUL bytes", id="NUL padding"),
        pytest.param("#%garbage\r\n\0\0", 4, "1 fields where the header has 6", id="garbage row at the end"),
        pytest.param("4,0.6,0.5,oops,0.1,2.0\r\n", 4, "val_acc is 'oops', not a number", id="row with a bad number"),
    ],
)
def test_resume_drops_a_damaged_tail_of_a_log_and_says_so_in_one_line(tail, line, what, tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    path.write_text(GOOD_LOG + tail, newline="")
    logs.repair_logs([path], 2)
    (note,) = capsys.readouterr().out.splitlines()
    assert note == f"repaired {path}: dropped its damaged tail from line {line} on ({what})"
    assert path.read_bytes() == GOOD_LOG.encode()


def test_resume_refuses_damage_followed_by_good_rows_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.csv"
    lines = GOOD_LOG.split("\r\n")
    path.write_text("\r\n".join([lines[0], "garbage", *lines[1:]]), newline="")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} line 2 is damaged .*whole rows follow"):
        logs.repair_logs([path], 2)
    assert "garbage" in path.read_text()  # left as it was


def strict_json(path):
    """json.loads as jq or JavaScript reads a file: NaN and Infinity are refused."""
    return json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"{path} holds {token}"))


def test_every_json_file_of_runs_probes_and_reports_of_every_method_parses_strictly(tmp_path, capsys):
    """One validation and one test task (no interval: test.json's CI), probes of one iteration (no interval,
    no t-test), and a report over all of them: each missing number is null, and no output says 'nan'."""
    one = ["--iterations", "1", "--val-tasks", "1", "--test-tasks", "1", "--synthetic-per-class", "6"]
    probe_flags = ["--iterations", "1", "--batch", "1", "--queries", "2", "--no-progress", "--similarity"]
    for method in flags.TRAINED_METHODS:
        maml.main(tiny_flags(tmp_path / method, "--method", method, *one))
        probe.main([str(tmp_path / method / "best.pt"), *probe_flags])
    evaluate.main([str(tmp_path / "maml" / "best.pt"), "--tasks", "1", "--device", "cpu"])
    analyze.analyze([tmp_path / method for method in flags.TRAINED_METHODS], tmp_path / "report")
    files = sorted(tmp_path.rglob("*.json"))
    parsed = {str(path.relative_to(tmp_path)): strict_json(path) for path in files}
    assert len(parsed) >= 3 * len(flags.TRAINED_METHODS) + 2  # test.json, run.json, probe.json; stats, manifest
    assert parsed["maml/test.json"]["test_ci95"] is None and parsed["maml/probe.json"]["on_change"]["ci95"] is None
    said = capsys.readouterr().out + "".join((tmp_path / "report" / n).read_text() for n in ("report.md", "stats.md"))
    assert not re.search(r"\bnan\b", said, re.IGNORECASE)
