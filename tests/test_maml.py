"""The algorithm: Conv-4, the inner loop, the meta-loss and its gradients against independent
computations, the inner rates, the meta-step and the training step. The training script end to end is
tests/test_train.py."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import data
import maml
from conftest import DT, ROOT, flat, learnable, meta_sgd_rates, method_rates, micro_problem, run_tensors, step_run


def meta_grad(params, lrs, episode, steps=2, first_order=False, grouped=True):
    """The meta-loss's gradient with respect to theta and the learnable rates (in that order)."""
    loss, _ = maml.meta_loss(params, lrs, episode, steps, first_order, grouped)
    return torch.autograd.grad(loss, list(params.values()) + learnable(lrs))


@pytest.mark.parametrize("method", ["maml", "metasgd"])
@pytest.mark.parametrize("first_order", [False, True])
def test_grouped_tasks_meta_gradient_equals_per_task_loop(method, first_order):
    params, episode = micro_problem()
    lrs = method_rates(method, params)
    loop = flat(meta_grad(params, lrs, episode, first_order=first_order, grouped=False))
    grouped = flat(meta_grad(params, lrs, episode, first_order=first_order, grouped=True))
    assert loop.abs().max() > 1e-3
    assert (loop - grouped).abs().max() < 1e-8


def directional_fd(params, lrs, episode, direction, steps=2, eps=1e-5):
    """Central finite difference of the meta-loss along `direction` (a list over params, then the
    learnable rates)."""
    names = list(params)
    learned = [n for n, r in lrs.items() if r.requires_grad]

    def loss_at(sign):
        with torch.no_grad():
            moved = {n: params[n] + sign * eps * d for n, d in zip(names, direction)}
            moved_lrs = {**lrs, **{n: lrs[n] + sign * eps * d for n, d in zip(learned, direction[len(names) :])}}
        return maml.meta_loss(moved, moved_lrs, episode, steps, grouped=False)[0].item()

    return (loss_at(1) - loss_at(-1)) / (2 * eps)


@pytest.mark.parametrize("inner_params", ["all", "head", "body"])
@pytest.mark.parametrize("method", ["maml", "metasgd"])
def test_meta_gradient_matches_central_finite_differences(method, inner_params):
    """The inner gradient jumps where a ReLU or max-pool switches, so the meta-loss has small
    discontinuities; a finite difference is only trusted where two step sizes agree. For ANIL (head)
    and BOIL (body) the parameters frozen in the inner loop are still differentiated, through the loss."""
    params, episode = micro_problem(tasks=2, hidden=2)
    lrs = method_rates(method, params, inner_params)
    g = torch.Generator().manual_seed(5)
    second = meta_grad(params, lrs, episode)
    assert len(second) == len(params) + (len(lrs) if method == "metasgd" else 0)
    first = meta_grad(params, lrs, episode, first_order=True)
    grouped = meta_grad(params, lrs, episode, grouped=True)
    checked = 0
    for _ in range(10):
        direction = [torch.randn(t.shape, generator=g, dtype=DT) for t in second]
        fd, fd_finer = (directional_fd(params, lrs, episode, direction, eps=e) for e in (1e-6, 1e-7))
        if abs(fd - fd_finer) > 1e-6 * max(1.0, abs(fd)):
            continue  # a kink lies within the step: this difference measures a jump, not a slope
        checked += 1
        for grads in (second, grouped):
            analytic = sum((a * d).sum() for a, d in zip(grads, direction)).item()
            assert abs(analytic - fd_finer) <= 1e-6 * max(1.0, abs(fd_finer)), (analytic, fd_finer)
        # The same check fails for the first-order gradient: it is not the meta-gradient.
        first_order = sum((a * d).sum() for a, d in zip(first, direction)).item()
        assert abs(first_order - fd_finer) > 1e-3 * max(1.0, abs(fd_finer))
    assert checked >= 4


def first_order_reference(params, lrs, episode, steps):
    """First-order MAML / Meta-SGD written out task by task, apart from maml.py: the inner gradients g_k
    are constants, so d theta'/d theta = I and d theta'/d alpha = -sum_k g_k; parameters without a rate
    stay theta. Returns the meta-gradient for theta, then for the learnable rates."""
    tasks = episode["support_x"].shape[0]
    grad_theta = {n: torch.zeros_like(p) for n, p in params.items()}
    grad_rates = {n: torch.zeros_like(r) for n, r in lrs.items() if r.requires_grad}
    for t in range(tasks):
        theta = {n: p.detach().clone() for n, p in params.items()}
        summed = {n: torch.zeros_like(theta[n]) for n in lrs}
        for _ in range(steps):
            for n in lrs:
                theta[n].requires_grad_()
            support_loss = F.cross_entropy(maml.conv4(theta, episode["support_x"][t]), episode["support_y"][t])
            for n, g in zip(lrs, torch.autograd.grad(support_loss, [theta[n] for n in lrs])):
                summed[n] += g
                theta[n] = (theta[n] - lrs[n].detach() * g).detach()
        theta = {n: p.detach().requires_grad_() for n, p in theta.items()}
        query_loss = F.cross_entropy(maml.conv4(theta, episode["query_x"][t]), episode["query_y"][t]) / tasks
        for n, g in zip(theta, torch.autograd.grad(query_loss, list(theta.values()))):
            grad_theta[n] += g
            if n in grad_rates:
                grad_rates[n] += -summed[n] * g
    return [*grad_theta.values(), *grad_rates.values()]


