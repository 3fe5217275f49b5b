"""The settings of a run and the methods that maml.py trains, each in one table: `SETTINGS` (one row per
key of a checkpoint's config: may it change on --resume, what the report makes of it, its value in
checkpoints from before it existed) and `METHODS` (one row per method). Then the command line of the
training script, maml.py: every flag with its help text and default, and the check of their values
before any work starts. run_start.py, run_folder.py, analyze.py and the report read the tables; a new
setting or method is one row here (tests/test_flags.py refuses a flag without its row).
"""

import argparse
import math
import os

from cli import ConfigError, argument_parser, folder_name
from gpu import PRECISIONS

# ----------------------------------------------------------------------------------------------
# The methods: one row each, in the report's order (MAML first: the others are compared with it)
# ----------------------------------------------------------------------------------------------

# name: (display name, what the inner loop adapts: --inner-params, are the inner rates learned: --learn-lr)
METHODS = {
    "maml": ("MAML", "all", False),
    "metasgd": ("Meta-SGD", "all", True),
    "anil": ("ANIL", "head", False),  # Raghu et al. 2020: only the head adapts
    "boil": ("BOIL", "body", False),  # Oh et al. 2021: only the body adapts, the head stays theta
    "anil-metasgd": ("ANIL with Meta-SGD rates", "head", True),
    "boil-metasgd": ("BOIL with Meta-SGD rates", "body", True),
    "maml-no-bn": ("MAML, batch norm not adapted", "no-bn", False),  # the official MAML code's inner loop
    "metasgd-no-bn": ("Meta-SGD, batch norm not adapted", "no-bn", True),
    "maml-custom": ("MAML, an imported adapting set", "custom", False),  # import_model.py --adapt; not trained here
    "metasgd-custom": ("Meta-SGD, an imported adapting set", "custom", True),
}
METHOD_NAMES = {name: display for name, (display, _, _) in METHODS.items()}
ADAPTS = {  # --inner-params, in words; "custom": the parameters an imported model's rates name (import_model.py)
    "all": "all",
    "head": "head only",
    "body": "body only (head frozen)",
    "no-bn": "all but batch norm (its scale and offset kept at theta)",
    "custom": "an imported set (the checkpoint's inner_lrs name it)",
}
TRAINED_ADAPTS = [adapts for adapts in ADAPTS if adapts != "custom"]  # what maml.py --inner-params takes
TRAINED_METHODS = [name for name, (_, adapts, _) in METHODS.items() if adapts in TRAINED_ADAPTS]  # --method


def method_of(config):
    """A run's method (a METHODS name), from its settings: --inner-params and --learn-lr."""
    setting = (config.get("inner_params", "all"), config["learn_lr"])  # before --inner-params, all adapted
    return next(name for name, (_, adapts, learned) in METHODS.items() if (adapts, learned) == setting)


def method_flags(method):
    """The flags of maml.py that make `method` (none for MAML)."""
    _, adapts, learned = METHODS[method]
    return (["--learn-lr"] if learned else []) + (["--inner-params", adapts] if adapts != "all" else [])


# ----------------------------------------------------------------------------------------------
# The settings: one row per key of a checkpoint's config
# ----------------------------------------------------------------------------------------------

