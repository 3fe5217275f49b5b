"""The error table's rows for models trained elsewhere: import_model.py's sources and options, evaluate.py's
flags, and a resume of an imported model. How a row runs: tests/cli_errors_harness.py."""

import shutil

import pytest
import torch
import torch.nn as nn

from conftest import ROOT

TF_BUNDLE = ROOT.parent / "shared" / "data" / "foreign-checkpoints" / "cbfinn-maml-miniimagenet-5w1s" / "model59000"
NEEDS_BUNDLE = pytest.mark.skipif(not TF_BUNDLE.with_suffix(".index").exists(), reason="needs the official MAML bundle")
OPTIONS = ["--data", "mini-imagenet", "--image-size", "84", "--shots", "1", "--inner-steps", "1", "--eval-steps", "1",
           "--eval-queries", "1"]  # fmt: skip


def l2l_state(hidden=4, ways=5, features=100, rates=False):
    """A learn2learn MiniImagenetCNN state_dict (≤0.1.3 names) of random tensors."""
    state = {}
    for i in range(4):
        c_in = 3 if i == 0 else hidden
        block = f"base.{i}"
        state |= {f"{block}.normalize.weight": torch.ones(hidden), f"{block}.normalize.bias": torch.zeros(hidden)}
        state |= {f"{block}.conv.weight": torch.randn(hidden, c_in, 3, 3), f"{block}.conv.bias": torch.zeros(hidden)}
    state |= {"linear.weight": torch.randn(ways, features), "linear.bias": torch.zeros(ways)}
    if rates:
        state = {f"module.{k}": v for k, v in state.items()} | {f"lrs.{j}": torch.ones(3) for j in range(5)}
    return state


def l2l(*options, change=None, rates=False, fmt="learn2learn", name="model.pt"):
    """import_model.py of a learn2learn state_dict (changed by `change(state)`) with `options`."""

    def setup(ctx):
        state = l2l_state(rates=rates)
        (change or (lambda s: None))(state)
        torch.save(state, ctx.d / name)
        return [str(ctx.d / name), "--format", fmt, "--out", str(ctx.d / "imported"), *options]

    return setup


def plain(*options, affine=True, head_bias=True, change=None):
    """import_model.py --format state-dict of an nn.Sequential Conv-4 (4 filters, 84 px)."""

    def setup(ctx):
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1), nn.BatchNorm2d(4, affine=affine), nn.ReLU(),
                       nn.MaxPool2d(2)]  # fmt: skip
        state = nn.Sequential(*layers, nn.Flatten(), nn.Linear(100, 5, bias=head_bias)).state_dict()
        (change or (lambda s: None))(state)
        torch.save(state, ctx.d / "sd.pt")
        return [str(ctx.d / "sd.pt"), "--format", "state-dict", "--out", str(ctx.d / "imported"), *options]

    return setup


def out_with(name):
    def setup(ctx):
        (ctx.d / "imported").mkdir()
        (ctx.d / "imported" / name).write_text("{}")
        return l2l(*WITH_RATE)(ctx)

    return setup


def anil_pair_of_two_heads(ctx):
    for name in ("a.pt", "b.pt"):
        torch.save({"module.weight": torch.ones(5, 100), "module.bias": torch.zeros(5)}, ctx.d / name)
    return [str(ctx.d / "a.pt"), str(ctx.d / "b.pt"), "--format", "learn2learn", "--out", str(ctx.d / "imported"),
            *WITH_RATE]  # fmt: skip


def file_as_source(content, *options):
    def setup(ctx):
        (ctx.d / "model.pt").write_bytes(content)
        return [str(ctx.d / "model.pt"), "--format", "learn2learn", "--out", str(ctx.d / "imported"), *options]

    return setup


def bundle(damage, *options):
    """import_model.py of a copy of the official MAML bundle that `damage(index_path, data_path)` changes."""

    def setup(ctx):
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copyfile(str(TF_BUNDLE) + suffix, ctx.d / f"model{suffix}")
        damage(ctx.d / "model.index", ctx.d / "model.data-00000-of-00001")
        return [str(ctx.d / "model"), "--format", "maml-tf", "--out", str(ctx.d / "imported"), "--inner-lr", "0.01",
                *OPTIONS, *options]  # fmt: skip

    return setup


def truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def flip_byte(path, at):
    content = bytearray(path.read_bytes())
    content[at] ^= 0xFF
    path.write_bytes(bytes(content))


def resume_imported(ctx):
    import import_model

    torch.save(l2l_state(), ctx.d / "model.pt")
    import_model.main([str(ctx.d / "model.pt"), "--format", "learn2learn", "--out", str(ctx.d / "imported"),
                       "--scaling", "raw", "--inner-lr", "0.5", *OPTIONS])  # fmt: skip
    shutil.copyfile(ctx.d / "imported" / "best.pt", ctx.d / "imported" / "ckpt.pt")  # as a user might
    return ["--resume", "--out", str(ctx.d / "imported"), "--device", "cpu"]


def evaluate_flags(*extra):
    def setup(ctx):
        return [str(ctx.d / "runs" / "maml" / "best.pt"), "--no-progress", *extra]

    return setup


WITH_RATE = ["--scaling", "raw", "--inner-lr", "0.5", *OPTIONS]
IMPORT_CASES = [
    pytest.param("import_model", l2l(*WITH_RATE, fmt="keras"), "argument --format: invalid choice: 'keras'",
                 id="unknown format"),
    pytest.param("import_model", l2l(*WITH_RATE, change=lambda s: s.update({"layer1.0.conv1.weight": s.pop(
        "base.0.conv.weight")})), "has no tensor base.0.conv.weight; is it a Conv-4 in the learn2learn format",
                 id="another architecture"),
    pytest.param("import_model", l2l(*WITH_RATE, change=lambda s: s.pop("base.2.conv.bias")),
                 "has no tensor base.2.conv.bias", id="a missing tensor"),
    pytest.param("import_model", l2l(*WITH_RATE, change=lambda s: s.update({"base.4.conv.weight": torch.ones(1)})),
                 r"holds tensors a Conv-4 in the learn2learn format does not \(base.4.conv.weight\)",
                 id="a fifth block"),
    pytest.param("import_model", l2l(*WITH_RATE[:-8], "--image-size", "32", *OPTIONS[4:]),
                 r"head.weight has shape \(5, 100\), a Conv-4 needs \(5, 16\) \(--image-size 32 gives 2x2",
                 id="image size that does not fit the head"),
    pytest.param("import_model", l2l(*WITH_RATE, change=lambda s: s.update({"base.1.conv.weight": torch.ones(4, 3, 3,
                                                                                                           3)})),
                 r"conv2.weight has shape \(4, 3, 3, 3\), a Conv-4 needs \(4, 4, 3, 3\)", id="a wrong shape"),
    pytest.param("import_model", file_as_source(b"not a torch file"), "cannot be read as a torch state_dict",
                 id="not a torch file"),
    pytest.param("import_model", l2l("--inner-lr", "0.5", *OPTIONS), "--scaling is needed to import a learn2learn",
                 id="scaling not given"),
    pytest.param("import_model", l2l("--scaling", "raw", *OPTIONS), "--inner-lr is needed to import a learn2learn",
                 id="maml rate not given"),
    pytest.param("import_model", l2l(*WITH_RATE[:4], *OPTIONS[2:]), "--data is needed", id="data not given"),
    pytest.param("import_model", l2l(*WITH_RATE, rates=True), "learned rates \\(lrs.\\*\\) that do not match",
                 id="meta-sgd rates of other shapes"),
    pytest.param("import_model", l2l(*WITH_RATE, fmt="state-dict"), "is not a Conv-4 in forward order",
                 id="state dict not in forward order"),
    pytest.param("import_model", l2l(*WITH_RATE, "--adapt", "bogus"), "--adapt 'bogus' names no parameter",
                 id="adapting set naming nothing"),
    pytest.param("import_model", l2l("--scaling", "mean-std", "--mean", "0.5", "--inner-lr", "0.5", *OPTIONS),
                 r"--scaling mean-std needs --mean and --std with 3 value\(s\) each", id="mean without std"),
    pytest.param("import_model", l2l(*WITH_RATE, "--shots", "0"), "--shots must be at least 1", id="zero shots"),
    pytest.param("import_model", l2l(*WITH_RATE, fmt="torchmeta"), "has no tensor features.layer1.conv.weight",
                 id="a learn2learn file read as torchmeta"),
    pytest.param("import_model", bundle(lambda i, d: truncate(d, 100_000)), "is truncated or does not match its index",
                 id="truncated tf bundle", marks=NEEDS_BUNDLE),
    pytest.param("import_model", bundle(lambda i, d: flip_byte(d, 500)), "is damaged: the bytes of tensor",
                 id="damaged tf bundle", marks=NEEDS_BUNDLE),
    pytest.param("import_model", bundle(lambda i, d: truncate(i, 300)), "not a readable TensorFlow checkpoint index",
                 id="truncated tf index", marks=NEEDS_BUNDLE),
    pytest.param("import_model", bundle(lambda i, d: d.unlink()), "does not exist; a TensorFlow bundle is",
                 id="tf bundle without its data file", marks=NEEDS_BUNDLE),
    pytest.param("maml", resume_imported, "was imported .* cannot be trained further",
                 id="resume of an imported model"),
    pytest.param("evaluate", evaluate_flags("--tasks", "0"), "--tasks must be at least 1", id="evaluate zero tasks"),
    pytest.param("evaluate", evaluate_flags("--split", "train"), "argument --split: invalid choice",
                 id="evaluate on the training split"),
    pytest.param("import_model", plain(*WITH_RATE, "--bn-eps", "1e-5", "--adapt", "all", affine=False),
                 "--adapt all adapts bn1.bias, bn1.weight, .* which .* does not have", id="adapting absent bn"),
    pytest.param("import_model", plain(*WITH_RATE, "--bn-eps", "1e-5", "--adapt", "all", head_bias=False),
                 "its Linear has no bias", id="a head without bias"),
    pytest.param("import_model", plain(*WITH_RATE, "--bn-eps", "inf", "--adapt", "all"),
                 "--bn-eps must be a positive finite number", id="infinite epsilon"),
    pytest.param("import_model", plain("--scaling", "mean-std", "--mean", "0", "0", "0", "--std", "nan", "1", "1",
                                       "--inner-lr", "0.5", *OPTIONS, "--bn-eps", "1e-5", "--adapt", "all"),
                 "--std positive and finite", id="std nan"),
    pytest.param("import_model", plain(*WITH_RATE, "--bn-eps", "1e-5", "--adapt", "all", change=lambda s: s[
        "4.weight"].fill_(float("nan"))), "conv2.weight holds values that are not finite", id="nan weights"),
    pytest.param("import_model", plain(*WITH_RATE, "--bn-eps", "1e-5", "--adapt", "all", change=lambda s: s.update(
        {f"lrs.{j}": torch.ones(1) for j in range(18)})), r"learned rates \(lrs.\*\) that do not match",
                 id="state dict with learned rates"),
    pytest.param("import_model", l2l(*WITH_RATE, rates=True, change=lambda s: s.update({"extra.w": torch.ones(2)})),
                 r"holds tensors beside its wrapped module \(extra.w\)", id="a stray tensor beside the wrapper"),
    pytest.param("import_model", l2l(*WITH_RATE, "--adapt", ""), "--adapt '' names no parameter", id="empty adapt"),
    pytest.param("import_model", out_with("test.json"), "already holds files", id="out with another run's results"),
    pytest.param("import_model", anil_pair_of_two_heads, "is not an ANIL pair", id="two head files"),
    pytest.param("import_model", l2l("--inner-lr", "0.5", *OPTIONS, fmt="maml-tf"),
                 "is a file, not a TensorFlow bundle", id="a torch file read as a bundle"),
    pytest.param("import_model", l2l(*WITH_RATE[:4], "--data", "nowhere", *OPTIONS[2:]),
                 "--data nowhere is neither a folder nor a dataset name", id="data that is not there"),
    pytest.param("import_model", l2l(*WITH_RATE[:4], "--data", "omniglot", *OPTIONS[2:]),
                 "--data omniglot has 1 channel", id="data with other channels"),
]  # fmt: skip
