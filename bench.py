"""Speed of meta-training and probing: every variant against the plain per-task loop, in one run.

    python bench.py            # paper config and a small config, all variants, MAML and Meta-SGD
    python bench.py --quick    # fewer repeats and combinations, the paper's size first (the CPU: under 3 minutes)

All variants time the same episodes in the same process. Each row: ms per meta-iteration (median of
repeats after warm-up, device synchronised), iterations/s, peak memory, the ratio of the per-task
loop's time to the variant's (>1 = faster than the loop), and the relative difference (L2) of the
variant's meta-gradient from the loop's on the same episode (on a GPU it should stay under 1e-3). Variants:
    loop     maml.meta_loss(grouped=False): tasks one after another (the reference)
    grouped  maml.meta_loss(grouped=True): all tasks as one grouped-convolution network
    vmap     torch.func.vmap over tasks with torch.func.grad in the inner loop (defined below; it needs
             BatchNorm written out, as F.batch_norm under vmap is not correctly second order)
    cuda-graph  (CUDA only) maml.train_iteration, the training loop's own step, captured once as a
             CUDA graph and replayed: episode sampling, the grouped meta-step and Adam. Its meta-gradient
             is the grouped one (the same function), so its difference columns repeat the grouped row's;
             its time includes drawing the episodes, which the other rows leave out (a few kernels).
Then (--seeds N, default 8 on a GPU) the training step of one model against N models stepped together
(maml.py --seeds), and the ratio of their times.
"""

import gc
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import cli
import data
import flags
import gpu
import maml
import probe
import run_start

CONFIGS = {  # the paper's: 5-way 1-shot, 10 queries, 3 tasks, 5 inner steps, 84 px, 64 filters
    "paper": dict(image_size=84, hidden=64, ways=5, shots=1, queries=10, tasks=3, steps=5),
    "small": dict(image_size=32, hidden=32, ways=5, shots=1, queries=10, tasks=3, steps=5),
    "tiny": dict(image_size=16, hidden=8, ways=2, shots=1, queries=3, tasks=2, steps=1),  # plumbing checks only
}


def batch_norm_formula(x, weight, bias, eps=1e-5):
    """Training-mode BatchNorm written out. Under torch.func.vmap, F.batch_norm's double backward
    gives a wrong second-order meta-gradient in torch 2.14.1 (tests/test_bench.py pins it); this
    formula differentiates correctly."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def conv4_vmappable(params, x):
    """maml.conv4 with `batch_norm_formula` in place of F.batch_norm."""
    for i in range(1, 5):
        x = F.conv2d(x, params[f"conv{i}.weight"], params[f"conv{i}.bias"], padding=1)
        x = F.max_pool2d(F.relu(batch_norm_formula(x, params[f"bn{i}.weight"], params[f"bn{i}.bias"])), 2)
    return F.linear(x.flatten(1), params["head.weight"], params["head.bias"])


def meta_loss_vmap(params, inner_lrs, episode, steps, first_order=False, net=conv4_vmappable):
    """The meta-loss with tasks vectorised by torch.func.vmap (the functorch MAML example's way);
    torch.func.grad stays differentiable by the outer backward, so this is second order unless
    first_order detaches the inner gradients."""
    from torch.func import grad, vmap

    def task_loss(params, support_x, support_y, query_x, query_y):
        def support_loss(p):
            return F.cross_entropy(net(p, support_x), support_y)

        for _ in range(steps):
            grads = grad(support_loss)(params)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            params = {n: p - inner_lrs[n] * grads[n] for n, p in params.items()}
        logits = net(params, query_x)
        return F.cross_entropy(logits, query_y), (logits.argmax(-1) == query_y).float().mean()

    losses, accs = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(
        params, episode["support_x"], episode["support_y"], episode["query_x"], episode["query_y"]
    )
    return losses.mean(), accs.mean()


VARIANTS = {
    "loop": lambda p, lr, ep, steps, fo: maml.meta_loss(p, lr, ep, steps, fo, grouped=False),
    "grouped": lambda p, lr, ep, steps, fo: maml.meta_loss(p, lr, ep, steps, fo, grouped=True),
    "vmap": meta_loss_vmap,
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def episode_shape(cfg):
    return {k: cfg[k] for k in ("tasks", "ways", "shots", "queries")}


def setup(cfg, device, seed=0):
    split = data.split_to(data.synthetic_split("train", cfg["image_size"], per_class=30, seed=seed), device)
    norm = data.channel_stats(split)
    g = torch.Generator(device).manual_seed(seed)
    episodes = [data.sample_episodes(split, **episode_shape(cfg), generator=g, norm=norm) for _ in range(4)]
    params = maml.init_params(
        cfg["ways"], cfg["hidden"], cfg["image_size"], generator=torch.Generator().manual_seed(seed)
    )
    params = {n: p.to(device).requires_grad_() for n, p in params.items()}
    return split, norm, g, episodes, params


def meta_iteration(variant, params, inner_lrs, optimizer, episodes, steps, first_order, precision, device):
    """A function that runs one timed meta-iteration of `variant` per call, cycling through `episodes`."""
    calls = iter(range(10**9))

    def iteration():
        with gpu.autocast(precision, device):
            loss, accuracy = VARIANTS[variant](
                params, inner_lrs, episodes[next(calls) % len(episodes)], steps, first_order
            )
            maml.meta_step([optimizer], loss, accuracy)

    return iteration


def meta_gradients(variants, params, inner_lrs, episode, steps, first_order):
    """Each variant's flat meta-gradient (theta, and alpha for Meta-SGD) at the same point and episode."""
    wrt = list(params.values()) + [r for r in inner_lrs.values() if r.requires_grad]
    grads = {}
    for variant in variants:
        loss, _ = VARIANTS[variant](params, inner_lrs, episode, steps, first_order)
        grads[variant] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, wrt)])
    return grads


