"""The training script end to end: runs, their metrics files, resume, kills, divergence, determinism
and refusal to write over an existing run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import cli
import flags
import gpu
import maml
import run_folder
from conftest import ROOT, make_jpegs, make_omniglot, read_csv, tiny_flags


def final_params(out):
    return run_folder.load_checkpoint(out / "ckpt.pt")["params"]


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


def test_maml_run_saves_its_fixed_rate_as_0d_constants(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--iterations", "2", "--eval-every", "2", "--inner-lr", "0.02"))
    ckpt = run_folder.load_checkpoint(out / "ckpt.pt")
    assert ckpt["format"] == run_folder.CHECKPOINT_FORMAT == 2
    assert list(ckpt["inner_lrs"]) == list(ckpt["params"])
    for n, r in ckpt["inner_lrs"].items():
        assert r.shape == () and not r.requires_grad and torch.equal(r, torch.tensor(0.02)), n
    assert not (out / "lr_stats.csv").exists()


def test_meta_sgd_run_saves_rates_and_their_statistics(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--learn-lr", "--iterations", "4", "--eval-every", "2"))
    ckpt = run_folder.load_checkpoint(out / "ckpt.pt")
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


def test_anil_with_learned_rates_learns_head_rates_only_trains_the_body_and_refuses_another_setting_on_resume(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--learn-lr", "--inner-params", "head", "--iterations", "2", "--eval-every", "2"))
    ckpt, start = (
        run_folder.load_checkpoint(out / "ckpt.pt"),
        maml.init_model({**run_folder.load_checkpoint(out / "ckpt.pt")["config"]}, torch.device("cpu")),
    )
    assert ckpt["config"]["inner_params"] == "head" and list(ckpt["inner_lrs"]) == ["head.weight", "head.bias"]
    assert not torch.equal(ckpt["params"]["conv1.weight"], start[0]["conv1.weight"])  # the body's outer step
    assert {r["name"] for r in read_csv(out / "lr_stats.csv") if r["kind"] == "layer"} == {"logits"}
    with pytest.raises(cli.CheckpointError, match="--inner-params body disagrees with the checkpoint's head"):
        maml.main(tiny_flags(out, "--learn-lr", "--inner-params", "body", "--iterations", "4", "--resume"))
    maml.main(tiny_flags(out, "--learn-lr", "--iterations", "3", "--eval-every", "2", "--resume"))  # keeps 'head'
    assert list(run_folder.load_checkpoint(out / "ckpt.pt")["inner_lrs"]) == ["head.weight", "head.bias"]


@pytest.mark.parametrize("vinyals", [False, True], ids=["lake", "vinyals"])
def test_tiny_run_trains_on_omniglot_as_it_ships_with_one_channel(vinyals, tmp_path):
    root = make_omniglot(tmp_path / "omniglot", vinyals=vinyals)
    out = tmp_path / "run"
    flags = tiny_flags(out, "--data", str(root), "--learn-lr", "--iterations", "4", "--eval-every", "2")
    size_at = flags.index("--image-size")
    del flags[size_at : size_at + 2]  # Omniglot's default size, 28 px
    maml.main([*flags, "--no-conv-bias", "--clip-grad", "10"])
    ckpt = run_folder.load_checkpoint(out / "best.pt")
    config = ckpt["config"]
    assert config["channels"] == 1 and config["image_size"] == 28 and config["rotations"] == vinyals
    assert config["omniglot_split"] == ("vinyals" if vinyals else "lake")
    assert config["conv_bias"] is False and config["clip_grad"] == 10
    assert ckpt["params"]["conv1.weight"].shape == (8, 1, 3, 3) and "conv1.bias" not in ckpt["params"]
    assert ckpt["norm"]["mean"].shape == (1,)
    assert [int(r["iteration"]) for r in read_csv(out / "metrics.csv")] == [0, 2, 4]
    assert (out / "test.json").exists()
    import probe  # the probe reads the one-channel checkpoint and its data back

    summary = probe.main([str(out / "best.pt"), "--iterations", "4", "--queries", "3", "--no-progress"])
    assert summary["iterations"] == 4 and summary["settings"]["checkpoint_file"] == "best.pt"


def test_existing_run_is_refused_without_resume(tmp_path):
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--iterations", "2", "--eval-every", "2"))
    with pytest.raises(cli.ConfigError, match="already holds a run; pass --resume"):
        maml.main(tiny_flags(out, "--iterations", "2", "--eval-every", "2"))


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
    flags = ["--iterations", "150", "--eval-every", "150", "--save-every", "10"]
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
    stopped_at = run_folder.load_checkpoint(out / "ckpt.pt")["iteration"]
    assert 0 < stopped_at < 150
    maml.main(tiny_flags(out, *flags, "--resume"))
    assert run_folder.load_checkpoint(out / "ckpt.pt")["iteration"] == 150
    metrics, lr_stats = logs(tmp_path / "whole")
    assert_same_run(out, {"params": final_params(tmp_path / "whole"), "metrics": metrics, "lr_stats": lr_stats})


def test_help_explains_every_flag():
    text = flags.build_parser().format_help()
    for action in flags.build_parser()._actions:
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
    path = f.name if hasattr(f, "write") else str(f)  # maml.py saves through a file, the image cache to a path
    if which in path:
        seen[0] += 1
        if seen[0] == nth:
            if hasattr(f, "flush"):
                f.flush()
            os.truncate(path, os.path.getsize(path) // 2)
            open(marker, "w").close()
            time.sleep(600)
torch.save = slow_save
import cli, maml
cli.run_cli(maml.main, sys.argv[4:])
"""


