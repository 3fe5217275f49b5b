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
import contextlib
import csv
import datetime
import fcntl
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import data

PROGRAM = "negative-lr-maml"  # written into every checkpoint, to recognise ours
CHECKPOINT_FORMAT = 2  # 2: inner_lrs is always a dict of tensors (1 stored MAML's alpha as a float)


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


def features(params, x):
    """The encoder: four blocks of conv3x3 -> BatchNorm -> ReLU -> maxpool2, flattened.
    BatchNorm always normalises with the statistics of the batch it is given (no running stats)."""
    for i in range(1, 5):
        x = F.conv2d(x, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"), padding=1)
        x = F.batch_norm(x, None, None, params[f"bn{i}.weight"], params[f"bn{i}.bias"], training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def conv4(params, x):
    """Logits [batch, ways] for images x [batch, channels, H, W]."""
    return F.linear(features(params, x), params["head.weight"], params["head.bias"])


def features_tasks(params, x):
    """`features` for T tasks at once: every parameter has a leading task dim [T, ...] and
    x is [T, batch, channels, H, W]. The tasks become channel groups of one grouped convolution, and
    BatchNorm over [batch, T*channels, H, W] is exactly per-task batch statistics."""
    tasks, batch = x.shape[:2]
    x = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:])
    for i in range(1, 5):
        w, b = params[f"conv{i}.weight"], params.get(f"conv{i}.bias")
        b = None if b is None else b.reshape(-1)
        x = F.conv2d(x, w.reshape(-1, *w.shape[2:]), b, padding=1, groups=tasks)
        x = F.batch_norm(
            x, None, None, params[f"bn{i}.weight"].reshape(-1), params[f"bn{i}.bias"].reshape(-1), training=True
        )
        x = F.max_pool2d(F.relu(x), 2)
    return x.view(batch, tasks, -1).transpose(0, 1)  # [T, batch, features], same order as `features`


def conv4_tasks(params, x):
    """Logits [T, batch, ways] for x [T, batch, channels, H, W] and per-task parameters [T, ...]."""
    return torch.baddbmm(
        params["head.bias"].unsqueeze(1), features_tasks(params, x), params["head.weight"].transpose(1, 2)
    )


def per_task(params, tasks):
    """The shared theta, viewed once per task (no copy) so each task can adapt its own."""
    return {name: p.expand(tasks, *p.shape) for name, p in params.items()}


def as_inner_lrs(rates, params):
    """The one place inner rates change type: every other function takes and returns a dict
    {parameter name: tensor}. A number (MAML's alpha, and how checkpoints of format 1 stored it)
    becomes a 0-d constant per parameter, which broadcasts like the scalar; a dict is kept. Either way
    the tensors take their parameter's dtype and device."""
    if not isinstance(rates, dict):  # built in the parameter's dtype: float32(0.01) != float64(0.01)
        rates = {name: torch.tensor(float(rates), dtype=p.dtype) for name, p in params.items()}
    return {name: rates[name].to(p.device, p.dtype) for name, p in params.items()}


def init_inner_lrs(params, inner_lr, learn=False, init_range=None, generator=None):
    """alpha for every parameter. MAML (learn=False): the fixed `inner_lr`, as 0-d constants.
    Meta-SGD (learn=True): one learnable rate per parameter entry, at `inner_lr` or uniform in
    `init_range`. Nothing constrains the sign: the paper's point is that many entries turn negative."""
    if not learn:
        return as_inner_lrs(inner_lr, params)
    inner_lrs = {}
    for name, p in params.items():
        if init_range is None:
            rate = torch.full_like(p, inner_lr)
        else:
            low, high = init_range
            rate = torch.rand(p.shape, generator=generator, dtype=p.dtype) * (high - low) + low
        inner_lrs[name] = rate.to(p.device).requires_grad_()
    return inner_lrs


# ----------------------------------------------------------------------------------------------
# Algorithm 1
# ----------------------------------------------------------------------------------------------


def adapt(params, inner_lrs, x, y, steps, create_graph=True, net=conv4):
    """The inner loop: `steps` times theta <- theta - alpha * grad L_support(theta).

    `inner_lrs` holds alpha per parameter: MAML's 0-d constants or Meta-SGD's per-entry rates. With
    create_graph the result stays differentiable through the gradients themselves (second-order
    MAML); without it the gradients are constants (first order), but the result still depends on
    theta and alpha. The loss is the sum over tasks of each task's mean loss, so with
    `net=conv4_tasks` every task gets exactly its own gradient."""
    with torch.enable_grad():
        params = {n: (p if p.requires_grad else p.detach().requires_grad_()) for n, p in params.items()}
        for _ in range(steps):
            logits = net(params, x)
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum") / y.shape[-1]
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {name: p - inner_lrs[name] * g for (name, p), g in zip(params.items(), grads)}
    return params


def meta_loss(params, inner_lrs, episode, steps, first_order=False, tasks_together=True):
    """Mean query loss (and accuracy) of the adapted parameters over a meta-batch of tasks.

    tasks_together=False is Algorithm 1 as written, task after task: the reference. True runs all
    tasks in one grouped network and gives the same numbers (tests/test_maml.py)."""
    support_x, support_y = episode["support_x"], episode["support_y"]
    query_x, query_y = episode["query_x"], episode["query_y"]
    if not tasks_together:
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


def meta_step(
    params, inner_lrs, optimizer, episode, steps, first_order=False, tasks_together=True, world=1, clip_grad=None
):
    """One outer-loop update of theta (and alpha) by the optimizer. Returns detached loss, accuracy.
    With world > 1 (torchrun), `episode` is this process's slice of the meta-batch, and the
    meta-gradient is averaged over the processes before the step (`average_over_ranks`).
    clip_grad=V then clips every meta-gradient entry to [-V, V], as MAML's own code does
    (tf.clip_by_value at 10 for Mini-ImageNet); None (the paper says nothing) leaves them alone."""
    optimizer.zero_grad(set_to_none=True)
    loss, accuracy = meta_loss(params, inner_lrs, episode, steps, first_order, tasks_together)
    loss.backward()
    if world > 1:
        loss, accuracy = average_over_ranks(optimizer, loss, accuracy, world)
    clipped_step(optimizer, clip_grad)
    return loss.detach(), accuracy.detach()


def clipped_step(optimizer, clip_grad=None):
    """The optimizer's step, after clipping every meta-gradient entry to [-clip_grad, clip_grad]."""
    if clip_grad is not None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.clamp_(-clip_grad, clip_grad)
    optimizer.step()


# ----------------------------------------------------------------------------------------------
# Several independent models (seeds) at once: stacked as extra groups of the grouped network
# ----------------------------------------------------------------------------------------------


def stacked(dicts, tasks):
    """Per-model tensors {name: tensor} of S models -> {name: [S * tasks, ...]}: model s's tensor
    repeated for each of its tasks (in order: model 0's tasks first)."""
    return {name: torch.stack([d[name] for d in dicts]).repeat_interleave(tasks, 0) for name in dicts[0]}


