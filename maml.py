"""MAML and Meta-SGD on the paper's Conv-4: Algorithm 1 of "Negative Inner-Loop Learning Rates Learn
Universal Features", and the script that trains it.

    python maml.py                 # MAML: fixed inner rate alpha = --inner-lr, second order
    python maml.py --learn-lr      # Meta-SGD: alpha is learned, one rate per parameter entry
    python maml.py --method anil   # ANIL: only the head adapts in the inner loop (boil: only the body)
    python maml.py --resume --out runs/metasgd-5w1s-seed0

Algorithm 1, as `train_iteration` (at the bottom) runs it once per meta-iteration:
    sample a meta-batch of tasks T_i, each with a support set and a query set
    for each task:  theta_i' = theta - alpha * grad_theta L_support(theta)      (`adapt`, k steps)
    meta-loss = mean_i L_query(theta_i')                                        (`meta_loss`)
    theta (and alpha, for Meta-SGD) <- Adam step on grad of the meta-loss       (`meta_step`, second order)

The network is a pure function of a parameter dict (`conv4(params, x)`), so adapted parameters are
just other dicts, and the inner rates are a dict of tensors too (MAML is Meta-SGD with a fixed alpha).
Everything above the training script imports torch alone: copy this file into another project and
`from maml import conv4, adapt, meta_loss, meta_optimizer, meta_step, init_params, init_inner_lrs`.
Two speed tricks sit beside the algorithm, tested equal to it: `conv4_tasks` runs a meta-batch's tasks
as one grouped network, and `meta_loss_seeds` several independent models (seeds) as groups of it.
"""

import functools
import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# The network: Conv-4 as a function of an explicit parameter dict
# ----------------------------------------------------------------------------------------------


def init_params(ways, hidden=64, image_size=84, channels=3, generator=None, dtype=torch.float32, conv_bias=True):
    """Conv-4 parameters, initialised as torch.nn's Conv2d/BatchNorm2d/Linear would be. `channels` is
    the images' (3 for Mini-ImageNet, 1 for Omniglot). conv_bias=False leaves out the conv biases, which
    the batch-statistics BatchNorm right after each conv cancels; the random draws of the other
    parameters then differ from the default's."""

    def uniform(shape, fan_in):
        bound = 1 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound

    params, size, c_in = {}, image_size, channels
    for i in range(1, 5):
        params[f"conv{i}.weight"] = uniform((hidden, c_in, 3, 3), c_in * 9)
        if conv_bias:
            params[f"conv{i}.bias"] = uniform((hidden,), c_in * 9)
        params[f"bn{i}.weight"] = torch.ones(hidden, dtype=dtype)
        params[f"bn{i}.bias"] = torch.zeros(hidden, dtype=dtype)
        c_in, size = hidden, size // 2
    features = hidden * size * size  # 64 * 5 * 5 = 1600 at 84x84
    params["head.weight"] = uniform((ways, features), features)
    params["head.bias"] = uniform((ways,), features)
    return params


BN_EPS = 1e-5  # BatchNorm's epsilon: torch.nn's default; a model imported from elsewhere may have used another


def features(params, x, bn_eps=BN_EPS):
    """The encoder: four blocks of conv3x3 -> BatchNorm -> ReLU -> maxpool2, flattened.
    BatchNorm always normalises with the statistics of the batch it is given (no running stats)."""
    for i in range(1, 5):
        x = F.conv2d(x, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"), padding=1)
        x = F.batch_norm(x, None, None, params[f"bn{i}.weight"], params[f"bn{i}.bias"], training=True, eps=bn_eps)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def conv4(params, x, bn_eps=BN_EPS):
    """Logits [batch, ways] for images x [batch, channels, H, W]."""
    return F.linear(features(params, x, bn_eps), params["head.weight"], params["head.bias"])


def blocks_tasks(params, x, bn_eps=BN_EPS):
    """The outputs [T, batch, C, H, W] of the encoder's four blocks for T tasks at once: every parameter
    has a leading task dim [T, ...] and x is [T, batch, channels, H, W]. The tasks become channel groups
    of one grouped convolution, and BatchNorm over [batch, T*channels, H, W] is exactly per-task batch
    statistics."""
    tasks, batch = x.shape[:2]
    x = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:])
    outputs = []
    for i in range(1, 5):
        w, b = params[f"conv{i}.weight"], params.get(f"conv{i}.bias")
        b = None if b is None else b.reshape(-1)
        x = F.conv2d(x, w.reshape(-1, *w.shape[2:]), b, padding=1, groups=tasks)
        scale, offset = params[f"bn{i}.weight"].reshape(-1), params[f"bn{i}.bias"].reshape(-1)
        x = F.batch_norm(x, None, None, scale, offset, training=True, eps=bn_eps)
        x = F.max_pool2d(F.relu(x), 2)
        outputs.append(x.view(batch, tasks, -1, *x.shape[2:]).transpose(0, 1))  # a view: no copy
    return outputs