@pytest.mark.parametrize("inner_params", ["all", "head", "body", "no-bn"])
@pytest.mark.parametrize("method", ["maml", "metasgd"])
def test_first_order_meta_gradient_matches_a_separately_written_first_order_reference(method, inner_params):
    params, episode = micro_problem()
    lrs = method_rates(method, params, inner_params)
    for grouped in (False, True):
        ours = flat(meta_grad(params, lrs, episode, steps=3, first_order=True, grouped=grouped))
        reference = flat(first_order_reference(params, lrs, episode, steps=3))
        assert reference.abs().max() > 1e-3
        assert (ours - reference).abs().max() < 1e-10 * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("inner_params", ["head", "body", "no-bn"])
def test_frozen_parameters_keep_theta_in_the_inner_loop_and_get_their_outer_gradient(inner_params):
    params, episode = micro_problem()
    lrs = method_rates("metasgd", params, inner_params)
    frozen = [n for n in params if n not in lrs]
    kept = {"head": lambda n: not n.startswith("head."), "body": lambda n: n.startswith("head."),
            "no-bn": lambda n: n.startswith("bn")}[inner_params]  # fmt: skip
    assert frozen and all(kept(n) for n in frozen) and all(not kept(n) for n in lrs)
    adapted = maml.adapt(params, lrs, episode["support_x"][0], episode["support_y"][0], steps=2)
    for n in params:  # frozen: theta itself; the others are stepped (a conv bias's step is 0: BatchNorm cancels it)
        assert (adapted[n] is params[n]) == (n in frozen), n
    assert any(not torch.equal(adapted[n], params[n]) for n in lrs)
    grads = dict(zip(params, meta_grad(params, lrs, episode)))
    for n in frozen:
        assert grads[n].abs().max() > 0, n


@pytest.mark.parametrize("inner_params", ["all", "head", "body"])
def test_the_inner_loop_takes_gradients_only_for_the_parameters_that_adapt(inner_params, monkeypatch):
    params, episode = micro_problem()
    lrs = method_rates("maml", params, inner_params)
    taken, real_grad = [], torch.autograd.grad

    def counting_grad(outputs, inputs, *args, **kwargs):
        taken.append(len(inputs))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    maml.meta_loss(params, lrs, episode, steps=3)
    expected = {"all": len(params), "head": 2, "body": len(params) - 2}[inner_params]
    assert taken == [expected] * 3


def test_init_inner_lrs_gives_rates_only_for_the_parameters_that_adapt():
    params, _ = micro_problem()
    assert list(maml.init_inner_lrs(params, 0.01, inner_params="head")) == ["head.weight", "head.bias"]
    body = maml.init_inner_lrs(params, 0.01, learn_lr=True, inner_params="body")
    assert list(body) == [n for n in params if not n.startswith("head.")]
    assert all(r.shape == params[n].shape and r.requires_grad for n, r in body.items())


def test_second_order_gradient_differs_from_first_order():
    params, episode = micro_problem()
    lrs = maml.init_inner_lrs(params, 0.1)
    second = flat(meta_grad(params, lrs, episode))
    first = flat(meta_grad(params, lrs, episode, first_order=True))
    assert (second - first).norm() > 1e-3 * second.norm()


def test_meta_sgd_rates_receive_gradients():
    params, episode = micro_problem()
    lrs = meta_sgd_rates(params)
    grads = meta_grad(params, lrs, episode)[len(params) :]
    assert len(grads) == len(lrs)
    for name, grad in zip(lrs, grads):
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, name


def test_meta_sgd_with_constant_rates_equals_maml_step_exactly():
    params, episode = micro_problem()
    c = 0.037
    constant = maml.init_inner_lrs(params, c, learn_lr=True)
    fixed = maml.init_inner_lrs(params, c)
    x, y = episode["support_x"][0], episode["support_y"][0]
    maml_adapted = maml.adapt(params, fixed, x, y, steps=3)
    sgd_adapted = maml.adapt(params, constant, x, y, steps=3)
    for n in params:
        assert torch.equal(maml_adapted[n], sgd_adapted[n]), n
    g_maml = meta_grad(params, fixed, episode)
    g_sgd = meta_grad(params, constant, episode)[: len(params)]
    assert len(g_maml) == len(g_sgd) == len(params)
    for a, b in zip(g_maml, g_sgd):
        assert torch.equal(a, b)