# On --resume: MAY_CHANGE (the new value holds) or KEPT (a flag the user names must equal the checkpoint's).
MAY_CHANGE, KEPT = "may change on --resume", "kept from the checkpoint"
# In the report: NOT_A_RESULT (runs that differ only in it are one run), SEED_OR_METHOD (it names the seed or
# the method, or leaves every compared number alone: runs that differ in it can be seeds of one study), STUDY
# (runs that differ in it belong to different studies, reported in groups).
NOT_A_RESULT, SEED_OR_METHOD, STUDY = "not a result", "names a seed or the method", "makes another study"
# In checkpoints from before the setting existed: the value those runs had, filled in when they are read, or
# NOT_FILLED (a checkpoint without the key is read as it is; a resumed run takes the flag's default).
NOT_FILLED = "not filled in"
SETTINGS = {  # key: (on --resume, in the report, in checkpoints from before it)
    "ways": (KEPT, STUDY, NOT_FILLED),
    "shots": (KEPT, STUDY, NOT_FILLED),
    "queries": (KEPT, STUDY, NOT_FILLED),
    "meta_batch": (KEPT, STUDY, NOT_FILLED),
    "inner_steps": (KEPT, STUDY, NOT_FILLED),
    "iterations": (MAY_CHANGE, STUDY, NOT_FILLED),
    "hidden": (KEPT, STUDY, NOT_FILLED),
    "image_size": (KEPT, STUDY, NOT_FILLED),
    "synthetic_per_class": (KEPT, STUDY, NOT_FILLED),  # for real data, not a result: `study_settings`
    "eval_every": (MAY_CHANGE, STUDY, NOT_FILLED),
    "val_tasks": (KEPT, STUDY, NOT_FILLED),
    "test_tasks": (KEPT, STUDY, NOT_FILLED),
    "eval_steps": (KEPT, STUDY, NOT_FILLED),
    "eval_queries": (KEPT, STUDY, NOT_FILLED),
    "save_every": (MAY_CHANGE, SEED_OR_METHOD, NOT_FILLED),
    "log_every": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "seed": (KEPT, SEED_OR_METHOD, NOT_FILLED),
    "inner_lr": (KEPT, STUDY, NOT_FILLED),
    "learn_lr": (KEPT, SEED_OR_METHOD, NOT_FILLED),
    "inner_params": (KEPT, SEED_OR_METHOD, "all"),
    "lr_init_range": (KEPT, STUDY, NOT_FILLED),  # for MAML, not a result: `study_settings`
    "first_order": (KEPT, STUDY, NOT_FILLED),
    "meta_lr": (KEPT, STUDY, NOT_FILLED),
    "task_batching": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "conv_bias": (KEPT, STUDY, True),
    "clip_grad": (KEPT, STUDY, None),
    "data": (MAY_CHANGE, STUDY, NOT_FILLED),  # a moved folder; run_start checks that it holds the same data
    "data_name": (MAY_CHANGE, NOT_A_RESULT, None),  # not a flag: the name --data gave (fetch.py), or None
    "rotations": (KEPT, STUDY, None),
    "cache_dir": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "seeds": (KEPT, SEED_OR_METHOD, NOT_FILLED),
    "out": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "resume": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "device": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "dtype": (KEPT, STUDY, "float32"),
    "precision": (KEPT, STUDY, "auto"),
    "cuda_graph": (MAY_CHANGE, SEED_OR_METHOD, NOT_FILLED),
    "no_progress": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "debug": (MAY_CHANGE, NOT_A_RESULT, NOT_FILLED),
    "channels": (KEPT, STUDY, 3),  # not flags: what the data implies (data.dataset_defaults, the images)
    "omniglot_split": (KEPT, STUDY, None),
    "bn_eps": (KEPT, STUDY, 1e-5),  # not a flag: BatchNorm's epsilon (maml.BN_EPS; an imported model's own)
}
MAY_CHANGE_ON_RESUME = {key for key, (resume, _, _) in SETTINGS.items() if resume == MAY_CHANGE}
CONFIG_ADDED = {key: before for key, (_, _, before) in SETTINGS.items() if before != NOT_FILLED}


def result_settings(config):
    """The settings of `config` that change what a run computes: two runs that agree on all of them are
    one run made twice."""
    return {k: v for k, v in config.items() if SETTINGS.get(k, (None, STUDY))[1] != NOT_A_RESULT}


def study_settings(config):
    """The settings of `config` that make a study: runs that differ in one of them are reported apart.
    Two rules depend on values: --lr-init-range makes another study only for learned rates, and
    --synthetic-per-class only for the synthetic data."""
    skip = {"lr_init_range"} if not config["learn_lr"] else set()
    skip |= {"synthetic_per_class"} if config["data"] else set()
    return {k: v for k, v in config.items() if SETTINGS.get(k, (None, STUDY))[1] == STUDY and k not in skip}


FIXED_TASKS = {"val": ("val_tasks", 777), "test": ("test_tasks", 999)}  # split: (how many, seed offset)


