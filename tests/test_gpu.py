"""gpu.py: precision and the CUDA-graph training step. The first tests run on the CPU (capture faked
away); the rest need a CUDA GPU (marked `cuda`: `pytest -m cuda` runs those alone, as gpu_check.py
does) and skip cleanly on a machine without one."""

import contextlib
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import bench
import data
import gpu
import maml
import run_folder
from cli import ConfigError
from conftest import ROOT, flat, micro_problem, run_tensors, step_run, tiny_flags

cuda = pytest.mark.cuda  # skipped without a GPU (conftest.py)


def test_a_failed_capture_says_why_in_one_line_and_undoes_its_warm_up(monkeypatch, capsys):
    """capture_cuda_graph's warm-up runs real steps; when the capture then fails (here: CUDA faked away
    on the CPU), the run must go on exactly as if no capture had been tried."""
    run, reference = step_run(True), step_run(True)
    no_stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: no_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: no_stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())

    class NoGraph:
        def __init__(self):
            raise RuntimeError("CUDA graphs need a CUDA device\nsecond line")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", NoGraph)
    step = lambda: maml.train_iteration([run], stacked=False, grouped=False)
    assert gpu.capture_cuda_graph(step, [run]) is None
    assert capsys.readouterr().out == (
        "cuda graph: capture failed (RuntimeError: CUDA graphs need a CUDA device); the run continues eagerly\n"
    )
    assert int(run.device_iteration) == 0 and float(run.loss_sum) == 0
    for _ in range(3):
        step()
        maml.train_iteration([reference], stacked=False, grouped=False)
    assert all(torch.equal(a, b) for a, b in zip(run_tensors(run), run_tensors(reference), strict=True))


def test_a_capture_that_fails_inside_names_the_first_error_not_the_one_its_end_raised(monkeypatch, capsys):
    """As torch.cuda.graph does: an op fails inside the capture, and ending the capture then raises an error
    of its own, which replaces the first (kept as its __context__)."""
    run, calls = step_run(True), []
    no_stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: no_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: no_stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: SimpleNamespace(register_generator_state=lambda g: None))

    @contextlib.contextmanager
    def graph(g):
        try:
            yield
        finally:
            raise RuntimeError("operation failed due to a previous error during capture")

    def step():
        calls.append(1)
        if len(calls) > 3:  # the warm-up's three calls pass; the captured one fails
            raise ValueError("an op that cannot be captured\nsecond line")
        maml.train_iteration([run], stacked=False, grouped=False)

    monkeypatch.setattr(torch.cuda, "graph", graph)
    assert gpu.capture_cuda_graph(step, [run]) is None
    assert capsys.readouterr().out == (
        "cuda graph: capture failed (ValueError: an op that cannot be captured; then RuntimeError); the run "
        "continues eagerly\n"
    )
    try:  # an error raised `from None` inside a handler names itself alone
        try:
            raise KeyError("cache")
        except KeyError:
            raise ValueError("the real cause") from None
    except ValueError as e:
        assert gpu.capture_error(e) == "ValueError: the real cause"


def test_the_rehearsal_variable_takes_only_its_documented_values(monkeypatch):
    for value, expected in (("", None), ("ok", "ok"), ("fail", "fail")):
        monkeypatch.setenv("MAML_FAKE_CUDA_GRAPH", value)
        assert gpu.rehearsal() == expected
    for value in ("0", "off", "1"):
        monkeypatch.setenv("MAML_FAKE_CUDA_GRAPH", value)
        with pytest.raises(ConfigError, match=f"MAML_FAKE_CUDA_GRAPH={value} is not a rehearsal"):
            gpu.rehearsal()
        with pytest.raises(ConfigError, match="is not a rehearsal"):  # on a GPU too, before anything is captured
            gpu.wants_cuda_graph("auto", torch.device("cuda"), 1)
        with pytest.raises(ConfigError, match="is not a rehearsal"):
            gpu.capture_cuda_graph(lambda: None, [step_run(True)])


