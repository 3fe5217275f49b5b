"""Meta-gradients against independent computations, and the training script end to end."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import maml
from conftest import ROOT, tiny_flags

DT = torch.float64


def micro_problem(tasks=3, ways=2, shots=2, queries=3, size=16, hidden=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = maml.init_params(ways, hidden, size, generator=g, dtype=DT)
    params = {n: (p + 0.1 * torch.randn(p.shape, generator=g, dtype=DT)).requires_grad_() for n, p in params.items()}
    episode = {
        "support_x": torch.randn(tasks, ways * shots, 3, size, size, generator=g, dtype=DT),
        "support_y": torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1),
        "query_x": torch.randn(tasks, ways * queries, 3, size, size, generator=g, dtype=DT),
        "query_y": torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1),
    }
    return params, episode


def meta_sgd_rates(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: (0.05 * torch.randn(p.shape, generator=g, dtype=DT)).requires_grad_() for n, p in params.items()}


def meta_grad(params, lrs, episode, steps=2, first_order=False, together=True):
    loss, _ = maml.meta_loss(params, lrs, episode, steps, first_order, together)
    wrt = list(params.values()) + (list(lrs.values()) if isinstance(lrs, dict) else [])
    return torch.autograd.grad(loss, wrt)


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("method", ["maml", "metasgd"])
@pytest.mark.parametrize("first_order", [False, True])
def test_grouped_tasks_meta_gradient_equals_per_task_loop(method, first_order):
    params, episode = micro_problem()
    lrs = meta_sgd_rates(params) if method == "metasgd" else 0.1
    loop = flat(meta_grad(params, lrs, episode, first_order=first_order, together=False))
    grouped = flat(meta_grad(params, lrs, episode, first_order=first_order, together=True))
    assert loop.abs().max() > 1e-3
    assert (loop - grouped).abs().max() < 1e-8


def directional_fd(params, lrs, episode, direction, steps=2, eps=1e-5):
    """Central finite difference of the meta-loss along `direction` (a list over params [+ lrs])."""

    def loss_at(sign):
        with torch.no_grad():
            names = list(params)
            moved = {n: params[n] + sign * eps * d for n, d in zip(names, direction)}
            moved_lrs = lrs
            if isinstance(lrs, dict):
                moved_lrs = {n: lrs[n] + sign * eps * d for n, d in zip(names, direction[len(names) :])}
        return maml.meta_loss(moved, moved_lrs, episode, steps, tasks_together=False)[0].item()

    return (loss_at(1) - loss_at(-1)) / (2 * eps)


@pytest.mark.parametrize("method", ["maml", "metasgd"])
def test_meta_gradient_matches_central_finite_differences(method):
    """The inner gradient jumps where a ReLU or max-pool switches, so the meta-loss has small
    discontinuities; a finite difference is only trusted where two step sizes agree."""
    params, episode = micro_problem(tasks=2, hidden=2)
    lrs = meta_sgd_rates(params) if method == "metasgd" else 0.1
    g = torch.Generator().manual_seed(5)
    second = meta_grad(params, lrs, episode)
    first = meta_grad(params, lrs, episode, first_order=True)
    together = meta_grad(params, lrs, episode, together=True)
    checked = 0
    for _ in range(10):
        direction = [torch.randn(t.shape, generator=g, dtype=DT) for t in second]
        fd, fd_finer = (directional_fd(params, lrs, episode, direction, eps=e) for e in (1e-6, 1e-7))
        if abs(fd - fd_finer) > 1e-6 * max(1.0, abs(fd)):
            continue  # a kink lies within the step: this difference measures a jump, not a slope
        checked += 1
        for grads in (second, together):
            analytic = sum((a * d).sum() for a, d in zip(grads, direction)).item()
            assert abs(analytic - fd_finer) <= 1e-6 * max(1.0, abs(fd_finer)), (analytic, fd_finer)
        # The same check fails for the first-order gradient: it is not the meta-gradient.
        first_order = sum((a * d).sum() for a, d in zip(first, direction)).item()
        assert abs(first_order - fd_finer) > 1e-3 * max(1.0, abs(fd_finer))
    assert checked >= 4


def test_second_order_gradient_differs_from_first_order():
    params, episode = micro_problem()
    second = flat(meta_grad(params, 0.1, episode))
    first = flat(meta_grad(params, 0.1, episode, first_order=True))
    assert (second - first).norm() > 1e-3 * second.norm()


def test_meta_sgd_rates_receive_gradients():
    params, episode = micro_problem()
    lrs = meta_sgd_rates(params)
    grads = meta_grad(params, lrs, episode)[len(params) :]
    for name, grad in zip(lrs, grads):
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, name


def test_meta_sgd_with_constant_rates_equals_maml_step_exactly():
    params, episode = micro_problem()
    c = 0.037
    constant = {n: torch.full_like(p, c).requires_grad_() for n, p in params.items()}
    x, y = episode["support_x"][0], episode["support_y"][0]
    maml_adapted = maml.adapt(params, c, x, y, steps=3)
    sgd_adapted = maml.adapt(params, constant, x, y, steps=3)
    for n in params:
        assert torch.equal(maml_adapted[n], sgd_adapted[n]), n
    g_maml = meta_grad(params, c, episode)
    g_sgd = meta_grad(params, constant, episode)[: len(params)]
    for a, b in zip(g_maml, g_sgd):
        assert torch.equal(a, b)


def test_adapt_takes_the_step_theta_minus_alpha_grad():
    params, episode = micro_problem()
    x, y = episode["support_x"][0], episode["support_y"][0]
    loss = torch.nn.functional.cross_entropy(maml.conv4(params, x), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    adapted = maml.adapt(params, 0.5, x, y, steps=1)
    for (n, p), g in zip(params.items(), grads):
        torch.testing.assert_close(adapted[n], p - 0.5 * g, rtol=0, atol=1e-12)


def test_conv4_gives_1600_features_at_84_pixels():
    params = maml.init_params(5)
    x = torch.randn(4, 3, 84, 84)
    assert maml.features(params, x).shape == (4, 1600)
    assert maml.conv4(params, x).shape == (4, 5)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_raises_validation_accuracy(tmp_path):
    out = tmp_path / "run"
    maml.main(
        tiny_flags(
            out,
            "--iterations",
            "150",
            "--eval-every",
            "150",
            "--hidden",
            "16",
            "--inner-steps",
            "3",
            "--eval-steps",
            "3",
            "--inner-lr",
            "0.1",
            "--queries",
            "5",
            "--eval-queries",
            "5",
            "--meta-batch",
            "4",
            "--synthetic-per-class",
            "30",
            "--val-tasks",
            "200",
            "--meta-lr",
            "3e-3",
        )
    )
    rows = read_csv(out / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [0, 150]
    first, last = float(rows[0]["val_acc"]), float(rows[-1]["val_acc"])
    assert abs(first - 0.5) < 0.05  # 2-way chance before training
    assert last > first + 0.08, (first, last)
    result = json.loads((out / "test.json").read_text())
    assert result["tasks"] == 10 and 0 <= result["test_acc"] <= 1


def test_meta_sgd_run_saves_rates_and_their_statistics(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--learn-lr", "--iterations", "4", "--eval-every", "2"))
    ckpt = maml.load_checkpoint(out / "ckpt.pt")
    assert set(ckpt["inner_lrs"]) == set(ckpt["params"])
    for n, p in ckpt["params"].items():
        assert ckpt["inner_lrs"][n].shape == p.shape
    for key in ("config", "params", "optimizer", "iteration", "generator", "norm", "best_val"):
        assert key in ckpt
    rows = read_csv(out / "lr_stats.csv")
    assert {int(r["iteration"]) for r in rows} == {0, 2, 4}
    layers = {r["name"] for r in rows if r["kind"] == "layer"}
    assert layers == {"conv1", "conv2", "conv3", "conv4", "bn1", "bn2", "bn3", "bn4", "logits"}
    # At iteration 0 every rate is the initial --inner-lr.
    first = [r for r in rows if r["iteration"] == "0"]
    assert all(abs(float(r["mean"]) - 0.01) < 1e-9 and float(r["frac_negative"]) == 0 for r in first)


def test_lr_init_range_draws_rates_in_range():
    params = maml.init_params(3, 4, 16)
    lrs = maml.init_inner_lrs(params, 0.01, (-0.02, 0.03), torch.Generator().manual_seed(0))
    r = torch.cat([v.flatten() for v in lrs.values()])
    assert r.min() >= -0.02 and r.max() <= 0.03 and r.std() > 0.01


def test_existing_run_is_refused_without_resume(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--iterations", "2", "--eval-every", "2"))
    with pytest.raises(maml.CheckpointError, match="--resume"):
        maml.main(tiny_flags(out, "--iterations", "2", "--eval-every", "2"))


def final_params(out):
    return maml.load_checkpoint(out / "ckpt.pt")["params"]


def test_resume_after_a_finished_run_continues_exactly(tmp_path):
    flags = ["--learn-lr", "--eval-every", "4", "--save-every", "2"]
    maml.main(tiny_flags(tmp_path / "whole", "--iterations", "8", *flags))
    maml.main(tiny_flags(tmp_path / "split", "--iterations", "4", *flags))
    maml.main(tiny_flags(tmp_path / "split", "--iterations", "8", "--resume", *flags))
    a, b = final_params(tmp_path / "whole"), final_params(tmp_path / "split")
    assert all(torch.equal(a[n], b[n]) for n in a)
    va = [r["val_acc"] for r in read_csv(tmp_path / "whole" / "metrics.csv")]
    vb = [r["val_acc"] for r in read_csv(tmp_path / "split" / "metrics.csv")]
    assert va == vb


def test_ctrl_c_saves_and_resume_ends_identical_to_uninterrupted(tmp_path):
    flags = ["--iterations", "300", "--eval-every", "300", "--save-every", "10"]
    maml.main(tiny_flags(tmp_path / "whole", *flags))
    out = tmp_path / "interrupted"
    cmd = [sys.executable, str(ROOT / "maml.py"), *tiny_flags(out, *flags)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "interrupted: saved iteration" in stdout
    stopped_at = maml.load_checkpoint(out / "ckpt.pt")["iteration"]
    assert 0 < stopped_at < 300
    maml.main(tiny_flags(out, *flags, "--resume"))
    a, b = final_params(tmp_path / "whole"), final_params(out)
    assert maml.load_checkpoint(out / "ckpt.pt")["iteration"] == 300
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_importing_maml_has_no_side_effects(tmp_path):
    code = "import maml; print(sorted(k for k in ('conv4', 'adapt', 'meta_loss', 'meta_step') if hasattr(maml, k)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "['adapt', 'conv4', 'meta_loss', 'meta_step']"
    assert out.stderr == ""


def test_help_explains_every_flag():
    text = maml.build_parser().format_help()
    for action in maml.build_parser()._actions:
        assert action.help, action.dest
    assert "--learn-lr" in text and "--first-order" in text


# --------------------------------------------------------------------------- kills, divergence, determinism

KILL_FLAGS = ["--iterations", "60", "--eval-every", "20", "--save-every", "5", "--learn-lr"]

# Runs maml.py's main with torch.save slowed down: after the Nth save whose target name contains
# WHICH, the file is cut to half its size, a marker file appears, and the process sleeps, so the test
# can SIGKILL it in the middle of writing that file.
SLOW_SAVE = """
import os, sys, time, torch
marker, which, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
real_save, seen = torch.save, [0]
def slow_save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    if which in str(f):
        seen[0] += 1
        if seen[0] == nth:
            os.truncate(f, os.path.getsize(f) // 2)
            open(marker, "w").close()
            time.sleep(600)
torch.save = slow_save
import maml
maml.run_cli(maml.main, sys.argv[4:])
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    maml.main(tiny_flags(out, *KILL_FLAGS))
    return final_params(out)


def kill_when(proc, condition, timeout=120):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.parametrize("point", ["after the first saves", "writing the 3rd checkpoint", "writing best.pt"])
def test_sigkill_at_any_point_then_resume_ends_identical(point, tmp_path, uninterrupted):
    out = tmp_path / "run"
    flags = tiny_flags(out, *KILL_FLAGS)
    marker = tmp_path / "in-save"
    if point == "after the first saves":
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "maml.py"), *flags],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        first_save = []

        def second_save_done():  # the checkpoint of iteration 0 was replaced by a later one
            if not (out / "ckpt.pt").exists():
                return False
            first_save.append((out / "ckpt.pt").stat().st_mtime_ns)
            return first_save[-1] != first_save[0]

        kill_when(proc, second_save_done)
    else:
        which, nth = ("ckpt.pt.tmp", 3) if "checkpoint" in point else ("best.pt.tmp", 1)
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_SAVE, str(marker), which, str(nth), *flags],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        kill_when(proc, marker.exists)
        assert any(p.name.startswith(which) for p in out.iterdir())  # the half-written file is there
    maml.load_checkpoint(out / "ckpt.pt")  # what is on disk is still a whole checkpoint
    maml.main(tiny_flags(out, *KILL_FLAGS, "--resume"))
    resumed = final_params(out)
    assert all(torch.equal(uninterrupted[n], resumed[n]) for n in resumed)
    iterations = [int(r["iteration"]) for r in read_csv(out / "metrics.csv")]
    assert iterations == [0, 20, 40, 60]  # rows written after the checkpoint were not duplicated


