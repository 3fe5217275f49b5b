"""The run folder: everything a training run keeps on disk and in memory besides the algorithm.

A run folder (maml.py --out) holds ckpt.pt (the latest checkpoint), best.pt, metrics.csv, lr_stats.csv
(Meta-SGD), test.json, the probe's records and summaries (probe*.csv, probe*.json) and run.lock. This
file knows: the run state (`RunState`), the checkpoint format (`checkpoint_of`, `load_checkpoint`,
`upgrade_checkpoint`, `restore`), what is logged when during a run (the files themselves are logs.py's),
and the Ctrl-C handler. How a run starts or resumes is run_start.py's.
"""

import contextlib
import math
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cli import (
    AnalysisError,
    CheckpointError,
    ConfigError,
    atomic_write,
)
from flags import CONFIG_ADDED, METHODS, method_of
from logs import (
    append_rows,
    read_json,
    read_log,
    read_log_strictly,
    read_records,
    repair_logs,
    rows_digest,
    write_json,
)
from stats import percent, rate_statistics

PROGRAM = "negative-lr-maml"  # written into every checkpoint, to recognise ours
CHECKPOINT_FORMAT = 2  # 2: inner_lrs is always a dict of tensors (1 stored MAML's alpha as a float)


@dataclass
class RunState:
    """One model's run as it trains. The training step (maml.train_iteration) changes its tensors only
    in place (`in_place_tensors`), so that a CUDA graph of the step can be replayed."""

    config: dict  # the run's settings: its flags, resolved (the checkpoint's "config")
    params: dict  # theta, {name: tensor}
    inner_lrs: dict  # alpha, {name: tensor}; learned (requiring grad) for Meta-SGD only
    optimizer: torch.optim.Optimizer  # Adam over theta and the learned alpha
    episode_rng: torch.Generator  # draws the training meta-batches, on the run's device
    norm: dict  # per-channel mean and std of the training images, on the run's device
    classes: list  # the training split's class names
    splits: dict  # train and val on the run's device, test on the host (used once, at the end)
    rank: int = 0  # which process of a torchrun job this is; rank 0 writes every file
    world: int = 1  # how many processes the job has
    resumed: bool = False  # whether the run continues a checkpoint
    label: str = ""  # "seed S, " when seeds are stacked (--seeds)
    data_identity: dict = None  # what identifies the data (data.identity): a resumed run must find the same
    run_id: str = ""  # made at the run's start: in its checkpoints, test.json and run.json (`check_run_folder`)
    iteration: int = 0  # meta-iterations done
    since_eval: int = 0  # of them, since the last validation
    elapsed: float = 0.0  # seconds of training, across --resume
    best: tuple = (-1.0, -1)  # the best validation accuracy and its iteration (-1: none yet)
    tic: float = field(default_factory=time.time)
    # Written by the training step on the device, which cannot read the host's numbers: the iteration
    # count, the sums behind the training means, the last loss and accuracy, the first non-finite
    # iteration (-1: none). The host reads them every --log-every iterations and at validation.
    device_iteration: torch.Tensor = field(init=False)
    loss_sum: torch.Tensor = field(init=False)
    acc_sum: torch.Tensor = field(init=False)
    last_loss: torch.Tensor = field(init=False)
    last_acc: torch.Tensor = field(init=False)
    bad_iteration: torch.Tensor = field(init=False)

    def __post_init__(self):
        device = self.device
        self.device_iteration = torch.zeros((), device=device, dtype=torch.long)
        self.loss_sum, self.acc_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        self.last_loss, self.last_acc = torch.zeros((), device=device, dtype=self.dtype), torch.zeros((), device=device)
        self.bad_iteration = torch.full((), -1, device=device, dtype=torch.long)

    @property
    def out(self):
        return Path(self.config["out"])

    @property
    def device(self):
        return next(iter(self.params.values())).device

    @property
    def dtype(self):
        return getattr(torch, self.config["dtype"])

    def tensors_off_device(self):
        """The names of the tensors the training step reads that are not on the run's device (none,
        unless a state was built by hand: `new_runs` puts every one there)."""
        named = {f"params[{n}]": t for n, t in self.params.items()}
        named |= {f"inner_lrs[{n}]": t for n, t in self.inner_lrs.items()}
        named |= {f"norm[{k}]": t for k, t in self.norm.items()}
        named |= {
            f"splits[{s}][{k}]": t for s in ("train", "val") for k, t in self.splits[s].items() if torch.is_tensor(t)
        }
        named |= {f"in-place tensor {i}": t for i, t in enumerate(self.in_place_tensors())}
        return [name for name, t in named.items() if t.device != self.device]

    def in_place_tensors(self):
        """The tensors besides Adam's state that the training step changes in place."""
        return [
            *self.params.values(),
            *self.inner_lrs.values(),
            self.device_iteration,
            self.loss_sum,
            self.acc_sum,
            self.last_loss,
            self.last_acc,
            self.bad_iteration,
        ]


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def checkpoint_of(run):
    return {
        "program": PROGRAM,
        "format": CHECKPOINT_FORMAT,
        "config": run.config,
        "iteration": run.iteration,
        "params": {n: p.detach().cpu() for n, p in run.params.items()},
        "inner_lrs": {n: r.detach().cpu() for n, r in run.inner_lrs.items()},
        "optimizer": run.optimizer.state_dict(),
        "generator": run.episode_rng.get_state(),
        "generator_device": run.episode_rng.device.type,
        "norm": {k: v.cpu() for k, v in run.norm.items()},
        "elapsed": run.elapsed,
        "best_val": list(run.best),
        "classes": run.classes,
        # the training means' running sums since the last evaluation, so the next metrics.csv row of a
        # resumed run is the uninterrupted run's
        "loss_sum": run.loss_sum.detach().cpu().clone(),
        "acc_sum": run.acc_sum.detach().cpu().clone(),
        "since_eval": run.since_eval,
        "data_identity": run.data_identity,
        "run_id": run.run_id,
        "logs_digest": {log.name: rows_digest(log, run.iteration) for log in run_logs(run.out)},  # its logs
    }


