"""MAML and Meta-SGD on the paper's Conv-4 (Algorithm 1 of "Negative Inner-Loop Learning Rates Learn
Universal Features").

    python maml.py                 # MAML: fixed inner rate alpha = --inner-lr, second order
    python maml.py --learn-lr      # Meta-SGD: alpha is learned, one rate per parameter entry
    python maml.py --resume --out runs/metasgd-5w1s-seed0

Algorithm 1, as `meta_step` below does it:
    sample a meta-batch of tasks T_i, each with a support set and a query set
    for each task:  theta_i' = theta - alpha * grad_theta L_support(theta)      (`adapt`, k steps)
    meta-loss = mean_i L_query(theta_i')
    theta (and alpha, for Meta-SGD) <- Adam step on grad of the meta-loss       (second order by default)

The network is a pure function of a parameter dict (`conv4(params, x)`), so adapted parameters are
just other dicts. `conv4_tasks` is the same network for a stack of tasks at once (a grouped
convolution); it is only a faster way to run the per-task loop, and tests check the two agree.
Importing this file has no side effects: `from maml import conv4, adapt, meta_loss, meta_step`.
"""

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

PROGRAM = "negative-lr-maml"  # written into every checkpoint, to recognise ours
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# The network: Conv-4 as a function of an explicit parameter dict
# ----------------------------------------------------------------------------------------------


def init_params(ways, hidden=64, image_size=84, channels=3, generator=None, dtype=torch.float32):
    """Conv-4 parameters, initialised as torch.nn's Conv2d/BatchNorm2d/Linear would be."""

    def uniform(shape, fan_in):
        bound = 1 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound

    params, size, c_in = {}, image_size, channels
    for i in range(1, 5):
        params[f"conv{i}.weight"] = uniform((hidden, c_in, 3, 3), c_in * 9)
        params[f"conv{i}.bias"] = uniform((hidden,), c_in * 9)
        params[f"bn{i}.weight"] = torch.ones(hidden, dtype=dtype)
        params[f"bn{i}.bias"] = torch.zeros(hidden, dtype=dtype)
        c_in, size = hidden, size // 2
    features = hidden * size * size  # 64 * 5 * 5 = 1600 at 84x84
    params["head.weight"] = uniform((ways, features), features)
    params["head.bias"] = uniform((ways,), features)
    return params


def features(params, x):
    """The encoder: four blocks of conv3x3 -> BatchNorm -> ReLU -> maxpool2, flattened.
    BatchNorm always normalises with the statistics of the batch it is given (no running stats)."""
    for i in range(1, 5):
        x = F.conv2d(x, params[f"conv{i}.weight"], params[f"conv{i}.bias"], padding=1)
        x = F.batch_norm(x, None, None, params[f"bn{i}.weight"], params[f"bn{i}.bias"], training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def conv4(params, x):
    """Logits [batch, ways] for images x [batch, 3, H, W]."""
    return F.linear(features(params, x), params["head.weight"], params["head.bias"])


def features_tasks(params, x):
    """`features` for T tasks at once: every parameter has a leading task dim [T, ...] and
    x is [T, batch, 3, H, W]. The tasks become channel groups of one grouped convolution, and
    BatchNorm over [batch, T*channels, H, W] is exactly per-task batch statistics."""
    tasks, batch = x.shape[:2]
    x = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:])
    for i in range(1, 5):
        w = params[f"conv{i}.weight"]
        x = F.conv2d(x, w.reshape(-1, *w.shape[2:]), params[f"conv{i}.bias"].reshape(-1), padding=1, groups=tasks)
        x = F.batch_norm(
            x, None, None, params[f"bn{i}.weight"].reshape(-1), params[f"bn{i}.bias"].reshape(-1), training=True
        )
        x = F.max_pool2d(F.relu(x), 2)
    return x.view(batch, tasks, -1).transpose(0, 1)  # [T, batch, features], same order as `features`


def conv4_tasks(params, x):
    """Logits [T, batch, ways] for x [T, batch, 3, H, W] and per-task parameters [T, ...]."""
    return torch.baddbmm(
        params["head.bias"].unsqueeze(1), features_tasks(params, x), params["head.weight"].transpose(1, 2)
    )


