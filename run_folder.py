"""The run folder: everything a training run keeps on disk and in memory besides the algorithm.

A run folder (maml.py --out) holds ckpt.pt (the latest checkpoint), best.pt, metrics.csv, lr_stats.csv
(Meta-SGD), test.json, the probe's records and summaries (probe*.csv, probe*.json) and run.lock. This
file knows: the run state (`RunState`), how a run starts or resumes (`opened_runs`, `new_runs`), the
checkpoint format (`checkpoint_of`, `load_checkpoint`, `upgrade_checkpoint`), what is logged when
(the files themselves are logs.py's), the lock that keeps a second writer out, and the Ctrl-C handler.
"""

import argparse
import contextlib
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import data
import flags
from cli import (
    CheckpointError,
    ConfigError,
    WriteError,
    atomic_write,
    lock_outputs,
    refuse_to_overwrite,
    remove_stale_temporaries,
)
from logs import append_rows, repair_logs, write_json
from stats import rate_statistics

PROGRAM = "negative-lr-maml"  # written into every checkpoint, to recognise ours
CHECKPOINT_FORMAT = 2  # 2: inner_lrs is always a dict of tensors (1 stored MAML's alpha as a float)
RUN_FILES = ("ckpt.pt", "best.pt", "metrics.csv", "lr_stats.csv", "test.json")  # what training writes
# Flags that may change when a run is resumed; every other flag must match the checkpoint.
RESUME_MAY_CHANGE = {"iterations", "device", "eval_every", "save_every", "log_every", "no_progress",
                     "debug", "resume", "out", "cache_dir", "data", "task_batching", "cuda_graph"}  # fmt: skip
# Settings that later versions added to the config, with the value that runs from before them had.
CONFIG_ADDED = {"dtype": "float32", "channels": 3, "conv_bias": True, "clip_grad": None, "rotations": None,
                "omniglot_split": None, "precision": "auto"}  # fmt: skip


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
# Starting a run: its folders, locked; its config, checked against the checkpoint it resumes
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def opened_runs(args, writer):
    """Each run that `args` asks for (one, or one per --seeds seed) as (config, the checkpoint it
    resumes or None), its folder locked by the writing process while the block runs and cleared of the
    temporary files a killed run left. A write that fails in the block (a full disk) ends the run in
    one line that says which checkpoints are left."""
    with contextlib.ExitStack() as locks:
        starts = []
        for run_args in per_seed_args(args):
            out = Path(run_args.out)
            if writer:
                locks.enter_context(lock_outputs(out, "run.lock", "a training run"))
                removed = remove_stale_temporaries(out, RUN_FILES)
                if removed:
                    print(
                        f"removed {len(removed)} temporary file(s) that a killed run left in {out}: "
                        f"{', '.join(removed)}"
                    )
            if args.seeds is not None and args.resume and not (out / "ckpt.pt").exists():
                run_args.resume = False  # a start that failed before this seed's first save: it begins afresh
            starts.append(start_run(run_args, out))
        check_seeds_level(starts)
        try:
            yield starts
        except WriteError as e:
            raise WriteError(f"{e}; {checkpoint_left([c['out'] for c, _ in starts], args)}") from e


def default_out(config):
    method = "metasgd" if config["learn_lr"] else "maml"
    return str(Path("runs") / f"{method}-{config['ways']}w{config['shots']}s-seed{config['seed']}")


def per_seed_args(args):
    """The flags of each run: `args` itself, or with --seeds one copy per seed, with that --seed and its
    own folder (the default folder of that seed, or --out/seed<SEED>)."""
    if args.seeds is None:
        return [argparse.Namespace(**{**vars(args), "out": args.out or default_out(vars(args))})]
    if len(set(args.seeds)) < len(args.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))} names a seed twice; give each seed once")
    runs = []
    for seed in args.seeds:
        seed_flags = {**vars(args), "seed": seed, "seeds": None}
        seed_flags["out"] = str(Path(args.out) / f"seed{seed}") if args.out else default_out(seed_flags)
        runs.append(argparse.Namespace(**seed_flags))
    return runs