def save_checkpoints(runs, keep_previous=False):
    """Every run's ckpt.pt (rank 0 writes). Stacked seeds (`keep_previous`) keep their previous
    checkpoint beside it (ckpt.prev.pt) until every seed has saved, so that a kill between two saves
    leaves checkpoints that one iteration reaches (`level_seed_checkpoints`)."""
    for run in runs:
        if keep_previous and run.rank == 0 and (run.out / "ckpt.pt").exists():
            (run.out / "ckpt.prev.pt").unlink(missing_ok=True)
            try:
                os.link(run.out / "ckpt.pt", run.out / "ckpt.prev.pt")  # a second name for the same bytes
            except OSError:  # a file system without hard links: a copy, written whole or not at all
                atomic_write(run.out / "ckpt.prev.pt", lambda tmp, src=run.out / "ckpt.pt": shutil.copyfile(src, tmp))
        save(run, "ckpt.pt")
    for run in runs if keep_previous and runs[0].rank == 0 else []:
        (run.out / "ckpt.prev.pt").unlink(missing_ok=True)


def save(run, name):
    """Write the run's checkpoint to `name` in its folder (rank 0 only), atomically."""
    if run.rank != 0:
        return
    clock(run)
    write_checkpoint(checkpoint_of(run), run.out / name)


def write_checkpoint(ckpt, path):
    """torch.save, atomically."""

    def write(tmp):
        with open(tmp, "wb") as f:  # through a Python file, so a failed write is an OSError that says why
            torch.save(ckpt, f)

    atomic_write(path, write)


