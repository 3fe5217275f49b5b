"""run_start.py: what a run's state is built from, and the rules a resumed run must meet."""

import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import data
import flags
import maml
import run_folder
import run_start
from cli import CheckpointError, ConfigError
from conftest import STEP_FLAGS, make_jpegs, read_csv, tiny_flags


def test_new_runs_put_every_tensor_the_training_step_reads_on_the_runs_device(monkeypatch):
    """Built for the meta device (the one device besides the CPU that a machine without a GPU has): a
    tensor left on the host, as bench.py's normalisation statistics once were, is named."""
    host_generator = lambda config, device: torch.Generator().manual_seed(config["seed"])  # meta has none
    monkeypatch.setattr(run_start, "episode_generator", host_generator)
    argv = [*STEP_FLAGS, "--synthetic-per-class", "6", "--eval-queries", "2", "--learn-lr"]
    config = vars(flags.build_parser().parse_args(argv))
    config.update(data.dataset_defaults(None, 16), out="unused")
    (run,) = run_start.new_runs([(config, None)], maml.init_model, torch.device("meta"), 0, 1, cuda_graph=False)
    assert run.device == torch.device("meta") and run.tensors_off_device() == []
    run.norm = {k: torch.zeros_like(v, device="cpu") for k, v in run.norm.items()}
    assert run.tensors_off_device() == ["norm[mean]", "norm[std]"]


def train(out, *extra):
    maml.main(tiny_flags(out, "--iterations", "2", "--eval-every", "2", *extra))


def files_of(folder):
    return {p: p.read_bytes() for p in Path(folder).rglob("*") if p.is_file() and p.suffix != ".lock"}


def test_a_run_resumed_on_other_data_is_refused_naming_what_differs_and_changes_nothing(tmp_path):
    make_jpegs(tmp_path / "ravi")
    train(tmp_path / "run")
    before = files_of(tmp_path / "run")
    with pytest.raises(ConfigError, match="not the data the run trained on .*layout synthetic then, ravi now"):
        train(tmp_path / "run", "--iterations", "4", "--resume", "--data", str(tmp_path / "ravi"), "--queries", "3")
    assert files_of(tmp_path / "run") == before


def test_a_moved_data_folder_resumes_and_other_images_in_it_are_refused(tmp_path):
    make_jpegs(tmp_path / "ravi")
    flags = ["--data", str(tmp_path / "ravi"), "--queries", "1", "--eval-queries", "1"]
    train(tmp_path / "run", *flags)
    shutil.move(tmp_path / "ravi", tmp_path / "moved")
    flags[1] = str(tmp_path / "moved")
    train(tmp_path / "run", *flags, "--iterations", "4", "--resume")  # the same data, elsewhere
    assert run_folder.load_checkpoint(tmp_path / "run" / "ckpt.pt")["iteration"] == 4
    rows = (tmp_path / "moved" / "train.csv").read_text().splitlines()
    (tmp_path / "moved" / "train.csv").write_text("\n".join(rows[:-1]) + "\n")  # one training image fewer
    with pytest.raises(ConfigError, match="train split images: 12 then, 11 now"):
        train(tmp_path / "run", *flags, "--iterations", "6", "--resume")


