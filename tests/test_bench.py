"""Every fast variant that bench.py times gives the loop reference's meta-gradient (float64, CPU)."""

import weakref

import pytest
import torch

import bench
import gpu
import maml
import probe
import run_start
from conftest import flat, learnable, method_rates, micro_problem


@pytest.mark.parametrize("variant", [v for v in bench.VARIANTS if v != "loop"])
@pytest.mark.parametrize("method", ["maml", "metasgd"])
@pytest.mark.parametrize("first_order", [False, True])
def test_fast_variant_meta_gradient_equals_the_loop_reference(variant, method, first_order):
    params, episode = micro_problem()
    rates = method_rates(method, params)
    wrt = list(params.values()) + learnable(rates)

    def grad(name):
        loss, accuracy = bench.VARIANTS[name](params, rates, episode, 2, first_order)
        return flat(torch.autograd.grad(loss, wrt)), loss.detach(), accuracy

    reference, ref_loss, ref_acc = grad("loop")
    fast, fast_loss, fast_acc = grad(variant)
    assert (reference - fast).abs().max() < 1e-8
    assert abs(ref_loss - fast_loss) < 1e-10 and abs(ref_acc - fast_acc) < 1e-6


def test_vmap_over_native_batch_norm_is_not_correctly_second_order_in_this_torch():
    """Why bench.py's vmap variant writes BatchNorm out: with F.batch_norm under vmap, torch 2.14.1's
    second-order meta-gradient is off (first order is right). If this starts failing, torch fixed it."""
    params, episode = micro_problem()
    rates = maml.init_inner_lrs(params, 0.1)
    wrt = list(params.values())

    def grad(first_order, net):
        loss, _ = bench.meta_loss_vmap(params, rates, episode, 2, first_order, net=net)
        return flat(torch.autograd.grad(loss, wrt))

    def loop(first_order):
        return flat(torch.autograd.grad(bench.VARIANTS["loop"](params, rates, episode, 2, first_order)[0], wrt))

    assert (grad(True, maml.conv4) - loop(True)).abs().max() < 1e-10
    assert (grad(False, maml.conv4) - loop(False)).abs().max() > 1e-5
    assert (grad(False, bench.conv4_vmappable) - loop(False)).abs().max() < 1e-10


def test_bench_reports_every_variant_and_precision_with_its_speed_and_gradient_agreement(capsys):
    tiny = dict(image_size=16, hidden=4, ways=2, shots=1, queries=2, tasks=2, steps=1)
    precisions = ["highest", "fast"]
    rows = bench.bench_training(
        "tiny", tiny, torch.device("cpu"), list(bench.VARIANTS), ["maml", "metasgd"], [False], warmup=0, repeats=1,
        precisions=precisions,
    )  # fmt: skip
    assert [(r["what"], r["precision"], r["variant"]) for r in rows] == [
        (f"{m} 2nd-order", p, v) for m in ("maml", "metasgd") for p in precisions for v in bench.VARIANTS
    ]
    for r in rows:
        assert r["ms"] > 0 and r["grad_rel_diff"] < 1e-4, r  # float32: agreement to rounding
        assert 0 < r["grad_vs_float64"] < 1e-4, r  # measured against float64, and float32 is not float64
    assert all(r["vs_loop"] == 1.0 for r in rows if r["variant"] == "loop")
    out = capsys.readouterr().out
    assert "sampling one meta-batch" in out and "from float64" in out
    assert torch.backends.mkldnn.enabled  # the precision switches are put back


def test_float64_reference_is_the_loop_in_double_precision():
    params, episode = micro_problem(dtype=torch.float32)
    rates = maml.init_inner_lrs(params, 0.05, learn_lr=True)
    exact = bench.float64_meta_gradient(params, rates, episode, 2, False)
    p64 = {n: p.detach().double().requires_grad_() for n, p in params.items()}
    r64 = {n: r.detach().double().requires_grad_() for n, r in rates.items()}
    e64 = {k: v.double() if v.is_floating_point() else v for k, v in episode.items()}
    loss, _ = maml.meta_loss(p64, r64, e64, 2, grouped=False)
    assert exact.dtype == torch.float64
    assert torch.equal(exact, flat(torch.autograd.grad(loss, [*p64.values(), *r64.values()])))


