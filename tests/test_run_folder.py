"""run_folder.py: the checkpoint format and its upgrade from older ones."""

import shutil

import pytest
import torch

import flags
import maml
import probe
import run_folder
from conftest import tiny_flags


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_format_1_checkpoint_with_float_maml_rate_loads_as_dict_of_rates(dtype, tmp_path):
    params = maml.init_params(2, 4, 16, dtype=dtype)
    config = {"learn_lr": False, "ways": 2, "shots": 1, "hidden": 4, "image_size": 16, "inner_lr": 0.01}
    old = {"program": run_folder.PROGRAM, "format": 1, "config": config, "params": params, "inner_lrs": 0.01,
           "iteration": 7}  # fmt: skip
    torch.save(old, tmp_path / "old.pt")
    ckpt = run_folder.load_checkpoint(tmp_path / "old.pt")
    assert ckpt["iteration"] == 7 and ckpt["format"] == 1
    assert list(ckpt["inner_lrs"]) == list(params)
    for n, r in ckpt["inner_lrs"].items():
        assert torch.is_tensor(r) and r.shape == () and r.dtype == dtype, n
        assert torch.equal(r, torch.tensor(0.01, dtype=dtype)), (n, r.item())


def test_format_1_rates_are_exactly_the_rates_init_inner_lrs_gives_maml():
    params = maml.init_params(2, 4, 16)
    old = {"program": run_folder.PROGRAM, "format": 1, "config": {}, "params": params, "inner_lrs": 0.01}
    upgraded = run_folder.upgrade_checkpoint(old)["inner_lrs"]
    fresh = maml.init_inner_lrs(params, 0.01)
    assert list(upgraded) == list(fresh) and all(torch.equal(upgraded[n], fresh[n]) for n in fresh)


def test_an_old_checkpoint_loads_probes_and_resumes_like_a_current_one(tmp_path):
    """A run saved before format 2 and before the settings and keys added since (flags.CONFIG_ADDED, the
    running sums, the generator's device): the probe reads it, and --resume continues it to the same
    parameters as the current checkpoint it was made from."""
    run_flags = ["--iterations", "2", "--eval-every", "2", "--inner-lr", "0.02", "--precision", "auto"]
    maml.main(tiny_flags(tmp_path / "now", *run_flags))
    shutil.copytree(tmp_path / "now", tmp_path / "old", ignore=shutil.ignore_patterns("*.lock"))
    for name in ("ckpt.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "now" / name, weights_only=True)
        ckpt.update(format=1, inner_lrs=0.02, config={**ckpt["config"], "out": str(tmp_path / "old")})
        for key in ("loss_sum", "acc_sum", "since_eval", "generator_device"):
            del ckpt[key]
        for key in flags.CONFIG_ADDED:
            del ckpt["config"][key]
        torch.save(ckpt, tmp_path / "old" / name)
    summary = probe.main([str(tmp_path / "old" / "best.pt"), "--iterations", "4", "--queries", "3", "--no-progress"])
    assert summary["iterations"] == 4 and summary["settings"]["method"] == "maml"
    for run in ("now", "old"):
        maml.main(tiny_flags(tmp_path / run, *run_flags[2:], "--iterations", "4", "--resume"))
    now, old = (run_folder.load_checkpoint(tmp_path / run / "ckpt.pt") for run in ("now", "old"))
    assert old["iteration"] == 4 and old["format"] == run_folder.CHECKPOINT_FORMAT
    assert all(torch.equal(now["params"][n], old["params"][n]) for n in now["params"])
    assert all(torch.equal(now["inner_lrs"][n], old["inner_lrs"][n]) for n in now["inner_lrs"])


def test_a_checkpoint_whose_inner_loop_adapted_no_known_set_is_refused_in_one_line(tmp_path):
    params = maml.init_params(2, 4, 16)
    config = {"learn_lr": False, "ways": 2, "inner_params": "neck", "inner_lr": 0.01}
    torch.save(
        {"program": run_folder.PROGRAM, "config": config, "params": params, "inner_lrs": 0.01}, tmp_path / "x.pt"
    )
    with pytest.raises(
        run_folder.CheckpointError, match=r"adapted 'neck', which is none .*\(all, head, body, no-bn, custom\)$"
    ):
        run_folder.load_checkpoint(tmp_path / "x.pt")
