"""The fast path: precision as a stated choice (torch's global backend switches), and one training
iteration replayed as a captured CUDA graph. Both sit beside the algorithm in maml.py, not inside it.
"""

import contextlib
import os
import warnings
from types import SimpleNamespace

import torch

from cli import ConfigError

# ----------------------------------------------------------------------------------------------
# Precision: applied once through torch's global backend switches, and recorded in the checkpoint
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


def backend_switches():
    """(switch object, attribute, value for 'fast', value for 'highest') of every float32 kernel switch.
    TF32 through torch's current API (`fp32_precision`, torch 2.9 and newer) where this torch has it,
    else through the legacy `allow_tf32` switches, so that neither prints a deprecation warning; and
    oneDNN on the CPU."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        tf32 = [
            (conv, "fp32_precision", "tf32", "ieee"),
            (torch.backends.cuda.matmul, "fp32_precision", "tf32", "ieee"),
        ]
    else:
        tf32 = [
            (torch.backends.cudnn, "allow_tf32", True, False),
            (torch.backends.cuda.matmul, "allow_tf32", True, False),
        ]
    return [*tf32, (torch.backends.mkldnn, "enabled", True, False)]


@contextlib.contextmanager
def precision_applied(name, device):
    """Apply a precision (resolving 'auto') to every float32 kernel of this process, and yield its
    name; the switches are global, so they are put back afterwards (for code that imports this)."""
    name = default_precision(device) if name == "auto" else name
    switches = backend_switches()
    before = [getattr(switch, attribute) for switch, attribute, _, _ in switches]
    for switch, attribute, fast, highest in switches:
        setattr(switch, attribute, highest if name == "highest" else fast)
    try:
        yield name
    finally:
        for (switch, attribute, _, _), value in zip(switches, before):
            setattr(switch, attribute, value)


def precision_report():
    """The switches as they stand, in words (gpu_check.py prints them)."""
    names = {torch.backends.cudnn: "cudnn", torch.backends.cuda.matmul: "cuda.matmul", torch.backends.mkldnn: "mkldnn"}
    names[getattr(torch.backends.cudnn, "conv", None)] = "cudnn.conv"
    return ", ".join(
        f"{names[switch]}.{attribute}={getattr(switch, attribute)}" for switch, attribute, _, _ in backend_switches()
    )


def autocast(precision, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ----------------------------------------------------------------------------------------------
# One training iteration as one CUDA graph: no launch overhead, no host in the loop
# ----------------------------------------------------------------------------------------------


REHEARSALS = ("ok", "fail")


def rehearsal():
    """'ok' or 'fail' when the environment variable MAML_FAKE_CUDA_GRAPH asks for a rehearsal of the
    capture without a GPU (gpu_check.py --smoke sets it): the capture's steps then run on the CPU with
    stand-ins for CUDA's streams and graph, and 'fail' makes the capture fail as an op that cannot be
    captured would, so that the check's handling of a failed capture is rehearsed too. None when it is
    unset or empty; any other value is refused (a '0' meant as 'off' would otherwise turn it on)."""
    value = os.environ.get("MAML_FAKE_CUDA_GRAPH") or None
    if value not in (None, *REHEARSALS):
        raise ConfigError(
            f"MAML_FAKE_CUDA_GRAPH={value} is not a rehearsal; set it to ok or fail, or unset it for none"
        )
    return value


def wants_cuda_graph(choice, device, world):
    """--cuda-graph: 'auto' graphs one process on a GPU; 'on' is refused where no graph can be (no CUDA
    device, torchrun). Under either, a capture that fails falls back to eager (`capture_cuda_graph`)."""
    rehearsing = rehearsal() is not None  # first: a value it does not know is refused on any device
    on_device = device.type == "cuda" or rehearsing
    if choice == "on" and not on_device:
        raise ConfigError(f"--cuda-graph on needs a CUDA device, and this run is on {device}; use --cuda-graph off")
    if choice == "on" and world > 1:
        raise ConfigError("--cuda-graph on is for one process; under torchrun use --cuda-graph off")
    return choice != "off" and on_device and world == 1


def capture_cuda_graph(step, runs):
    """`step` (a function that reads and writes only static buffers, in place) captured once as a CUDA
    graph; returns the graph's replay, or None after one line saying why capture failed. `runs` are the
    run states the step reads and changes: their tensors (all on the run's device: a copy from another
    device inside the step would be a host sync, which capture forbids), optimizers and episode
    generators. As the CUDA-graph docs ask, a few warm-up calls run first on a side stream (they
    allocate Adam's state and pick cuDNN kernels); their updates are then undone, so the runs go on
    from exactly where they were."""
    capture = warm_up_and_capture if rehearsal() is None else rehearse_capture  # refused here, not as a failure
    tensors = [t for run in runs for t in run.in_place_tensors()]
    optimizers, generators = [run.optimizer for run in runs], [run.episode_rng for run in runs]
    generator_states = [g.get_state() for g in generators]
    saved = [t.detach().clone() for t in tensors]
    saved_state = {p: {k: v.clone() for k, v in state.items()} for o in optimizers for p, state in o.state.items()}
    try:
        elsewhere = [name for run in runs for name in run.tensors_off_device()]
        if elsewhere:
            raise RuntimeError(f"{elsewhere[0]} is not on the run's device {tensors[0].device}")
        graph, error = capture(step, tensors[0].device, generators), None
    except Exception as e:  # an op that cannot be captured, an older torch: eager works anyway
        graph, error = None, capture_error(e)
    with torch.no_grad():
        for t, old in zip(tensors, saved, strict=True):
            t.copy_(old)
        for p, state in (item for o in optimizers for item in o.state.items()):
            for k, v in state.items():  # state the warm-up created starts from zero, as Adam's own does
                v.copy_(saved_state[p][k]) if p in saved_state else v.zero_()
    for g, state in zip(generators, generator_states, strict=True):
        g.set_state(state)
    if error is not None:
        print(f"cuda graph: capture failed ({error}); the run continues eagerly")
        return None
    return graph.replay


def capture_error(error):
    """The one-line reason a capture failed, naming its first error: an op that fails inside
    `torch.cuda.graph` is replaced by the error that ending the capture then raises, which keeps the first
    as its __context__ (an error raised `from` another names that one, and `from None` none)."""
    first = error
    while True:
        earlier = first.__cause__ or (None if first.__suppress_context__ else first.__context__)
        if earlier is None:
            break
        first = earlier
    line = lambda e: f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    return line(first) if first is error else f"{line(first)}; then {type(error).__name__}"


def warm_up_and_capture(step, device, generators):
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # eager warm-up steps, on purpose
            for _ in range(3):
                step()
    finally:  # the undoing in capture_cuda_graph must wait for the warm-up, even one that failed
        torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for g in generators:
        graph.register_generator_state(g)  # our episode generators, not the default one
    with torch.cuda.graph(graph):
        step()
    return graph


def rehearse_capture(step, device, generators):
    """`warm_up_and_capture` without a GPU (see `rehearsal`): the warm-up and the capture call `step`
    as the real ones do, and the 'graph' replays by calling it again, eagerly."""
    for _ in range(4):
        step()
    if rehearsal() == "fail":
        raise RuntimeError("the capture failed on purpose (MAML_FAKE_CUDA_GRAPH=fail)")
    return SimpleNamespace(replay=step)