def test_every_precision_sets_its_switches_and_puts_them_back_with_nothing_on_stderr():
    """The switches are set through torch's current API where it has one; the legacy ones make torch
    2.9 and 2.10 print deprecation warnings (and reading them after the new API raises)."""
    code = (
        "import torch, gpu\nprint(gpu.precision_report())\n"
        "for device in ('cpu', 'cuda'):\n    for name in ('auto', 'highest', 'fast', 'bf16'):\n"
        "        with gpu.precision_applied(name, torch.device(device)) as resolved:\n"
        "            print(resolved, gpu.precision_report())\nprint(gpu.precision_report())"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == lines[-1] and len(lines) == 10  # put back as they were
    highest = ", ".join(f"{attribute}={value}" for _, attribute, _, value in gpu.backend_switches())
    for line in lines[1:-1]:
        name, report = line.split(" ", 1)
        assert (name == "highest") == all(part in report for part in highest.split(", ")), line
    assert [line.split(" ")[0] for line in lines[1:5]] == ["fast", "highest", "fast", "bf16"]  # 'auto' on the CPU


def test_cuda_graph_on_is_refused_without_a_gpu_or_under_torchrun():
    with pytest.raises(ConfigError, match="--cuda-graph on needs a CUDA device"):
        gpu.wants_cuda_graph("on", torch.device("cpu"), 1)
    with pytest.raises(ConfigError, match="for one process"):
        gpu.wants_cuda_graph("on", torch.device("cuda"), 2)
    assert not gpu.wants_cuda_graph("auto", torch.device("cpu"), 1)
    assert not gpu.wants_cuda_graph("auto", torch.device("cuda"), 2)
    assert gpu.wants_cuda_graph("auto", torch.device("cuda"), 1)
    assert not gpu.wants_cuda_graph("off", torch.device("cuda"), 1)


@cuda
def test_training_runs_on_the_gpu_and_resumes(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--device", "cuda", "--iterations", "2", "--eval-every", "2", "--learn-lr"))
    maml.main(tiny_flags(out, "--device", "cuda", "--iterations", "4", "--eval-every", "2", "--resume"))
    ckpt = run_folder.load_checkpoint(out / "ckpt.pt")
    assert ckpt["iteration"] == 4 and ckpt["generator_device"] == "cuda"
    assert ckpt["config"]["precision"] == "highest"  # 'auto' on a GPU until TF32 is measured


@cuda
def test_episodes_are_drawn_on_the_gpu():
    split = data.split_to(data.synthetic_split("train", 16, per_class=10), "cuda")
    g = torch.Generator("cuda").manual_seed(0)
    episode = data.sample_episodes(split, tasks=3, ways=5, shots=1, queries=2, generator=g)
    assert episode["support_x"].is_cuda and episode["query_y"].is_cuda


# The bars against float64. Only plain float32 ('highest') is held to a tight one. TF32 and bfloat16 are
# not measured on a GPU yet: emulated on the CPU on this test's problem (conv and matmul operands rounded
# to TF32's 10-bit mantissa; bfloat16 autocast), they differ from float64 by 5.9e-2 and 2.0e-1, and by
# 1.8e-1 and 2.7e-1 at the paper's size (RESULTS.md). Their bounds are sanity bounds: about 4x and 3x the
# emulation; 'fast' stays below the 0.45 by which the first-order meta-gradient misses the second-order one
# here, and a gradient unrelated to the true one (zero, say) lies at 1. The test prints what it measured.
FLOAT64_BOUNDS = {"highest": 1e-4, "fast": 0.25, "bf16": 0.6}


@cuda
@pytest.mark.parametrize("precision", list(FLOAT64_BOUNDS))
@pytest.mark.parametrize("grouped", [False, True])
def test_gpu_meta_gradient_against_float64_on_the_cpu(precision, grouped, monkeypatch):
    """Plain float32's bar holds for cuDNN's deterministic algorithms: Winograd or FFT ones, which the
    default may pick, round differently (their bar is not measured yet)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    params, episode = micro_problem(dtype=torch.float32)
    rates = maml.init_inner_lrs(params, 0.05, learn_lr=True)
    exact = bench.float64_meta_gradient(params, rates, episode, 2, False)
    on_gpu = {n: p.detach().cuda().requires_grad_() for n, p in params.items()}
    rates_gpu = {n: r.detach().cuda().requires_grad_() for n, r in rates.items()}
    episode_gpu = {k: v.cuda() for k, v in episode.items()}
    device = torch.device("cuda")
    with gpu.precision_applied(precision, device), gpu.autocast(precision, device):
        loss, _ = maml.meta_loss(on_gpu, rates_gpu, episode_gpu, 2, grouped=grouped)
        grad = flat(torch.autograd.grad(loss, [*on_gpu.values(), *rates_gpu.values()]))
    difference = bench.relative_difference(grad.cpu(), exact)
    print(f"{precision} {'grouped' if grouped else 'loop'}: {difference:.1e} from float64")
    assert difference < FLOAT64_BOUNDS[precision]


@cuda
def test_cuda_graph_training_draws_the_eager_episodes_and_ends_near_the_eager_run(tmp_path, capsys):
    # Without conv biases: their meta-gradient is rounding noise that Adam turns into full steps, so two
    # runs that differ only in rounding end 2.5-6.5e-3 apart in them (README, Decisions). Every live
    # parameter must agree to rtol 1e-3 after 6 iterations of plain float32 ('highest').
    flags = ["--device", "cuda", "--iterations", "6", "--eval-every", "3", "--learn-lr", "--precision", "highest",
             "--no-conv-bias"]  # fmt: skip
    maml.main(tiny_flags(tmp_path / "eager", *flags, "--cuda-graph", "off"))
    maml.main(tiny_flags(tmp_path / "captured", *flags, "--cuda-graph", "on"))
    assert "capture failed" not in capsys.readouterr().out
    eager, captured = (run_folder.load_checkpoint(tmp_path / run / "ckpt.pt") for run in ("eager", "captured"))
    assert torch.equal(eager["generator"], captured["generator"])  # the same random numbers were drawn
    for name, p in eager["params"].items():
        torch.testing.assert_close(captured["params"][name], p, rtol=1e-3, atol=1e-4)


@cuda
def test_cuda_graph_run_resumes_and_several_seeds_are_captured_together(tmp_path, capsys):
    flags = ["--device", "cuda", "--eval-every", "2", "--cuda-graph", "on"]
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "2", "--seeds", "0", "1"))
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "4", "--seeds", "0", "1", "--resume"))
    assert "capture failed" not in capsys.readouterr().out
    for seed in (0, 1):
        assert run_folder.load_checkpoint(tmp_path / "run" / f"seed{seed}" / "ckpt.pt")["iteration"] == 4


@cuda
def test_a_run_begun_eagerly_is_captured_after_resume(tmp_path, capsys):
    flags = ["--device", "cuda", "--eval-every", "2", "--learn-lr"]
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "2", "--cuda-graph", "off"))
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "4", "--cuda-graph", "on", "--resume"))
    assert "capture failed" not in capsys.readouterr().out
    assert run_folder.load_checkpoint(tmp_path / "run" / "ckpt.pt")["iteration"] == 4