def load_checkpoint(path, map_location="cpu"):
    """Load and sanity-check a checkpoint written by this program, upgraded to the current format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint file (expected e.g. runs/<run>/best.pt)")
    try:
        with warnings.catch_warnings():  # a foreign pickle makes torch warn before it fails
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint (empty, truncated or not a torch file): "
            f"{type(e).__name__}{': ' + detail if detail else ''}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("program") != PROGRAM:
        raise CheckpointError(f"{path} is a torch file but not a checkpoint of this project's maml.py")
    ckpt = upgrade_checkpoint(ckpt)
    adapts = ckpt["config"].get("inner_params")
    if adapts not in {inner_params for _, inner_params, _ in METHODS.values()}:
        raise CheckpointError(
            f"{path} says its inner loop adapted {adapts!r}, which is none of this project's methods' "
            f"adapting sets ({', '.join(dict.fromkeys(a for _, a, _ in METHODS.values()))})"
        )
    return ckpt


def upgrade_checkpoint(ckpt):
    """The one place older checkpoints are read as the current format: format 1 stored MAML's alpha as a
    float (now the dict of 0-d tensors that maml.init_inner_lrs gives; every format's rates take their
    parameter's dtype, in the parameters' order; only adapting parameters have one); a config from before
    a setting existed gets that setting's value of the time (flags.SETTINGS); a checkpoint from before the
    running sums were kept starts them afresh, and one from before GPU episode generators drew its episodes
    on the CPU."""
    rates, params = ckpt["inner_lrs"], ckpt["params"]
    if not isinstance(rates, dict):
        rates = {name: torch.tensor(float(rates), dtype=p.dtype) for name, p in params.items()}
    ckpt["inner_lrs"] = {name: rates[name].to(p.device, p.dtype) for name, p in params.items() if name in rates}
    for key, value in CONFIG_ADDED.items():
        ckpt["config"].setdefault(key, value)
    for key, value in {"generator_device": "cpu", "since_eval": 0}.items():
        ckpt.setdefault(key, value)
    for key in ("loss_sum", "acc_sum"):
        ckpt.setdefault(key, torch.zeros(()))
    return ckpt


def restore(run, ckpt):
    """Put back into a new run state everything its checkpoint holds."""
    if ckpt["generator_device"] != run.device.type:
        raise ConfigError(
            f"this run drew its episodes from a {ckpt['generator_device']} random generator; resume it with "
            f"--device {ckpt['generator_device']} (or start a new run)"
        )
    with torch.no_grad():
        for name, p in run.params.items():
            p.copy_(ckpt["params"][name])
        for name, r in run.inner_lrs.items():
            r.copy_(ckpt["inner_lrs"][name])
    optimizer_state = ckpt["optimizer"]
    for group in optimizer_state["param_groups"]:  # the saved setting would win over this run's
        group["capturable"] = run.optimizer.defaults["capturable"]
    run.optimizer.load_state_dict(optimizer_state)
    run.episode_rng.set_state(ckpt["generator"])
    run.iteration, run.elapsed, run.best = ckpt["iteration"], ckpt["elapsed"], tuple(ckpt["best_val"])
    run.device_iteration.fill_(run.iteration)
    # best.pt is saved at a validation before that row's sums start again: a copy of it resumed as ckpt.pt
    # continues from the state a checkpoint of that iteration holds (its row is logged, the sums are empty)
    logged = ckpt["best_val"][1] == ckpt["iteration"]
    run.loss_sum.copy_(ckpt["loss_sum"] * (not logged))
    run.acc_sum.copy_(ckpt["acc_sum"] * (not logged))
    run.since_eval = 0 if logged else ckpt["since_eval"]


# ----------------------------------------------------------------------------------------------
# A finished run folder, read back (analyze.py)
# ----------------------------------------------------------------------------------------------


def probed_checkpoint(folder, probes):
    """The checkpoint Table 1 reads, and why: the one the run's probe used (probe.csv first, as its
    settings name it), else best.pt, else ckpt.pt."""
    for stem in sorted(probes, key=lambda s: s != "probe"):
        settings = probes[stem]["settings"]
        given = settings.get("checkpoint")
        name = settings.get("checkpoint_file") or (Path(given).name if given else None)
        for candidate in ([folder / name] if name else []) + ([Path(given)] if given else []):
            if candidate.is_file():
                return candidate, f"the checkpoint {stem}.csv probed", settings.get("checkpoint_iteration")
    for name, why in (("best.pt", "no probe names a checkpoint"), ("ckpt.pt", "no probe, no best.pt")):
        if (folder / name).is_file():
            return folder / name, why, None
    return None, None, None


def table1_source(folder, probes):
    """The learned rates of the checkpoint `probed_checkpoint` picks, with its name, iteration and why."""
    path, why, probed_iteration = probed_checkpoint(folder, probes)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise AnalysisError(str(e)) from None
    if probed_iteration is not None and probed_iteration != ckpt["iteration"]:
        why += f"; the probe used iteration {probed_iteration}, the file now holds {ckpt['iteration']}"
    rates = {n: r.double().numpy() for n, r in ckpt["inner_lrs"].items()}
    return {"rates": rates, "checkpoint": path.name, "path": str(path), "iteration": ckpt["iteration"], "why": why}


READ_METRICS = ("iteration", "train_acc", "val_acc")  # what the report reads of metrics.csv ...
READ_LR_STATS = ("iteration", "name", "kind", "mean", "frac_negative")  # ... and of lr_stats.csv


def load_run(path):
    """A run's files as plain data: {'folder', 'method', 'config', 'metrics', 'lr_stats', 'test',
    'probes': {stem: {'records', 'settings'}}, 'table1': the learned rates of the probed checkpoint}."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        candidates = [folder / "ckpt.pt", folder / "best.pt"]
        ckpt_path = next((c for c in candidates if c.exists()), None)
        if ckpt_path is None:
            raise AnalysisError(
                f"{folder} holds no checkpoint (ckpt.pt or best.pt); expected a run folder written by maml.py"
            )
    elif path.exists():
        ckpt_path = path
    else:
        raise AnalysisError(f"{path} does not exist; expected a run folder or a checkpoint written by maml.py")
    try:
        ckpt = load_checkpoint(ckpt_path)
    except CheckpointError as e:
        raise AnalysisError(str(e)) from None
    config, has = ckpt["config"], lambda name: (folder / name).exists()
    run = {
        "folder": folder,
        "checkpoint": ckpt_path,
        "config": config,
        "iteration": ckpt["iteration"],
        "data_identity": ckpt.get("data_identity"),  # what the data was, wherever its folder is now
        "imported": ckpt.get("imported"),  # import_model.py's record of a model trained elsewhere, else None
        "method": method_of(config),
        "metrics": read_log_strictly(folder / "metrics.csv", READ_METRICS) if has("metrics.csv") else [],
        "lr_stats": read_log_strictly(folder / "lr_stats.csv", READ_LR_STATS) if has("lr_stats.csv") else [],
        "test": read_json(folder / "test.json") if (folder / "test.json").exists() else None,
        "probes": {},
    }
    best = ckpt if ckpt_path.name == "best.pt" else load_checkpoint(folder / "best.pt") if has("best.pt") else None
    others = files_of_other_runs(folder, ckpt, best)
    if others:
        raise AnalysisError(f"{folder / others[0][0]} is {others[0][1]}, not the run of {ckpt_path} (run "
                            f"{ckpt.get('run_id')}); a run folder holds one run's files: put it back in its own run's "
                            "folder")  # fmt: skip
    for records in sorted(folder.glob("probe*.csv")):
        summary = records.with_suffix(".json")
        settings = read_json(summary).get("settings", {}) if summary.exists() else {}
        check_probe_is_of(settings, ckpt.get("run_id"), summary)
        probe = {"records": read_records(records), "settings": settings}
        if probe["records"]["pre_A"]:  # a probe stopped before its first chunk has nothing to report
            run["probes"][records.stem] = probe
    run["table1"] = table1_source(folder, run["probes"]) if config["learn_lr"] else None
    return run