def fixed_tasks(config, split, seed=None):
    """How a run's accuracy on a split is measured: its --val-tasks or --test-tasks fixed tasks, seeded by
    `seed` (default the run's --seed) plus the split's offset, adapted --eval-steps steps."""
    (tasks, offset), seed = FIXED_TASKS[split], config["seed"] if seed is None else seed
    shape = {k: config[k] for k in ("ways", "shots", "eval_queries", "eval_steps", "bn_eps")}
    return {**shape, "tasks": config[tasks], "seed": seed + offset}


ALGORITHM, RUN = "task shape and algorithm (the paper's values by default)", "data, evaluation and the run"
INT_FLAGS = [  # (group, flag, default, help); the other flags are declared below
    (ALGORITHM, "--ways", 5, "classes per task (N)"),
    (ALGORITHM, "--shots", 1, "support images per class (K)"),
    (ALGORITHM, "--queries", 10, "query images per class during meta-training"),
    (ALGORITHM, "--meta-batch", 3, "tasks per meta-update"),
    (ALGORITHM, "--inner-steps", 5, "inner-loop gradient steps during meta-training"),
    (ALGORITHM, "--iterations", 60000, "meta-updates in total (on --resume: the new total)"),
    (ALGORITHM, "--hidden", 64, "filters per conv layer"),
    (ALGORITHM, "--image-size", None, "images are resized to this many pixels square (default 84; 28 for Omniglot)"),
    (RUN, "--synthetic-per-class", 600, "images per class of the synthetic dataset"),
    (RUN, "--eval-every", 1000, "validate every this many iterations"),
    (RUN, "--val-tasks", 200, "fixed, seeded validation tasks"),
    (RUN, "--test-tasks", 600, "fixed, seeded test tasks evaluated at the end"),
    (RUN, "--eval-steps", 10, "inner steps when evaluating (MAML's evaluation uses 10)"),
    (RUN, "--eval-queries", 15, "query images per class when evaluating"),
    (RUN, "--save-every", 500, "write the latest checkpoint every this many iterations"),
    (RUN, "--log-every", 100, "update the progress bar's loss/accuracy (a device sync) every this many iterations"),
    (RUN, "--seed", 0, "seeds initialisation, episodes and the synthetic data"),
]


def add_method_flags(g):
    """The flags that say which method trains (flags.METHODS)."""
    g("--learn-lr", action="store_true", help="Meta-SGD: learn one inner rate per parameter entry")
    g(
        "--inner-params",
        choices=TRAINED_ADAPTS,
        default="all",
        help="which parameters the inner loop adapts: 'all' (MAML, Meta-SGD), 'head' only (ANIL, Raghu et al. "
        "2020), 'body' only, the head frozen at theta (BOIL, Oh et al. 2021), or all but batch norm's scale and "
        "offset ('no-bn', as the official MAML code adapts); every parameter still takes the "
        "outer step, and --learn-lr learns rates only for those that adapt",
    )
    g(
        "--method",
        choices=TRAINED_METHODS,
        default=argparse.SUPPRESS,
        help="a method by name, the same as the flags that make it: "
        + "; ".join(f"{name}: {' '.join(method_flags(name)) or 'neither'}" for name in TRAINED_METHODS)
        + " (default: MAML, or what --learn-lr and --inner-params say)",
    )


def add_algorithm_flags(g):
    g("--inner-lr", type=float, default=0.01, help="MAML's inner rate alpha; Meta-SGD's initial value")
    add_method_flags(g)
    g(
        "--lr-init-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="Meta-SGD: initialise the rates uniformly in [LOW, HIGH] instead of at --inner-lr",
    )
    g("--first-order", action="store_true", help="drop the second-order terms (FOMAML / first-order Meta-SGD)")
    g("--meta-lr", type=float, default=1e-3, help="Adam learning rate of the outer loop (theta and alpha)")
    g(
        "--task-batching",
        choices=["auto", "loop", "grouped"],
        default="auto",
        help="how the tasks of a meta-batch run: 'loop' one after another (the plain reference), 'grouped' "
        "together as one grouped network; 'auto' picks grouped on a GPU and loop on the CPU, where the loop "
        "measured faster (RESULTS.md)",
    )
    g(
        "--conv-bias",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give each conv a bias, as the paper's Conv-4 has; --no-conv-bias drops them (the batch-statistics "
        "BatchNorm after each conv cancels them, so they only collect rounding noise)",
    )
    g(
        "--clip-grad",
        type=float,
        default=None,
        metavar="VALUE",
        help="clip every meta-gradient entry to [-VALUE, VALUE] before the Adam step, as MAML's own code does "
        "(10 for Mini-ImageNet); default: no clipping (the paper says nothing)",
    )