def test_the_timed_training_step_is_built_by_new_runs_and_reads_only_tensors_on_its_device(monkeypatch):
    """bench.py times the training loop's own step on a state built the way maml.py builds it
    (`run_start.new_runs`), so a tensor it reads cannot be left on the host (as the normalisation
    statistics once were, which would have made every capture fail and every graph row eager)."""
    built, real = [], run_start.new_runs
    monkeypatch.setattr(run_start, "new_runs", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    step, label = bench.training_step(bench.CONFIGS["tiny"], torch.device("cpu"), "maml", False, "fast", seeds=2)
    assert label == "eager" and len(built) == 1 and len(built[0]) == 2
    step()
    assert [run.tensors_off_device() for run in built[0]] == [[], []]
    assert all(int(run.device_iteration) == 1 for run in built[0])


def test_the_probe_row_is_timed_in_the_precision_probe_py_uses(monkeypatch):
    """probe.py runs in the checkpoint's precision, by default 'auto' as resolved on the device (plain
    float32 on a GPU). Here 'auto' is made to resolve to 'highest' on the CPU, which turns oneDNN off."""
    seen, real = [], probe.probe_tasks
    monkeypatch.setattr(gpu, "default_precision", lambda device: "highest")
    monkeypatch.setattr(probe, "probe_tasks", lambda *a: seen.append(gpu.precision_report()) or real(*a))
    row = bench.bench_probe("tiny", bench.CONFIGS["tiny"], torch.device("cpu"), 2, 0, 1)
    assert seen and all("mkldnn.enabled=False" in report for report in seen) and row["precision"] == "highest"
    assert torch.backends.mkldnn.enabled  # put back


def test_a_rows_peak_memory_is_counted_after_the_previous_rows_graph_is_gone(monkeypatch):
    """A captured graph holds a memory pool until it is dropped: the next row's peak must not count it."""
    steps, alive_at_reset = [], []

    class Replay:  # stands in for a graph's replay, which keeps the graph alive
        def __call__(self):
            """A replay that does nothing: only its lifetime is measured."""

    def training_step(*args):
        steps.append(weakref.ref(replay := Replay()))
        return replay, "cuda-graph"

    reset = bench.fresh_peak_memory
    monkeypatch.setattr(bench, "training_step", training_step)
    monkeypatch.setattr(
        bench, "fresh_peak_memory", lambda d: [reset(d), alive_at_reset.append(any(s() for s in steps))]
    )
    cpu, variants = torch.device("cpu"), ["loop", "grouped", "cuda-graph"]
    bench.bench_training("tiny", bench.CONFIGS["tiny"], cpu, variants, ["maml"], [False], 0, 1, ["highest", "fast"])
    bench.bench_seeds("tiny", bench.CONFIGS["tiny"], cpu, 2, 0, 1)
    assert len(steps) == 4 and len(alive_at_reset) == 8 and not any(alive_at_reset)


def test_a_failed_capture_is_timed_eagerly_and_labelled_so_never_as_the_graph(monkeypatch, capsys):
    monkeypatch.setenv("MAML_FAKE_CUDA_GRAPH", "fail")
    step, label = bench.training_step(bench.CONFIGS["tiny"], torch.device("cpu"), "maml", False, "fast")
    assert label == "eager, capture failed" and "cuda graph: capture failed" in capsys.readouterr().out
    monkeypatch.setenv("MAML_FAKE_CUDA_GRAPH", "ok")
    assert bench.training_step(bench.CONFIGS["tiny"], torch.device("cpu"), "maml", False, "fast")[1] == (
        "rehearsal, eager"
    )
