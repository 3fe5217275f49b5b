"""Starting a run, or resuming one: the run folders (one, or one per --seeds seed), locked; each run's
config, with the rules a resumed run must meet (the flags the user named agree with its checkpoint,
its data is the data it trained on, stacked seeds continue from one iteration); and the run states
that maml.py and bench.py train, built by one function (`new_runs`).
"""

import argparse
import contextlib
import os
import secrets
import shutil
from pathlib import Path

import torch

import data
import fetch
import flags
from cli import (
    CheckpointError,
    ConfigError,
    WriteError,
    atomic_write,
    lock_outputs,
    note_removed,
    refuse_to_overwrite,
    remove_stale_temporaries,
)
from logs import LR_STATS_COLUMNS, METRICS_COLUMNS, check_header
from run_folder import RunState, files_of_other_runs, load_checkpoint, restore


@contextlib.contextmanager
def opened_runs(args, writer, given=()):
    """Each run that `args` asks for (one, or one per --seeds seed) as (config, the checkpoint it
    resumes or None), its folder locked by the writing process while the block runs and cleared of the
    temporary files a killed run left. A write that fails in the block (a full disk) ends the run in
    one line that says which checkpoints are left."""
    check_seeds_folder(args)
    if args.resume and args.seeds is None:  # before a name is fetched, which can take long
        checkpoint_to_resume(Path(args.out or default_out(vars(args))))
    progress = writer and not args.no_progress
    args.data, args.data_name = fetch.resolve_data(args.data, not writer, progress, fetcher=writer)
    with contextlib.ExitStack() as locks:
        seeds = per_seed_args(args)
        for run_args in seeds if writer else []:
            locks.enter_context(lock_outputs(Path(run_args.out), "run.lock", "a training run"))
            note_removed(remove_stale_temporaries(run_args.out), run_args.out)
        if args.seeds is not None and args.resume and writer:
            level_seed_checkpoints([Path(run_args.out) for run_args in seeds])
        if args.seeds is not None and args.resume and not any((Path(a.out) / "ckpt.pt").exists() for a in seeds):
            raise CheckpointError(
                f"--resume --seeds: no seed folder ({', '.join(a.out for a in seeds)}) holds a checkpoint to "
                "resume from; drop --resume to start them"
            )
        starts = []
        for run_args in seeds:
            out = Path(run_args.out)
            if args.seeds is not None and args.resume and not (out / "ckpt.pt").exists():
                run_args.resume = False  # a start that failed before this seed's first save: it begins afresh
            starts.append(start_run(run_args, out, given))
        check_seeds_level(starts)
        for config, resumed in starts:
            if resumed:
                check_run_folder(Path(config["out"]), resumed, writer)
        try:
            yield starts
        except WriteError as e:
            raise WriteError(f"{e}; {checkpoint_left([c['out'] for c, _ in starts], args)}") from e


def check_seeds_folder(args):
    """--resume finds what --out holds: a single-seed run (ckpt.pt) is not resumed as --seeds, and a
    folder of --seeds runs (seed<S>/ckpt.pt) not as one run; either is refused, naming what it holds."""
    out = Path(args.out) if args.resume and args.out else None
    if out is None or not out.is_dir():
        return
    names = [p.parent.name[4:] for p in out.glob("seed*/ckpt.pt")]
    seeds = " ".join(map(str, sorted(int(n) for n in names if n.isdigit())))
    if args.seeds is not None and (out / "ckpt.pt").exists():
        raise ConfigError(
            f"--resume --seeds: {out} holds a single-seed run (its ckpt.pt), not a folder per seed; "
            "resume it without --seeds"
        )
    if args.seeds is None and seeds and not (out / "ckpt.pt").exists():
        raise ConfigError(
            f"--resume: {out} holds the runs of --seeds {seeds}, a folder per seed; resume them with --seeds {seeds}"
        )


def default_out(config):
    method = flags.method_of(config)
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