def features_tasks(params, x, bn_eps=BN_EPS):
    """`features` for T tasks at once: [T, batch, features], in the order `features` flattens."""
    return blocks_tasks(params, x, bn_eps)[-1].flatten(2)


def conv4_tasks(params, x, bn_eps=BN_EPS):
    """Logits [T, batch, ways] for x [T, batch, channels, H, W] and per-task parameters [T, ...]."""
    return torch.baddbmm(
        params["head.bias"].unsqueeze(1), features_tasks(params, x, bn_eps), params["head.weight"].transpose(1, 2)
    )


def per_task(params, tasks):
    """The shared theta, viewed once per task (no copy) so each task can adapt its own."""
    return {name: p.expand(tasks, *p.shape) for name, p in params.items()}


def as_inner_lrs(inner_lrs, params):
    """The algorithm's one place inner rates change type: every other function takes and returns a dict
    {parameter name: tensor} whose keys are the parameters the inner loop adapts. A number (MAML's alpha)
    becomes a 0-d constant for every parameter of `params`, which broadcasts like the scalar; a dict is
    kept. Either way the tensors take their parameter's dtype and device."""
    if not isinstance(inner_lrs, dict):  # built in the parameter's dtype: float32(0.01) != float64(0.01)
        inner_lrs = {name: torch.tensor(float(inner_lrs), dtype=p.dtype) for name, p in params.items()}
    return {name: r.to(params[name].device, params[name].dtype) for name, r in inner_lrs.items()}


INNER_PARAMS = {  # what the inner loop adapts, by parameter name
    "all": lambda name: True,  # MAML and Meta-SGD
    "head": lambda name: name.startswith("head."),  # ANIL (Raghu et al.)
    "body": lambda name: not name.startswith("head."),  # BOIL (Oh et al.)
    "no-bn": lambda name: not name.startswith("bn"),  # the official MAML code: batch norm only in the outer loop
}


def adapting(params, inner_params="all"):
    """The parameters of `params` the inner loop adapts: all of them, only the head's (ANIL), all but
    the head's (BOIL), or all but batch norm's. The rest keep theta in the inner loop and still get their
    meta-gradient."""
    if inner_params not in INNER_PARAMS:
        raise ValueError(f"inner_params must be one of {', '.join(INNER_PARAMS)} (got {inner_params!r})")
    return {n: p for n, p in params.items() if INNER_PARAMS[inner_params](n)}


def init_inner_lrs(params, inner_lr, learn_lr=False, lr_init_range=None, generator=None, inner_params="all"):
    """alpha for every parameter the inner loop adapts (`adapting`): the dict's keys are that set. MAML
    (learn_lr=False): the fixed `inner_lr`, as 0-d constants. Meta-SGD (learn_lr=True): one learnable rate
    per parameter entry, at `inner_lr` or uniform in `lr_init_range` (low, high). Nothing constrains the
    sign: the paper's point is that many entries turn negative."""
    params = adapting(params, inner_params)
    if not learn_lr:
        return as_inner_lrs(inner_lr, params)
    inner_lrs = {}
    for name, p in params.items():
        if lr_init_range is None:
            rate = torch.full_like(p, inner_lr)
        else:
            low, high = lr_init_range
            rate = torch.rand(p.shape, generator=generator, dtype=p.dtype) * (high - low) + low
        inner_lrs[name] = rate.to(p.device).requires_grad_()
    return inner_lrs