def add_data_flags(g):
    g(
        "--data",
        default=None,
        help="dataset folder in any supported Mini-ImageNet layout (Ravi CSVs, "
        "split/class folders, learn2learn pickles, torchmeta HDF5) or Omniglot as it ships (images_background, "
        "images_evaluation); or a name, omniglot or mini-imagenet: fetched and verified on first use into "
        "$MAML_DATA_DIR/NAME, else ~/.cache/negative-lr-maml/data/NAME (a folder of that name here is a path); "
        "omitted: the built-in synthetic dataset",
    )
    g(
        "--rotations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Omniglot: each 90-degree rotation of a character is its own class (default: on for the vinyals "
        "split, off for the lake split)",
    )
    g(
        "--cache-dir",
        default="default",
        help="where decoded images are cached ('none' disables; default $MAML_CACHE_DIR or ~/.cache/negative-lr-maml)",
    )


def add_run_flags(g):
    g(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="train one independent model per seed in this one process, as extra groups of one grouped network "
        "(a GPU that one small Conv-4 leaves idle fits several); each seed gets its own run folder, the one "
        "--seed would give it (with --out DIR: DIR/seed<SEED>)",
    )
    g(
        "--out",
        type=folder_name,
        default=None,
        help="run folder (default runs/<method>-<N>w<K>s-seed<seed>, <method> a --method name)",
    )
    g("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1', ...")
    g("--dtype", choices=["float32", "float64"], default="float32", help="parameter and image precision")
    g(
        "--precision",
        choices=["auto", *PRECISIONS],
        default="auto",
        help="float32 kernels: "
        + "; ".join(f"'{k}': {v}" for k, v in PRECISIONS.items())
        + "; 'auto': 'fast' on the CPU, 'highest' on a "
        "GPU (docs/reference.md, Precision). Recorded in the checkpoint",
    )
    g(
        "--cuda-graph",
        choices=["auto", "on", "off"],
        default="auto",
        help="replay each meta-iteration as one "
        "captured CUDA graph (no launch overhead); 'auto': for one process on a GPU; 'on': the same, but refused "
        "without a GPU or under torchrun. A capture that fails says why in one line and the run continues "
        "eagerly",
    )
    g("--no-progress", action="store_true", help="no progress bars (for logs)")
    g("--debug", action="store_true", help="show full tracebacks on errors")


def build_parser():
    p = argument_parser(
        "Train the paper's Conv-4 with MAML (default), Meta-SGD (--learn-lr), ANIL or BOIL (--method). Defaults are "
        "the paper's: 5-way 1-shot, 10 queries per class, 3 tasks per meta-batch, 5 inner steps, "
        "inner lr 0.01, Adam 1e-3, 60,000 iterations."
    )
    groups = {name: p.add_argument_group(name).add_argument for name in (ALGORITHM, RUN)}
    for group, flag, default, text in INT_FLAGS:
        groups[group](flag, type=int, default=default, help=text)
    add_algorithm_flags(groups[ALGORITHM])
    add_data_flags(groups[RUN])
    add_run_flags(groups[RUN])
    return p


AT_LEAST_ONE = ("ways", "shots", "queries", "meta_batch", "iterations", "hidden", "val_tasks", "test_tasks",
                "eval_every", "save_every", "log_every", "synthetic_per_class", "eval_queries")  # fmt: skip
SEED_MAX = 2**32 - 1  # seeds derived from a seed (episodes, evaluation tasks, probe chunks) stay in range


def name(dest):
    return "--" + dest.replace("_", "-")


