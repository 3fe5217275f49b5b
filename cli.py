"""Files and the command line, for every script: the errors a script ends with, the one way of
writing a file, the rules for output folders (one writer each, results never silently written over),
the argument parser, and `run_cli`, which turns a known error into one line on stderr.

Every bad input ends as one of the error types below, raised where it is found with a message that is
one sentence saying what was expected; `run_cli` prints it and exits with code 2 (1 for a divergence or
a lost torchrun process), with no traceback unless --debug.
"""

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch


class DataError(Exception):
    """Bad input data: a missing or malformed dataset, log or summary file."""


class WriteError(Exception):
    """A file could not be written (a full disk, a read-only place): the message names the file."""


class ConfigError(Exception):
    """A flag value that makes no sense (zero ways, a non-finite rate, a missing GPU)."""


class CheckpointError(Exception):
    """A file that is not one of our checkpoints, or one that does not fit the run."""


class AnalysisError(Exception):
    """Missing, foreign or mismatched inputs of a report."""


class DistributedError(Exception):
    """A process of a torchrun job stopped, or the processes disagree."""


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def printable(name):
    """A file or folder name as text that can be printed and saved: bytes that are not UTF-8 (which
    Python keeps as surrogates) become backslash escapes, e.g. caf\\xe9."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_failure(path, error):
    """The one-line reason a file could not be written, for a WriteError. torch.save reports a failed
    write as a RuntimeError about stream positions, with the OSError that says why as its context."""
    cause = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    reason = (cause.strerror or str(cause)) if cause is not None else f"the write failed ({type(error).__name__})"
    return f"cannot write {printable(str(path))}: {reason}"


def atomic_write(path, write):
    """The project's one way of writing a file: `write(tmp)` writes a temporary file beside `path`,
    which is flushed to disk and renamed over `path`, so a kill at any moment leaves either the old
    or the new file whole, never a torn one. A write that fails (a full disk, say) removes the
    temporary file and raises WriteError naming `path`; the old file is untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, Exception):
            raise WriteError(write_failure(path, e)) from e
        raise


def remove_stale_temporaries(folder):
    """Remove the temporary files (`<name>.tmp<pid>`, see `atomic_write`) that a process killed in the
    middle of a write left in `folder`: those whose writer is gone. A temporary of a live process (another
    writer of a shared cache, say) is left alone. Returns the names removed."""
    removed = []
    for tmp in Path(folder).glob("*.tmp*") if Path(folder).is_dir() else []:
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp.name)
    return removed


def process_alive(pid):
    """Whether a process with this PID exists (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process, or a number no process can have
    return True


def note_removed(removed, folder, what="a killed run"):
    if removed:
        shown = ", ".join(printable(name) for name in removed)
        print(f"removed {len(removed)} temporary file(s) that {what} left in {printable(str(folder))}: {shown}")


def json_text(content):
    """JSON as every file of ours holds it: a value that is not a finite number (NaN, an infinity) is written
    as null, so strict readers (jq, JavaScript) parse every file; the markdown beside it says why a value is
    missing."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(content), indent=2, allow_nan=False) + "\n"