# ----------------------------------------------------------------------------------------------
# Algorithm 1
# ----------------------------------------------------------------------------------------------


def adapt(params, inner_lrs, x, y, steps, create_graph=True, net=conv4):
    """The inner loop: `steps` times theta <- theta - alpha * grad L_support(theta), for the parameters
    that have a rate in `inner_lrs` (all of them for MAML and Meta-SGD); the others stay theta, and no
    gradient is taken for them. `inner_lrs` holds alpha per parameter: MAML's 0-d constants or
    Meta-SGD's per-entry rates. With create_graph the result stays differentiable through the gradients
    themselves (second-order MAML); without it the gradients are constants (first order), but the result
    still depends on theta and alpha. The loss is the sum over tasks of each task's mean loss, so with
    `net=conv4_tasks` every task gets exactly its own gradient."""
    names = list(inner_lrs)  # the parameters that adapt: those with a rate; the rest stay theta
    with torch.enable_grad():  # evaluation passes detached theta: what adapts needs a gradient all the same
        params = {
            n: p.detach().requires_grad_() if n in names and not p.requires_grad else p for n, p in params.items()
        }
        for _ in range(steps):
            logits = net(params, x)
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum") / y.shape[-1]
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
            stepped = {n: params[n] - inner_lrs[n] * g for n, g in zip(names, grads)}  # theta - alpha * grad
            params = {**params, **stepped}
    return params


def meta_loss(params, inner_lrs, episode, steps, first_order=False, grouped=True):
    """Mean query loss (and accuracy) of the adapted parameters over a meta-batch of tasks.
    grouped=False is Algorithm 1 as written, task after task: the reference. grouped=True runs all
    tasks as one grouped network and gives the same numbers (tests/test_maml.py)."""
    support_x, support_y = episode["support_x"], episode["support_y"]
    query_x, query_y = episode["query_x"], episode["query_y"]
    if not grouped:
        logits = []
        for t in range(support_x.shape[0]):
            adapted = adapt(params, inner_lrs, support_x[t], support_y[t], steps, create_graph=not first_order)
            logits.append(conv4(adapted, query_x[t]))
        logits = torch.stack(logits)
    else:
        tasks = per_task(params, support_x.shape[0])
        adapted = adapt(tasks, inner_lrs, support_x, support_y, steps, create_graph=not first_order, net=conv4_tasks)
        logits = conv4_tasks(adapted, query_x)
    loss = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())  # tasks have equal query counts
    accuracy = (logits.argmax(-1) == query_y).float().mean()
    return loss, accuracy


def meta_optimizer(params, inner_lrs, meta_lr, capturable=False):
    """The outer loop's Adam over theta and Meta-SGD's learned rates, in that order (MAML's fixed rates
    take no step). capturable=True keeps its step count on the device, so that a CUDA graph replays it."""
    learned = [r for r in inner_lrs.values() if r.requires_grad]
    return torch.optim.Adam([*params.values(), *learned], lr=meta_lr, capturable=capturable)


