"""logs.py: a damaged log is repaired at its tail, or refused naming its file and line."""

import re

import pytest

import logs
from cli import CheckpointError

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
