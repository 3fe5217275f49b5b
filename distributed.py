"""torchrun: several processes share the work of one run, and compute exactly what one process does.

Each process adapts to its own slice of every meta-batch (all of them draw the same meta-batch), and
one all-reduce averages the meta-gradients before the common Adam step. Evaluation and the probe give
each process every world-th chunk of tasks. DistributedDataParallel is not used: it cannot average the
gradients of a second-order (torch.autograd.grad with create_graph) meta-loss, so the averaging is
written out here. Without torchrun (WORLD_SIZE unset) every function here is a no-op or the identity.
"""

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from cli import ConfigError, DistributedError

DIST_TIMEOUT_S = 600  # a collective that waits longer than this for another process gives up
LOST_PROCESS_SIGNS = ("Connection closed by peer", "Connection reset by peer", "NCCL", "timed out", "Timeout")


TORCHRUN_SETS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # together, every process


def launch():
    """(rank, world size), decided once from the environment: (0, 1) when none of RANK, WORLD_SIZE and
    LOCAL_RANK is set (an empty value counts as unset); else torchrun's whole, valid set, or one line saying
    what is wrong (a RANK left over in a shell would otherwise make a process that writes without a lock)."""
    given = {k: os.environ[k] for k in TORCHRUN_SETS if os.environ.get(k, "").strip()}
    if not given.keys() & {"RANK", "WORLD_SIZE", "LOCAL_RANK"}:
        return 0, 1
    shown = " ".join(f"{k}={v}" for k, v in given.items())
    missing = [k for k in TORCHRUN_SETS if k not in given]
    if missing:
        raise ConfigError(
            f"the environment has {shown} but not {', '.join(missing)}, which torchrun sets together: unset "
            f"{', '.join(given)} to run as one process, or start the script with torchrun"
        )
    numbers = {k: given[k].strip() for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    bad = [k for k, v in numbers.items() if not v.isdigit()]
    rank, world = (int(numbers[k]) if k not in bad else -1 for k in ("RANK", "WORLD_SIZE"))
    if bad or world < 1 or rank >= world:
        raise ConfigError(
            f"the environment has {shown}: RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be whole numbers "
            f"with RANK below WORLD_SIZE, as torchrun sets them; unset them to run as one process"
        )
    return rank, world


def world_size():
    """How many processes torchrun started (1 without torchrun)."""
    return launch()[1]


def is_writer():
    """Whether this process writes the files: the only one, or rank 0 under torchrun."""
    return launch()[0] == 0


def join_processes(device):
    """(rank, world size, device). Under torchrun (`launch`: a world of more than one process) this joins
    the process group: NCCL with one GPU per local rank, gloo on the CPU. Without it: (0, 1, device)."""
    rank, world = launch()
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started local rank {local_rank}, but this machine has "
                f"{torch.cuda.device_count()} GPU(s): one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    return rank, world, device


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


def averaged_over_ranks(optimizer, world):
    """The hook `maml.meta_step` calls after the backward pass (None for one process): every
    meta-gradient (theta, and alpha for Meta-SGD), the loss and the accuracy in one flat buffer, one
    all-reduce. Each process's loss is the mean over its equal share of the tasks, so the sum divided
    by the world size is the mean over the whole meta-batch, as one process computes it."""
    if world == 1:
        return None

    def average(loss, accuracy):
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

    return average


def start_alike(tensors, world):
    """Every process starts from rank 0's tensors (parameters and rates), and has finished its checks
    before rank 0 writes anything."""
    if world == 1:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=0)
    barrier(world)


def barrier(world):
    """Wait until every process has come here."""
    if world > 1:
        dist.barrier()


def check_ranks_agree(tensors, iteration, world):
    """Compare a cheap checksum (one float64 sum per tensor) of the parameters across processes."""
    if world == 1:
        return
    local = torch.stack([t.detach().double().sum() for t in tensors])
    everyone = [torch.empty_like(local) for _ in range(world)]
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


def measured_in_turn(measure, chunks, rank, world):
    """`measure(chunk)` (a tensor of per-task numbers) of every chunk, concatenated, on every process.
    Every process draws every chunk (so the chunks are the same whatever the world size) but measures
    only every world-th; one all-reduce then gives every process all the numbers."""
    parts = []
    for index, chunk in enumerate(chunks):
        if index % world == rank:
            parts.append(measure(chunk))
        else:  # another process measures it: zeros here, and its numbers arrive with the sum
            parts.append(torch.zeros(chunk["support_x"].shape[0], device=chunk["support_x"].device))
    numbers = torch.cat(parts)
    if world > 1:
        dist.all_reduce(numbers)  # each task's number is non-zero on one process only: the sum is exact
    return numbers


def gathered_in_turn(rows_of, first_chunk, n_chunks, rank, world):
    """Yields the rows of each chunk in order. One process computes every chunk; under torchrun each
    process computes every world-th chunk and all of them receive every chunk's rows, so the rows do
    not depend on the world size (each chunk has its own seed)."""
    for first in range(first_chunk, n_chunks, world):
        chunk = first + rank
        rows = rows_of(chunk) if chunk < n_chunks else []
        if world == 1:
            yield rows
            continue
        gathered = [None] * world
        dist.all_gather_object(gathered, rows)
        yield [row for part in gathered for row in part]


def agreed_stop(stop, iteration, log_every, device, world):
    """Whether to stop after this iteration. One process stops when it is signalled; under torchrun
    the processes agree first (at --log-every iterations, which sync anyway), so none waits for
    another that has left."""
    if world == 1:
        return stop.is_set()
    if iteration % log_every != 0:
        return False
    flag = torch.tensor([float(stop.is_set())], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