def start_run(args, out, given=()):
    """The run's config and, on --resume, the checkpoint it continues from. A resumed run keeps the
    checkpoint's config; only the flags that may change on --resume (flags.SETTINGS) may differ from it
    (every other flag the user named, `given`, is compared, default or not), and --iterations may not
    fall below the iteration it has reached."""
    config = dict(vars(args))
    ckpt_path = out / "ckpt.pt"
    refuse_to_overwrite(out, any(out.glob("*.pt")), args.resume, "a run")
    if not args.resume:
        return {**config, **data.dataset_defaults(args.data, args.image_size, args.rotations), "out": str(out)}, None
    resumed = load_checkpoint(checkpoint_to_resume(out))
    refuse_imported(resumed, out / "ckpt.pt")
    saved, defaults = resumed["config"], vars(flags.build_parser().parse_args([]))
    if "method" in given and flags.method_of(config) != flags.method_of(saved):
        raise CheckpointError(
            f"--method {flags.method_of(config)} disagrees with the checkpoint's {flags.method_of(saved)}; drop "
            "the flag to resume, or start a new --out"
        )
    for key, value in config.items():
        named = (key in given and value != "auto") or value != defaults.get(key)  # 'auto' keeps the run's own
        if key not in flags.MAY_CHANGE_ON_RESUME and named and value != saved.get(key):
            raise CheckpointError(
                f"--{key.replace('_', '-')} {value} disagrees with the checkpoint's "
                f"{saved.get(key)}; drop the flag to resume, or start a new --out"
            )
    changed = {k: config[k] for k in flags.MAY_CHANGE_ON_RESUME if k in config and config[k] != defaults.get(k)}
    merged = {**defaults, **saved, **changed, "out": str(out)}  # defaults: flags newer than the run
    if merged["iterations"] < resumed["iteration"]:
        raise ConfigError(
            f"--iterations {merged['iterations']} is below iteration {resumed['iteration']}, which {ckpt_path} "
            f"has reached; give at least {resumed['iteration']}"
        )
    return merged, resumed


def checkpoint_to_resume(out):
    if not (out / "ckpt.pt").exists():
        if (out / "best.pt").is_file():
            refuse_imported(load_checkpoint(out / "best.pt"), out / "best.pt")
        raise CheckpointError(f"--resume: there is no checkpoint {out / 'ckpt.pt'} to resume from")
    return out / "ckpt.pt"


def refuse_imported(ckpt, path):
    """A model import_model.py wrote has no optimizer state and unknown training settings."""
    if ckpt.get("imported"):
        raise CheckpointError(
            f"{path} was imported by import_model.py ({ckpt['imported']['format']}), not trained here, so it cannot be "
            "trained further (its optimizer state and training settings are unknown); evaluate or probe it instead"
        )


def check_run_folder(out, resumed, writer):
    """A run folder holds one run: before a resumed run trains, every file of it must be its own (the same
    run id as ckpt.pt: run.json, naming the run of the logs, best.pt, test.json, ckpt.prev.pt), and best.pt
    its best model so far. A missing best.pt that ckpt.pt can stand for is rebuilt from it (by the writer)."""
    best_at = resumed["best_val"][1]
    for log, columns in (("metrics.csv", METRICS_COLUMNS), ("lr_stats.csv", LR_STATS_COLUMNS)):
        check_header(out / log, columns)
    best = load_checkpoint(out / "best.pt") if (out / "best.pt").exists() else None
    others = files_of_other_runs(out, resumed, best)
    if others:
        raise CheckpointError(
            f"--resume: {out / 'ckpt.pt'} is run {resumed.get('run_id')}, but {out / others[0][0]} is "
            f"{others[0][1]}: a run folder holds one run's files; put each file back in its own run's folder, or start "
            f"a new --out"
        )
    if best is not None and best["iteration"] != best_at and not best["iteration"] > resumed["iteration"]:
        raise CheckpointError(
            f"--resume: {out / 'best.pt'} holds iteration {best['iteration']}, but this run's best model so far is "
            f"from iteration {best_at} ({out / 'ckpt.pt'}); put the run's own best.pt back, or start a new --out"
        )
    if best is None and best_at > 0 and best_at != resumed["iteration"]:
        raise CheckpointError(
            f"--resume: {out / 'best.pt'}, this run's best model so far (iteration {best_at}), is missing, and "
            f"ckpt.pt (iteration {resumed['iteration']}) cannot stand in for it; put best.pt back, or start the run "
            f"anew in another --out"
        )
    if best is None and best_at > 0 and writer:  # ckpt.pt is the best model: best.pt is its copy
        atomic_write(out / "best.pt", lambda tmp: shutil.copyfile(out / "ckpt.pt", tmp))
        print(f"rebuilt {out / 'best.pt'} from ckpt.pt, which holds the same model (iteration {best_at})")