def float64_meta_gradient(params, inner_lrs, episode, steps, first_order):
    """The loop's meta-gradient in float64 at the same point and episode: the reference for precision."""
    p64 = {n: p.detach().double().requires_grad_() for n, p in params.items()}
    r64 = {n: r.detach().double().requires_grad_(r.requires_grad) for n, r in inner_lrs.items()}
    e64 = {k: v.double() if v.is_floating_point() else v for k, v in episode.items()}
    return meta_gradients(["loop"], p64, r64, e64, steps, first_order)["loop"]


def relative_difference(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def agreement(variants, precisions, params, inner_lrs, episode, steps, first_order, device):
    """{(precision, variant): (relative difference from the loop in that precision, from float64)},
    all at the same point, before any timed step moves the parameters."""
    exact = float64_meta_gradient(params, inner_lrs, episode, steps, first_order)
    out = {}
    for precision in precisions:
        with gpu.precision_applied(precision, device), gpu.autocast(precision, device):
            grads = meta_gradients(variants, params, inner_lrs, episode, steps, first_order)
        for variant in variants:
            out[precision, variant] = (
                relative_difference(grads[variant], grads["loop"]),
                relative_difference(grads[variant], exact),
            )
    return out


def training_step(cfg, device, method, first_order, precision, seeds=1):
    """The training loop's own step for `seeds` fresh models of this config, built as maml.py builds them
    (`run_start.new_runs`, synthetic data, each seed its own) and run as it runs them
    (`maml.train_iteration`, sampling included), captured as one CUDA graph on a GPU. Returns the
    function one iteration calls, and what it is: 'cuda-graph'; 'eager' without a GPU; 'eager, capture
    failed' when the capture failed (a line above says why); 'rehearsal, eager' in gpu.rehearsal()."""
    values = {"ways": cfg["ways"], "shots": cfg["shots"], "queries": cfg["queries"], "meta-batch": cfg["tasks"],
              "hidden": cfg["hidden"], "image-size": cfg["image_size"], "inner-steps": cfg["steps"],
              "synthetic-per-class": 16, "cache-dir": "none"}  # fmt: skip
    # 16 images per class: the paper's episodes need 11 (1 shot, 10 queries), its evaluations 16
    argv = [item for flag, value in values.items() for item in (f"--{flag}", str(value))] + ["--no-progress"]
    argv += ["--method", method] + (["--first-order"] if first_order else [])
    config = vars(flags.parse(argv)[0])
    config.update(data.dataset_defaults(None, cfg["image_size"]), precision=precision, out="")
    starts = [({**config, "seed": seed}, None) for seed in range(seeds)]
    cuda_graph = gpu.wants_cuda_graph("auto", device, 1)
    runs = run_start.new_runs(starts, maml.init_model, device, 0, 1, cuda_graph)
    step = lambda: maml.train_iteration(runs, seeds > 1, grouped=True)
    replay = gpu.capture_cuda_graph(step, runs) if cuda_graph else None
    if replay is None:  # an eager time is never labelled with the graph's name
        return step, "eager, capture failed" if cuda_graph else "eager"
    return replay, "cuda-graph" if gpu.rehearsal() is None else "rehearsal, eager"


def fresh_peak_memory(device):
    """Start a row's peak-memory count. Called from the row's own function, after the previous row's
    step (a captured graph holds a memory pool) has gone out of scope and been collected."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def row(config, what, variant, precision, seconds, device, **compared):
    """One printed row; `compared`: vs_loop, grad_rel_diff, grad_vs_float64 where the row has them."""
    nan = float("nan")
    return {
        "config": config, "what": what, "variant": variant, "precision": precision, "ms": 1000 * seconds,
        "per_s": 1 / seconds, "memory_mb": peak_memory_mb(device),
        **{k: compared.get(k, nan) for k in ("vs_loop", "grad_rel_diff", "grad_vs_float64")},
    }  # fmt: skip


def time_training_step(cfg, device, method, first_order, precision, seeds, warmup, repeats):
    """(seconds per iteration, label) of the training loop's own step (`training_step`); its graph, if
    any, is dropped when this returns."""
    fresh_peak_memory(device)
    with gpu.precision_applied(precision, device):
        step, label = training_step(cfg, device, method, first_order, precision, seeds)
        return time_it(step, device, warmup, repeats), label


def bench_seeds(name, cfg, device, seeds, warmup, repeats):
    """One model's training step against `seeds` models stepped together (--seeds), MAML second order."""
    rows, precision = [], gpu.default_precision(device)
    for n in (1, seeds):
        seconds, label = time_training_step(cfg, device, "maml", False, precision, n, warmup, repeats)
        rows.append(row(name, f"maml 2nd, {n} seed{'s' if n > 1 else ''}", label, precision, seconds, device))
        print_row(rows[-1])
    ratio = rows[1]["ms"] / rows[0]["ms"]
    print(f"  {seeds} seeds in one process take {ratio:.2f}x the time of one ({name}; the target on a GPU: at most 2x)")
    return rows


def time_variant(variant, cfg, device, method, first_order, precision, params, inner_lrs, optimizer, episodes, timing):
    """(seconds per meta-iteration, label) of one variant in one precision."""
    if variant == "cuda-graph":
        return time_training_step(cfg, device, method, first_order, precision, 1, *timing)
    fresh_peak_memory(device)
    with gpu.precision_applied(precision, device):
        step = (variant, params, inner_lrs, optimizer, episodes, cfg["steps"], first_order, precision)
        return time_it(meta_iteration(*step, device), device, *timing), variant


def bench_training(name, cfg, device, variants, methods, orders, warmup, repeats, precisions):
    assert variants[0] == "loop", "the loop is the reference every other variant is compared with"
    split, norm, g, episodes, params = setup(cfg, device)
    rows = []
    for method, first_order in ((m, o) for m in methods for o in orders):
        inner_lrs = maml.init_inner_lrs(params, 0.01, learn_lr=method == "metasgd")
        optimizer = maml.meta_optimizer(params, inner_lrs, 1e-3)
        graded = [v for v in variants if v != "cuda-graph"]  # the cuda-graph step's meta-gradient is grouped's
        diffs = agreement(graded, precisions, params, inner_lrs, episodes[0], cfg["steps"], first_order, device)
        what = f"{method} {'1st' if first_order else '2nd'}-order"
        for precision in precisions:
            reference = None
            for variant in variants:
                timed = (cfg, device, method, first_order, precision, params, inner_lrs, optimizer, episodes)
                seconds, label = time_variant(variant, *timed, (warmup, repeats))
                reference = reference or seconds
                diff = diffs[precision, "grouped" if variant == "cuda-graph" else variant]
                rows.append(row(name, what, label, precision, seconds, device, vs_loop=reference / seconds,
                                grad_rel_diff=diff[0], grad_vs_float64=diff[1]))  # fmt: skip
                print_row(rows[-1])
    sample_s = time_it(lambda: data.sample_episodes(split, **episode_shape(cfg), generator=g, norm=norm), device, 2, 20)
    loop_ms = next(r["ms"] for r in rows if r["variant"] == "loop")
    print(
        f"  sampling one meta-batch ({name}): {1000 * sample_s:.2f} ms = {100 * 1000 * sample_s / loop_ms:.2f}% "
        f"of a loop iteration"
    )
    return rows


def bench_probe(name, cfg, device, batch, warmup, repeats):
    split, norm, g, _, params = setup(cfg, device)
    params = {n: p.detach() for n, p in params.items()}
    inner_lrs = maml.init_inner_lrs(params, 0.01)
    ways = cfg["ways"]

    def chunk():
        classes = data.sample_classes(split, batch, 2 * ways, g)
        shape = {"tasks": batch, "ways": ways, "shots": cfg["shots"], "queries": 15, "generator": g, "norm": norm}
        a = data.sample_episodes(split, **shape, classes=classes[:, :ways])
        b = data.sample_episodes(split, **shape, classes=classes[:, ways:])
        probe.probe_tasks(params, inner_lrs, a, b, cfg["steps"], ways)

    fresh_peak_memory(device)
    with gpu.precision_applied("auto", device) as precision:  # probe.py's, for a run trained with the default
        seconds = time_it(chunk, device, warmup, repeats)
    probe_row = row(name, f"probe, {batch} pairs at once", "grouped", precision, seconds / batch, device)
    print_row(probe_row)
    return probe_row


def print_row(r):
    print(
        f"  {r['config']:6s} {r['what']:20s} {r['variant']:21s} {r.get('precision', ''):8s} {r['ms']:9.1f} ms/it "
        f"{r['per_s']:8.2f} it/s {r['memory_mb']:7.0f} MB  x{r['vs_loop']:.2f} vs loop  meta-grad rel. diff "
        f"from loop {r['grad_rel_diff']:.1e}, from float64 {r.get('grad_vs_float64', float('nan')):.1e}"
    )


def build_parser():
    p = cli.argument_parser(
        __doc__.split("\n")[0] + " Prints ms/iteration, iterations/s, peak "
        "memory and the speed-up over the per-task loop, measured in this run."
    )
    p.add_argument("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda'")
    p.add_argument("--quick", action="store_true", help="fewer repeats and combinations (<3 min on a 2-core CPU)")
    p.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=["paper", "small"],
        help="task and network sizes to time (without --quick)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per row (median is reported)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=["maml", "metasgd"],
        default=None,
        help="the methods to time (default: both; --quick at the paper's size: MAML alone on the CPU, both on a GPU)",
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=list(gpu.PRECISIONS),
        default=None,
        help="precisions to time and compare with float64 (default: highest fast, and bf16 on a GPU)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="time N models stepped together "
        "(maml.py --seeds) against one, at the first config (default: 8 on a GPU, skipped on the CPU)",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1 or args.seeds is not None and args.seeds < 0:
        raise cli.ConfigError(
            f"--repeats must be at least 1 and --seeds not negative (got {args.repeats}, {args.seeds})"
        )
    device = cli.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    repeats = args.repeats or (2 if args.quick else 5)
    precisions = args.precisions or (["highest", "fast", "bf16"] if device.type == "cuda" else ["highest", "fast"])
    probe_batch = 8 if device.type == "cpu" else 64
    cuda_graph = ["cuda-graph"] if gpu.wants_cuda_graph("auto", device, 1) else []  # a GPU, or a rehearsal
    seeds = args.seeds if args.seeds is not None else (8 if device.type == "cuda" else 0)
    methods = args.methods or ["maml", "metasgd"]
    rows = []
    if args.quick:  # the paper's size first, so that a run cut short has the rows that matter most
        paper_methods = args.methods or (methods if device.type == "cuda" else ["maml"])
        paper = (["loop", "grouped", *cuda_graph], paper_methods, [False])  # vmap: slowest, most memory here
        rows += bench_training("paper", CONFIGS["paper"], device, *paper, 1, repeats, precisions)
        rows.append(bench_probe("paper", CONFIGS["paper"], device, probe_batch // 2, 1, 1))
        rows += bench_seeds("paper", CONFIGS["paper"], device, seeds, 2, repeats) if seeds > 1 else []
        small = (["loop", "grouped", "vmap"], methods, [False])
        rows += bench_training("small", CONFIGS["small"], device, *small, 1, repeats, ["fast"])
        return rows
    every = (["loop", "grouped", "vmap", *cuda_graph], methods, [False, True])
    for cfg in args.configs:
        rows += bench_training(cfg, CONFIGS[cfg], device, *every, 2, repeats, precisions)
        rows.append(bench_probe(cfg, CONFIGS[cfg], device, probe_batch, 1, repeats))
    first = args.configs[0]
    return rows + (bench_seeds(first, CONFIGS[first], device, seeds, 2, repeats) if seeds > 1 else [])


if __name__ == "__main__":
    cli.run_cli(main)