def start_run(args, out):
    """The run's config and, on --resume, the checkpoint it continues from. A resumed run keeps the
    checkpoint's config; only the flags in RESUME_MAY_CHANGE may differ from it, and --iterations
    may not fall below the iteration it has reached."""
    config = dict(vars(args))
    ckpt_path = out / "ckpt.pt"
    refuse_to_overwrite(out, any(out.glob("*.pt")), args.resume, "a run")
    if not args.resume:
        return {**config, **data.dataset_defaults(args.data, args.image_size, args.rotations), "out": str(out)}, None
    if not ckpt_path.exists():
        raise CheckpointError(f"--resume: there is no checkpoint {ckpt_path} to resume from")
    resumed = load_checkpoint(ckpt_path)
    saved, defaults = resumed["config"], vars(flags.build_parser().parse_args([]))
    for key, value in config.items():
        if key not in RESUME_MAY_CHANGE and value != defaults.get(key) and value != saved.get(key):
            raise CheckpointError(
                f"--{key.replace('_', '-')} {value} disagrees with the checkpoint's "
                f"{saved.get(key)}; drop the flag to resume, or start a new --out"
            )
    changed = {k: config[k] for k in RESUME_MAY_CHANGE if k in config and config[k] != defaults.get(k)}
    merged = {**defaults, **saved, **changed, "out": str(out)}  # defaults: flags newer than the run
    if merged["iterations"] < resumed["iteration"]:
        raise ConfigError(
            f"--iterations {merged['iterations']} is below iteration {resumed['iteration']}, which {ckpt_path} "
            f"has reached; give at least {resumed['iteration']}"
        )
    return merged, resumed


def check_seeds_level(starts):
    """Resumed seeds must continue from one iteration towards one total (a kill or a failed write
    between two seeds' saves can leave them apart); say how to bring a lagging seed level."""
    reached = {c["out"]: (r["iteration"] if r else 0) for c, r in starts}
    if len(set(reached.values())) > 1:
        top = max(reached.values())
        config, resumed = next((c, r) for c, r in starts if reached[c["out"]] < top)
        alone = (
            f"python maml.py --resume --out {config['out']} --iterations {top}"
            if resumed
            else f"python maml.py --seed {config['seed']} --out {config['out']} --iterations {top} and this run's "
            f"other flags"
        )
        raise ConfigError(
            "the seeds' checkpoints are at different iterations ("
            + ", ".join(f"{Path(out).name}: {i}" for out, i in reached.items())
            + f"); bring each lagging one level alone ({alone}), then resume them together with --iterations"
        )
    totals = {c["iterations"] for c, _ in starts}
    if len(totals) > 1:
        raise ConfigError(
            f"the seeds' runs aim at different totals ({', '.join(map(str, sorted(totals)))} "
            f"iterations); give --iterations to set one for all"
        )


def resume_command(args, outs):
    """The command that continues this run (all its seeds)."""
    if args.seeds is None:
        return f"python maml.py --resume --out {outs[0]}"
    seeds = f"--seeds {' '.join(map(str, args.seeds))}"
    if args.out:
        return f"python maml.py --resume {seeds} --out {args.out}"
    method = " --learn-lr" if args.learn_lr else ""  # the default folders are named by method and task shape
    return f"python maml.py --resume {seeds}{method} --ways {args.ways} --shots {args.shots}"


def checkpoint_left(outs, args):
    """What a run stopped by a failed write (a full disk) can continue from, in words."""
    try:
        iterations = [load_checkpoint(Path(out) / "ckpt.pt")["iteration"] for out in outs]
    except CheckpointError:
        return "no checkpoint was written yet: make space, then start the run again"
    where = f"the last checkpoint {Path(outs[0]) / 'ckpt.pt'} (iteration {iterations[0]}) is intact"
    if len(outs) > 1:
        where = f"each seed's last checkpoint is intact (iterations {', '.join(map(str, iterations))})"
    return f"{where}: make space, then {resume_command(args, outs)}"


def load_splits(config, progress, quiet=False):
    """The train, val and test splits of a run, checked before any work starts: classes in one split
    only, and enough classes and images for the training and evaluation tasks (the test split is used
    only at the end, so a problem with it would otherwise surface after the whole run)."""
    if not config["data"] and not quiet:
        print(
            f"no --data given: using the built-in synthetic dataset ({config['image_size']}px glyphs, "
            f"64/16/20 classes, seed {config['seed']})"
        )
    if config["omniglot_split"] and not quiet:
        print(
            f"Omniglot, {config['omniglot_split']} split, rotations {'on' if config['rotations'] else 'off'}, "
            f"{config['image_size']}px, 1 channel (strokes bright)"
        )
    splits = data.load_splits(
        config["data"],
        ["train", "val", "test"],
        image_size=config["image_size"],
        cache_dir=config["cache_dir"],
        synthetic_per_class=config["synthetic_per_class"],
        seed=config["seed"],
        progress=progress,
        rotations=config["rotations"],
    )
    data.check_episode_shape(splits["train"], config["ways"], config["shots"], config["queries"], "train split")
    for name in ("val", "test"):
        data.check_episode_shape(splits[name], config["ways"], config["shots"], config["eval_queries"], f"{name} split")
    return splits