def test_adapt_takes_the_step_theta_minus_alpha_grad():
    params, episode = micro_problem()
    x, y = episode["support_x"][0], episode["support_y"][0]
    loss = torch.nn.functional.cross_entropy(maml.conv4(params, x), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    adapted = maml.adapt(params, maml.init_inner_lrs(params, 0.5), x, y, steps=1)
    for (n, p), g in zip(params.items(), grads):
        torch.testing.assert_close(adapted[n], p - 0.5 * g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_maml_adapt_with_0d_rates_is_exactly_theta_minus_alpha_grad(dtype):
    params, episode = micro_problem(dtype=dtype)
    x, y = episode["support_x"][0], episode["support_y"][0]
    # The support loss as adapt computes it (summed over the batch, then divided), so the gradients
    # are bitwise the same and the step can be compared exactly.
    loss = torch.nn.functional.cross_entropy(maml.conv4(params, x), y, reduction="sum") / y.shape[-1]
    grads = torch.autograd.grad(loss, list(params.values()))
    adapted = maml.adapt(params, maml.init_inner_lrs(params, 0.01), x, y, steps=1)
    for (n, p), g in zip(params.items(), grads):
        assert torch.equal(adapted[n], p - 0.01 * g), n


def test_init_inner_lrs_gives_fixed_0d_rates_for_maml_and_learnable_full_ones_for_meta_sgd():
    params = maml.init_params(3, 4, 16, dtype=DT)
    fixed = maml.init_inner_lrs(params, 0.01)
    assert list(fixed) == list(params)
    for n, r in fixed.items():
        assert r.shape == () and r.dtype == DT and not r.requires_grad, n
        assert r.item() == 0.01, (n, r.item())
    learned = maml.init_inner_lrs(params, 0.01, learn_lr=True)
    assert list(learned) == list(params)
    for n, r in learned.items():
        assert r.shape == params[n].shape and r.dtype == DT and r.requires_grad and r.is_leaf, n
        assert (r == 0.01).all(), n
    assert learnable(fixed) == [] and len(learnable(learned)) == len(params)


def test_lr_init_range_draws_rates_in_range():
    params = maml.init_params(3, 4, 16)
    lrs = maml.init_inner_lrs(
        params, 0.01, learn_lr=True, lr_init_range=(-0.02, 0.03), generator=torch.Generator().manual_seed(0)
    )
    assert all(r.requires_grad and r.shape == params[n].shape for n, r in lrs.items())
    r = torch.cat([v.flatten() for v in lrs.values()])
    assert r.min() >= -0.02 and r.max() <= 0.03 and r.std() > 0.01


def test_conv4_gives_1600_features_at_84_pixels():
    params = maml.init_params(5)
    x = torch.randn(4, 3, 84, 84)
    assert maml.features(params, x).shape == (4, 1600)
    assert maml.conv4(params, x).shape == (4, 5)


def test_network_without_conv_biases_is_the_biased_network_with_zero_biases():
    params, episode = micro_problem()
    unbiased = {n: p for n, p in params.items() if not (n.startswith("conv") and n.endswith(".bias"))}
    zeroed = {n: (torch.zeros_like(p) if n not in unbiased else p) for n, p in params.items()}
    x = episode["support_x"]
    assert torch.equal(maml.features(unbiased, x[0]), maml.features(zeroed, x[0]))
    tasks = maml.per_task(unbiased, x.shape[0])
    assert torch.allclose(maml.features_tasks(tasks, x)[1], maml.features(unbiased, x[1]), atol=1e-10)
    made = maml.init_params(3, 4, 16, channels=1, conv_bias=False)
    assert "conv1.bias" not in made and made["conv1.weight"].shape == (4, 1, 3, 3)
    rates = maml.init_inner_lrs(made, 0.01, learn_lr=True)
    assert set(rates) == set(made)  # rates follow the parameters that exist
    gray = torch.randn(6, 1, 16, 16)
    adapted = maml.adapt(made, rates, gray, torch.tensor([0, 1, 2, 0, 1, 2]), steps=1)
    assert maml.conv4(adapted, gray).shape == (6, 3)


def test_clip_grad_clips_every_meta_gradient_entry_before_the_step():
    params, episode = micro_problem()
    rates = meta_sgd_rates(params)
    expected = meta_grad(params, rates, episode, steps=1)
    optimizer = torch.optim.SGD([*params.values(), *learnable(rates)], lr=1.0)
    before = [t.detach().clone() for t in [*params.values(), *learnable(rates)]]
    maml.meta_step([optimizer], *maml.meta_loss(params, rates, episode, 1), clip_grad=1e-3)
    after = [*params.values(), *learnable(rates)]
    assert flat(expected).abs().max() > 1e-3  # something was clipped
    for b, a, g in zip(before, after, expected):
        assert torch.allclose(b - a, g.clamp(-1e-3, 1e-3), atol=1e-12)


def test_meta_step_of_stacked_models_steps_each_as_its_own_meta_step():
    """meta_loss_seeds + one meta_step over several optimizers: each model takes the step its own
    meta_loss + meta_step would give it (float64, to rounding)."""
    problems = [micro_problem(seed=seed) for seed in (0, 1)]
    alone, stacked = [], []
    for copies in (alone, stacked):
        for params, _ in problems:
            params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
            rates = meta_sgd_rates(params)
            copies.append((params, rates, torch.optim.Adam([*params.values(), *learnable(rates)], lr=1e-2)))
    for (params, rates, optimizer), (_, episode) in zip(alone, problems):
        maml.meta_step([optimizer], *maml.meta_loss(params, rates, episode, 2), clip_grad=0.5)
    losses, accuracies = maml.meta_loss_seeds([m[0] for m in stacked], [m[1] for m in stacked],
                                              [episode for _, episode in problems], 2)  # fmt: skip
    assert losses.shape == (2,)
    maml.meta_step([m[2] for m in stacked], losses, accuracies, clip_grad=0.5)
    for (params, rates, _), (params_s, rates_s, _) in zip(alone, stacked):
        for a, b in zip([*params.values(), *rates.values()], [*params_s.values(), *rates_s.values()]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("learn_lr", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_train_iteration_is_sample_episodes_meta_loss_and_meta_step_bit_for_bit(learn_lr, grouped):
    run, reference = step_run(learn_lr), step_run(learn_lr)
    losses = []
    for _ in range(4):
        maml.train_iteration([run], stacked=False, grouped=grouped)
        episode = data.sample_episodes(reference.splits["train"], tasks=2, ways=3, shots=1, queries=2,
                                       generator=reference.episode_rng, norm=reference.norm)  # fmt: skip
        loss, _ = maml.meta_step([reference.optimizer], *maml.meta_loss(reference.params, reference.inner_lrs, episode,
                                                                         2, False, grouped))  # fmt: skip
        losses.append(loss)
    assert all(torch.equal(a, b) for a, b in zip(run_tensors(run), run_tensors(reference), strict=True))
    assert torch.equal(run.last_loss, losses[-1]) and int(run.device_iteration) == 4 and int(run.bad_iteration) == -1
    assert torch.equal(run.loss_sum, sum(losses[1:], losses[0]).float())


COPIED = """
import sys
for posix_only in ("fcntl", "resource", "termios", "pwd", "grp"):  # as on Windows: no POSIX-only module
    sys.modules[posix_only] = None
import torch
from maml import adapt, conv4, init_inner_lrs, init_params, meta_loss, meta_optimizer, meta_step

params = {n: p.requires_grad_() for n, p in init_params(2, 4, 16, generator=torch.Generator().manual_seed(0)).items()}
inner_lrs = init_inner_lrs(params, 0.01, learn_lr=True)
optimizer = meta_optimizer(params, inner_lrs, 1e-3)
g = torch.Generator().manual_seed(1)
episode = {"support_x": torch.randn(3, 2, 3, 16, 16, generator=g), "support_y": torch.tensor([[0, 1]] * 3),
           "query_x": torch.randn(3, 4, 3, 16, 16, generator=g), "query_y": torch.tensor([[0, 1, 0, 1]] * 3)}
before = params["conv1.weight"].detach().clone()
loss, accuracy = meta_step([optimizer], *meta_loss(params, inner_lrs, episode, steps=2))
assert not torch.equal(before, params["conv1.weight"]) and inner_lrs["conv1.weight"].grad is not None
adapted = adapt(params, inner_lrs, episode["support_x"][0], episode["support_y"][0], steps=1)
assert conv4(adapted, episode["query_x"][0]).shape == (4, 2)
project = ("cli", "data", "flags", "run_folder", "logs", "distributed", "gpu", "stats", "figures")
ours = sorted(m for m in sys.modules if m in project)
print("ok", ours, float(loss) > 0)
"""


def test_maml_py_copied_alone_imports_silently_and_takes_a_second_order_meta_step_with_torch_only(tmp_path):
    shutil.copy(ROOT / "maml.py", tmp_path / "maml.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", COPIED], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr  # importing printed nothing, warned nothing
    assert done.stdout == "ok [] True\n"