def per_task(params, tasks):
    """The shared theta, viewed once per task (no copy) so each task can adapt its own."""
    return {name: p.expand(tasks, *p.shape) for name, p in params.items()}


def init_inner_lrs(params, inner_lr, init_range=None, generator=None):
    """Meta-SGD's alpha: one learnable rate per parameter entry, at `inner_lr` or uniform in a range.
    Nothing constrains its sign: the paper's point is that many entries turn negative."""
    lrs = {}
    for name, p in params.items():
        if init_range is None:
            lr = torch.full_like(p, inner_lr)
        else:
            low, high = init_range
            lr = torch.rand(p.shape, generator=generator, dtype=p.dtype) * (high - low) + low
        lrs[name] = lr.requires_grad_()
    return lrs


# ----------------------------------------------------------------------------------------------
# Algorithm 1
# ----------------------------------------------------------------------------------------------


def adapt(params, inner_lrs, x, y, steps, create_graph=True, net=conv4):
    """The inner loop: `steps` times theta <- theta - alpha * grad L_support(theta).

    `inner_lrs` is MAML's scalar alpha or Meta-SGD's dict of per-entry rates. With create_graph the
    result stays differentiable through the gradients themselves (second-order MAML); without it
    the gradients are constants (first order), but the result still depends on theta and alpha.
    The loss is the sum over tasks of each task's mean loss, so with `net=conv4_tasks` every task
    gets exactly its own gradient."""
    with torch.enable_grad():
        params = {n: (p if p.requires_grad else p.detach().requires_grad_()) for n, p in params.items()}
        for _ in range(steps):
            logits = net(params, x)
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum") / y.shape[-1]
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {
                name: p - (inner_lrs[name] if isinstance(inner_lrs, dict) else inner_lrs) * g
                for (name, p), g in zip(params.items(), grads)
            }
    return params


def meta_loss(params, inner_lrs, episode, steps, first_order=False, tasks_together=True):
    """Mean query loss (and accuracy) of the adapted parameters over a meta-batch of tasks.

    tasks_together=False is the plain per-task loop, kept as the reference; True runs all tasks in
    one grouped network and gives the same numbers (tests/test_maml.py)."""
    support_x, support_y = episode["support_x"], episode["support_y"]
    query_x, query_y = episode["query_x"], episode["query_y"]
    if tasks_together:
        adapted = adapt(
            per_task(params, support_x.shape[0]),
            inner_lrs,
            support_x,
            support_y,
            steps,
            create_graph=not first_order,
            net=conv4_tasks,
        )
        logits = conv4_tasks(adapted, query_x)
    else:
        logits = torch.stack(
            [
                conv4(
                    adapt(params, inner_lrs, support_x[t], support_y[t], steps, create_graph=not first_order),
                    query_x[t],
                )
                for t in range(support_x.shape[0])
            ]
        )
    loss = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())  # tasks have equal query counts
    accuracy = (logits.argmax(-1) == query_y).float().mean()
    return loss, accuracy


def meta_step(params, inner_lrs, optimizer, episode, steps, first_order=False, tasks_together=True):
    """One outer-loop update of theta (and alpha) by the optimizer. Returns detached loss, accuracy."""
    optimizer.zero_grad(set_to_none=True)
    loss, accuracy = meta_loss(params, inner_lrs, episode, steps, first_order, tasks_together)
    loss.backward()
    optimizer.step()
    return loss.detach(), accuracy.detach()


# ----------------------------------------------------------------------------------------------
# Evaluation: adapt on each task's support set, measure on its query set
# ----------------------------------------------------------------------------------------------


