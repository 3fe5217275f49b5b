"""What only a CUDA GPU can show; every test here skips cleanly on a machine without one."""

import pytest
import torch

import bench
import data
import maml
from conftest import flat, micro_problem, tiny_flags

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_training_runs_on_the_gpu_and_resumes(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--device", "cuda", "--iterations", "2", "--eval-every", "2", "--learn-lr"))
    maml.main(tiny_flags(out, "--device", "cuda", "--iterations", "4", "--eval-every", "2", "--resume"))
    ckpt = maml.load_checkpoint(out / "ckpt.pt")
    assert ckpt["iteration"] == 4 and ckpt["generator_device"] == "cuda"
    assert ckpt["config"]["precision"] == "highest"  # 'auto' on a GPU until TF32 is measured


def test_episodes_are_drawn_on_the_gpu():
    split = data.split_to(data.synthetic_split("train", 16, per_class=10), "cuda")
    g = torch.Generator("cuda").manual_seed(0)
    episode = data.sample_episodes(split, tasks=3, ways=5, shots=1, queries=2, generator=g)
    assert episode["support_x"].is_cuda and episode["query_y"].is_cuda


@pytest.mark.parametrize("precision", ["highest", "fast"])
@pytest.mark.parametrize("tasks_together", [False, True])
def test_gpu_meta_gradient_against_float64_on_the_cpu(precision, tasks_together):
    params, episode = micro_problem(dtype=torch.float32)
    rates = maml.init_inner_lrs(params, 0.05, learn=True)
    exact = bench.float64_meta_gradient(params, rates, episode, 2, False)
    on_gpu = {n: p.detach().cuda().requires_grad_() for n, p in params.items()}
    rates_gpu = {n: r.detach().cuda().requires_grad_() for n, r in rates.items()}
    episode_gpu = {k: v.cuda() for k, v in episode.items()}
    with maml.precision_applied(precision, torch.device("cuda")):
        loss, _ = maml.meta_loss(on_gpu, rates_gpu, episode_gpu, 2, tasks_together=tasks_together)
        grad = flat(torch.autograd.grad(loss, [*on_gpu.values(), *rates_gpu.values()]))
    difference = bench.relative_difference(grad.cpu(), exact)
    print(f"{precision} {'grouped' if tasks_together else 'loop'}: {difference:.1e} from float64")
    assert difference < (1e-4 if precision == "highest" else 1e-2)


def test_graphed_training_draws_the_eager_episodes_and_ends_near_the_eager_run(tmp_path, capsys):
    flags = ["--device", "cuda", "--iterations", "6", "--eval-every", "3", "--learn-lr", "--precision", "highest"]
    maml.main(tiny_flags(tmp_path / "eager", *flags, "--cuda-graph", "off"))
    maml.main(tiny_flags(tmp_path / "graphed", *flags, "--cuda-graph", "on"))
    assert "capture failed" not in capsys.readouterr().out
    eager, graphed = (maml.load_checkpoint(tmp_path / run / "ckpt.pt") for run in ("eager", "graphed"))
    assert torch.equal(eager["generator"], graphed["generator"])  # the same random numbers were drawn
    for name, p in eager["params"].items():
        torch.testing.assert_close(graphed["params"][name], p, rtol=1e-3, atol=1e-4)


def test_graphed_run_resumes_and_several_seeds_are_graphed_together(tmp_path, capsys):
    flags = ["--device", "cuda", "--eval-every", "2", "--cuda-graph", "on"]
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "2", "--seeds", "0", "1"))
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "4", "--seeds", "0", "1", "--resume"))
    assert "capture failed" not in capsys.readouterr().out
    for seed in (0, 1):
        assert maml.load_checkpoint(tmp_path / "run" / f"seed{seed}" / "ckpt.pt")["iteration"] == 4


def test_a_run_begun_eagerly_is_graphed_after_resume(tmp_path, capsys):
    flags = ["--device", "cuda", "--eval-every", "2", "--learn-lr"]
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "2", "--cuda-graph", "off"))
    maml.main(tiny_flags(tmp_path / "run", *flags, "--iterations", "4", "--cuda-graph", "on", "--resume"))
    assert "capture failed" not in capsys.readouterr().out
    assert maml.load_checkpoint(tmp_path / "run" / "ckpt.pt")["iteration"] == 4