def meta_loss_seeds(params_per_seed, inner_lrs_per_seed, episode, steps, first_order=False):
    """`meta_loss` of S independent models at once: the episode holds S meta-batches one after another
    (model s's tasks are [s*T, (s+1)*T)). Returns each model's loss and accuracy [S]. The models share
    nothing, so the gradient of losses.sum() reaches each model as the gradient of its own loss."""
    models = len(params_per_seed)
    tasks = episode["support_x"].shape[0] // models
    params = stacked(params_per_seed, tasks)
    rates = stacked(inner_lrs_per_seed, tasks)
    for name, r in rates.items():  # MAML's 0-d alpha, now [S * T]: broadcast it over the parameter's dims
        rates[name] = r.view(-1, *[1] * (params[name].dim() - 1)) if r.dim() == 1 < params[name].dim() else r
    adapted = adapt(params, rates, episode["support_x"], episode["support_y"], steps, not first_order, conv4_tasks)
    logits = conv4_tasks(adapted, episode["query_x"])
    per_query = F.cross_entropy(logits.flatten(0, 1), episode["query_y"].flatten(), reduction="none")
    accuracy = (logits.argmax(-1) == episode["query_y"]).float()
    return per_query.view(models, -1).mean(1), accuracy.view(models, -1).mean(1)


# ----------------------------------------------------------------------------------------------
# Evaluation: adapt on each task's support set, measure on its query set
# ----------------------------------------------------------------------------------------------


def evaluate(params, inner_lrs, split, *, norm, tasks, ways, shots, queries, steps, seed, chunk=25, rank=0, world=1):
    """Query accuracy of each of `tasks` fixed, seeded tasks after `steps` adaptation steps.
    Returns a tensor of per-task accuracies (on the split's device). Under torchrun every process
    draws every chunk of tasks (so the tasks are the same whatever the world size) but adapts only
    every world-th chunk; one all-reduce then gives every process all the accuracies."""
    device = split["images"].device
    generator = torch.Generator(device).manual_seed(seed)
    dtype = next(iter(params.values())).dtype
    params = {n: p.detach() for n, p in params.items()}
    inner_lrs = {n: r.detach() for n, r in inner_lrs.items()}
    accuracies = torch.zeros(tasks, device=device)
    for index, start in enumerate(range(0, tasks, chunk)):
        n = min(chunk, tasks - start)
        episode = data.sample_episodes(
            split, tasks=n, ways=ways, shots=shots, queries=queries, generator=generator, norm=norm, dtype=dtype
        )
        if index % world != rank:
            continue
        adapted = adapt(
            per_task(params, n), inner_lrs, episode["support_x"], episode["support_y"], steps, False, conv4_tasks
        )
        with torch.no_grad():
            logits = conv4_tasks(adapted, episode["query_x"])
            accuracies[start : start + n] = (logits.argmax(-1) == episode["query_y"]).float().mean(1)
    if world > 1:
        dist.all_reduce(accuracies)  # each task's accuracy is non-zero on one process only: the sum is exact
    return accuracies


def mean_normal_ci95(values):
    """Mean and half-width of the normal-approximation 95% confidence interval (1.96 sd / sqrt(n)),
    as MAML reports test accuracy. probe.mean_t_ci95 is the Student-t interval."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(unbiased=True) / math.sqrt(values.numel()))


def layer_of(name):
    """'conv2.weight' -> 'conv2', 'bn2.bias' -> 'bn2', 'head.*' -> 'logits' (the paper's name)."""
    layer = name.split(".")[0]
    return "logits" if layer == "head" else layer


def rate_statistics(inner_lrs):
    """Rows of statistics of the inner rates, per layer and per parameter tensor: count, mean,
    std (n - 1), fraction negative, min, max. The one implementation behind lr_stats.csv and Table 1."""
    groups = {}
    for name, rate in inner_lrs.items():
        groups.setdefault(("layer", layer_of(name)), []).append(rate.detach().flatten())
        groups[("tensor", name)] = [rate.detach().flatten()]
    rows = []
    for (kind, name), parts in groups.items():
        r = torch.cat(parts).double()
        std = r.std().item() if r.numel() > 1 else 0.0
        negative = (r < 0).double().mean().item()
        rows.append({"name": name, "kind": kind, "count": r.numel(), "mean": r.mean().item(), "std": std,
                     "frac_negative": negative, "min": r.min().item(), "max": r.max().item()})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------
# Several processes (torchrun): each takes a slice of the meta-batch; meta-gradients are averaged.
# DistributedDataParallel is not used: it cannot average the gradients of a second-order
# (torch.autograd.grad with create_graph) meta-loss, so the averaging is written out here.
# ----------------------------------------------------------------------------------------------

DIST_TIMEOUT_S = 600  # a collective that waits longer than this for another process gives up


class DistributedError(Exception):
    """A process of a torchrun job stopped, or the processes disagree."""


def join_processes(device):
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1 in the environment) this joins the
    process group: NCCL with one GPU per local rank, gloo on the CPU. Without it: (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank}, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s): one process per GPU")  # fmt: skip
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    return rank, world, device


LOST_PROCESS_SIGNS = ("Connection closed by peer", "Connection reset by peer", "NCCL", "timed out", "Timeout")


@contextlib.contextmanager
def processes_joined(world):
    """Leave the process group at the end, and turn a collective that failed because another
    process stopped (gloo and NCCL raise plain RuntimeErrors) into a DistributedError."""
    try:
        yield
    except RuntimeError as e:
        if world > 1 and (isinstance(e, dist.DistError) or any(sign in str(e) for sign in LOST_PROCESS_SIGNS)):
            detail = (str(e).strip().splitlines() or [""])[0][:160]
            raise DistributedError(
                f"another process of this torchrun job stopped or cannot be reached ({detail}); the last "
                f"checkpoint is whole: continue with --resume"
            ) from e
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def tasks_of_rank(episode, rank, world):
    """This process's contiguous slice of a meta-batch that every process drew alike."""
    per_rank = episode["support_x"].shape[0] // world
    return {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in episode.items()}


def average_over_ranks(optimizer, loss, accuracy, world):
    """Every meta-gradient (theta, and alpha for Meta-SGD), the loss and the accuracy in one flat
    buffer, one all-reduce. Each process's loss is the mean over its equal share of the tasks, so the
    sum divided by the world size is the mean over the whole meta-batch, as one process computes it."""
    tensors = [p for group in optimizer.param_groups for p in group["params"]]
    for p in tensors:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    extras = torch.stack([loss.detach(), accuracy.detach().to(loss.dtype)])
    flat = torch.cat([p.grad.flatten() for p in tensors] + [extras]) / world
    dist.all_reduce(flat)
    offset = 0
    for p in tensors:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return flat[-2], flat[-1].to(accuracy.dtype)


def check_ranks_agree(tensors, iteration):
    """Compare a cheap checksum (one float64 sum per tensor) of the parameters across processes."""
    local = torch.stack([t.detach().double().sum() for t in tensors])
    everyone = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, local)
    differ = [r for r, other in enumerate(everyone) if not torch.equal(other, everyone[0])]
    if differ:
        raise DistributedError(
            f"at iteration {iteration} the parameters of rank(s) {differ} differ from rank 0's; the "
            f"processes fell out of step (a different torch build or GPU kind per rank?)"
        )


