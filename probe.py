"""The paper's three-regime embedding probe (section 4, last paragraph; results in section 5.3).

    python probe.py runs/metasgd-5w1s-seed0/best.pt                  # 40,000 iterations on the test split
    python probe.py runs/x/best.pt --rates negative --iterations 2000  # ablation: only the negative rates

The encoder is the trained Conv-4 without its linear head (the 1600-d output of block 4). Its quality
on a task: each class's support embedding(s) make a prototype, and each query takes the class of
the most cosine-similar prototype. One probe iteration:
    1. sample task A and task B (B's classes disjoint from A's unless --off-task any)
    2. pre:  accuracy of the meta-initialisation on A and on B
    3. adapt on A's support with the checkpoint's own rule (what the run adapted: all, ANIL's head, BOIL's body)
    4. on:   accuracy of the adapted encoder on A;  off: accuracy of the adapted encoder on B
    5. head: the adapted network's ordinary classification accuracy on A's query (sanity column)
The design is paired: on-task change = on_A - pre_A and off-task change = off_B - pre_B, per iteration.
With --similarity, each iteration also records the linear CKA of every conv block's and the head's output
before vs after adaptation, on A's queries (on-task) and on B's (off-task): where the features change.
"""

import contextlib
import csv
import functools
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import data
import distributed
import fetch
import flags
import gpu
import logs
import run_folder
import stats
from cli import ConfigError, DataError, WriteError
from maml import BN_EPS, adapt, as_inner_lrs, blocks_tasks, conv4_tasks, features_tasks, per_task
from stats import CKA_LAYERS

RATE_MODES = ("learned", "negative", "positive", "abs", "flipped", "fixed")


def prototype_accuracy(support_f, support_y, query_f, query_y, ways):
    """Per-task accuracy of the cosine nearest-prototype classifier.
    support_f [T, S, D] with labels [T, S]; query_f [T, Q, D] with labels [T, Q]. A class's prototype
    is the mean of its support embeddings (with one shot, the embedding itself)."""
    onehot = F.one_hot(support_y, ways).to(support_f.dtype)  # [T, S, ways]
    prototypes = onehot.transpose(1, 2) @ support_f / onehot.sum(1)[..., None]
    similarity = F.normalize(query_f, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
    return (similarity.argmax(-1) == query_y).to(support_f.dtype).mean(1)


def encoder_accuracy(task_params, episode, ways, bn_eps=BN_EPS):
    """Prototype accuracy of the encoder on each task; support and query forwarded separately, so
    BatchNorm uses each set's own batch statistics, as in training."""
    with torch.no_grad():
        support_f = features_tasks(task_params, episode["support_x"], bn_eps)
        query_f = features_tasks(task_params, episode["query_x"], bn_eps)
    check_finite([support_f, query_f])
    return prototype_accuracy(support_f, episode["support_y"], query_f, episode["query_y"], ways)


def layer_outputs(task_params, x, bn_eps=BN_EPS):
    """The outputs of the four conv blocks and the head (logits) on images x, per task."""
    return [*blocks_tasks(task_params, x, bn_eps), conv4_tasks(task_params, x, bn_eps)]


def similarity(initial, adapted, task_a, task_b, bn_eps=BN_EPS):
    """Linear CKA of each layer's output before and after adaptation, on task A's query images (on-task)
    and on task B's (off-task): {"cka_on_block1": [T], ...}. At 0 steps, or for a layer that does not
    adapt, the outputs are identical and the CKA is exactly 1."""
    out = {}
    with torch.no_grad():
        for regime, task in (("on", task_a), ("off", task_b)):
            before, after = (
                layer_outputs(initial, task["query_x"], bn_eps),
                layer_outputs(adapted, task["query_x"], bn_eps),
            )
            for layer, b, a in zip(CKA_LAYERS, before, after, strict=True):
                out[f"cka_{regime}_{layer}"] = stats.linear_cka(b, a)
    return out


def probe_tasks(params, rates, task_a, task_b, steps, ways, similar=False, bn_eps=BN_EPS):
    """One probe iteration for each of a batch of task pairs: dict of per-pair accuracies (and with
    `similar`, the layers' CKA)."""
    tasks, net = task_a["support_x"].shape[0], functools.partial(conv4_tasks, bn_eps=bn_eps)
    initial = per_task(params, tasks)
    adapted = adapt(initial, rates, task_a["support_x"], task_a["support_y"], steps, create_graph=False, net=net)
    adapted = {n: p.detach() for n, p in adapted.items()}
    with torch.no_grad():
        logits = net(adapted, task_a["query_x"])
    check_finite([logits])
    head = (logits.argmax(-1) == task_a["query_y"]).float().mean(1)
    return {
        "pre_A": encoder_accuracy(initial, task_a, ways, bn_eps),
        "on_A": encoder_accuracy(adapted, task_a, ways, bn_eps),
        "pre_B": encoder_accuracy(initial, task_b, ways, bn_eps),
        "off_B": encoder_accuracy(adapted, task_b, ways, bn_eps),
        "head_A": head,
        **(similarity(initial, adapted, task_a, task_b, bn_eps) if similar else {}),
    }


def check_finite(outputs):
    """Accuracies of non-finite features or logits would be numbers without meaning: a probe whose
    adaptation diverges (rates far too large) stops, saying so. `outputs`: tensors of [tasks, ...]."""
    finite = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in outputs]).all(0)
    if not bool(finite.all()):
        raise FloatingPointError(
            f"the adaptation diverged: the features or logits of {int((~finite).sum())} of {finite.numel()} tasks "
            f"became non-finite (NaN or infinite), so no accuracy can be measured; probe with smaller rates "
            f"(--rates, --inner-lr) or fewer --steps"
        )


