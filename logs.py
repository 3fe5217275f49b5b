"""The logs and summaries of a run folder: metrics.csv, lr_stats.csv and the probe's probe*.csv, rows
appended as a run goes; test.json and probe*.json, written whole. A kill or a full disk mid-write leaves
at most a torn last row, which `--resume` drops (`repair_logs`); damage followed by whole rows is
refused, naming the file and line, and so is any damage where a file must be whole (`read_log_strictly`).
"""

import csv
import hashlib
import json
from pathlib import Path

from cli import CheckpointError, DataError, WriteError, atomic_write, json_text, write_failure
from stats import CKA_COLUMNS, PAIR_COLUMNS, REGIMES

PROBE_COLUMNS = ["iteration", "chunk", "chunk_seed", *REGIMES, "classes_A", "classes_B"]


def probe_columns(similarity):
    """A probe's records: the accuracies, and with probe.py --similarity the layers' CKA after them."""
    return PROBE_COLUMNS + (list(CKA_COLUMNS) if similarity else [])


TEXT_COLUMNS = {"name", "kind", "classes_A", "classes_B"}  # the columns of our logs that are not numbers


def append_rows(path, rows):
    """Append dict rows to a CSV, with a header when the file is new. A failed write raises WriteError."""
    if not rows:
        return
    new = not path.exists() or path.stat().st_size == 0
    try:
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
    except OSError as e:  # a full disk: the torn last row is dropped by the next --resume
        raise WriteError(write_failure(path, e)) from None


METRICS_COLUMNS = ["iteration", "train_loss", "train_acc", "val_acc", "val_ci95", "elapsed_s"]  # metrics.csv
LR_STATS_COLUMNS = ["iteration", "name", "kind", "count", "mean", "std", "frac_negative", "min", "max"]  # lr_stats.csv