def broadcast_from_rank0(obj, world):
    """`obj` as rank 0 has it, on every process (e.g. a checkpoint only rank 0 read)."""
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------------------
# Precision: a stated choice, applied once through torch's global backend switches
# ----------------------------------------------------------------------------------------------

PRECISIONS = {
    "highest": "plain float32: no TF32 in cuDNN convolutions or cuBLAS matmuls, no oneDNN kernels on the CPU",
    "fast": "the libraries' fast float32 paths: TF32 convolutions and matmuls on NVIDIA GPUs, oneDNN on the CPU",
    "bf16": "'fast', with the meta-step's forward and backward passes under bfloat16 autocast (float32 parameters)",
}


def default_precision(device):
    """'auto': on the CPU no float32 setting holds the 1e-3 meta-gradient bar at the paper's size
    (RESULTS.md), so the faster one; on a GPU plain float32 until TF32 has been measured against it."""
    return "fast" if device.type == "cpu" else "highest"


BACKEND_SWITCHES = [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32"),
                    (torch.backends.mkldnn, "enabled")]  # fmt: skip


@contextlib.contextmanager
def precision_applied(name, device):
    """Apply a precision (resolving 'auto') to every float32 kernel of this process, and yield its
    name; the switches are global, so they are put back afterwards (for code that imports this)."""
    name = default_precision(device) if name == "auto" else name
    before = [getattr(module, switch) for module, switch in BACKEND_SWITCHES]
    for module, switch in BACKEND_SWITCHES:
        setattr(module, switch, name != "highest")
    try:
        yield name
    finally:
        for (module, switch), value in zip(BACKEND_SWITCHES, before):
            setattr(module, switch, value)