def probe_rates(inner_lrs, mode, fixed_lr=None, meta_sgd=True):
    """The inner rates a probe adapts with, derived from the checkpoint's `inner_lrs`.
    negative/positive keep only entries of that sign (the rest zero), abs and flipped take |alpha|
    and -alpha, fixed is one scalar (`fixed_lr`) for every parameter that has a rate (the ones the run adapted)."""
    if mode == "fixed":
        if fixed_lr is None:
            raise ConfigError("--rates fixed needs --inner-lr")
        return as_inner_lrs(fixed_lr, inner_lrs)
    if mode in ("negative", "positive") and not meta_sgd:
        alpha = f"{next(iter(inner_lrs.values())).item():g}"
        raise ConfigError(
            f"--rates {mode} needs a Meta-SGD checkpoint (learned per-parameter rates); "
            f"this is a MAML checkpoint with one fixed rate {alpha}"
        )
    transform = {
        "learned": lambda r: r,
        "negative": lambda r: r.clamp(max=0),
        "positive": lambda r: r.clamp(min=0),
        "abs": abs,
        "flipped": lambda r: -r,
    }[mode]
    return {n: transform(r) for n, r in inner_lrs.items()}


def p_value(test, with_t=False):
    if not math.isfinite(test["p"]):  # e.g. ANIL's encoder: its changes are all 0
        return "no test (the values do not vary)"
    return (f"t = {test['t']:.3f}, " if with_t else "") + f"p = {test['p']:.3g}"