def new_runs(starts, init_model, device, rank, world, cuda_graph):
    """Each run's state: theta and alpha from `init_model(config, device)`, Adam (its step count on the
    device for a CUDA graph), the episode generator, the data on the device; on --resume, then all that
    its checkpoint holds. The seeds share the data, except the synthetic dataset: it depends on the
    seed, and each seed gets its single-seed run's. The one place a run's state is built, for maml.py
    and bench.py alike."""
    loaded, runs = {}, []
    for config, resumed in starts:
        key = config["data"] or f"synthetic, seed {config['seed']}"
        if key not in loaded:
            host = load_splits(
                config, progress=not config["no_progress"] and rank == 0, quiet=rank != 0 or bool(loaded)
            )
            loaded[key] = host, {name: data.split_to(host[name], device) for name in ("train", "val")}
        host, on_device = loaded[key]
        # The first conv takes the data's channel count (3, or 1 for Omniglot); the checkpoint records it.
        config.setdefault("channels", int(host["train"]["images"].shape[1]))
        runs.append(new_run(config, resumed, host, on_device, init_model, device, cuda_graph))
        runs[-1].rank, runs[-1].world = rank, world
    return runs


def new_run(config, resumed, host, on_device, init_model, device, cuda_graph):
    """One run's state, from its config, the checkpoint it resumes (or None) and its splits (all on the
    host, and train and val on the device)."""
    params, inner_lrs = init_model(config, device)
    learned = [r for r in inner_lrs.values() if r.requires_grad]
    capturable = cuda_graph and device.type == "cuda"  # Adam's step count on the GPU, which a graph can update
    optimizer = torch.optim.Adam([*params.values(), *learned], lr=config["meta_lr"], capturable=capturable)
    norm = resumed["norm"] if resumed else data.channel_stats(host["train"])
    run = RunState(
        config=config,
        params=params,
        inner_lrs=inner_lrs,
        optimizer=optimizer,
        episode_rng=torch.Generator(device).manual_seed(config["seed"] + 12345),
        norm=data.split_to(norm, device),
        classes=resumed["classes"] if resumed else host["train"]["classes"],
        splits={**on_device, "test": host["test"]},
        resumed=resumed is not None,
    )
    if resumed:
        restore(run, resumed)
    return run


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
    }


def save(run, name):
    """Write the run's checkpoint to `name` in its folder (rank 0 only), atomically."""
    if run.rank != 0:
        return

    def write(tmp):
        with open(tmp, "wb") as f:  # through a Python file, so a failed write is an OSError that says why
            torch.save(checkpoint_of(run), f)

    clock(run)
    atomic_write(run.out / name, write)


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
    return upgrade_checkpoint(ckpt)


def upgrade_checkpoint(ckpt):
    """The one place older checkpoints are read as the current format: format 1 stored MAML's alpha as a
    float (now the dict of 0-d tensors that maml.init_inner_lrs gives; every format's rates take their
    parameter's dtype, in the parameters' order); a config from before a setting existed gets that
    setting's value of the time (CONFIG_ADDED); a checkpoint from before the running sums were kept
    starts them afresh, and one from before GPU episode generators drew its episodes on the CPU."""
    rates, params = ckpt["inner_lrs"], ckpt["params"]
    if not isinstance(rates, dict):
        rates = {name: torch.tensor(float(rates), dtype=p.dtype) for name, p in params.items()}
    ckpt["inner_lrs"] = {name: rates[name].to(p.device, p.dtype) for name, p in params.items()}
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
    run.loss_sum.copy_(ckpt["loss_sum"])
    run.acc_sum.copy_(ckpt["acc_sum"])
    run.since_eval = ckpt["since_eval"]


# ----------------------------------------------------------------------------------------------
# During the run
# ----------------------------------------------------------------------------------------------


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
    logs = [run.out / "metrics.csv", run.out / "lr_stats.csv"]
    if run.resumed:
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
            f"{run.label}iteration {run.iteration}: val accuracy {100 * val_acc:.2f} +- {100 * val_ci:.2f}% "
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
    }
    write_json(run.out / "test.json", result)
    print(
        f"test accuracy ({tasks} tasks, best.pt from iteration {best['iteration']}): "
        f"{100 * test_acc:.2f} +- {100 * test_ci:.2f}%  ->  {run.out}"
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