def autocast(precision, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ----------------------------------------------------------------------------------------------
# Checkpoints and run folders
# ----------------------------------------------------------------------------------------------


class CheckpointError(Exception):
    """A file that is not one of our checkpoints, or one that does not fit the run."""


class ConfigError(Exception):
    """A flag value that makes no sense (zero ways, a non-finite rate, a missing GPU)."""


def load_checkpoint(path, map_location="cpu"):
    """Load and sanity-check a checkpoint written by this program. Its "inner_lrs" is always the
    dict type (`as_inner_lrs`), also for checkpoints of format 1, which stored MAML's alpha as a float."""
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
    ckpt["inner_lrs"] = as_inner_lrs(ckpt["inner_lrs"], ckpt["params"])
    return ckpt


def save_checkpoint(ckpt, path):
    def write(tmp):
        with open(tmp, "wb") as f:  # through a Python file, so a failed write is an OSError that says why
            torch.save(ckpt, f)

    data.atomic_write(path, write)


def refuse_to_overwrite(path, holds_results, resume, what):
    """The one rule for outputs, in maml.py and probe.py: results already on disk are continued with
    --resume, never silently written over."""
    if holds_results and not resume:
        raise ConfigError(f"{path} already holds {what}; pass --resume to continue it, or choose another --out")


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
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"{folder} is in use: another process (PID {holder}) is writing {what} there; wait for it to end "
                f"or choose another {flag}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise data.WriteError(data.write_failure(lock_path, e)) from None
        yield
    finally:
        if created and [p.name for p in folder.iterdir()] == [name]:
            lock_path.unlink()
            folder.rmdir()
        os.close(fd)


def append_rows(path, rows):
    """Append dict rows to a CSV, with a header when the file is new. A failed write raises WriteError."""
    if not rows:
        return
    new = not path.exists() or path.stat().st_size == 0
    try:
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
    except OSError as e:  # a full disk: the torn last row is dropped by the next --resume
        raise data.WriteError(data.write_failure(path, e)) from None


TEXT_COLUMNS = {"name", "kind", "classes_A", "classes_B"}  # the columns of our logs that are not numbers


def line_damage(line, header):
    """What is wrong with one line of a log (None if nothing): NUL bytes, a wrong field count, or a
    field that should be a number and is not."""
    if "\0" in line:
        return "NUL bytes"
    fields = next(csv.reader([line]))
    if len(fields) != len(header):
        return f"{len(fields)} fields where the header has {len(header)}"
    for column, value in zip(header, fields):
        if column not in TEXT_COLUMNS and not is_number(value, whole=column in ("iteration", "chunk")):
            return f"{column} is {value[:20]!r}, not a number"
    return None


def is_number(text, whole=False):
    """Whether a log field parses as a number: an int if `whole`, else a float or empty (train_loss of
    row 0 is empty)."""
    try:
        int(text) if whole else float(text or 0)
        return True
    except ValueError:
        return False


def read_log(path):
    """A CSV log (metrics.csv, lr_stats.csv, probe*.csv) as (rows, damage). rows: the dict rows before
    the first damaged line; damage: None, or (line number, what is wrong, whether the damage is only
    the file's tail: a kill or a full disk mid-write leaves a torn last row or NUL padding, which can
    be dropped, while garbage followed by good rows cannot be repaired by dropping)."""
    lines = Path(path).read_bytes().decode("utf-8", "replace").split("\n")
    torn = lines.pop() if lines else ""  # the text after the last line end: empty unless torn
    lines = [line.removesuffix("\r") for line in lines] + ([torn] if torn else [])
    header = next(csv.reader([lines[0]])) if lines and "\0" not in lines[0] else []
    rows, damage = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        what = ("no header" if header[:1] != ["iteration"] else None) if number == 1 else line_damage(line, header)
        if what is None and torn and number == len(lines):
            what = "a torn last row, without a line end"
        if what is not None and damage is None:
            damage = [number, what, True]
        elif what is None and damage is not None:
            damage[2] = False  # a whole row after the damage
        elif what is None and number > 1:
            rows.append(dict(zip(header, next(csv.reader([line])))))
    if damage and damage[0] == 1 and any(line.strip() for line in lines[1:]):
        damage[2] = False  # without a header no row can be read: nothing to drop, everything to check
    return rows, tuple(damage) if damage else None


def read_log_strictly(path):
    """The rows of a log that must be whole (analyze.py reads them); damage is named in one line."""
    rows, damage = read_log(path)
    if damage:
        raise data.DataError(f"{path} line {damage[0]} is damaged ({damage[1]}); fix or remove that line")
    return rows


def repair_logs(paths, iteration):
    """On --resume: keep the logs' rows up to `iteration` (a killed run may have logged past its last
    checkpoint; those iterations run again and log again). A damaged tail is dropped, and said so in
    one line; damage followed by good rows is refused, naming the file and line, before any log is
    changed."""
    readings = {path: read_log(path) for path in paths if path.exists()}
    for path, (_, damage) in readings.items():
        if damage and not damage[2]:
            raise CheckpointError(
                f"{path} line {damage[0]} is damaged ({damage[1]}) and whole rows follow it; fix or remove that "
                f"line, then --resume again"
            )
    for path, (rows, damage) in readings.items():
        if damage:
            print(f"repaired {path}: dropped its damaged tail from line {damage[0]} on ({damage[1]})")
        kept = [row for row in rows if int(row["iteration"]) <= iteration]
        if damage or len(kept) < len(rows):
            write_rows(path, kept)


def write_rows(path, rows):
    """Replace a CSV log by `rows` (atomically)."""

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    data.atomic_write(path, write)


def read_json(path):
    """A JSON file we wrote (test.json, probe*.json); a damaged one is named, with its line, in one line."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise data.DataError(f"{path} line {e.lineno} is damaged ({e.msg}); remove it or write it again") from None
    except UnicodeDecodeError:
        raise data.DataError(f"{path} is damaged (not UTF-8 text); remove it or write it again") from None


# ----------------------------------------------------------------------------------------------
# Training script: flags
# ----------------------------------------------------------------------------------------------


# The integer flags, as (group, flag, default, help); the other flags are declared below.
ALGORITHM, RUN = "task shape and algorithm (the paper's values by default)", "data, evaluation and the run"
INT_FLAGS = [
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


def add_algorithm_flags(g):
    g("--inner-lr", type=float, default=0.01, help="MAML's inner rate alpha; Meta-SGD's initial value")
    g("--learn-lr", action="store_true", help="Meta-SGD: learn one inner rate per parameter entry")
    g("--lr-init-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
      help="Meta-SGD: initialise the rates uniformly in [LOW, HIGH] instead of at --inner-lr")  # fmt: skip
    g("--first-order", action="store_true", help="drop the second-order terms (FOMAML / first-order Meta-SGD)")
    g("--meta-lr", type=float, default=1e-3, help="Adam learning rate of the outer loop (theta and alpha)")
    g("--task-batching", choices=["auto", "loop", "grouped"], default="auto",
      help="how the tasks of a meta-batch run: 'loop' one after another (the plain reference), 'grouped' "
      "together as one grouped network; 'auto' picks grouped on a GPU and loop on the CPU, where the loop "
      "measured faster (RESULTS.md)")  # fmt: skip
    g("--conv-bias", action=argparse.BooleanOptionalAction, default=True,
      help="give each conv a bias, as the paper's Conv-4 has; --no-conv-bias drops them (the batch-statistics "
      "BatchNorm after each conv cancels them, so they only collect rounding noise)")  # fmt: skip
    g("--clip-grad", type=float, default=None, metavar="VALUE",
      help="clip every meta-gradient entry to [-VALUE, VALUE] before the Adam step, as MAML's own code does "
      "(10 for Mini-ImageNet); default: no clipping (the paper says nothing)")  # fmt: skip


def add_run_flags(g):
    g("--data", default=None, help="dataset folder in any supported Mini-ImageNet layout (Ravi CSVs, "
      "split/class folders, learn2learn pickles, torchmeta HDF5) or Omniglot as it ships (images_background, "
      "images_evaluation); omitted: the built-in synthetic dataset")  # fmt: skip
    g("--rotations", action=argparse.BooleanOptionalAction, default=None,
      help="Omniglot: each 90-degree rotation of a character is its own class (default: on for the vinyals "
      "split, off for the lake split)")  # fmt: skip
    g("--cache-dir", default="default", help="where decoded images are cached ('none' disables; default "
      "$MAML_CACHE_DIR or ~/.cache/negative-lr-maml)")  # fmt: skip
    g("--seeds", type=int, nargs="+", default=None, metavar="SEED",
      help="train one independent model per seed in this one process, as extra groups of one grouped network "
      "(a GPU that one small Conv-4 leaves idle fits several); each seed gets its own run folder, the one "
      "--seed would give it (with --out DIR: DIR/seed<SEED>)")  # fmt: skip
    g("--out", default=None, help="run folder (default runs/<maml|metasgd>-<N>w<K>s-seed<seed>)")
    g("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1', ...")
    g("--dtype", choices=["float32", "float64"], default="float32", help="parameter and image precision")
    g("--precision", choices=["auto", *PRECISIONS], default="auto", help="float32 kernels: "
      + "; ".join(f"'{k}': {v}" for k, v in PRECISIONS.items()) + "; 'auto': 'fast' on the CPU, 'highest' on a "
      "GPU (README, Precision). Recorded in the checkpoint")  # fmt: skip
    g("--cuda-graph", choices=["auto", "on", "off"], default="auto", help="replay each meta-iteration as one "
      "captured CUDA graph (no launch overhead); 'auto': for one process on a GPU; 'on': the same, but refused "
      "without a GPU or under torchrun. A capture that fails says why in one line and the run continues "
      "eagerly")  # fmt: skip
    g("--no-progress", action="store_true", help="no progress bars (for logs)")
    g("--debug", action="store_true", help="show full tracebacks on errors")


def refuse_usage(message):
    """argparse's `error` for every script: one line (raised, for run_cli to print), not the usage text."""
    raise ConfigError(f"{message}; see --help")


def argument_parser(description):
    """The argument parser of every script: --help shows the defaults, and a bad flag (a typo,
    --ways five) ends in one line through run_cli instead of argparse's usage text."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.error = refuse_usage
    return parser


def build_parser():
    p = argument_parser(
        "Train the paper's Conv-4 with MAML (default) or Meta-SGD (--learn-lr). Defaults are "
        "the paper's: 5-way 1-shot, 10 queries per class, 3 tasks per meta-batch, 5 inner steps, "
        "inner lr 0.01, Adam 1e-3, 60,000 iterations."
    )
    groups = {name: p.add_argument_group(name).add_argument for name in (ALGORITHM, RUN)}
    for group, flag, default, text in INT_FLAGS:
        groups[group](flag, type=int, default=default, help=text)
    add_algorithm_flags(groups[ALGORITHM])
    add_run_flags(groups[RUN])
    return p


# Flags that may change when a run is resumed; every other flag must match the checkpoint.
RESUME_MAY_CHANGE = {"iterations", "device", "eval_every", "save_every", "log_every", "no_progress",
                     "debug", "resume", "out", "cache_dir", "data", "task_batching", "cuda_graph"}  # fmt: skip
AT_LEAST_ONE = ("ways", "shots", "queries", "meta_batch", "iterations", "hidden", "val_tasks",
                "test_tasks", "eval_every", "save_every", "log_every", "synthetic_per_class")  # fmt: skip


def check_config(args):
    bad = [f"--{n.replace('_', '-')} must be at least 1 (got {getattr(args, n)})"
           for n in AT_LEAST_ONE if getattr(args, n) < 1]  # fmt: skip
    bad += [f"--{n.replace('_', '-')} cannot be negative (got {getattr(args, n)})"
            for n in ("inner_steps", "eval_steps") if getattr(args, n) < 0]  # fmt: skip
    if args.ways < 2:
        bad.append(f"--ways must be at least 2 (got {args.ways})")
    bad += [f"--{n.replace('_', '-')} must be a finite number (got {getattr(args, n)})"
            for n in ("inner_lr", "meta_lr") if not math.isfinite(getattr(args, n))]  # fmt: skip
    if args.clip_grad is not None and not (math.isfinite(args.clip_grad) and args.clip_grad > 0):
        bad.append(f"--clip-grad must be a positive finite number (got {args.clip_grad})")
    if args.image_size is not None and args.image_size < 16:
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


def default_out(config):
    method = "metasgd" if config["learn_lr"] else "maml"
    return str(Path("runs") / f"{method}-{config['ways']}w{config['shots']}s-seed{config['seed']}")


# ----------------------------------------------------------------------------------------------
# Training script: starting, checkpointing and finishing a run (the plumbing around Algorithm 1)
# ----------------------------------------------------------------------------------------------


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
    saved, defaults = resumed["config"], vars(build_parser().parse_args([]))
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


def run_splits(config, names, progress):
    return data.load_splits(
        config["data"], names, image_size=config["image_size"], cache_dir=config["cache_dir"],
        synthetic_per_class=config["synthetic_per_class"], seed=config["seed"], progress=progress,
        rotations=config.get("rotations"),
    )  # fmt: skip


def load_run_splits(config, progress, quiet=False):
    """The train, val and test splits, checked before any work starts: classes in one split only,
    and enough classes and images for the training and evaluation tasks (the test split is used
    only at the end, so a problem with it would otherwise surface after the whole run)."""
    if not config["data"] and not quiet:
        print(f"no --data given: using the built-in synthetic dataset ({config['image_size']}px glyphs, "
              f"64/16/20 classes, seed {config['seed']})")  # fmt: skip
    if config.get("omniglot_split") and not quiet:
        print(f"Omniglot, {config['omniglot_split']} split, rotations {'on' if config['rotations'] else 'off'}, "
              f"{config['image_size']}px, 1 channel (strokes bright)")  # fmt: skip
    splits = run_splits(config, ["train", "val", "test"], progress)
    data.check_episode_shape(splits["train"], config["ways"], config["shots"], config["queries"], "train split")
    for name in ("val", "test"):
        data.check_episode_shape(splits[name], config["ways"], config["shots"], config["eval_queries"], f"{name} split")
    return splits


def new_state(config, device, dtype, norm, classes, rank=0, world=1, capturable=False):
    """Everything a run changes as it trains, seeded by --seed: theta, alpha, Adam, the episode
    generator, the iteration (on the host, and on the device for `train_iteration`), elapsed seconds,
    the best validation accuracy and running sums; and which of `world` processes this is (rank 0
    writes every file). `capturable` keeps Adam's step count on the GPU, for a CUDA graph."""
    init_gen = torch.Generator().manual_seed(config["seed"])
    params = init_params(
        config["ways"], config["hidden"], config["image_size"], channels=config.get("channels", 3),
        generator=init_gen, dtype=dtype, conv_bias=config.get("conv_bias", True),
    )  # fmt: skip
    init_range = tuple(config["lr_init_range"]) if config["lr_init_range"] else None
    inner_lrs = init_inner_lrs(params, config["inner_lr"], config["learn_lr"], init_range, init_gen)
    params = {n: p.to(device).requires_grad_() for n, p in params.items()}
    inner_lrs = {n: r.to(device).detach().requires_grad_(config["learn_lr"]) for n, r in inner_lrs.items()}
    learned = [r for r in inner_lrs.values() if r.requires_grad]
    return SimpleNamespace(
        params=params, inner_lrs=inner_lrs, norm=norm, classes=classes, rank=rank, world=world, device=device,
        optimizer=torch.optim.Adam(list(params.values()) + learned, lr=config["meta_lr"], capturable=capturable),
        episodes=torch.Generator(device).manual_seed(config["seed"] + 12345),
        iteration=0, elapsed=0.0, best=(-1.0, -1), tic=time.time(),
        loss_sum=torch.zeros((), device=device), acc_sum=torch.zeros((), device=device), since_eval=0,
        bad_iteration=torch.full((), -1, device=device, dtype=torch.long), dtype=dtype,
        step=torch.zeros((), device=device, dtype=torch.long), last_loss=torch.zeros((), device=device, dtype=dtype),
        last_acc=torch.zeros((), device=device),
    )  # fmt: skip


def restore_state(resumed, config, device, dtype, rank=0, world=1, capturable=False):
    """`new_state`, then everything the checkpoint holds put back."""
    saved_on = resumed.get("generator_device", "cpu")
    if saved_on != device.type:
        raise ConfigError(
            f"this run drew its episodes from a {saved_on} random generator; resume it with --device "
            f"{saved_on} (or start a new run)"
        )
    run = new_state(config, device, dtype, resumed["norm"], resumed["classes"], rank, world, capturable)
    with torch.no_grad():
        for name, p in run.params.items():
            p.copy_(resumed["params"][name])
        for name, r in run.inner_lrs.items():
            r.copy_(resumed["inner_lrs"][name])
    optimizer_state = resumed["optimizer"]
    for group in optimizer_state["param_groups"]:  # the saved setting would win over this run's
        group["capturable"] = capturable
    run.optimizer.load_state_dict(optimizer_state)
    run.episodes.set_state(resumed["generator"])
    run.iteration, run.elapsed, run.best = resumed["iteration"], resumed["elapsed"], tuple(resumed["best_val"])
    run.step.fill_(run.iteration)
    if "loss_sum" in resumed:  # checkpoints before these were kept start the sums afresh
        run.loss_sum.copy_(resumed["loss_sum"])
        run.acc_sum.copy_(resumed["acc_sum"])
        run.since_eval = resumed["since_eval"]
    return run


def start_files(run, config, out, resumed, val_split, norm):
    """Under torchrun, first make every process start from rank 0's parameters, and let every
    process finish its checks before rank 0 writes anything. Then (rank 0) the run folder: logs cut
    back to the checkpoint a resumed run continues from (a torn or garbage tail dropped), or
    iteration 0's validation and checkpoint."""
    if run.world > 1:
        with torch.no_grad():
            for t in [*run.params.values(), *run.inner_lrs.values()]:
                dist.broadcast(t, src=0)
        dist.barrier()
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        logs = [out / "metrics.csv", out / "lr_stats.csv"]
        if resumed:
            repair_logs(logs, run.iteration)
        else:
            for log in logs:  # logs of an earlier start that never wrote a checkpoint
                log.unlink(missing_ok=True)
    if not resumed:
        validate_and_log(run, config, out, val_split, norm)
        if run.rank == 0:
            save_checkpoint(checkpoint(run, config), out / "ckpt.pt")  # even a run that fails at once can resume


def checkpoint(run, config):
    return {
        "program": PROGRAM, "format": CHECKPOINT_FORMAT, "config": config, "iteration": run.iteration,
        "params": {n: p.detach().cpu() for n, p in run.params.items()},
        "inner_lrs": {n: r.detach().cpu() for n, r in run.inner_lrs.items()},
        "optimizer": run.optimizer.state_dict(), "generator": run.episodes.get_state(),
        "generator_device": run.episodes.device.type, "norm": run.norm, "elapsed": run.elapsed,
        "best_val": list(run.best), "classes": run.classes,
        # the training means' running sums since the last evaluation, so the next metrics.csv row of a
        # resumed run is the uninterrupted run's
        "loss_sum": run.loss_sum.detach().cpu().clone(), "acc_sum": run.acc_sum.detach().cpu().clone(),
        "since_eval": run.since_eval,
    }  # fmt: skip


def clock(run):
    """Add the seconds since the last call to the run's elapsed time (kept across --resume)."""
    now = time.time()
    run.elapsed += now - run.tic
    run.tic = now


def check_finite(run, config, ckpt_path):
    """Stop a diverged run. The first non-finite loss is remembered on the device, so the hot loop
    never waits for it; this reads it (a host sync) only every --log-every iterations and before saves."""
    bad = int(run.bad_iteration)
    finite = all(bool(torch.isfinite(t).all()) for t in [*run.params.values(), *run.inner_lrs.values()])
    if bad >= 0 or not finite:
        raise FloatingPointError(
            f"training diverged: the meta-loss or parameters became non-finite at iteration "
            f"{bad if bad >= 0 else run.iteration}; the last good checkpoint {ckpt_path} was left untouched. "
            f"Try a smaller --inner-lr or --meta-lr (now {config['inner_lr']} and {config['meta_lr']})"
        )


def validate_and_log(run, config, out, val_split, norm, train_means=None):
    """Validation accuracy on the fixed validation tasks, a metrics.csv row (and lr_stats.csv rows for
    Meta-SGD), and best.pt when it is the best so far. Returns the accuracy and its CI."""
    if run.world > 1:
        check_ranks_agree([*run.params.values(), *run.inner_lrs.values()], run.iteration)
    accuracies = evaluate(
        run.params, run.inner_lrs, val_split, norm=norm, tasks=config["val_tasks"], ways=config["ways"],
        shots=config["shots"], queries=config["eval_queries"], steps=config["eval_steps"], seed=config["seed"] + 777,
        rank=run.rank, world=run.world,
    )  # fmt: skip
    val_acc, val_ci = mean_normal_ci95(accuracies)
    clock(run)
    new_best = run.iteration > 0 and val_acc > run.best[0]
    run.best = (val_acc, run.iteration) if new_best else run.best
    if run.rank != 0:
        return val_acc, val_ci
    loss, acc = train_means if train_means else ("", "")
    row = {"iteration": run.iteration, "train_loss": loss, "train_acc": acc, "val_acc": val_acc, "val_ci95": val_ci}
    append_rows(out / "metrics.csv", [{**row, "elapsed_s": round(run.elapsed, 3) if train_means else 0.0}])
    if config["learn_lr"]:
        append_rows(out / "lr_stats.csv", [{"iteration": run.iteration, **r} for r in rate_statistics(run.inner_lrs)])
    if new_best:
        save_checkpoint(checkpoint(run, config), out / "best.pt")
    return val_acc, val_ci


def train_iteration(run, config, train_split, norm, together):
    """One meta-iteration: Algorithm 1 on a freshly drawn meta-batch, then the running sums for the
    training means and the first non-finite iteration, all on the device with no host sync. It reads
    and writes only tensors that live as long as the run (parameters, rates, Adam's state, the episode
    generator, the data, the sums), in place, so on a GPU it can be captured once as a CUDA graph and
    replayed (`capture_iteration`); everywhere else the loop calls it as it is."""
    # ---- Algorithm 1: sample a meta-batch of tasks; adapt to each; one meta-update ----
    episode = data.sample_episodes(
        train_split, tasks=config["meta_batch"], ways=config["ways"], shots=config["shots"],
        queries=config["queries"], generator=run.episodes, norm=norm, dtype=run.dtype,
    )  # fmt: skip
    if run.world > 1:  # every process drew the same meta-batch; each adapts to its own slice
        episode = tasks_of_rank(episode, run.rank, run.world)
    with autocast(config["precision"], run.device):
        loss, accuracy = meta_step(run.params, run.inner_lrs, run.optimizer, episode, config["inner_steps"],
                                   config["first_order"], together, run.world, config.get("clip_grad"))  # fmt: skip
    add_to_sums(run, loss, accuracy)


def add_to_sums(run, loss, accuracy):
    """The running sums for the training means, and the first non-finite iteration (read every
    --log-every), updated in place on the device."""
    run.step.add_(1)
    run.loss_sum.add_(loss)
    run.acc_sum.add_(accuracy)
    run.last_loss.copy_(loss)
    run.last_acc.copy_(accuracy)
    first_bad = (run.bad_iteration < 0) & ~torch.isfinite(loss)
    run.bad_iteration.copy_(torch.where(first_bad, run.step, run.bad_iteration))


def train_iteration_seeds(runs, config):
    """`train_iteration` for several independent models (--seeds): each draws its own meta-batch with
    its own generator from its own data, all adapt at once as groups of one grouped network
    (`meta_loss_seeds`), and each takes its own Adam step. Also a function of static buffers only."""
    episodes = [
        data.sample_episodes(run.train_split, tasks=config["meta_batch"], ways=config["ways"], shots=config["shots"],
                             queries=config["queries"], generator=run.episodes, norm=run.device_norm, dtype=run.dtype)
        for run in runs
    ]  # fmt: skip
    episode = {k: torch.cat([e[k] for e in episodes]) for k in ("support_x", "support_y", "query_x", "query_y")}
    for run in runs:
        run.optimizer.zero_grad(set_to_none=True)
    with autocast(config["precision"], runs[0].device):
        losses, accuracies = meta_loss_seeds([run.params for run in runs], [run.inner_lrs for run in runs], episode,
                                             config["inner_steps"], config["first_order"])  # fmt: skip
    losses.sum().backward()
    for run, loss, accuracy in zip(runs, losses.detach(), accuracies, strict=True):
        clipped_step(run.optimizer, config.get("clip_grad"))
        add_to_sums(run, loss, accuracy)


def due(iteration, config, stopping):
    """What the plumbing does after this iteration: (divergence check and progress bar, validation,
    checkpoint)."""
    at_eval = iteration % config["eval_every"] == 0 or iteration == config["iterations"]
    at_save = at_eval or iteration % config["save_every"] == 0 or stopping
    return iteration % config["log_every"] == 0 or at_save, at_eval, at_save


def end_of_step(run, config, out, val_split, norm, bar, stopping):
    """The plumbing after each meta-step (after train_process's divergence check): every --log-every
    the progress bar, every --eval-every validation and logs, every --save-every (and when stopping)
    ckpt.pt."""
    i = run.iteration
    at_log, at_eval, at_save = due(i, config, stopping)
    if at_log:  # check_finite has run (train_process), so these reads are of finite numbers
        best = f"{run.best[0]:.3f}" if run.best[1] >= 0 else "-"
        bar.set_postfix(loss=f"{run.last_loss.item():.3f}", acc=f"{run.last_acc.item():.3f}", best_val=best)
    if at_eval:
        means = ((run.loss_sum / run.since_eval).item(), (run.acc_sum / run.since_eval).item())
        val_acc, val_ci = validate_and_log(run, config, out, val_split, norm, means)
        run.loss_sum.zero_()
        run.acc_sum.zero_()
        run.since_eval = 0
        if run.rank == 0:
            bar.write(
                f"{run.label}iteration {i}: val accuracy {100 * val_acc:.2f} +- {100 * val_ci:.2f}% "
                f"(best {100 * run.best[0]:.2f}% at {run.best[1]})"
            )
    if at_save and run.rank == 0:
        clock(run)
        save_checkpoint(checkpoint(run, config), out / "ckpt.pt")


def test_best(config, out, run, dtype, norm, test_split):
    """Test accuracy of best.pt on fixed test tasks, as MAML reports it; written to test.json."""
    best = broadcast_from_rank0(load_checkpoint(out / "best.pt") if run.rank == 0 else None, run.world)
    device = run.device
    accuracies = evaluate(
        {n: p.to(device, dtype) for n, p in best["params"].items()},
        {n: r.to(device, dtype) for n, r in best["inner_lrs"].items()},
        data.split_to(test_split, device), norm=norm, tasks=config["test_tasks"], ways=config["ways"],
        shots=config["shots"], queries=config["eval_queries"], steps=config["eval_steps"], seed=config["seed"] + 999,
        rank=run.rank, world=run.world,
    )  # fmt: skip
    test_acc, test_ci = mean_normal_ci95(accuracies)
    if run.rank != 0:
        return
    result = {"test_acc": test_acc, "test_ci95": test_ci, "tasks": config["test_tasks"], "checkpoint": "best.pt",
              "iteration": best["iteration"], "val_acc": best["best_val"][0]}  # fmt: skip
    data.atomic_write(out / "test.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(
        f"test accuracy ({config['test_tasks']} tasks, best.pt from iteration {best['iteration']}): "
        f"{100 * test_acc:.2f} +- {100 * test_ci:.2f}%  ->  {out}"
    )


def agreed_stop(stop, run, config):
    """Whether to stop after this iteration. One process stops when it is signalled; under torchrun
    the processes agree first (at --log-every iterations, which sync anyway), so none waits for
    another that has left."""
    if run.world == 1:
        return stop.is_set()
    if run.iteration % config["log_every"] != 0:
        return False
    flag = torch.tensor([float(stop.is_set())], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


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


# ----------------------------------------------------------------------------------------------
# Speed: one meta-iteration as one CUDA graph (beside the loop, not inside it)
# ----------------------------------------------------------------------------------------------


def wants_cuda_graph(choice, device, world):
    """--cuda-graph: 'auto' graphs one process on a GPU; 'on' is refused where no graph can be (no CUDA
    device, torchrun). Under either, a capture that fails falls back to eager (`capture_iteration`)."""
    if choice == "on" and device.type != "cuda":
        raise ConfigError(f"--cuda-graph on needs a CUDA device, and this run is on {device}; use --cuda-graph off")
    if choice == "on" and world > 1:
        raise ConfigError("--cuda-graph on is for one process; under torchrun use --cuda-graph off")
    return choice != "off" and device.type == "cuda" and world == 1


def run_state_tensors(run):
    """The tensors besides Adam's state that `train_iteration` changes in place."""
    return [*run.params.values(), *run.inner_lrs.values(), run.step, run.loss_sum, run.acc_sum, run.last_loss,
            run.last_acc, run.bad_iteration]  # fmt: skip


def capture_iteration(step, runs):
    """`step` (a function of the static buffers of `runs`, one per model) captured once as a CUDA graph;
    returns the graph's replay, or None after one line saying why capture failed. As the CUDA-graph docs
    ask, a few warm-up calls run first on a side stream (they allocate Adam's state and pick cuDNN
    kernels); their updates are then undone, so the runs go on from exactly where they were."""
    generator_states = [run.episodes.get_state() for run in runs]
    saved = [t.detach().clone() for run in runs for t in run_state_tensors(run)]
    saved_adam = {
        p: {k: v.clone() for k, v in state.items()} for run in runs for p, state in run.optimizer.state.items()
    }
    device = runs[0].device
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")  # eager warm-up steps, on purpose
                for _ in range(3):
                    step()
        finally:  # the undoing below must wait for the warm-up, even one that failed
            torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for run in runs:
            graph.register_generator_state(run.episodes)  # our episode generators, not the default one
        with torch.cuda.graph(graph):
            step()
        error = None
    except Exception as e:  # an op that cannot be captured, an older torch: eager works anyway
        graph, error = None, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    with torch.no_grad():
        for t, old in zip([t for run in runs for t in run_state_tensors(run)], saved, strict=True):
            t.copy_(old)
        for p, state in (item for run in runs for item in run.optimizer.state.items()):
            for k, v in state.items():  # state the warm-up created starts from zero, as Adam's own does
                v.copy_(saved_adam[p][k]) if p in saved_adam else v.zero_()
    for run, state in zip(runs, generator_states, strict=True):
        run.episodes.set_state(state)
    if error is not None:
        print(f"cuda graph: capture failed ({error}); the run continues eagerly")
        return None
    return graph.replay


# ----------------------------------------------------------------------------------------------
# Training script: the loop
# ----------------------------------------------------------------------------------------------


RUN_FILES = ("ckpt.pt", "best.pt", "metrics.csv", "lr_stats.csv", "test.json")  # what a run folder holds


def train(args):
    """Meta-train as configured by `args` (see build_parser). Returns the run folder (with --seeds, the
    list of them). Under torchrun, every process runs this on its own slice of each meta-batch, and
    rank 0 writes every file. Each folder is locked for the whole run (`lock_outputs`); a write that
    fails ends the run saying which checkpoint is left."""
    check_config(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.meta_batch % world:
        raise ConfigError(f"--meta-batch {args.meta_batch} cannot be split evenly over {world} processes; "
                          f"use a multiple of {world}")  # fmt: skip
    if args.seeds and world > 1:
        raise ConfigError("--seeds trains several models in one process; under torchrun train one seed per job")
    if args.seeds and args.task_batching == "loop":
        raise ConfigError("--seeds always runs its models as groups of one grouped network; drop --task-batching loop")
    writer = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as locks:
        starts = []
        for seed_args in per_seed_args(args):
            out = Path(seed_args.out)
            if writer:
                locks.enter_context(lock_outputs(out, "run.lock", "a training run"))
                removed = data.remove_stale_temporaries(out, RUN_FILES)
                if removed:
                    print(f"removed {len(removed)} temporary file(s) that a killed run left in {out}: "
                          f"{', '.join(removed)}")  # fmt: skip
            if args.seeds and args.resume and not (out / "ckpt.pt").exists():
                seed_args.resume = False  # a start that failed before this seed's first save: it begins afresh
            starts.append(start_run(seed_args, out))
        check_seeds_level(starts)
        config = starts[0][0]
        rank, world, device = join_processes(resolve_device(config["device"]))
        with processes_joined(world), precision_applied(config["precision"], device) as precision:
            for config, _ in starts:
                config["precision"] = precision
            if rank == 0:
                print(f"precision: {precision} ({PRECISIONS[precision]}), {config['dtype']} parameters")
            outs = [c["out"] for c, _ in starts]
            try:
                outs = train_process(starts, rank, world, device, resume_command(args, outs))
            except data.WriteError as e:
                raise data.WriteError(f"{e}; {checkpoint_left(outs, args)}") from e
    return outs if args.seeds else outs[0]


def per_seed_args(args):
    """The flags of each run: `args` itself, or with --seeds one copy per seed, with that --seed and its
    own folder (the default folder of that seed, or --out/seed<SEED>)."""
    if not args.seeds:
        return [argparse.Namespace(**{**vars(args), "out": args.out or default_out(vars(args))})]
    if len(set(args.seeds)) < len(args.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))} names a seed twice; give each seed once")
    runs = []
    for seed in args.seeds:
        flags = {**vars(args), "seed": seed, "seeds": None}
        flags["out"] = str(Path(args.out) / f"seed{seed}") if args.out else default_out(flags)
        runs.append(argparse.Namespace(**flags))
    return runs


def check_seeds_level(starts):
    """Resumed seeds must continue from one iteration towards one total (a kill or a failed write
    between two seeds' saves can leave them apart); say how to bring a lagging seed level."""
    reached = {c["out"]: (r["iteration"] if r else 0) for c, r in starts}
    if len(set(reached.values())) > 1:
        top = max(reached.values())
        config, resumed = next((c, r) for c, r in starts if reached[c["out"]] < top)
        alone = (f"python maml.py --resume --out {config['out']} --iterations {top}" if resumed else
                 f"python maml.py --seed {config['seed']} --out {config['out']} --iterations {top} and this run's "
                 f"other flags")  # fmt: skip
        raise ConfigError(
            "the seeds' checkpoints are at different iterations ("
            + ", ".join(f"{Path(out).name}: {i}" for out, i in reached.items())
            + f"); bring each lagging one level alone ({alone}), then resume them together with --iterations"
        )
    totals = {c["iterations"] for c, _ in starts}
    if len(totals) > 1:
        raise ConfigError(f"the seeds' runs aim at different totals ({', '.join(map(str, sorted(totals)))} "
                          f"iterations); give --iterations to set one for all")  # fmt: skip


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


def resume_command(args, outs):
    """The command that continues this run (all its seeds)."""
    if not args.seeds:
        return f"python maml.py --resume --out {outs[0]}"
    seeds = f"--seeds {' '.join(map(str, args.seeds))}"
    if args.out:
        return f"python maml.py --resume {seeds} --out {args.out}"
    method = " --learn-lr" if args.learn_lr else ""  # the default folders are named by method and task shape
    return f"python maml.py --resume {seeds}{method} --ways {args.ways} --shots {args.shots}"


def train_process(starts, rank, world, device, resume_hint):
    """The training itself, in the run folders that rank 0 has locked: one model, or with --seeds one
    per seed, stepped together. `starts` holds each model's (config, checkpoint it resumes or None)."""
    config = starts[0][0]  # the seeds differ only in their seed and folder
    progress = not config["no_progress"] and rank == 0
    together = config["task_batching"] == "grouped" or (config["task_batching"] == "auto" and device.type == "cuda")
    graphed = wants_cuda_graph(config.get("cuda_graph", "off"), device, world)
    if graphed:  # a graph captures the current device's stream: make it this run's (cuda:1, say)
        torch.cuda.set_device(device)
    runs = prepare_runs(starts, rank, world, device, graphed, progress)
    method = ("meta-SGD" if config["learn_lr"] else "MAML") + (f" x{len(runs)} seeds" if len(runs) > 1 else "")
    bar = tqdm(total=config["iterations"], initial=runs[0].iteration, desc=method, disable=not progress, unit="it",
               dynamic_ncols=True)  # fmt: skip
    stopping = False
    with stop_on_signal() as stop, bar:  # from the first file written on, Ctrl-C stops at a saved iteration
        for run, (_, resumed) in zip(runs, starts, strict=True):
            start_files(run, run.config, run.out, resumed, run.val_split, run.device_norm)
        step = iteration_of(runs, config, together)
        if graphed and runs[0].iteration < config["iterations"]:
            step = capture_iteration(step, runs) or step
        while runs[0].iteration < config["iterations"] and not stopping:
            step()  # one meta-iteration: Algorithm 1 (train_iteration), or its CUDA graph replayed
            # ---- plumbing: progress, periodic evaluation, logs and checkpoints ----
            for run in runs:
                run.iteration += 1
                run.since_eval += 1
            bar.update(1)
            stopping = agreed_stop(stop, runs[0], config)
            if due(runs[0].iteration, config, stopping)[0]:
                for run in runs:  # every model before any saves: a diverged seed stops them all, level
                    check_finite(run, run.config, run.out / "ckpt.pt")
            for run in runs:
                end_of_step(run, run.config, run.out, run.val_split, run.device_norm, bar, stopping)
    if stopping:
        if rank == 0:
            saved = ", ".join(str(run.out / "ckpt.pt") for run in runs)
            print(f"interrupted: saved iteration {runs[0].iteration} to {saved}; continue with {resume_hint}")
        return [run.out for run in runs]
    for run in runs:
        test_best(run.config, run.out, run, run.dtype, run.device_norm, run.test_split)
    return [run.out for run in runs]


def prepare_runs(starts, rank, world, device, capturable, progress):
    """Each model's state (new, or restored from its checkpoint) with its data on the device. The
    seeds of --seeds share the data, except the synthetic dataset: it depends on the seed, and each
    seed gets the one its own single-seed run would."""
    dtype = getattr(torch, starts[0][0]["dtype"])
    loaded, runs = {}, []
    for config, resumed in starts:
        key = config["data"] or f"synthetic, seed {config['seed']}"
        if key not in loaded:
            splits = load_run_splits(config, progress, quiet=rank != 0 or bool(loaded))
            loaded[key] = splits, {name: data.split_to(splits[name], device) for name in ("train", "val")}
        splits, on_device = loaded[key]
        # The first conv takes the data's channel count (3, or 1 for Omniglot); the checkpoint records it.
        config["channels"] = config.get("channels", int(splits["train"]["images"].shape[1]))
        if resumed:
            run = restore_state(resumed, config, device, dtype, rank, world, capturable)
        else:
            norm, classes = data.channel_stats(splits["train"]), splits["train"]["classes"]
            run = new_state(config, device, dtype, norm, classes, rank, world, capturable)
        run.config, run.out, run.label = (
            config,
            Path(config["out"]),
            f"seed {config['seed']}, " if len(starts) > 1 else "",
        )
        run.train_split, run.val_split, run.test_split = on_device["train"], on_device["val"], splits["test"]
        run.device_norm = data.split_to(run.norm, device)  # on the device: a host copy per episode would sync
        runs.append(run)
    return runs


def iteration_of(runs, config, together):
    """The function one meta-iteration calls: `train_iteration` for one model, `train_iteration_seeds`
    for several."""
    if len(runs) > 1:
        return lambda: train_iteration_seeds(runs, config)
    run = runs[0]
    return lambda: train_iteration(run, config, run.train_split, run.device_norm, together)


def run_cli(main_fn, argv=None, errors=()):
    """Run a script's main: known errors (and `errors`) end as one line on stderr with exit code 2
    (1 for divergence), no traceback unless --debug."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return main_fn(argv)
    except (data.DataError, data.WriteError, CheckpointError, ConfigError, FloatingPointError, *errors) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1 if isinstance(e, FloatingPointError) else 2)
    except DistributedError as e:
        if debug:
            raise
        print(f"error: rank {os.environ.get('RANK', 0)} of {os.environ.get('WORLD_SIZE', 1)}: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a file that vanished or could not be read or written where no check expected it
        if debug:
            raise
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def main(argv=None):
    return train(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