def parse(argv=None):
    """maml.py's flags, with --method NAME turned into the flags that make that method (naming a flag that
    contradicts it is refused), and the flags the user named (`given_flags`, --method counting as itself
    and as its flags)."""
    args, given = build_parser().parse_args(argv), given_flags(argv)
    method = vars(args).pop("method", None)
    if method is None:
        return args, given
    _, adapts, learned = METHODS[method]
    for dest, value in (("learn_lr", learned), ("inner_params", adapts)):
        if dest in given and getattr(args, dest) != value:
            made_of = " ".join(method_flags(method)) or "neither --learn-lr nor --inner-params"
            raise ConfigError(f"--method {method} means {made_of}, which {name(dest)} contradicts; give one of them")
        setattr(args, dest, value)
    return args, given | {"learn_lr", "inner_params"}


def given_flags(argv):
    """The flags that `argv` names (whatever their values, a default's included), as argparse dests."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def check_flags(args, world, given=()):
    """Refuse, before any work and before any file is written, flag values that make no sense: alone,
    together (`given`: the flags the user named), with torchrun's `world` processes, or for this
    machine's memory."""
    bad = value_problems(args) + combination_problems(args, world, given) + memory_problems(args)
    if bad:
        raise ConfigError(bad[0])


def value_problems(args):
    bad = [f"{name(n)} must be at least 1 (got {getattr(args, n)})" for n in AT_LEAST_ONE if getattr(args, n) < 1]
    bad += [
        f"{name(n)} cannot be negative (got {getattr(args, n)})"
        for n in ("inner_steps", "eval_steps")
        if getattr(args, n) < 0
    ]
    bad += [f"--ways must be at least 2 (got {args.ways})"] if args.ways < 2 else []
    bad += [] if math.isfinite(args.inner_lr) else [f"--inner-lr must be a finite number (got {args.inner_lr})"]
    if not (math.isfinite(args.meta_lr) and args.meta_lr > 0):
        bad.append(f"--meta-lr must be a positive finite number (got {args.meta_lr})")
    low, high = args.lr_init_range or (0.0, 0.0)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        bad.append(f"--lr-init-range must be two finite numbers LOW HIGH with LOW <= HIGH (got {low} {high})")
    if args.clip_grad is not None and not (math.isfinite(args.clip_grad) and args.clip_grad > 0):
        bad.append(f"--clip-grad must be a positive finite number (got {args.clip_grad})")
    if args.image_size is not None and args.image_size < 16:
        bad.append(f"--image-size must be at least 16 for four 2x2 poolings (got {args.image_size})")
    for seed in [args.seed, *(args.seeds or [])]:
        if not 0 <= seed <= SEED_MAX:
            bad.append(f"--seed{'s' if args.seeds else ''} must be in 0..{SEED_MAX} (got {seed})")
    return bad


def combination_problems(args, world, given):
    bad = []
    if args.meta_batch % world:
        bad.append(
            f"--meta-batch {args.meta_batch} cannot be split evenly over {world} processes; use a multiple of {world}"
        )
    if args.seeds and world > 1:
        bad.append("--seeds trains several models in one process; under torchrun train one seed per job")
    if args.seeds and args.task_batching == "loop":
        bad.append("--seeds always runs its models as groups of one grouped network; drop --task-batching loop")
    if args.seeds and "seed" in given:
        bad.append(f"--seed {args.seed} beside --seeds: --seeds names every seed to train; drop --seed")
    return bad


def memory_problems(args):
    """A size this machine's memory cannot hold, found before anything is loaded or written. The
    estimates are low on purpose (only the images, and each meta-iteration's conv outputs with their
    graph), so that only sizes that cannot possibly fit are refused; a run that then runs out of
    memory ends in one line too (cli.run_cli)."""
    size, itemsize = args.image_size or 84, 8 if args.dtype == "float64" else 4
    images = 100 * args.synthetic_per_class * 3 * size * size if args.data is None else 0  # uint8, 100 classes
    per_task = args.ways * (args.shots + args.queries)
    graph = args.meta_batch * per_task * args.hidden * size * size * itemsize * 2 * (args.inner_steps + 1)
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    sizes = {"--synthetic-per-class and --image-size": images, "--meta-batch, --image-size and --hidden": graph}
    culprits, needed = max(sizes.items(), key=lambda item: item[1])
    if not available or sum(sizes.values()) <= available:
        return []
    memory = f"{available / 2**30:.0f} GiB"
    return [f"{culprits} ask for about {needed / 2**30:,.0f} GiB, more than this machine's {memory} of memory"]