def header_of(path):
    """The column names of a CSV log's first line ([] for a missing or empty file, None if it is not CSV)."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        return fields_of(f.readline().rstrip("\r\n"))


def check_header(path, columns, error=CheckpointError):
    """Rows are appended only under the header they belong to: a log whose columns were changed by hand
    (one deleted, say) is refused before anything is written, naming the file."""
    header = header_of(path)
    if header is None or (header and header != list(columns)):
        lost = [c for c in columns if c not in (header or [])]
        what = "its first line is not CSV" if header is None else f"its columns are {', '.join(header)}"
        what = f"it lacks {', '.join(lost)}" if lost and header else what
        raise error(
            f"{path} does not have the columns this program writes ({what}; expected {', '.join(columns)}); put "
            f"the file back as it was written, or start a new --out"
        )


def write_rows(path, rows, columns=None):
    """Replace a CSV log by `rows` (atomically), with a header even when there are none if `columns` is given."""

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            if rows or columns:
                writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    atomic_write(path, write)


def line_damage(line, header):
    """What is wrong with one line of a log (None if nothing): NUL bytes, a wrong field count, or a
    field that should be a number and is not."""
    if "\0" in line:
        return "NUL bytes"
    fields = fields_of(line)
    if fields is None:
        return "not CSV (a stray line-end character inside it)"
    if len(fields) != len(header):
        return f"{len(fields)} fields where the header has {len(header)}"
    for column, value in zip(header, fields):
        if column not in TEXT_COLUMNS and not is_number(value, whole=column in ("iteration", "chunk")):
            return f"{column} is {value[:20]!r}, not a number"
    return None


def fields_of(line):
    """The fields of one CSV line, or None where it is not CSV (a stray carriage return, say)."""
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None


def is_number(text, whole=False):
    """Whether a log field parses as a number: an int if `whole`, else a float or empty (train_loss of
    row 0 is empty)."""
    try:
        int(text) if whole else float(text or 0)
        return True
    except ValueError:
        return False


def read_log(path):
    """A CSV log as (rows, damage). rows: the dict rows before the first damaged line; damage: None, or
    (line number, what is wrong, whether the damage is only the file's tail: a kill or a full disk
    mid-write leaves a torn last row or NUL padding, which can be dropped, while garbage followed by
    good rows cannot be repaired by dropping)."""
    lines = Path(path).read_bytes().decode("utf-8", "replace").split("\n")
    torn = lines.pop() if lines else ""  # the text after the last line end: empty unless torn
    lines = [line.removesuffix("\r") for line in lines] + ([torn] if torn else [])
    header = (fields_of(lines[0]) or []) if lines and "\0" not in lines[0] else []
    rows, damage = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        what = ("no header" if header[:1] != ["iteration"] else None) if number == 1 else line_damage(line, header)
        if what is None and torn and number == len(lines):
            what = "a torn last row, without a line end"
        if what is not None and damage is None:
            damage = [number, what, True]
        elif what is None and damage is not None:
            damage[2] = False  # a whole row after the damage
        elif what is None and number > 1:
            rows.append(dict(zip(header, fields_of(line))))
    if damage and damage[0] == 1 and any(line.strip() for line in lines[1:]):
        damage[2] = False  # without a header no row can be read: nothing to drop, everything to check
    return rows, tuple(damage) if damage else None


def read_log_strictly(path, columns=()):
    """The rows of a log that must be whole (analyze.py reads them), with the `columns` it reads; damage is
    named in one line."""
    rows, damage = read_log(path)
    if damage:
        raise DataError(f"{path} line {damage[0]} is damaged ({damage[1]}); fix or remove that line")
    lost = [c for c in columns if c not in (header_of(path) or [])]
    if lost:
        raise DataError(f"{path} has no {', '.join(lost)} column; expected the columns this program writes there")
    return rows


def rows_digest(path, iteration):
    """A digest of a log's rows up to `iteration` (None where it is damaged: --resume's repair deals with
    that). Every checkpoint keeps the digests of its run's logs, so another run's log copied in is seen."""
    rows, damage = read_log(path) if Path(path).exists() else ([], None)
    if damage:
        return None
    kept = [row for row in rows if int(row["iteration"]) <= iteration]
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def repairable(path, error=CheckpointError):
    """A log's rows before a damaged tail, and the damage (None if none). Damage followed by good rows
    cannot be repaired by dropping: it is refused (`error`), naming the file and line."""
    rows, damage = read_log(path)
    if damage and not damage[2]:
        raise error(
            f"{path} line {damage[0]} is damaged ({damage[1]}) and whole rows follow it; fix or remove that "
            f"line, then --resume again"
        )
    return rows, damage


def note_repair(path, damage):
    if damage:
        print(f"repaired {path}: dropped its damaged tail from line {damage[0]} on ({damage[1]})")


def repair_logs(paths, iteration):
    """On --resume: keep the logs' rows up to `iteration` (a killed run may have logged past its last
    checkpoint; those iterations run again and log again). A damaged tail is dropped, and said so in
    one line; every log is checked before any is changed."""
    readings = {path: repairable(path) for path in paths if path.exists()}
    for path, (rows, damage) in readings.items():
        note_repair(path, damage)
        kept = [row for row in rows if int(row["iteration"]) <= iteration]
        if damage or len(kept) < len(rows):
            write_rows(path, kept)


def read_records(path):
    """A probe's records CSV as {column: list}: the regimes (and CKA, if recorded) as floats, the task-pair
    columns as strings.
    A damaged file is named, with its line."""
    rows = read_log_strictly(path)
    columns = [*REGIMES, *(k for k in CKA_COLUMNS if rows and k in rows[0])]
    records = {k: [float(r[k]) for r in rows] for k in columns}
    records.update({k: [r.get(k, "") for r in rows] for k in PAIR_COLUMNS})
    return records


def read_json(path):
    """A JSON file we wrote (test.json, probe*.json); a damaged one is named, with its line, in one line."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno} is damaged ({e.msg}); remove it or write it again") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is damaged (not UTF-8 text); remove it or write it again") from None


def write_json(path, content):
    atomic_write(path, lambda tmp: tmp.write_text(json_text(content)))