def format_summary(summary, title):
    r = summary["regimes"]
    pct = lambda d: stats.percent(d["mean"], d["ci95"], "iteration")
    lines = [
        title,
        f"  pre-adaptation  A: {pct(r['pre_A'])}   B: {pct(r['pre_B'])}",
        f"  on-task (A)       {pct(r['on_A'])}   change {pct(summary['on_change'])}",
        f"  off-task (B)      {pct(r['off_B'])}   change {pct(summary['off_change'])}",
        f"  head on A (usual MAML metric) {pct(r['head_A'])}",
        f"  paired t-test, on-task vs off-task change: {p_value(summary['paired_t_on_vs_off'], with_t=True)}",
        f"  on-task change vs 0: {p_value(summary['on_change_vs_zero'])};  "
        f"off-task change vs 0: {p_value(summary['off_change_vs_zero'])}",
    ]
    for regime, where in (("on", "task A"), ("off", "task B")) if "similarity" in summary else ():
        cka = ", ".join(f"{layer} {summary['similarity'][f'cka_{regime}_{layer}']['mean']:.4f}" for layer in CKA_LAYERS)
        lines.append(f"  linear CKA before vs after adaptation, on {where}'s queries: {cka}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Script
# ----------------------------------------------------------------------------------------------


def build_parser():
    p = cli.argument_parser(
        "Three-regime embedding probe of a trained checkpoint: prototype accuracy of the encoder "
        "before adaptation, after adapting on task A (on A), and after adapting on A (on another "
        "task B). Writes every iteration to a CSV and a summary with t-tests to a JSON."
    )
    a = p.add_argument
    a("checkpoint", help="a checkpoint written by maml.py (best.pt or ckpt.pt)")
    a(
        "--data",
        default=None,
        help="dataset folder, or a name (omniglot, mini-imagenet: fetched on first use, as maml.py --data) "
        "(default: the one the checkpoint was trained on, or the synthetic dataset if it was trained on that)",
    )
    a("--split", default="test", choices=data.SPLITS, help="split the probe tasks come from")
    a("--iterations", type=int, default=40000, help="probe iterations (task pairs); the paper used 40,000")
    a("--queries", type=int, default=15, help="query images per class in each task")
    a(
        "--off-task",
        choices=["disjoint", "any"],
        default="disjoint",
        help="'disjoint': task B shares no class with task A; 'any': B is drawn independently",
    )
    a(
        "--rates",
        choices=RATE_MODES,
        default="learned",
        help="which rates adapt: the checkpoint's own "
        "('learned'), only its negative or positive entries, |alpha|, -alpha, or one fixed scalar --inner-lr",
    )
    a("--inner-lr", type=float, default=None, help="the scalar rate of --rates fixed")
    a("--steps", type=int, default=None, help="adaptation steps (default: the checkpoint's --inner-steps)")
    a(
        "--batch",
        type=int,
        default=0,
        help="task pairs probed at once (0: 64 on a GPU, 8 on the CPU); "
        "part of the seeding, so a resumed probe keeps its batch",
    )
    a(
        "--similarity",
        action="store_true",
        help="also record, per iteration, the linear CKA between each layer's output (the four conv blocks and "
        "the head's logits) before and after adaptation, on task A's query images (on-task) and on task B's "
        "(off-task); the accuracies and task pairs stay those of the same probe without it",
    )
    a("--seed", type=int, default=0, help="seeds the tasks")
    add_run_flags(a)
    return p


def add_run_flags(a):
    """Where the records go and how the probe runs: nothing the records depend on."""
    a("--out", type=cli.folder_name, default=None, help="folder for the records (default: beside the checkpoint)")
    a("--resume", action="store_true", help="continue an interrupted probe with the same settings")
    a("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda', ...")
    a("--cache-dir", default="default", help="decoded-image cache folder ('none' disables)")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--debug", action="store_true", help="show full tracebacks on errors")


def output_stem(args, steps_default):
    """probe.csv for the paper's settings; options that differ are named in the file name, so the
    ablations of one checkpoint sit side by side (probe-rates-negative.csv, probe-steps10.csv ...)."""
    parts = ["probe"]
    if args.split != "test":
        parts.append(args.split)
    if args.rates != "learned":
        parts.append(f"rates-{args.rates}" + (f"{args.inner_lr:g}" if args.rates == "fixed" else ""))
    if args.steps is not None and args.steps != steps_default:
        parts.append(f"steps{args.steps}")
    if args.off_task != "disjoint":
        parts.append("offany")
    if args.seed != 0:
        parts.append(f"seed{args.seed}")
    return "-".join(parts)


def check_flags(args):
    if args.iterations < 1 or args.queries < 1 or args.batch < 0 or (args.steps is not None and args.steps < 0):
        raise ConfigError("--iterations and --queries must be at least 1, --batch and --steps not negative")
    if args.inner_lr is not None and not math.isfinite(args.inner_lr):
        raise ConfigError(f"--inner-lr must be a finite number (got {args.inner_lr})")
    if args.rates == "fixed" and args.inner_lr is None:
        raise ConfigError("--rates fixed needs --inner-lr")
    if not 0 <= args.seed <= flags.SEED_MAX:
        raise ConfigError(f"--seed must be in 0..{flags.SEED_MAX} (got {args.seed})")


def finished_rows(records_path, summary_path, settings, resume):
    """On --resume, the rows of the whole chunks an interrupted probe wrote (a kill can leave the last
    chunk half-written, or a torn or NUL-padded last row, which is dropped and said so); with no
    earlier records, none. Damage followed by good rows is refused, naming the line."""
    has_records = records_path.exists() and bool(logs.read_log(records_path)[0])  # a header alone is no record
    cli.refuse_to_overwrite(records_path, has_records, resume, "probe records")
    if not has_records:
        return []
    saved = logs.read_json(summary_path).get("settings") if summary_path.exists() else None

    def comparable(s):  # older probes lack the file name, the similarity setting and the run id
        left_out = ("iterations", "checkpoint_file") + (() if "checkpoint_run_id" in saved else ("checkpoint_run_id",))
        return {"similarity": False, **{k: v for k, v in s.items() if k not in left_out}}

    if saved is not None and comparable(saved) != comparable(settings):
        differ = [k for k in {**comparable(saved), **comparable(settings)} if saved.get(k) != settings.get(k)]
        what = "; ".join(f"{k}: {saved.get(k)!r} then, {settings.get(k)!r} now" for k in differ)
        raise ConfigError(f"--resume: the settings differ from those {summary_path} was made with ({what})")
    rows, damage = logs.repairable(records_path, DataError)
    if len(rows) > settings["iterations"]:
        raise ConfigError(
            f"--iterations {settings['iterations']} is below the {len(rows)} iterations {records_path} holds; give "
            f"at least {len(rows)} (finished records are never cut)"
        )
    logs.note_repair(records_path, damage)
    batch, iterations = settings["batch"], settings["iterations"]
    rows_in = {}
    for row in rows:
        rows_in[int(row["chunk"])] = rows_in.get(int(row["chunk"]), 0) + 1
    n_chunks = math.ceil(iterations / batch)
    whole = [c for c in range(n_chunks) if rows_in.get(c, 0) == min(batch, iterations - c * batch)]
    first_missing = next((c for c in range(n_chunks) if c not in whole), n_chunks)
    return [row for row in rows if int(row["chunk"]) < first_missing]


def load_probe_split(args, config, quiet=False):
    """The split the probe tasks come from, checked against the checkpoint and the task shape."""
    root = args.data or config["data"]
    if not root and not quiet:
        print(f"probing on the built-in synthetic dataset ({args.split} split), as the checkpoint was trained on it")
    need_ways = 2 * config["ways"] if args.off_task == "disjoint" else config["ways"]
    progress = not (args.no_progress or quiet)
    split = checkpoint_split(config, root, args.split, args.cache_dir, progress, need_ways, args.queries)
    return split


def checkpoint_split(config, root, split_name, cache_dir, progress, need_ways, queries):
    """A split of `root` (None: the synthetic dataset) for the checkpoint whose config is `config`: its
    image size and channels, at least `need_ways` classes, and images enough for its shots and `queries`."""
    split = data.load_splits(
        root,
        [split_name],
        image_size=config["image_size"],
        cache_dir=cache_dir,
        synthetic_per_class=config["synthetic_per_class"],
        seed=config["seed"],
        progress=progress,
        rotations=config["rotations"],
    )[split_name]
    if split["images"].shape[-1] != config["image_size"]:
        raise ConfigError(
            f"the data is {split['images'].shape[-1]}px but the checkpoint expects {config['image_size']}px"
        )
    if split["images"].shape[1] != config["channels"]:
        raise ConfigError(
            f"the data has {split['images'].shape[1]} channel(s) but the checkpoint expects {config['channels']}"
        )
    ways = config["ways"]
    if len(split["classes"]) < need_ways:
        raise DataError(
            f"the {split_name} split has {len(split['classes'])} classes; "
            + (f"disjoint {ways}-way tasks A and B need at least {need_ways} (or pass --off-task any)"
               if need_ways > ways else f"{ways}-way tasks need at least {ways}")
        )  # fmt: skip
    data.check_episode_shape(split, ways, config["shots"], queries, f"{split_name} split")
    return split


def probe_chunk(params, inner_lrs, split, norm, settings, chunk, n, dtype, bn_eps=BN_EPS):
    """Records of `n` probe iterations (task pairs) drawn from the chunk's own seed, so a resumed
    probe reproduces them."""
    ways, shots, queries = settings["ways"], settings["shots"], settings["queries"]
    chunk_seed = settings["seed"] * 1_000_003 + chunk
    g = torch.Generator(split["images"].device).manual_seed(chunk_seed)
    if settings["off_task"] == "disjoint":
        classes = data.sample_classes(split, n, 2 * ways, g)
        classes_a, classes_b = classes[:, :ways], classes[:, ways:]
    else:
        classes_a, classes_b = data.sample_classes(split, n, ways, g), data.sample_classes(split, n, ways, g)
    task_a, task_b = (
        data.sample_episodes(
            split,
            tasks=n,
            ways=ways,
            shots=shots,
            queries=queries,
            generator=g,
            norm=norm,
            classes=classes,
            dtype=dtype,
        )
        for classes in (classes_a, classes_b)
    )
    result = probe_tasks(params, inner_lrs, task_a, task_b, settings["steps"], ways, settings["similarity"], bn_eps)
    result = {k: v.cpu().tolist() for k, v in result.items()}
    ca, cb = task_a["classes"].cpu().tolist(), task_b["classes"].cpu().tolist()
    return [
        {
            "iteration": chunk * settings["batch"] + i,
            "chunk": chunk,
            "chunk_seed": chunk_seed,
            **{k: repr(v[i]) for k, v in result.items()},
            "classes_A": " ".join(map(str, sorted(ca[i]))),
            "classes_B": " ".join(map(str, sorted(cb[i]))),
        }
        for i in range(n)
    ]


def probe_settings(args, ckpt, batch):
    """What the records depend on, saved beside them; --resume must find the same."""
    config = ckpt["config"]
    # The checkpoint is named twice: as given, and by its file name, which analyze.py looks up in the run
    # folder, so Table 1 shows the rates of the checkpoint that was probed.
    return {
        "checkpoint": str(args.checkpoint),
        "checkpoint_file": Path(args.checkpoint).name,
        "method": flags.method_of(config),
        "split": args.split,
        "iterations": args.iterations,
        "queries": args.queries,
        "off_task": args.off_task,
        "rates": args.rates,
        "inner_lr": args.inner_lr,
        "steps": config["inner_steps"] if args.steps is None else args.steps,
        "batch": batch,
        "seed": args.seed,
        "ways": config["ways"],
        "shots": config["shots"],
        "checkpoint_iteration": ckpt["iteration"],
        "checkpoint_run_id": ckpt.get("run_id"),  # whose model it is: analyze.py checks it against the run folder
        "data": args.data or config["data"] or "synthetic",
        "similarity": args.similarity,
    }


def append_chunk(records_path, rows, columns):
    """Append one chunk's records, flushed to disk so a kill keeps every finished chunk. A failed write
    (a full disk) ends in one line saying that --resume continues."""
    try:
        with open(records_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=columns).writerows(rows)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise WriteError(
            f"{cli.write_failure(records_path, e)}; its finished chunks are kept: make space, then run the "
            f"same command with --resume"
        ) from None


def run(args):
    """The probe of `args.checkpoint`. Its outputs are locked for the whole probe (one writer: rank 0
    under torchrun); inputs are checked before anything is written."""
    check_flags(args)
    ckpt = run_folder.load_checkpoint(args.checkpoint)
    config = ckpt["config"]
    if args.similarity and config["ways"] * args.queries < 3:  # two centred points: every CKA would be 1
        raise ConfigError(
            f"--similarity needs at least 3 query images per task to compare representations; this "
            f"{config['ways']}-way checkpoint with --queries {args.queries} gives {config['ways'] * args.queries}"
        )
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    stem = output_stem(args, config["inner_steps"])
    writer = distributed.is_writer()
    given = fetch.checkpoint_data(args.data, config)  # an imported model's may be a name, fetched on first use
    fetch.refuse_other_channels(given, config.get("channels", 3))
    args.data = fetch.resolve_data(given, not writer, writer and not args.no_progress, fetcher=writer)[0]
    with cli.lock_outputs(out, f"{stem}.lock", f"{stem}.csv") if writer else contextlib.nullcontext():
        if writer:
            cli.note_removed(cli.remove_stale_temporaries(out), out, "a killed process")
        rank, world, device = distributed.join_processes(cli.resolve_device(args.device))
        with distributed.processes_joined(world), gpu.precision_applied(config["precision"], device):
            return probe_process(args, ckpt, out / f"{stem}.csv", out / f"{stem}.json", rank, world, device)


@contextlib.contextmanager
def removed_if_empty(paths):
    """A new probe that fails before its first records (its adaptation diverges, say) leaves no files: a
    header and settings alone would block the next try as 'already holds probe records'."""
    try:
        yield
    except BaseException:
        records = paths[0] if paths else None
        if records is not None and records.exists() and not logs.read_log(records)[0]:
            for path in paths:
                path.unlink(missing_ok=True)
        raise


def probe_process(args, ckpt, records_path, summary_path, rank, world, device):
    config = ckpt["config"]
    inner_lrs = probe_rates(ckpt["inner_lrs"], args.rates, args.inner_lr, meta_sgd=config["learn_lr"])
    settings = probe_settings(args, ckpt, batch=args.batch or (64 if device.type == "cuda" else 8))
    done_rows = finished_rows(records_path, summary_path, settings, args.resume)
    split = data.split_to(load_probe_split(args, config, quiet=rank != 0), device)
    distributed.barrier(world)  # every process has read the old records and checked its inputs
    if rank == 0:
        # Every input is checked: only now is anything written. A resumed probe's summary is kept until
        # the new one replaces it (it may be a finished one); a new probe's settings are written first,
        # for --resume to compare.
        if not (records_path.exists() and summary_path.exists()):
            logs.write_json(summary_path, {"settings": settings})
        logs.write_rows(records_path, done_rows, logs.probe_columns(settings["similarity"]))

    dtype = getattr(torch, config["dtype"])
    params = {n: p.to(device, dtype) for n, p in ckpt["params"].items()}
    inner_lrs = {n: r.to(device, dtype) for n, r in inner_lrs.items()}
    norm = data.split_to(ckpt["norm"], device)
    batch, start, tic = settings["batch"], len(done_rows), time.time()

    def probe_one(chunk):
        n = min(batch, args.iterations - chunk * batch)
        return probe_chunk(params, inner_lrs, split, norm, settings, chunk, n, dtype, config["bn_eps"])

    desc = f"probe ({settings['method']}, rates {args.rates})"
    bar = tqdm(
        total=args.iterations,
        initial=start,
        desc=desc,
        unit="it",
        disable=args.no_progress or rank != 0,
        dynamic_ncols=True,
    )
    with bar, removed_if_empty([records_path, summary_path] if rank == 0 and not done_rows else []):
        chunks = distributed.gathered_in_turn(
            probe_one, start // batch, math.ceil(args.iterations / batch), rank, world
        )
        for rows in chunks:
            if rank == 0:
                append_chunk(records_path, rows, logs.probe_columns(settings["similarity"]))
            bar.update(len(rows))
    if rank != 0:
        return None
    return write_summary(settings, records_path, summary_path, args, seconds=time.time() - tic, start=start)


def write_summary(settings, records_path, summary_path, args, seconds, start):
    speed = round((args.iterations - start) / seconds, 2) if seconds > 0 else None
    summary = {
        "settings": settings,
        **stats.summarize(logs.read_records(records_path)),
        "seconds_this_session": round(seconds, 2),
        "iterations_per_second": speed,
    }
    logs.write_json(summary_path, summary)
    title = f"{settings['method']} probe of {args.checkpoint} ({args.iterations} iterations, {args.split} split, "
    print(format_summary(summary, title + f"rates {args.rates}, {settings['steps']} steps)"))
    print(f"records: {records_path}\nsummary: {summary_path}")
    return summary


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run_cli(main)