def level_seed_checkpoints(outs):
    """Stacked seeds save one after another, each keeping its previous checkpoint (ckpt.prev.pt) until
    every seed has saved (`save_checkpoints`). A kill between two saves leaves some seeds one save
    ahead: they go back to their previous checkpoint, which every seed has reached, and the run goes on
    from there exactly as an uninterrupted one (their logs are cut back on --resume as always)."""
    reached = {out: reached_iteration(out / "ckpt.pt") for out in outs}
    common = min((i for i in reached.values() if i is not None), default=None)
    ahead = [out for out, i in reached.items() if i is not None and i > common]
    if ahead and all(reached_iteration(out / "ckpt.prev.pt") == common for out in ahead):
        for out in ahead:
            os.replace(out / "ckpt.prev.pt", out / "ckpt.pt")
        names = ", ".join(out.name for out in ahead)
        print(f"{names} had saved one checkpoint more than the other seeds (a kill between two saves): back to "
              f"iteration {common}, which every seed has")  # fmt: skip


def reached_iteration(path):
    """The iteration of the checkpoint at `path`, or None where there is none (or it cannot be read)."""
    try:
        return load_checkpoint(path)["iteration"] if path.exists() else None
    except CheckpointError:
        return None


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
    method = "".join(f" {flag}" for flag in flags.method_flags(flags.method_of(vars(args))))  # names the folders
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
    """Each run's state: theta, alpha and their Adam from `init_model(config, device, capturable)` (Adam's
    step count on the device for a CUDA graph), the episode generator, the data on the device; on
    --resume, then all that its checkpoint holds. The seeds share the data, except the synthetic
    dataset: it depends on the seed, and each seed gets its single-seed run's. The one place a run's
    state is built, for maml.py and bench.py alike."""
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
        identity = data.identity(host, config["data"])
        if resumed:
            check_same_data(resumed, identity, host)
        runs.append(new_run(config, resumed, host, on_device, init_model, device, cuda_graph))
        runs[-1].data_identity = identity
        runs[-1].rank, runs[-1].world = rank, world
    return runs


def check_same_data(resumed, identity, host):
    """A resumed run continues on the data it trained on: --data may name a moved folder, never other
    data. Checkpoints from before data identities were recorded are checked by their normalisation
    statistics (other training images give other ones), and a note says that is all that can be known."""
    if resumed.get("data_identity") is not None:
        differ = identity_differences(resumed["data_identity"], identity)
        if differ:
            raise ConfigError(
                f"--resume: this is not the data the run trained on ({differ[0]}); give the run's own data with "
                f"--data (it may have moved; its content may not change)"
            )
        return
    norm = data.channel_stats(host["train"])
    if not all(torch.allclose(norm[k], resumed["norm"][k].float(), rtol=1e-5, atol=1e-6) for k in ("mean", "std")):
        raise ConfigError(
            "--resume: this is not the data the run trained on (the mean and std of its training images differ "
            "from the ones the checkpoint stored); give the run's own data with --data"
        )
    print("note: this checkpoint predates data identities; the mean and std of the training images, all that "
          "could be checked, match the ones it stored")  # fmt: skip


def identity_differences(saved, identity):
    """'what: then, now' for each part of a data identity (data.identity) that differs."""
    differ = (
        [f"layout {saved['layout']} then, {identity['layout']} now"] if saved["layout"] != identity["layout"] else []
    )
    for split, fields in ((k, v) for k, v in saved.items() if k != "layout"):
        for key, then in fields.items():
            now = identity.get(split, {}).get(key)
            differ += [f"{split} split {key.replace('_', ' ')}: {then} then, {now} now"] if then != now else []
    return differ


def episode_generator(config, device):
    """The generator that draws a run's meta-batches, on the run's device (so sampling never syncs)."""
    return torch.Generator(device).manual_seed(config["seed"] + 12345)


def new_run(config, resumed, host, on_device, init_model, device, cuda_graph):
    """One run's state, from its config, the checkpoint it resumes (or None) and its splits (all on the
    host, and train and val on the device)."""
    capturable = cuda_graph and device.type == "cuda"  # Adam's step count on the GPU, which a graph can update
    params, inner_lrs, optimizer = init_model(config, device, capturable)
    norm = resumed["norm"] if resumed else data.channel_stats(host["train"])
    run = RunState(
        config=config,
        params=params,
        inner_lrs=inner_lrs,
        optimizer=optimizer,
        episode_rng=episode_generator(config, device),
        norm=data.split_to(norm, device),
        classes=resumed["classes"] if resumed else host["train"]["classes"],
        splits={**on_device, "test": host["test"]},
        resumed=resumed is not None,
        run_id=(resumed or {}).get("run_id") or secrets.token_hex(8),
    )
    if resumed:
        restore(run, resumed)
    return run