def test_sigkill_while_writing_the_image_cache_then_rerun_rebuilds_it(tmp_path):
    from test_data import make_jpegs

    make_jpegs(tmp_path / "data")
    env = {**os.environ, "MAML_CACHE_DIR": str(tmp_path / "cache")}
    flags = tiny_flags(
        tmp_path / "run",
        "--data",
        str(tmp_path / "data"),
        "--ways",
        "2",
        "--iterations",
        "2",
        "--eval-every",
        "2",
        "--queries",
        "1",
        "--eval-queries",
        "1",
    )
    marker = tmp_path / "in-save"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, str(marker), "train-", "1", *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kill_when(proc, marker.exists)
    assert not list((tmp_path / "cache").glob("*.pt"))  # only the half-written temporary file
    subprocess.run(
        [sys.executable, str(ROOT / "maml.py"), *flags], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
    )
    assert len(list((tmp_path / "cache").glob("ravi-train-*.pt"))) == 1
    maml.load_checkpoint(tmp_path / "run" / "ckpt.pt")


def test_absurd_inner_lr_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "maml.py"),
            *tiny_flags(out, "--iterations", "20", "--inner-lr", "1e30", "--log-every", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "diverged" in proc.stderr and "iteration 1" in proc.stderr and "--inner-lr" in proc.stderr
    ckpt = maml.load_checkpoint(out / "ckpt.pt")
    assert ckpt["iteration"] == 0
    assert all(torch.isfinite(p).all() for p in ckpt["params"].values())


def test_same_seed_and_flags_give_the_same_metrics(tmp_path):
    def metrics(name):
        maml.main(tiny_flags(tmp_path / name, "--iterations", "6", "--eval-every", "3", "--learn-lr"))
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_csv(tmp_path / name / "metrics.csv")]

    assert metrics("a") == metrics("b")