# ----------------------------------------------------------------------------------------------
# During the run
# ----------------------------------------------------------------------------------------------


def files_of_other_runs(folder, ckpt, best=None):
    """[(name, whose it is)] for the files of `folder` that are not the run of `ckpt` (its ckpt.pt): run.json,
    test.json, best.pt (`best`, loaded) and ckpt.prev.pt by their run ids; metrics.csv and lr_stats.csv by
    their rows at the run's best iteration, which must be the ones that run logged. A checkpoint from before
    run ids gets one when resumed: until its next save, only its logs can be checked."""
    run_id = ckpt.get("run_id")
    ids = {
        name: read_json(folder / name).get("run_id") for name in ("run.json", "test.json") if (folder / name).exists()
    }
    prev = load_checkpoint(folder / "ckpt.prev.pt") if (folder / "ckpt.prev.pt").exists() else None
    ids |= {name: c.get("run_id") for name, c in (("best.pt", best), ("ckpt.prev.pt", prev)) if c is not None}
    others = [(name, f"run {other}") for name, other in ids.items() if None not in (other, run_id) and other != run_id]
    if run_id is not None and "run.json" not in ids and (folder / "metrics.csv").exists():
        others.append(("metrics.csv", "a run that run.json does not name (it is missing)"))
    return others + logs_of_other_runs(folder, ckpt, best)