def meta_step(optimizers, loss, accuracy, clip_grad=None, average_gradients=None):
    """The outer update: theta (and Meta-SGD's alpha) take each optimizer's step on the gradient of the
    meta-loss, through the inner loop (second order unless `meta_loss` was asked for first order).
    `loss`, `accuracy`: `meta_loss`'s, or `meta_loss_seeds`'s with one optimizer per model (they share
    nothing: the gradient of the sum is each one's own). `average_gradients(loss, accuracy)` runs after
    the backward pass and returns the averaged pair (torchrun: the mean over all processes). clip_grad=V
    clips every meta-gradient entry to [-V, V], as MAML's code does (10 for Mini-ImageNet; None, as the
    paper says nothing, leaves them). Returns the detached loss and accuracy."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    if average_gradients is not None:
        loss, accuracy = average_gradients(loss, accuracy)
    for optimizer in optimizers:
        if clip_grad is not None:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.clamp_(-clip_grad, clip_grad)
        optimizer.step()
    return loss.detach(), accuracy.detach()


def evaluate(params, inner_lrs, episodes, steps, bn_eps=BN_EPS):
    """Query accuracy of each task after `steps` adaptation steps (first order: nothing here is
    trained). `episodes` yields meta-batches of tasks; returns one accuracy per task, in order."""
    params = {n: p.detach() for n, p in params.items()}
    inner_lrs = {n: r.detach() for n, r in inner_lrs.items()}
    net = functools.partial(conv4_tasks, bn_eps=bn_eps)
    accuracies = []
    for episode in episodes:
        tasks = per_task(params, episode["support_x"].shape[0])
        adapted = adapt(tasks, inner_lrs, episode["support_x"], episode["support_y"], steps, False, net)
        with torch.no_grad():
            logits = net(adapted, episode["query_x"])
        accuracies.append((logits.argmax(-1) == episode["query_y"]).float().mean(1))
    return torch.cat(accuracies)


# ----------------------------------------------------------------------------------------------
# Several independent models (seeds) at once: stacked as extra groups of the grouped network
# ----------------------------------------------------------------------------------------------


def stacked_per_task(dicts, tasks):
    """Per-model tensors {name: tensor} of S models -> {name: [S * tasks, ...]}: model s's tensor
    repeated for each of its tasks (in order: model 0's tasks first)."""
    return {name: torch.stack([d[name] for d in dicts]).repeat_interleave(tasks, 0) for name in dicts[0]}


def meta_loss_seeds(params_per_seed, inner_lrs_per_seed, episodes, steps, first_order=False):
    """`meta_loss` of S independent models at once, each on its own meta-batch (`episodes`, one per
    model), as groups of one grouped network. Returns each model's loss and accuracy [S]."""
    episode = {k: torch.cat([e[k] for e in episodes]) for k in ("support_x", "support_y", "query_x", "query_y")}
    models, tasks = len(params_per_seed), episodes[0]["support_x"].shape[0]
    params = stacked_per_task(params_per_seed, tasks)
    inner_lrs = stacked_per_task(inner_lrs_per_seed, tasks)
    for name, r in inner_lrs.items():  # MAML's 0-d alpha, now [S * T]: broadcast it over the parameter's dims
        inner_lrs[name] = r.view(-1, *[1] * (params[name].dim() - 1)) if r.dim() == 1 < params[name].dim() else r
    adapted = adapt(params, inner_lrs, episode["support_x"], episode["support_y"], steps, not first_order, conv4_tasks)
    logits = conv4_tasks(adapted, episode["query_x"])
    per_query = F.cross_entropy(logits.flatten(0, 1), episode["query_y"].flatten(), reduction="none")
    accuracy = (logits.argmax(-1) == episode["query_y"]).float()
    return per_query.view(models, -1).mean(1), accuracy.view(models, -1).mean(1)


# ==============================================================================================
# The training script: `python maml.py [flags]`. Its plumbing lives in the files beside this one: flags
# (the settings and methods tables, the command line), run_start (starting and resuming), run_folder (run
# state, checkpoints, logs), distributed (torchrun), gpu (precision, CUDA graph), data (episodes), stats,
# cli (errors), imported where the script runs, so that the algorithm above imports with torch alone.
# ==============================================================================================


def train(args, given=()):
    """Meta-train as `args` say (flags.py; `given`: the flags the user named): one model, or with
    --seeds one per seed, stacked. Returns the run folder (with --seeds, the list of them). Under
    torchrun every process trains its slice of each meta-batch, and rank 0 writes every file."""
    import cli
    import distributed
    import flags
    import gpu
    import run_start

    flags.check_flags(args, distributed.world_size(), given)
    with run_start.opened_runs(args, distributed.is_writer(), given) as starts:
        config = starts[0][0]  # the seeds differ only in their seed and folder
        rank, world, device = distributed.join_processes(cli.resolve_device(config["device"]))
        with distributed.processes_joined(world), gpu.precision_applied(config["precision"], device) as precision:
            if rank == 0:
                print(f"precision: {precision} ({gpu.PRECISIONS[precision]}), {config['dtype']} parameters")
            cuda_graph = gpu.wants_cuda_graph(config["cuda_graph"], device, world)
            if cuda_graph and device.type == "cuda":  # a graph captures the current device's stream: this run's
                torch.cuda.set_device(device)
            for run_config, _ in starts:  # the precision that 'auto' resolved to, recorded in each checkpoint
                run_config.update(precision=precision, bn_eps=BN_EPS)
            runs = run_start.new_runs(starts, init_model, device, rank, world, cuda_graph)
            outs = [run.out for run in runs]
            train_loop(runs, args.seeds is not None, cuda_graph, run_start.resume_command(args, outs))
    return outs if args.seeds is not None else outs[0]


def init_model(config, device, capturable=False):
    """theta, alpha and their outer optimizer (`meta_optimizer`) as --seed initialises them, on `device`."""
    c, generator, dtype = config, torch.Generator().manual_seed(config["seed"]), getattr(torch, config["dtype"])
    params = init_params(c["ways"], c["hidden"], c["image_size"], c["channels"], generator, dtype, c["conv_bias"])
    inner_lrs = init_inner_lrs(params, c["inner_lr"], c["learn_lr"], c["lr_init_range"], generator, c["inner_params"])
    params = {n: p.to(device).requires_grad_() for n, p in params.items()}
    inner_lrs = {n: r.to(device).detach().requires_grad_(c["learn_lr"]) for n, r in inner_lrs.items()}
    return params, inner_lrs, meta_optimizer(params, inner_lrs, c["meta_lr"], capturable)


def train_iteration(runs, stacked, grouped):
    """Algorithm 1 once, for one model, or for several stacked (--seeds: each draws its meta-batch with
    its own generator, all adapt as groups of one grouped network, each takes its own Adam step); then
    the running sums. It reads and writes only tensors that live as long as the run, in place and with
    no host sync, so on a GPU it is captured once as a CUDA graph and replayed."""
    import data
    import distributed
    import gpu
    import run_folder

    first, c = runs[0], runs[0].config
    steps, first_order = c["inner_steps"], c["first_order"]
    shape = {"tasks": c["meta_batch"], "ways": c["ways"], "shots": c["shots"], "queries": c["queries"]}
    episodes = [
        data.sample_episodes(run.splits["train"], **shape, generator=run.episode_rng, norm=run.norm, dtype=run.dtype)
        for run in runs
    ]
    with gpu.autocast(c["precision"], first.device):
        if stacked:
            params, inner_lrs = [run.params for run in runs], [run.inner_lrs for run in runs]
            loss, accuracy = meta_loss_seeds(params, inner_lrs, episodes, steps, first_order)
        else:  # under torchrun every process drew the same meta-batch and adapts to its own slice
            episode = distributed.tasks_of_rank(episodes[0], first.rank, first.world)
            loss, accuracy = meta_loss(first.params, first.inner_lrs, episode, steps, first_order, grouped)
        average = distributed.averaged_over_ranks(first.optimizer, first.world)
        loss, accuracy = meta_step([run.optimizer for run in runs], loss, accuracy, c["clip_grad"], average)
    for run, run_loss, run_accuracy in zip(runs, loss.view(-1), accuracy.view(-1), strict=True):
        run_folder.add_to_sums(run, run_loss, run_accuracy)


def accuracy_on_fixed_tasks(model, split, norm, tasks, device, dtype, rank=0, world=1, progress=iter):
    """Mean and 95% CI of the query accuracy of `model` (theta and alpha: {"params", "inner_lrs"}) on the
    fixed `tasks` (`flags.fixed_tasks`) drawn from `split`, in chunks of 25 (under torchrun each process adapts
    every world-th chunk); `progress` wraps the chunks (a progress bar)."""
    import data
    import distributed
    import stats

    params, inner_lrs = ({n: t.to(device, dtype) for n, t in model[k].items()} for k in ("params", "inner_lrs"))
    shape = {"ways": tasks["ways"], "shots": tasks["shots"], "queries": tasks["eval_queries"], "dtype": dtype}
    images = data.split_to(split, device)  # the test split waits on the host until the end
    chunks = data.fixed_episodes(images, tasks=tasks["tasks"], chunk=25, seed=tasks["seed"], norm=norm, **shape)
    measure = lambda episode: evaluate(params, inner_lrs, [episode], tasks["eval_steps"], tasks["bn_eps"])
    return stats.mean_normal_ci95(distributed.measured_in_turn(measure, progress(chunks), rank, world))


def run_accuracy(run, split, checkpoint=None):
    """The run's accuracy on the split's fixed tasks, with its theta and alpha or a checkpoint's."""
    import flags

    model = checkpoint or {"params": run.params, "inner_lrs": run.inner_lrs}
    where = (run.splits[split], run.norm, flags.fixed_tasks(run.config, split), run.device, run.dtype)
    return accuracy_on_fixed_tasks(model, *where, run.rank, run.world)


def validate(run, bar=None):
    """Validation accuracy on the fixed validation tasks, logged (metrics.csv, lr_stats.csv, best.pt if best)."""
    import distributed
    import run_folder

    distributed.check_ranks_agree([*run.params.values(), *run.inner_lrs.values()], run.iteration, run.world)
    run_folder.log_validation(run, run_accuracy(run, "val"), bar)


def test_best(run):
    """Test accuracy of best.pt on fixed test tasks, as MAML reports it; written to test.json."""
    import distributed
    import run_folder

    best = run_folder.load_checkpoint(run.out / "best.pt") if run.rank == 0 else None
    best = distributed.broadcast_from_rank0(best, run.world)
    run_folder.write_test_result(run, best, run_accuracy(run, "test", best))


def train_loop(runs, stacked, cuda_graph, resume_hint):
    """Meta-train `runs` (one model, or the stacked seeds) to --iterations: Algorithm 1, then what is
    due: the divergence check and the progress bar, validation, the checkpoint. Ctrl-C stops after the
    current iteration and saves. At the end, best.pt meets the test tasks."""
    from tqdm import tqdm

    import distributed
    import flags
    import gpu
    import run_folder

    first, c = runs[0], runs[0].config
    grouped = c["task_batching"] == "grouped" or (c["task_batching"] == "auto" and first.device.type == "cuda")
    one_iteration = lambda: train_iteration(runs, stacked, grouped)
    label = flags.METHOD_NAMES[flags.method_of(c)] + (f" x{len(runs)} seeds" if stacked else "")  # progress bar
    for run in runs:  # names the seed in each validation line
        run.label = f"seed {run.config['seed']}, " if stacked else ""
    quiet = c["no_progress"] or first.rank != 0
    bar = tqdm(total=c["iterations"], initial=first.iteration, desc=label, unit="it", dynamic_ncols=True, disable=quiet)
    stopping = False
    with run_folder.stop_on_signal() as stop, bar:  # from the first file written on, Ctrl-C stops at a save
        for run in runs:  # under torchrun every process first takes rank 0's parameters
            distributed.start_alike([*run.params.values(), *run.inner_lrs.values()], run.world)
            run_folder.begin_logs(run)  # logs cut back to the checkpoint a resumed run continues from
            if not run.resumed:  # iteration 0, validated and saved: even a run that fails at once can resume
                validate(run)
                run_folder.save(run, "ckpt.pt")
        if cuda_graph and first.iteration < c["iterations"]:
            one_iteration = gpu.capture_cuda_graph(one_iteration, runs) or one_iteration
        while first.iteration < c["iterations"] and not stopping:
            one_iteration()  # sample a meta-batch, adapt to each task, one meta-step (or all that as a CUDA graph)
            for run in runs:
                run.iteration, run.since_eval = run.iteration + 1, run.since_eval + 1
            bar.update(1)
            stopping = distributed.agreed_stop(stop, first.iteration, c["log_every"], first.device, first.world)
            check, evaluate_now, save = run_folder.due(first.iteration, c, stopping)
            if check:  # every model before any saves: a diverged seed stops them all, level
                run_folder.check_finite(runs)
                run_folder.show_progress(bar, runs[-1])
            for run in runs if evaluate_now else []:
                validate(run, bar)
            if save:
                run_folder.save_checkpoints(runs, keep_previous=stacked)
    if not stopping:
        for run in runs:
            test_best(run)
    elif first.rank == 0:
        saved = ", ".join(str(run.out / "ckpt.pt") for run in runs)
        print(f"interrupted: saved iteration {first.iteration} to {saved}; continue with {resume_hint}")


def main(argv=None):
    import flags

    return train(*flags.parse(argv))


if __name__ == "__main__":
    import cli

    cli.run_cli(main)