def logs(out):
    """metrics.csv and lr_stats.csv rows, elapsed seconds aside (the one column that may differ)."""
    metrics = [{k: v for k, v in row.items() if k != "elapsed_s"} for row in read_csv(out / "metrics.csv")]
    lr_stats = read_csv(out / "lr_stats.csv") if (out / "lr_stats.csv").exists() else []
    return metrics, lr_stats


def assert_same_run(out, reference):
    """The run in `out` ended with the reference run's tensors and logs, with no row twice and no
    temporary file left."""
    params, (metrics, lr_stats) = final_params(out), logs(out)
    assert all(torch.equal(reference["params"][n], params[n]) for n in params)
    assert metrics == reference["metrics"]
    assert lr_stats == reference["lr_stats"]
    iterations = [int(r["iteration"]) for r in metrics]
    assert iterations == sorted(set(iterations)), "a metrics.csv row is there twice"
    assert not list(out.glob("*.tmp*"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    maml.main(tiny_flags(out, *KILL_FLAGS))
    metrics, lr_stats = logs(out)
    assert [int(r["iteration"]) for r in metrics] == [0, 20, 40, 60]
    return {"params": final_params(out), "metrics": metrics, "lr_stats": lr_stats}


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
    run_folder.load_checkpoint(out / "ckpt.pt")  # what is on disk is still a whole checkpoint
    maml.main(tiny_flags(out, *KILL_FLAGS, "--resume"))
    assert_same_run(out, uninterrupted)  # tensors, metrics.csv and lr_stats.csv; stale temporaries removed


def test_sigkill_after_the_iteration_0_checkpoint_then_resume_writes_row_0_once(tmp_path, uninterrupted):
    out = tmp_path / "run"
    flags = tiny_flags(out, *KILL_FLAGS, "--save-every", "1000")  # no save between iterations 0 and 20
    proc = subprocess.Popen([sys.executable, str(ROOT / "maml.py"), *flags], cwd=tmp_path, stderr=subprocess.PIPE)
    kill_when(proc, (out / "ckpt.pt").exists)
    assert run_folder.load_checkpoint(out / "ckpt.pt")["iteration"] == 0
    maml.main([*flags, "--resume"])
    assert_same_run(out, uninterrupted)


def test_sigkill_while_writing_the_image_cache_then_rerun_rebuilds_it(tmp_path):
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
    run_folder.load_checkpoint(tmp_path / "run" / "ckpt.pt")


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
    ckpt = run_folder.load_checkpoint(out / "ckpt.pt")
    assert ckpt["iteration"] == 0
    assert all(torch.isfinite(p).all() for p in ckpt["params"].values())


def test_same_seed_and_flags_give_the_same_metrics(tmp_path):
    def metrics(name):
        maml.main(tiny_flags(tmp_path / name, "--iterations", "6", "--eval-every", "3", "--learn-lr"))
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_csv(tmp_path / name / "metrics.csv")]

    assert metrics("a") == metrics("b")


def test_precision_is_applied_during_the_run_recorded_in_the_checkpoint_and_put_back(tmp_path, monkeypatch, capsys):
    seen, real_meta_step = [], maml.meta_step
    switches = lambda: tuple(getattr(switch, attribute) for switch, attribute, _, _ in gpu.backend_switches())
    highest = tuple(value for _, _, _, value in gpu.backend_switches())
    defaults = switches()

    def watching(*args, **kwargs):
        seen.append(switches())
        return real_meta_step(*args, **kwargs)

    monkeypatch.setattr(maml, "meta_step", watching)
    maml.main(tiny_flags(tmp_path / "highest", "--iterations", "2", "--eval-every", "2", "--precision", "highest"))
    assert seen and set(seen) == {highest} and highest[-1] is False  # plain float32 kernels throughout
    assert switches() == defaults and torch.backends.mkldnn.enabled  # the library defaults again
    assert run_folder.load_checkpoint(tmp_path / "highest" / "ckpt.pt")["config"]["precision"] == "highest"
    assert "precision: highest" in capsys.readouterr().out
    maml.main(tiny_flags(tmp_path / "auto", "--iterations", "1", "--eval-every", "1", "--precision", "auto"))
    assert run_folder.load_checkpoint(tmp_path / "auto" / "ckpt.pt")["config"]["precision"] == "fast"  # 'auto' on a CPU


# --------------------------------------------------------------------------- one writer per run, a full disk


def one_line_refusal(main_fn, argv, capsys):
    """Run a script's main as its command line does; return its one stderr line (exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(main_fn, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_second_writer_is_refused_while_the_first_lives_and_allowed_after_it_is_killed(tmp_path, capsys):
    out = tmp_path / "run"
    flags = tiny_flags(out, "--iterations", "100000", "--eval-every", "50", "--save-every", "5")
    first = subprocess.Popen([sys.executable, str(ROOT / "maml.py"), *flags], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "ckpt.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        for argv in ([*flags, "--resume"], flags):  # a resume and a fresh start are both refused
            line = one_line_refusal(maml.main, argv, capsys)
            assert f"is in use: another process (PID {first.pid})" in line, line
    finally:
        first.kill()
        first.wait(timeout=60)
    done = run_folder.load_checkpoint(out / "ckpt.pt")["iteration"]
    maml.main([*flags, "--resume", "--iterations", str(done + 2)])
    assert run_folder.load_checkpoint(out / "ckpt.pt")["iteration"] == done + 2


def test_second_probe_is_refused_while_the_first_lives_and_allowed_after_it_is_killed(tmp_path, capsys):
    import probe

    maml.main(tiny_flags(tmp_path / "run", "--iterations", "2", "--eval-every", "2"))
    flags = [str(tmp_path / "run" / "best.pt"), "--batch", "4", "--queries", "3", "--no-progress"]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "probe.py"), *flags, "--iterations", "1000000"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )
    records = tmp_path / "run" / "probe.csv"
    try:
        deadline = time.time() + 120
        while not (records.exists() and len(read_csv(records)) >= 4) and time.time() < deadline:
            time.sleep(0.05)
        line = one_line_refusal(probe.main, [*flags, "--iterations", "1000000", "--resume"], capsys)
        assert f"is in use: another process (PID {first.pid})" in line, line
    finally:
        first.kill()
        first.wait(timeout=60)
    kept = len(read_csv(records)) // 4 * 4
    probe.main([*flags, "--iterations", str(kept + 4), "--resume"])
    assert len(read_csv(records)) == kept + 4


# Runs maml.py with every file limited to LIMIT bytes, as a full disk would stop writes (SIGXFSZ
# ignored, so a write past the limit fails with EFBIG instead of killing the process).
WITH_FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
import cli, maml
cli.run_cli(maml.main, sys.argv[2:])
"""


def test_full_disk_mid_run_ends_in_one_line_and_resume_is_bit_identical(tmp_path, capsys):
    flags = ["--learn-lr", "--iterations", "40", "--eval-every", "1", "--save-every", "5"]
    whole = tmp_path / "whole"
    maml.main(tiny_flags(whole, *flags))
    metrics, lr_stats = logs(whole)
    reference = {"params": final_params(whole), "metrics": metrics, "lr_stats": lr_stats}
    # A limit that every checkpoint fits under but lr_stats.csv outgrows half-way through the run.
    limit = max((whole / name).stat().st_size for name in ("ckpt.pt", "best.pt", "metrics.csv")) + 2000
    assert (whole / "lr_stats.csv").stat().st_size > limit + 10000
    out = tmp_path / "run"
    cut = subprocess.run(
        [sys.executable, "-c", WITH_FILE_SIZE_LIMIT, str(limit), *tiny_flags(out, *flags)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert cut.returncode == 2 and "Traceback" not in cut.stderr, cut.stderr
    (line,) = cut.stderr.strip().splitlines()
    iteration = run_folder.load_checkpoint(out / "ckpt.pt")["iteration"]
    assert 0 < iteration < 40
    assert re.fullmatch(
        rf"error: cannot write {re.escape(str(out / 'lr_stats.csv'))}: File too large; the last checkpoint "
        rf"{re.escape(str(out / 'ckpt.pt'))} \(iteration {iteration}\) is intact: make space, then python maml.py "
        rf"--resume --out {re.escape(str(out))}",
        line,
    ), line
    assert not list(out.glob("*.tmp*"))
    maml.main(tiny_flags(out, *flags, "--resume"))  # the limit lifted
    assert "repaired" in capsys.readouterr().out  # the torn lr_stats.csv row was dropped, and said so
    assert_same_run(out, reference)


# --------------------------------------------------------------------------- several seeds in one process


def seed_run(folder, *extra):
    """The tensors and validation rows a finished run left in `folder`."""
    ckpt = run_folder.load_checkpoint(folder / "ckpt.pt")
    val = [(r["iteration"], r["val_acc"]) for r in read_csv(folder / "metrics.csv")]
    return ckpt, val


@pytest.mark.parametrize("method", [[], ["--learn-lr"]], ids=["maml", "metasgd"])
def test_each_seed_of_seeds_equals_its_single_seed_run(method, tmp_path):
    # float64, and no conv biases: their meta-gradient is pure rounding noise, which Adam would blow up
    # into full steps that differ with the summation order (README, Decisions)
    flags = ["--iterations", "4", "--eval-every", "2", "--dtype", "float64", "--no-conv-bias", *method]
    outs = maml.main(tiny_flags(tmp_path / "seeds", "--seeds", "3", "5", *flags))
    assert outs == [tmp_path / "seeds" / "seed3", tmp_path / "seeds" / "seed5"]
    for seed in (3, 5):
        alone = tmp_path / f"alone{seed}"
        maml.main(tiny_flags(alone, "--seed", str(seed), "--task-batching", "grouped", *flags))
        (together, val_together), (single, val_single) = seed_run(outs[seed == 5]), seed_run(alone)
        assert together["config"]["seed"] == seed and together["iteration"] == 4
        for key in ("params", "inner_lrs"):
            for name, t in single[key].items():
                torch.testing.assert_close(together[key][name], t, rtol=1e-10, atol=1e-12)
        assert [i for i, _ in val_together] == [i for i, _ in val_single]
        assert all(abs(float(a) - float(b)) < 1e-9 for (_, a), (_, b) in zip(val_together, val_single, strict=True))
        assert (outs[seed == 5] / "test.json").exists() and (outs[seed == 5] / "best.pt").exists()
    first, second = (run_folder.load_checkpoint(out / "ckpt.pt")["params"]["conv1.weight"] for out in outs)
    assert not torch.allclose(first, second)  # two models, not one model twice


def test_seeds_resume_to_the_uninterrupted_run_and_refuse_seeds_at_different_iterations(tmp_path, capsys):
    flags = ["--seeds", "0", "1", "--learn-lr", "--eval-every", "2", "--save-every", "1"]
    maml.main(tiny_flags(tmp_path / "whole", *flags, "--iterations", "4"))
    maml.main(tiny_flags(tmp_path / "cut", *flags, "--iterations", "2"))
    maml.main(tiny_flags(tmp_path / "cut", *flags, "--iterations", "4", "--resume"))
    for seed in ("seed0", "seed1"):
        reference, resumed = (run_folder.load_checkpoint(tmp_path / run / seed / "ckpt.pt") for run in ("whole", "cut"))
        assert all(torch.equal(reference["params"][n], p) for n, p in resumed["params"].items())
        assert logs(tmp_path / "cut" / seed) == logs(tmp_path / "whole" / seed)
    # one seed brought further alone: the pair no longer continues from one iteration
    maml.main(tiny_flags(tmp_path / "cut" / "seed1", "--resume", "--iterations", "5"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.run_cli(maml.main, tiny_flags(tmp_path / "cut", *flags, "--iterations", "6", "--resume"))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "at different iterations (seed0: 4, seed1: 5)" in line and "--iterations 5" in line


def test_seeds_resume_with_a_seed_that_never_saved_names_the_command_that_starts_it(tmp_path, capsys):
    flags = ["--seeds", "0", "1", "--iterations", "2", "--eval-every", "2"]
    maml.main(tiny_flags(tmp_path / "run", *flags))
    shutil.rmtree(tmp_path / "run" / "seed1")  # as if its start had failed before its first save
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.run_cli(maml.main, tiny_flags(tmp_path / "run", *flags, "--resume"))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "(seed0: 2, seed1: 0)" in line
    assert f"python maml.py --seed 1 --out {tmp_path / 'run' / 'seed1'} --iterations 2" in line
    assert not (tmp_path / "run" / "seed1" / "ckpt.pt").exists()  # refused before anything was written


def test_seeds_with_one_seed_runs_the_stacked_path_where_task_batching_auto_would_take_the_loop(tmp_path, monkeypatch):
    """--seeds is decided once: any number of seeds trains stacked (on the CPU 'auto' means the loop)."""
    stacked_steps, real = [], maml.meta_loss_seeds
    monkeypatch.setattr(maml, "meta_loss_seeds", lambda *a, **k: stacked_steps.append(1) or real(*a, **k))
    outs = maml.main(tiny_flags(tmp_path / "run", "--seeds", "0", "--iterations", "2", "--eval-every", "2"))
    assert outs == [tmp_path / "run" / "seed0"] and len(stacked_steps) == 2


def test_a_kill_between_two_seeds_saves_then_resume_ends_identical_to_the_uninterrupted_seeds(tmp_path):
    """Seed 0 has saved its 3rd checkpoint and seed 1 is writing its own when the process dies: the
    resume takes seed 0 back to its previous checkpoint (the iteration both have) with no command to
    type, and both seeds end as they would have without the kill."""
    flags = ["--seeds", "0", "1", "--learn-lr", "--iterations", "12", "--eval-every", "4", "--save-every", "2"]
    maml.main(tiny_flags(tmp_path / "whole", *flags))
    out, marker = tmp_path / "cut", tmp_path / "in-save"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, str(marker), "seed1/ckpt.pt.tmp", "3", *tiny_flags(out, *flags)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    kill_when(proc, marker.exists)
    ahead, behind = (run_folder.load_checkpoint(out / s / "ckpt.pt")["iteration"] for s in ("seed0", "seed1"))
    assert ahead > behind and (out / "seed0" / "ckpt.prev.pt").exists()
    maml.main(tiny_flags(out, *flags, "--resume"))
    for seed in ("seed0", "seed1"):
        reference = run_folder.load_checkpoint(tmp_path / "whole" / seed / "ckpt.pt")
        metrics, lr_stats = logs(tmp_path / "whole" / seed)
        assert_same_run(out / seed, {"params": reference["params"], "metrics": metrics, "lr_stats": lr_stats})
        assert not (out / seed / "ckpt.prev.pt").exists()


def test_a_run_whose_folder_the_terminal_cannot_encode_finishes_and_prints_it_escaped(tmp_path):
    out = tmp_path / "runs-café"  # PYTHONIOENCODING=ascii: print() of this name used to end a finished run
    command = [sys.executable, str(ROOT / "maml.py"), *tiny_flags(out, "--iterations", "1")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "runs-caf\\xe9" in done.stdout, done.stderr[-800:]