def run_logs(folder):
    return [Path(folder) / "metrics.csv", Path(folder) / "lr_stats.csv"]


def logs_of_other_runs(folder, ckpt, best):
    """metrics.csv and lr_stats.csv where their rows up to the checkpoint are not the ones it logged (their
    digest), or (checkpoints from before digests) where their rows at the run's best iteration are not: the
    best validation accuracy, and best.pt's rates (to a GPU's last bits)."""
    best_acc, best_at = ckpt.get("best_val") or (None, None)
    for log in run_logs(folder):
        kept, now = (ckpt.get("logs_digest") or {}).get(log.name), rows_digest(log, ckpt["iteration"])
        if None not in (kept, now) and kept != now:
            return [(log.name, f"another run's log (its rows up to iteration {ckpt['iteration']} are not the ones "
                               f"this checkpoint was saved with)")]  # fmt: skip
    if not best_at or best_at <= 0:
        return []
    others, metrics = [], rows_at(folder / "metrics.csv", best_at)
    if metrics is not None and [float(r.get("val_acc", "nan")) for r in metrics] != [best_acc]:
        others.append(
            ("metrics.csv", f"another run's log (no row of validation accuracy {best_acc} at iteration {best_at})")
        )
    rates = rows_at(folder / "lr_stats.csv", best_at) if best is not None and ckpt["config"]["learn_lr"] else None
    logged = {r["name"]: float(r["mean"]) for r in rates or []}
    kept = {r["name"]: r["mean"] for r in rate_statistics(best["inner_lrs"])} if rates is not None else {}
    if logged.keys() != kept.keys() or not all(
        math.isclose(logged[k], kept[k], rel_tol=1e-6, abs_tol=1e-12) for k in kept
    ):
        others.append(("lr_stats.csv", f"another run's log (its rates at iteration {best_at} are not best.pt's)"))
    return others


def rows_at(path, iteration):
    """A log's rows at `iteration`, or None where the log cannot say (no file, or damage before that row, which
    --resume and analyze.py deal with)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    rows, damage = read_log(path)
    found = [row for row in rows if int(row["iteration"]) == iteration]
    return None if damage and not found else found


def check_probe_is_of(settings, run_id, summary):
    """A probe in a run folder must be of that run's model (probe.py CKPT --out elsewhere can put it anywhere)."""
    probed = settings.get("checkpoint_run_id")
    if None not in (probed, run_id) and probed != run_id:
        raise AnalysisError(
            f"{summary} is a probe of {settings.get('checkpoint')} (run {probed}), not of this folder's run "
            f"({run_id}); a probe is read as its folder's: move it to its own run's folder, or probe this run's best.pt"
        )


def add_to_sums(run, loss, accuracy):
    """The running sums for the training means, and the first non-finite iteration (read every
    --log-every), updated in place on the device, by the training step."""
    run.device_iteration.add_(1)
    run.loss_sum.add_(loss)
    run.acc_sum.add_(accuracy)
    run.last_loss.copy_(loss)
    run.last_acc.copy_(accuracy)
    first_bad = (run.bad_iteration < 0) & ~torch.isfinite(loss)
    run.bad_iteration.copy_(torch.where(first_bad, run.device_iteration, run.bad_iteration))


def clock(run):
    """Add the seconds since the last call to the run's elapsed time (kept across --resume)."""
    now = time.time()
    run.elapsed += now - run.tic
    run.tic = now


def due(iteration, config, stopping):
    """What is due after this iteration: (the divergence check and progress bar, validation, the
    checkpoint)."""
    at_eval = iteration % config["eval_every"] == 0 or iteration == config["iterations"]
    at_save = at_eval or iteration % config["save_every"] == 0 or stopping
    return iteration % config["log_every"] == 0 or at_save, at_eval, at_save


