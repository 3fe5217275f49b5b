"""The test accuracy of a checkpoint, this project's or imported (import_model.py): mean and 95% CI over
fixed, seeded tasks, as maml.py measures best.pt at the end of training.

    python evaluate.py runs/maml-5w1s-seed0/best.pt                    # its own protocol: the same as test.json
    python evaluate.py runs/imported/cbfinn-maml-5w1s/best.pt --tasks 300 --steps 10 --queries 1

By default the tasks, steps and queries per class are the ones the checkpoint records (--test-tasks,
--eval-steps, --eval-queries; an imported model's are its authors' protocol), and the tasks are the ones
maml.py draws from the run's --seed, so a trained run's evaluation repeats its test.json. An imported
model evaluated under its own protocol gets its test.json written beside best.pt (analyze.py reads it);
any other evaluation only prints.
"""

import math
from pathlib import Path

import torch
from tqdm import tqdm

import cli
import fetch
import flags
import gpu
import logs
import run_folder
from cli import ConfigError
from maml import accuracy_on_fixed_tasks
from probe import checkpoint_split


def build_parser():
    p = cli.argument_parser(
        "Test accuracy of a checkpoint (maml.py's or import_model.py's): mean and 95%% CI over fixed, seeded "
        "tasks, adapted with the checkpoint's own rates. Defaults: the protocol the checkpoint records."
    )
    a = p.add_argument
    a("checkpoint", help="best.pt or ckpt.pt of a run folder, or an imported model's best.pt")
    a("--data", default=None, help="dataset folder or name (default: the one the checkpoint was trained on)")
    a("--split", choices=list(flags.FIXED_TASKS), default="test", help="the split the tasks come from")
    a("--tasks", type=int, default=None, help="how many fixed tasks (default: the checkpoint's --test-tasks)")
    a("--steps", type=int, default=None, help="inner steps on each task's support set (default: its --eval-steps)")
    a("--queries", type=int, default=None, help="query images per class (default: its --eval-queries)")
    a("--seed", type=int, default=None, help="seeds the tasks (default: the run's --seed; 0 for an imported model)")
    a("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda', ...")
    a("--cache-dir", default="default", help="decoded-image cache folder ('none' disables)")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def protocol(args, config):
    """The fixed tasks to measure on (flags.fixed_tasks), the checkpoint's own unless a flag says otherwise,
    and the seed they are drawn from."""
    for flag, value in (("--tasks", args.tasks), ("--queries", args.queries)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if args.steps is not None and args.steps < 0:
        raise ConfigError(f"--steps cannot be negative (got {args.steps})")
    if args.seed is not None and not 0 <= args.seed <= flags.SEED_MAX:
        raise ConfigError(f"--seed must be in 0..{flags.SEED_MAX} (got {args.seed})")
    tasks_key = flags.FIXED_TASKS[args.split][0]
    given = {tasks_key: args.tasks, "eval_steps": args.steps, "eval_queries": args.queries}
    merged = {**config, **{k: v for k, v in given.items() if v is not None}}
    seed = args.seed if args.seed is not None else config["seed"] or 0
    if merged[tasks_key] is None:
        raise ConfigError(f"the checkpoint records no number of {args.split} tasks; give --tasks")
    return flags.fixed_tasks(merged, args.split, seed), seed


def evaluate_checkpoint(args):
    """Print (and for an imported model under its own protocol on its own data, write to test.json) the
    accuracy."""
    ckpt = run_folder.load_checkpoint(args.checkpoint)
    config, imported = ckpt["config"], ckpt.get("imported")
    tasks, seed = protocol(args, config)
    own = args.data is None and tasks == flags.fixed_tasks(config, "test", config["seed"] or 0)
    given = fetch.checkpoint_data(args.data, config)
    fetch.refuse_other_channels(given, config["channels"])
    root = fetch.resolve_data(given, quiet=False, progress=not args.no_progress)[0]
    device = cli.resolve_device(args.device)
    split = checkpoint_split(config, root, args.split, args.cache_dir, not args.no_progress, config["ways"],
                             tasks["eval_queries"])  # fmt: skip
    bar = lambda chunks: tqdm(chunks, total=math.ceil(tasks["tasks"] / 25), desc="evaluate", unit="x25 tasks",
                              disable=args.no_progress, dynamic_ncols=True)  # fmt: skip
    with gpu.precision_applied(config["precision"], device):
        dtype = getattr(torch, config["dtype"])
        mean, ci95 = accuracy_on_fixed_tasks(ckpt, split, ckpt["norm"], tasks, device, dtype, progress=bar)
    ci95 = ci95 if math.isfinite(ci95) else None  # one task: no interval (and no NaN in the JSON)
    interval = f"+- {100 * ci95:.2f}% (95% CI" if ci95 is not None else "(one task: no interval;"
    where = f"{tasks['tasks']} {args.split} tasks of --seed {seed}, {config['ways']}-way {config['shots']}-shot"
    print(f"{args.split} accuracy of {args.checkpoint}: {100 * mean:.2f}% {interval} over {where}, "
          f"{tasks['eval_queries']} queries per class, {tasks['eval_steps']} steps)")  # fmt: skip
    if imported and own:
        result = {"test_acc": mean, "test_ci95": ci95, "tasks": tasks["tasks"], "iteration": None, "val_acc": None,
                  "checkpoint": Path(args.checkpoint).name, "eval_steps": tasks["eval_steps"],
                  "eval_queries": tasks["eval_queries"], "seed": seed, "data": root,
                  "run_id": ckpt.get("run_id")}  # fmt: skip
        logs.write_json(Path(args.checkpoint).parent / "test.json", result)
        print(f"-> {Path(args.checkpoint).parent / 'test.json'}")
    return mean, ci95


def main(argv=None):
    return evaluate_checkpoint(build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run_cli(main)