def folder_name(text):
    """The argparse type of every output-folder flag: an empty name (`--out ''`) would mean the current
    folder, which nobody means."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a folder name")
    return text


KERNEL_FOLDERS = (Path("/proc"), Path("/sys"))  # hold the kernel's view of the system, never files of ours


def check_out_folder(out, flag="--out"):
    """Refuse, in one line and before any work, an output folder that cannot hold our files: a file,
    a place under /proc or /sys, or a folder that cannot be created or written. Creates it; returns
    whether it was created (so that a run that fails at once can remove it again)."""
    out = Path(out)
    resolved = out.resolve()
    for kernel in KERNEL_FOLDERS:
        if resolved == kernel or kernel in resolved.parents:
            raise ConfigError(f"{flag} {out} lies under {kernel}, which holds kernel files; choose another folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file; expected a folder (it is created if missing)")
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {out} cannot be created: {e.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out} is not writable by this user")
    return not existed


def refuse_to_overwrite(path, holds_results, resume, what):
    """The one rule for outputs, in maml.py and probe.py: results already on disk are continued with
    --resume, never silently written over."""
    if holds_results and not resume:
        raise ConfigError(f"{path} already holds {what}; pass --resume to continue it, or choose another --out")


@contextlib.contextmanager
def lock_outputs(folder, name, what, flag="--out"):
    """One writer per output: an exclusive flock on the lock file `folder/name`, held while the block
    runs. A second writer is refused in one line that names the holder's PID (written into the file).
    The kernel releases the lock when its process dies, so a SIGKILL leaves no stale lock. A folder
    created here and left holding only the lock file (a run refused at once) is removed again."""
    folder = Path(folder)
    created = check_out_folder(folder, flag)
    lock_path = folder / name
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"{flag} {folder} cannot be written: {e.strerror}") from None

    def refuse(holder):
        raise ConfigError(
            f"{folder} is in use: another process (PID {holder}) is writing {what} there; wait for it to end "
            f"or choose another {flag}"
        )

    try:
        hold_lock(fd, lock_path, refuse)
        yield
    finally:
        if created and [p.name for p in folder.iterdir()] == [name]:
            lock_path.unlink()
            folder.rmdir()
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def hold_lock(fd, lock_path, busy):
    """An exclusive flock on the open lock file `fd`, with this process's PID written into it. When another
    process holds it, `busy(its PID)` is called first: it raises to refuse, or returns to wait for it."""
    import fcntl  # POSIX only: imported here, so that reading a run folder works everywhere

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        busy(os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown")
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        raise WriteError(write_failure(lock_path, e)) from None


def refuse_usage(message):
    """argparse's `error` for every script: one line (raised, for run_cli to print), not the usage text."""
    raise ConfigError(f"{message}; see --help")


def argument_parser(description):
    """The argument parser of every script: --help shows the defaults, and a bad flag (a typo,
    --ways five) ends in one line through run_cli instead of argparse's usage text."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.error = refuse_usage
    return parser


def resolve_device(name):
    """--device as a torch.device: 'auto' is cuda when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name (try auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for, but this machine has no CUDA GPU")
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta, ...: the code is written and tested for these two
        raise ConfigError(f"--device {name}: this project runs on cpu or cuda (a CUDA GPU), not on {device.type}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0 and up")
    return device


KNOWN_ERRORS = (DataError, WriteError, ConfigError, CheckpointError, AnalysisError, FloatingPointError)


def run_cli(main_fn, argv=None):
    """Run a script's main: a known error ends as one line on stderr with exit code 2 (1 for a
    divergence or a lost torchrun process), and no traceback unless --debug."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8, or PYTHONIOENCODING=ascii: escaped, not fatal
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        return main_fn(argv)
    except (*KNOWN_ERRORS, DistributedError, OSError) as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1 if isinstance(e, (FloatingPointError, DistributedError)) else 2)
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError
        if debug or not out_of_memory(e):
            raise
        print(f"error: {out_of_memory(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def out_of_memory(error):
    """The one line for an allocation that failed (None for any other error): what was asked for, and the
    flags that set the sizes."""
    text = str(error)
    if not isinstance(error, MemoryError | torch.OutOfMemoryError) and "allocate" not in text:
        return None
    asked = text.split("tried to allocate", 1)[1].split("(")[0].strip(" .") if "tried to allocate" in text else ""
    return (
        f"out of memory{f' (it tried to allocate {asked})' if asked else ''}: choose smaller sizes "
        "(--meta-batch, --image-size, --hidden or --synthetic-per-class; the probe's --batch)"
    )


def one_line(error):
    """What run_cli prints after 'error: '."""
    if isinstance(error, DistributedError):
        return f"rank {os.environ.get('RANK', 0)} of {os.environ.get('WORLD_SIZE', 1)}: {error}"
    if isinstance(error, OSError):  # a file that vanished or could not be read or written where no check expected it
        return f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}"
    return str(error)