def check_finite(runs):
    """Stop diverged runs. The first non-finite loss is remembered on the device, so the hot loop never
    waits for it; this reads it (a host sync) only every --log-every iterations and before saves."""
    for run in runs:
        bad = int(run.bad_iteration)
        finite = all(bool(torch.isfinite(t).all()) for t in [*run.params.values(), *run.inner_lrs.values()])
        if bad >= 0 or not finite:
            raise FloatingPointError(
                f"training diverged: the meta-loss or parameters became non-finite at iteration "
                f"{bad if bad >= 0 else run.iteration}; the last good checkpoint {run.out / 'ckpt.pt'} was left "
                f"untouched. Try a smaller --inner-lr or --meta-lr (now {run.config['inner_lr']} and "
                f"{run.config['meta_lr']})"
            )


def show_progress(bar, run):
    best = f"{run.best[0]:.3f}" if run.best[1] >= 0 else "-"
    bar.set_postfix(loss=f"{run.last_loss.item():.3f}", acc=f"{run.last_acc.item():.3f}", best_val=best)


def begin_logs(run):
    """Rank 0, before the first iteration: a resumed run's logs cut back to its checkpoint (a torn or
    garbage tail dropped); a new run's logs of an earlier start that never wrote a checkpoint removed."""
    if run.rank != 0:
        return
    run.out.mkdir(parents=True, exist_ok=True)
    logs = run_logs(run.out)
    write_json(run.out / "run.json", {"run_id": run.run_id})  # the folder's logs are this run's
    if run.resumed:  # their headers and rows were checked against the checkpoint (run_start.check_run_folder)
        repair_logs(logs, run.iteration)
    else:
        for log in logs:
            log.unlink(missing_ok=True)


def log_validation(run, accuracy, bar=None):
    """A validation's (mean, 95% CI) logged: a metrics.csv row with the training means since the last one
    (none at iteration 0), lr_stats.csv rows for Meta-SGD, best.pt when it is the best so far, a line
    under the progress bar; then the running sums start again."""
    (val_acc, val_ci), periodic = accuracy, run.since_eval > 0
    means = ((run.loss_sum / run.since_eval).item(), (run.acc_sum / run.since_eval).item()) if periodic else ("", "")
    clock(run)
    new_best = run.iteration > 0 and val_acc > run.best[0]
    run.best = (val_acc, run.iteration) if new_best else run.best
    if run.rank == 0:
        row = {
            "iteration": run.iteration,
            "train_loss": means[0],
            "train_acc": means[1],
            "val_acc": val_acc,
            "val_ci95": val_ci,
            "elapsed_s": round(run.elapsed, 3) if periodic else 0.0,
        }
        append_rows(run.out / "metrics.csv", [row])
        if run.config["learn_lr"]:
            rates = rate_statistics(run.inner_lrs)
            append_rows(run.out / "lr_stats.csv", [{"iteration": run.iteration, **r} for r in rates])
        if new_best:
            save(run, "best.pt")
    if periodic and bar is not None and run.rank == 0:
        bar.write(
            f"{run.label}iteration {run.iteration}: val accuracy {percent(val_acc, val_ci)} "
            f"(best {100 * run.best[0]:.2f}% at {run.best[1]})"
        )
    if periodic:
        run.loss_sum.zero_()
        run.acc_sum.zero_()
        run.since_eval = 0


def write_test_result(run, best, accuracy):
    """test.json: the test accuracy (mean, 95% CI) of best.pt, whose checkpoint is `best`."""
    if run.rank != 0:
        return
    (test_acc, test_ci), tasks = accuracy, run.config["test_tasks"]
    result = {
        "test_acc": test_acc,
        "test_ci95": test_ci,
        "tasks": tasks,
        "checkpoint": "best.pt",
        "iteration": best["iteration"],
        "val_acc": best["best_val"][0],
        "run_id": run.run_id,
    }
    write_json(run.out / "test.json", result)
    print(
        f"test accuracy ({tasks} tasks, best.pt from iteration {best['iteration']}): "
        f"{percent(test_acc, test_ci)}  ->  {run.out}"
    )


@contextlib.contextmanager
def stop_on_signal():
    """Ctrl-C or SIGTERM asks the loop to stop after the current iteration and save; a second one
    stops at once."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    old_handlers = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