def evaluate(params, inner_lrs, split, norm, tasks, ways, shots, queries, steps, seed, chunk=25):
    """Query accuracy of each of `tasks` fixed, seeded tasks after `steps` adaptation steps.
    Returns a tensor of per-task accuracies (on the split's device)."""
    import data

    device = split["images"].device
    generator = torch.Generator(device).manual_seed(seed)
    dtype = next(iter(params.values())).dtype
    params = {n: p.detach() for n, p in params.items()}
    rates = {n: r.detach() for n, r in inner_lrs.items()} if isinstance(inner_lrs, dict) else inner_lrs
    accuracies = []
    for start in range(0, tasks, chunk):
        n = min(chunk, tasks - start)
        episode = data.sample_episodes(split, n, ways, shots, queries, generator, norm, dtype=dtype)
        adapted = adapt(
            per_task(params, n),
            rates,
            episode["support_x"],
            episode["support_y"],
            steps,
            create_graph=False,
            net=conv4_tasks,
        )
        with torch.no_grad():
            logits = conv4_tasks(adapted, episode["query_x"])
            accuracies.append((logits.argmax(-1) == episode["query_y"]).float().mean(1))
    return torch.cat(accuracies)


def mean_ci95(values):
    """Mean and half-width of the normal-approximation 95% confidence interval, as MAML reports."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(unbiased=True) / math.sqrt(values.numel()))


def layer_of(name):
    """'conv2.weight' -> 'conv2', 'bn2.bias' -> 'bn2', 'head.*' -> 'logits' (the paper's name)."""
    layer = name.split(".")[0]
    return "logits" if layer == "head" else layer


def rate_statistics(inner_lrs):
    """Rows of statistics of Meta-SGD's learned rates, per layer and per parameter tensor."""
    groups = {}
    for name, rate in inner_lrs.items():
        groups.setdefault(("layer", layer_of(name)), []).append(rate.detach().flatten())
        groups[("tensor", name)] = [rate.detach().flatten()]
    rows = []
    for (kind, name), parts in groups.items():
        r = torch.cat(parts).double()
        rows.append(
            {
                "name": name,
                "kind": kind,
                "count": r.numel(),
                "mean": r.mean().item(),
                "std": r.std().item() if r.numel() > 1 else 0.0,
                "frac_negative": (r < 0).double().mean().item(),
                "min": r.min().item(),
                "max": r.max().item(),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


class CheckpointError(Exception):
    """A file that is not one of our checkpoints, or one that does not fit the run."""


class ConfigError(Exception):
    """A flag value that makes no sense (zero ways, a non-finite rate, a missing GPU)."""


def load_checkpoint(path, map_location="cpu"):
    """Load and sanity-check a checkpoint written by this program."""
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
    return ckpt


def checkpoint_lrs(ckpt):
    """The inner rates a checkpoint adapts with: a float (MAML) or a dict of tensors (Meta-SGD)."""
    return ckpt["inner_lrs"] if isinstance(ckpt["inner_lrs"], dict) else float(ckpt["inner_lrs"])


# ----------------------------------------------------------------------------------------------
# Training script
# ----------------------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        description="Train the paper's Conv-4 with MAML (default) or Meta-SGD (--learn-lr). Defaults are "
        "the paper's: 5-way 1-shot, 10 queries per class, 3 tasks per meta-batch, 5 inner steps, "
        "inner lr 0.01, Adam 1e-3, 60,000 iterations.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a(
        "--data",
        default=None,
        help="dataset folder in any supported Mini-ImageNet layout (Ravi CSVs, "
        "split/class folders, learn2learn pickles, torchmeta HDF5); omitted: the built-in synthetic dataset",
    )
    a("--image-size", type=int, default=84, help="images are resized to this many pixels square")
    a("--synthetic-per-class", type=int, default=600, help="images per class of the synthetic dataset")
    a(
        "--cache-dir",
        default="default",
        help="where decoded images are cached ('none' disables; default $MAML_CACHE_DIR or ~/.cache/negative-lr-maml)",
    )
    a("--ways", type=int, default=5, help="classes per task (N)")
    a("--shots", type=int, default=1, help="support images per class (K)")
    a("--queries", type=int, default=10, help="query images per class during meta-training")
    a("--meta-batch", type=int, default=3, help="tasks per meta-update")
    a("--inner-steps", type=int, default=5, help="inner-loop gradient steps during meta-training")
    a("--inner-lr", type=float, default=0.01, help="MAML's inner rate alpha; Meta-SGD's initial value")
    a("--learn-lr", action="store_true", help="Meta-SGD: learn one inner rate per parameter entry")
    a(
        "--lr-init-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="Meta-SGD: initialise the rates uniformly in [LOW, HIGH] instead of at --inner-lr",
    )
    a("--first-order", action="store_true", help="drop the second-order terms (FOMAML / first-order Meta-SGD)")
    a("--meta-lr", type=float, default=1e-3, help="Adam learning rate of the outer loop (theta and alpha)")
    a("--iterations", type=int, default=60000, help="meta-updates in total (on --resume: the new total)")
    a("--hidden", type=int, default=64, help="filters per conv layer")
    a(
        "--task-batching",
        choices=["auto", "loop", "grouped"],
        default="auto",
        help="how the tasks of a meta-batch run: 'loop' one after another (the plain reference), 'grouped' "
        "together as one grouped network; 'auto' picks grouped on a GPU and loop on the CPU, where the loop "
        "measured faster (README, Performance)",
    )
    a("--eval-every", type=int, default=1000, help="validate every this many iterations")
    a("--val-tasks", type=int, default=200, help="fixed, seeded validation tasks")
    a("--test-tasks", type=int, default=600, help="fixed, seeded test tasks evaluated at the end")
    a("--eval-steps", type=int, default=10, help="inner steps when evaluating (MAML's evaluation uses 10)")
    a("--eval-queries", type=int, default=15, help="query images per class when evaluating")
    a("--save-every", type=int, default=500, help="write the latest checkpoint every this many iterations")
    a(
        "--log-every",
        type=int,
        default=100,
        help="update the progress bar's loss/accuracy (a device sync) every this many iterations",
    )
    a("--out", default=None, help="run folder (default runs/<maml|metasgd>-<N>w<K>s-seed<seed>)")
    a("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    a("--seed", type=int, default=0, help="seeds initialisation, episodes and the synthetic data")
    a("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1', ...")
    a("--dtype", choices=["float32", "float64"], default="float32", help="parameter and image precision")
    a("--no-progress", action="store_true", help="no progress bars (for logs)")
    a("--debug", action="store_true", help="show full tracebacks on errors")
    return p


# Flags that may change when a run is resumed; every other flag must match the checkpoint.
RESUME_MAY_CHANGE = {
    "iterations",
    "device",
    "eval_every",
    "save_every",
    "log_every",
    "no_progress",
    "debug",
    "resume",
    "out",
    "cache_dir",
    "data",
    "task_batching",
}


def check_config(args):
    bad = []
    for name in (
        "ways",
        "shots",
        "queries",
        "meta_batch",
        "iterations",
        "hidden",
        "image_size",
        "val_tasks",
        "test_tasks",
        "eval_every",
        "save_every",
        "log_every",
        "synthetic_per_class",
    ):
        if getattr(args, name) < 1:
            bad.append(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    for name in ("inner_steps", "eval_steps"):
        if getattr(args, name) < 0:
            bad.append(f"--{name.replace('_', '-')} cannot be negative (got {getattr(args, name)})")
    if args.ways < 2:
        bad.append(f"--ways must be at least 2 (got {args.ways})")
    for name in ("inner_lr", "meta_lr"):
        if not math.isfinite(getattr(args, name)):
            bad.append(f"--{name.replace('_', '-')} must be a finite number (got {getattr(args, name)})")
    if args.image_size < 16:
        bad.append(f"--image-size must be at least 16 for four 2x2 poolings (got {args.image_size})")
    if bad:
        raise ConfigError(bad[0])


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name (try auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for, but this machine has no CUDA GPU")
    return device


def load_data(config, splits, progress=True):
    """{split: data split} for the run's dataset, plus where it came from (for logs)."""
    import data

    out = {}
    for split in splits:
        if config["data"]:
            out[split] = data.load_split(
                config["data"],
                split,
                config["image_size"],
                None if config["cache_dir"] == "none" else config["cache_dir"],
                progress=progress,
            )
        else:
            out[split] = data.synthetic_split(
                split, config["image_size"], config["synthetic_per_class"], config["seed"]
            )
    return out


def _write_rows(path, rows, keep_upto=None):
    """Append dict rows to a CSV (header on creation). keep_upto: first drop rows past an iteration
    (rows written after the checkpoint a resumed run starts from)."""
    path = Path(path)
    if keep_upto is not None and path.exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["iteration"]) <= keep_upto]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            if kept:
                w = csv.DictWriter(f, fieldnames=list(kept[0]))
                w.writeheader()
                w.writerows(kept)
        os.replace(tmp, path)
    if not rows:
        return
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def default_out(config):
    method = "metasgd" if config["learn_lr"] else "maml"
    return str(Path("runs") / f"{method}-{config['ways']}w{config['shots']}s-seed{config['seed']}")


def train(args):
    """Meta-train as configured by `args` (see build_parser). Returns the run folder."""
    from tqdm import tqdm

    import data

    check_config(args)
    config = {k: v for k, v in vars(args).items()}
    out = Path(args.out or default_out(config))
    ckpt_path = out / "ckpt.pt"
    resumed = None
    if args.resume:
        if not ckpt_path.exists():
            raise CheckpointError(f"--resume: there is no checkpoint {ckpt_path} to resume from")
        resumed = load_checkpoint(ckpt_path)
        saved = resumed["config"]
        defaults = vars(build_parser().parse_args([]))
        for key, value in config.items():
            if key not in RESUME_MAY_CHANGE and value != defaults.get(key) and value != saved.get(key):
                raise CheckpointError(
                    f"--{key.replace('_', '-')} {value} disagrees with the checkpoint's "
                    f"{saved.get(key)}; drop the flag to resume, or start a new --out"
                )
        config = {**saved, **{k: config[k] for k in RESUME_MAY_CHANGE if k in config and config[k] != defaults.get(k)}}
    elif out.exists() and any(out.glob("*.pt")):
        raise CheckpointError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    config["out"] = str(out)
    progress = not config["no_progress"]
    device = resolve_device(config["device"])
    dtype = getattr(torch, config["dtype"])
    tasks_together = config["task_batching"] == "grouped" or (
        config["task_batching"] == "auto" and device.type == "cuda"
    )

    if not config["data"]:
        print(
            f"no --data given: using the built-in synthetic dataset ({config['image_size']}px glyphs, "
            f"64/16/20 classes, seed {config['seed']})"
        )
    splits = load_data(config, ["train", "val"], progress)
    data.check_episode_shape(splits["train"], config["ways"], config["shots"], config["queries"], "train split")
    data.check_episode_shape(splits["val"], config["ways"], config["shots"], config["eval_queries"], "val split")
    norm = resumed["norm"] if resumed else data.channel_stats(splits["train"])
    train_split, val_split = (data.split_to(s, device) for s in (splits["train"], splits["val"]))
    norm_on_device = data.split_to(norm, device)  # a host-to-device copy per episode would sync

    ways = config["ways"]
    if resumed:
        params = {n: p.to(device, dtype).requires_grad_() for n, p in resumed["params"].items()}
        lrs = resumed["inner_lrs"]
        inner_lrs = (
            {n: r.to(device, dtype).requires_grad_() for n, r in lrs.items()} if isinstance(lrs, dict) else float(lrs)
        )
    else:
        init_gen = torch.Generator().manual_seed(config["seed"])
        params = init_params(ways, config["hidden"], config["image_size"], generator=init_gen, dtype=dtype)
        params = {n: p.to(device).requires_grad_() for n, p in params.items()}
        inner_lrs = config["inner_lr"]
        if config["learn_lr"]:
            rng = tuple(config["lr_init_range"]) if config["lr_init_range"] else None
            inner_lrs = {
                n: r.to(device).detach().requires_grad_()
                for n, r in init_inner_lrs(params, config["inner_lr"], rng, init_gen).items()
            }
    learned = list(inner_lrs.values()) if isinstance(inner_lrs, dict) else []
    optimizer = torch.optim.Adam(list(params.values()) + learned, lr=config["meta_lr"])
    episodes = torch.Generator(device).manual_seed(config["seed"] + 12345)
    start, elapsed, best = 0, 0.0, (-1.0, -1)
    if resumed:
        if resumed.get("generator_device", "cpu") != device.type:
            raise ConfigError(
                f"this run drew its episodes from a {resumed.get('generator_device', 'cpu')} random "
                f"generator; resume it with --device {resumed.get('generator_device', 'cpu')} "
                f"(or start a new run)"
            )
        optimizer.load_state_dict(resumed["optimizer"])
        episodes.set_state(resumed["generator"])
        start, elapsed, best = resumed["iteration"], resumed["elapsed"], tuple(resumed["best_val"])
    out.mkdir(parents=True, exist_ok=True)
    # Rows written after the checkpoint we resume from would be written again: drop them.
    _write_rows(out / "metrics.csv", [], keep_upto=start if resumed else -1)
    _write_rows(out / "lr_stats.csv", [], keep_upto=start if resumed else -1)

    def checkpoint(iteration):
        return {
            "program": PROGRAM,
            "format": CHECKPOINT_FORMAT,
            "config": config,
            "iteration": iteration,
            "params": {n: p.detach().cpu() for n, p in params.items()},
            "inner_lrs": (
                {n: r.detach().cpu() for n, r in inner_lrs.items()} if isinstance(inner_lrs, dict) else inner_lrs
            ),
            "optimizer": optimizer.state_dict(),
            "generator": episodes.get_state(),
            "generator_device": device.type,
            "norm": norm,
            "elapsed": elapsed,
            "best_val": list(best),
            "classes": splits["train"]["classes"],
        }

    def finite_state():
        return all(bool(torch.isfinite(t).all()) for t in list(params.values()) + learned)

    def validate(iteration):
        accs = evaluate(
            params,
            inner_lrs,
            val_split,
            norm_on_device,
            config["val_tasks"],
            ways,
            config["shots"],
            config["eval_queries"],
            config["eval_steps"],
            seed=config["seed"] + 777,
        )
        return mean_ci95(accs)

    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    total = config["iterations"]
    loss_sum = torch.zeros((), device=device)
    acc_sum = torch.zeros((), device=device)
    bad_iteration = torch.full((), -1, device=device, dtype=torch.long)
    since_eval, tic = 0, time.time()
    bar = tqdm(
        total=total,
        initial=start,
        desc="meta-SGD" if learned else "MAML",
        disable=not progress,
        unit="it",
        dynamic_ncols=True,
    )
    try:
        if start == 0:
            val_acc, val_ci = validate(0)
            _write_rows(
                out / "metrics.csv",
                [
                    {
                        "iteration": 0,
                        "train_loss": "",
                        "train_acc": "",
                        "val_acc": val_acc,
                        "val_ci95": val_ci,
                        "elapsed_s": 0.0,
                    }
                ],
            )
            if learned:
                _write_rows(out / "lr_stats.csv", [{"iteration": 0, **r} for r in rate_statistics(inner_lrs)])
            data.atomic_save(checkpoint(0), ckpt_path)  # so even a run that fails at once can be resumed
        iteration = start
        while iteration < total and stop["signal"] is None:
            episode = data.sample_episodes(
                train_split,
                config["meta_batch"],
                ways,
                config["shots"],
                config["queries"],
                episodes,
                norm_on_device,
                dtype=dtype,
            )
            loss, acc = meta_step(
                params, inner_lrs, optimizer, episode, config["inner_steps"], config["first_order"], tasks_together
            )
            iteration += 1
            since_eval += 1
            loss_sum += loss
            acc_sum += acc
            # Remember the first non-finite iteration without a host sync; it is read at log points.
            bad_iteration = torch.where(
                (bad_iteration < 0) & ~torch.isfinite(loss), torch.full_like(bad_iteration, iteration), bad_iteration
            )
            bar.update(1)
            at_eval = iteration % config["eval_every"] == 0 or iteration == total
            at_save = at_eval or iteration % config["save_every"] == 0 or stop["signal"] is not None
            if iteration % config["log_every"] == 0 or at_save:
                if int(bad_iteration) >= 0 or not finite_state():
                    first = int(bad_iteration) if int(bad_iteration) >= 0 else iteration
                    raise FloatingPointError(
                        f"training diverged: the meta-loss or parameters became non-finite at iteration "
                        f"{first}; the last good checkpoint {ckpt_path} was left untouched. Try a smaller "
                        f"--inner-lr or --meta-lr (now {config['inner_lr']} and {config['meta_lr']})"
                    )
                bar.set_postfix(
                    loss=f"{loss.item():.3f}",
                    acc=f"{acc.item():.3f}",
                    best_val=f"{best[0]:.3f}" if best[1] >= 0 else "-",
                )
            if at_eval:
                val_acc, val_ci = validate(iteration)
                now = time.time()
                elapsed += now - tic
                tic = now
                _write_rows(
                    out / "metrics.csv",
                    [
                        {
                            "iteration": iteration,
                            "train_loss": (loss_sum / since_eval).item(),
                            "train_acc": (acc_sum / since_eval).item(),
                            "val_acc": val_acc,
                            "val_ci95": val_ci,
                            "elapsed_s": round(elapsed, 3),
                        }
                    ],
                )
                if learned:
                    _write_rows(
                        out / "lr_stats.csv", [{"iteration": iteration, **r} for r in rate_statistics(inner_lrs)]
                    )
                loss_sum.zero_()
                acc_sum.zero_()
                since_eval = 0
                if val_acc > best[0]:
                    best = (val_acc, iteration)
                    data.atomic_save(checkpoint(iteration), out / "best.pt")
                bar.write(
                    f"iteration {iteration}: val accuracy {100 * val_acc:.2f} +- {100 * val_ci:.2f}% "
                    f"(best {100 * best[0]:.2f}% at {best[1]})"
                )
            if at_save:
                now = time.time()
                elapsed += now - tic
                tic = now
                data.atomic_save(checkpoint(iteration), ckpt_path)
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if stop["signal"] is not None:
        print(
            f"interrupted: saved iteration {iteration} to {ckpt_path}; continue with "
            f"python maml.py --resume --out {out}"
        )
        return out

    # Test accuracy of the best checkpoint on fixed test tasks, as MAML reports it.
    test_split = load_data(config, ["test"], progress)["test"]
    data.check_episode_shape(test_split, ways, config["shots"], config["eval_queries"], "test split")
    best_ckpt = load_checkpoint(out / "best.pt")
    best_params = {n: p.to(device, dtype) for n, p in best_ckpt["params"].items()}
    best_lrs = checkpoint_lrs(best_ckpt)
    if isinstance(best_lrs, dict):
        best_lrs = {n: r.to(device, dtype) for n, r in best_lrs.items()}
    accs = evaluate(
        best_params,
        best_lrs,
        data.split_to(test_split, device),
        norm_on_device,
        config["test_tasks"],
        ways,
        config["shots"],
        config["eval_queries"],
        config["eval_steps"],
        seed=config["seed"] + 999,
    )
    test_acc, test_ci = mean_ci95(accs)
    result = {
        "test_acc": test_acc,
        "test_ci95": test_ci,
        "tasks": config["test_tasks"],
        "checkpoint": "best.pt",
        "iteration": best_ckpt["iteration"],
        "val_acc": best[0],
    }
    (out / "test.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"test accuracy ({config['test_tasks']} tasks, best.pt from iteration {best_ckpt['iteration']}): "
        f"{100 * test_acc:.2f} +- {100 * test_ci:.2f}%  ->  {out}"
    )
    return out


def run_cli(main_fn, argv=None, errors=()):
    """Run a script's main: known errors (and `errors`) end as one line on stderr with exit code 2
    (1 for divergence), no traceback unless --debug."""
    import data

    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return main_fn(argv)
    except (data.DataError, CheckpointError, ConfigError, FloatingPointError, *errors) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1 if isinstance(e, FloatingPointError) else 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def main(argv=None):
    return train(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