def test_a_checkpoint_without_a_data_identity_is_checked_by_its_normalisation_statistics(tmp_path, capsys):
    train(tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    del ckpt["data_identity"]  # as written before identities were recorded
    torch.save(ckpt, tmp_path / "run" / "ckpt.pt")
    capsys.readouterr()
    train(tmp_path / "run", "--iterations", "3", "--resume")
    assert "predates data identities" in capsys.readouterr().out  # the same data: resumed, and said so
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    del ckpt["data_identity"]
    ckpt["norm"]["mean"] += 0.01  # other training images
    torch.save(ckpt, tmp_path / "run" / "ckpt.pt")
    with pytest.raises(ConfigError, match="mean and std of its training images differ"):
        train(tmp_path / "run", "--iterations", "4", "--resume")


def test_a_named_flag_is_compared_on_resume_even_when_it_equals_its_default(tmp_path):
    train(tmp_path / "run")  # 2-way
    with pytest.raises(CheckpointError, match="--ways 5 disagrees with the checkpoint's 2"):
        maml.main([*tiny_flags(tmp_path / "run", "--iterations", "4", "--resume"), "--ways", "5"])


def test_a_single_seed_folder_and_a_seeds_folder_are_not_resumed_as_each_other(tmp_path):
    train(tmp_path / "one")
    train(tmp_path / "two", "--seeds", "0", "1")
    with pytest.raises(ConfigError, match="holds a single-seed run .* resume it without --seeds"):
        train(tmp_path / "one", "--iterations", "4", "--resume", "--seeds", "0", "1")
    with pytest.raises(ConfigError, match="holds the runs of --seeds 0 1, .* resume them with --seeds 0 1"):
        train(tmp_path / "two", "--iterations", "4", "--resume")
    assert not (tmp_path / "one" / "seed0").exists()


def test_resume_with_seeds_and_no_checkpoint_in_any_seed_folder_is_refused_as_for_one_seed(tmp_path):
    (tmp_path / "none" / "seed0").mkdir(parents=True)  # a start that failed before any save
    with pytest.raises(CheckpointError, match="--resume --seeds: no seed folder .* holds a checkpoint to resume"):
        train(tmp_path / "none", "--iterations", "4", "--resume", "--seeds", "0", "1")
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["seed0"]  # nothing started, nothing written


# (--learn-lr, --inner-params): the method's default folder and the flags its --seeds resume hint names
METHOD_NAMES_AND_FLAGS = {
    (False, "all"): ("maml", ""),
    (True, "all"): ("metasgd", " --learn-lr"),
    (False, "head"): ("anil", " --inner-params head"),
    (False, "body"): ("boil", " --inner-params body"),
    (True, "head"): ("anil-metasgd", " --learn-lr --inner-params head"),
    (True, "body"): ("boil-metasgd", " --learn-lr --inner-params body"),
}


@pytest.mark.parametrize("learn_lr, inner_params", list(METHOD_NAMES_AND_FLAGS))
def test_default_folders_and_resume_hints_name_each_method(learn_lr, inner_params):
    name, method_flags = METHOD_NAMES_AND_FLAGS[learn_lr, inner_params]
    args = Namespace(learn_lr=learn_lr, inner_params=inner_params, ways=5, shots=1, seed=3, seeds=None, out=None)
    assert run_start.default_out(vars(args)) == f"runs/{name}-5w1s-seed3"
    assert run_start.resume_command(args, ["runs/a"]) == "python maml.py --resume --out runs/a"
    args.seeds = [0, 7]
    outs = [run_start.default_out({**vars(args), "seed": seed}) for seed in args.seeds]
    assert outs == [f"runs/{name}-5w1s-seed0", f"runs/{name}-5w1s-seed7"]
    hint = f"python maml.py --resume --seeds 0 7{method_flags} --ways 5 --shots 1"
    assert run_start.resume_command(args, outs) == hint
    args.out = "runs/x"
    assert run_start.resume_command(args, outs) == "python maml.py --resume --seeds 0 7 --out runs/x"


# ----------------------------------------------------------------------------------------------
# A run folder holds one run (issue 29)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("other", [["--seed", "1"], ["--learn-lr"]], ids=["another-seed", "metasgd-into-maml"])
def test_another_runs_checkpoint_copied_into_a_folder_is_not_resumed_and_nothing_changes(tmp_path, other):
    train(tmp_path / "run")
    train(tmp_path / "other", *other)
    shutil.copy(tmp_path / "other" / "ckpt.pt", tmp_path / "run" / "ckpt.pt")
    before = files_of(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"ckpt.pt is run \w+, but .*run.json is run \w+: a run folder holds one"):
        train(tmp_path / "run", "--iterations", "4", "--resume")
    assert files_of(tmp_path / "run") == before


def test_a_folder_whose_run_json_is_gone_but_whose_logs_are_there_is_not_resumed(tmp_path):
    train(tmp_path / "run")
    (tmp_path / "run" / "run.json").unlink()
    with pytest.raises(CheckpointError, match="metrics.csv is a run that run.json does not name"):
        train(tmp_path / "run", "--iterations", "4", "--resume")


SLOW = (
    "--meta-lr",
    "1e-30",
)  # theta never changes in float32: every validation scores the same, so only the first is best


def test_best_pt_copied_over_ckpt_pt_resumes_as_the_uninterrupted_run(tmp_path):
    train(tmp_path / "whole", "--iterations", "4")
    train(tmp_path / "run")
    shutil.copy(tmp_path / "run" / "best.pt", tmp_path / "run" / "ckpt.pt")  # both at iteration 2
    train(tmp_path / "run", "--iterations", "4", "--resume")
    rows = lambda run: [
        {k: v for k, v in r.items() if k != "elapsed_s"} for r in read_csv(tmp_path / run / "metrics.csv")
    ]
    assert rows("run") == rows("whole")  # the row at iteration 4 averages iterations 3 and 4, not 1 to 4


def test_a_deleted_best_pt_is_rebuilt_from_ckpt_pt_when_they_hold_one_model_and_refused_otherwise(tmp_path, capsys):
    train(tmp_path / "run", *SLOW)  # best and ckpt at iteration 2
    (tmp_path / "run" / "best.pt").unlink()
    train(tmp_path / "run", *SLOW, "--iterations", "4", "--resume")
    assert "rebuilt" in capsys.readouterr().out and (tmp_path / "run" / "test.json").exists()
    assert run_folder.load_checkpoint(tmp_path / "run" / "best.pt")["iteration"] == 2  # still the best
    (tmp_path / "run" / "best.pt").unlink()  # ckpt.pt is at 4 now
    before = files_of(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"best.pt, this run's best model so far \(iteration 2\), is missing"):
        train(tmp_path / "run", *SLOW, "--iterations", "6", "--resume")
    assert files_of(tmp_path / "run") == before


def test_a_best_pt_that_is_not_the_runs_best_is_refused(tmp_path):
    train(tmp_path / "run", *SLOW, "--iterations", "4")  # best at 2, ckpt at 4
    shutil.copy(tmp_path / "run" / "ckpt.pt", tmp_path / "run" / "best.pt")
    with pytest.raises(CheckpointError, match="best.pt holds iteration 4, but this run's best model so far is from"):
        train(tmp_path / "run", *SLOW, "--iterations", "6", "--resume")


@pytest.mark.parametrize("log", ["metrics.csv", "lr_stats.csv"])
def test_a_log_with_a_column_deleted_is_refused_before_anything_is_appended(tmp_path, log):
    train(tmp_path / "run", "--learn-lr")
    path = tmp_path / "run" / log
    rows = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("".join(",".join(r[:3] + r[4:]) + "\n" for r in rows))  # the fourth column gone
    before = files_of(tmp_path / "run")
    with pytest.raises(CheckpointError, match=f"{log} does not have the columns this program writes .*it lacks"):
        train(tmp_path / "run", "--learn-lr", "--iterations", "4", "--resume")
    assert files_of(tmp_path / "run") == before


def test_regenerated_images_under_the_same_names_and_counts_are_not_the_runs_data(tmp_path):
    flags = ["--data", str(tmp_path / "ravi"), "--queries", "1", "--eval-queries", "1"]
    make_jpegs(tmp_path / "ravi")
    train(tmp_path / "run", *flags)
    shutil.rmtree(tmp_path / "ravi")
    make_jpegs(tmp_path / "ravi", seed=1)  # other pixels, the same files, classes and counts
    with pytest.raises(ConfigError, match="not the data the run trained on \\(train split pixels: \\w+ then, \\w+ now"):
        train(tmp_path / "run", *flags, "--iterations", "4", "--resume")


def test_another_runs_lr_stats_copied_into_a_folder_is_not_continued(tmp_path):
    train(tmp_path / "run", "--learn-lr")
    train(tmp_path / "other", "--learn-lr", "--seed", "1")
    shutil.copy(tmp_path / "other" / "lr_stats.csv", tmp_path / "run" / "lr_stats.csv")
    with pytest.raises(CheckpointError, match="lr_stats.csv is another run's log"):
        train(tmp_path / "run", "--learn-lr", "--iterations", "4", "--resume")


def test_a_log_whose_earlier_rows_differ_from_the_runs_is_not_continued_even_when_its_best_row_agrees(tmp_path):
    train(tmp_path / "run")
    path = tmp_path / "run" / "metrics.csv"
    lines = path.read_text().splitlines()
    fields = lines[1].split(",")  # iteration 0's row: another run's would differ there
    path.write_text("\n".join([lines[0], ",".join(fields[:3] + ["0.123"] + fields[4:]), *lines[2:]]) + "\n")
    with pytest.raises(CheckpointError, match="metrics.csv is another run's log \\(its rows up to iteration 2 are not"):
        train(tmp_path / "run", "--iterations", "4", "--resume")


def test_a_checkpoint_from_before_log_digests_checks_the_logs_row_at_its_best_iteration(tmp_path):
    train(tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    del ckpt["logs_digest"]  # as written before digests were kept
    torch.save(ckpt, tmp_path / "run" / "ckpt.pt")
    path = tmp_path / "run" / "metrics.csv"
    path.write_text(path.read_text().replace(repr(ckpt["best_val"][0]), "0.123"))
    with pytest.raises(CheckpointError, match="metrics.csv is another run's log \\(no row of validation accuracy"):
        train(tmp_path / "run", "--iterations", "4", "--resume")
