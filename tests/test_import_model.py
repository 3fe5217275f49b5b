"""import_model.py: a model trained elsewhere, imported, computes what its own code computes. Each format's
source model is written here from its library's documented architecture with torch.nn (or, for the
official MAML's TensorFlow bundle, its forward pass and inner loop from its code's definition, in plain
torch); the imported checkpoint's logits and adapted logits must equal the source's in float64."""

import functools
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import data
import import_model
import maml
import run_folder
from conftest import ROOT, SAMPLE

FOREIGN = ROOT.parent / "shared" / "data" / "foreign-checkpoints"
TF_BUNDLE = FOREIGN / "cbfinn-maml-miniimagenet-5w1s" / "model59000"
L2L_MODEL = FOREIGN / "learn2learn-maml-miniimagenet-5w1s" / "model.pt"
needs = lambda path: pytest.mark.skipif(not Path(str(path) + ("" if path.suffix else ".index")).exists(),
                                        reason=f"needs {path} (../shared/data/foreign-checkpoints)")  # fmt: skip
COMMON = ["--data", "mini-imagenet", "--image-size", "84", "--shots", "1", "--inner-steps", "2", "--eval-steps", "3",
          "--eval-queries", "2"]  # fmt: skip


class L2LBlock(nn.Module):  # learn2learn's ConvBlock: `normalize` registered before `conv`, as in its code
    def __init__(self, c_in, hidden):
        super().__init__()
        self.max_pool = nn.MaxPool2d(2, 2)
        self.normalize = nn.BatchNorm2d(hidden, affine=True)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(c_in, hidden, 3, padding=1, bias=True)

    def forward(self, x):
        return self.max_pool(self.relu(self.normalize(self.conv(x))))


class L2LCNN(nn.Module):  # MiniImagenetCNN: (base, linear) up to 0.1.3, (features, classifier) as CNN4 from 0.1.4
    def __init__(self, ways, hidden, new_names=False):
        super().__init__()
        self.body, self.head = ("features", "classifier") if new_names else ("base", "linear")
        blocks = nn.Sequential(*[L2LBlock(3 if i == 0 else hidden, hidden) for i in range(4)])
        setattr(self, self.body, blocks)
        setattr(self, self.head, nn.Linear(25 * hidden, ways))

    def forward(self, x):
        return getattr(self, self.head)(getattr(self, self.body)(x).reshape(x.shape[0], -1))


class MetaConvModel(nn.Module):  # torchmeta / pytorch-maml: features.layer{i}.(conv, norm), classifier
    def __init__(self, ways, hidden):
        super().__init__()
        block = lambda c_in: nn.Sequential(OrderedDict(
            conv=nn.Conv2d(c_in, hidden, 3, padding=1),
            norm=nn.BatchNorm2d(hidden, momentum=1.0, track_running_stats=False),
            relu=nn.ReLU(), pool=nn.MaxPool2d(2)))  # fmt: skip
        self.features = nn.Sequential(OrderedDict((f"layer{i}", block(3 if i == 1 else hidden)) for i in range(1, 5)))
        self.classifier = nn.Linear(25 * hidden, ways)

    def forward(self, x):
        return self.classifier(self.features(x).reshape(x.shape[0], -1))


def plain_conv4(ways, hidden, eps):  # a `higher` user's nn.Sequential
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(3 if i == 0 else hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden, eps=eps), nn.ReLU(),
                   nn.MaxPool2d(2)]  # fmt: skip
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(25 * hidden, ways))


def randomized(model, seed=0):
    """Every parameter random (batch norm's scale and offset too), float64, in training mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] > 5 else 0.0))
    return model.double().train()


def images(n=10, seed=1):
    return torch.randint(0, 256, (n, 3, 84, 84), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def source_adapted_logits(model, params, rates, support, labels, query, steps):
    """The source algorithm's inner loop over its own module: p <- p - rate * grad of the mean support loss,
    for the parameters `rates` names (MAML: one rate each; Meta-SGD: a tensor each)."""
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, params, (support,)), labels)
        grads = torch.autograd.grad(loss, [params[n] for n in rates])
        params = {**params, **{n: params[n] - rates[n] * g for n, g in zip(rates, grads)}}
    return functional_call(model, params, (query,))


def imported(tmp_path, sources, *flags):
    out = tmp_path / "imported"
    import_model.main([*map(str, sources), *flags, "--out", str(out)])
    return run_folder.load_checkpoint(out / "best.pt")


def ours(ckpt, pixels, adapt_on=None, steps=0):
    """The imported checkpoint's logits on `pixels` (uint8), through data.normalize as every script feeds it,
    after `steps` inner steps on `adapt_on` (uint8 images, labels)."""
    params = {n: p.double() for n, p in ckpt["params"].items()}
    rates = {n: r.double() for n, r in ckpt["inner_lrs"].items()}
    net = functools.partial(maml.conv4, bn_eps=ckpt["config"]["bn_eps"])
    if adapt_on is not None:
        support, labels = adapt_on
        params = maml.adapt(
            params, rates, data.normalize(support, ckpt["norm"], torch.float64), labels, steps, False, net
        )
    with torch.no_grad():
        return net(params, data.normalize(pixels, ckpt["norm"], torch.float64))


def check_equal(model, ckpt, source_input, source_rates, steps=2):
    """Logits, and logits after `steps` inner steps, of the source model and the imported checkpoint."""
    support, query, labels = images(5, seed=2), images(10, seed=3), torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        expected = model(source_input(query))
    assert (ours(ckpt, query) - expected).abs().max() < 1e-10
    params = {n: p.detach() for n, p in model.named_parameters()}
    params = {n: p.requires_grad_() if n in source_rates else p for n, p in params.items()}
    expected = source_adapted_logits(
        model, params, source_rates, source_input(support), labels, source_input(query), steps
    )
    got = ours(ckpt, query, (support, labels), steps)
    assert (got - expected.detach()).abs().max() < 1e-10
    assert (got - ours(ckpt, query)).abs().max() > 1e-3  # the steps changed something


@pytest.mark.parametrize("new_names", [False, True])
def test_a_learn2learn_maml_model_imports_to_its_own_logits_raw_pixels_and_all_parameters_adapting(tmp_path, new_names):
    model = randomized(L2LCNN(5, 4, new_names))
    src = tmp_path / "model.pt"
    torch.save({f"module.{k}": v.float() for k, v in model.state_dict().items()}, src)  # under l2l.algorithms.MAML
    ckpt = imported(tmp_path, [src], "--format", "learn2learn", "--scaling", "raw", "--inner-lr", "0.1", *COMMON)
    assert ckpt["config"]["bn_eps"] == 1e-5 and flagsless_method(ckpt) == "maml"
    model = randomized_from(model, src)  # the file holds float32: the source model with those weights
    check_equal(model, ckpt, lambda u: u.double(), {n: 0.1 for n, _ in model.named_parameters()})


def randomized_from(model, src):
    """The source model with the weights the file holds (float32), back in float64."""
    state = {k.removeprefix("module."): v for k, v in torch.load(src).items() if not k.startswith("lrs.")}
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    return model.double().train()


def flagsless_method(ckpt):
    import flags

    return flags.method_of(ckpt["config"])


def test_a_learn2learn_metasgd_model_keeps_its_learned_rates_in_parameter_order(tmp_path):
    model = randomized(L2LCNN(5, 4))
    names = [n for n, _ in model.named_parameters()]
    assert names[:4] == ["base.0.normalize.weight", "base.0.normalize.bias", "base.0.conv.weight", "base.0.conv.bias"]
    g = torch.Generator().manual_seed(5)
    lrs = [torch.rand(p.shape, generator=g) * 0.2 - 0.05 for p in model.parameters()]  # some negative
    state = {f"module.{k}": v.float() for k, v in model.state_dict().items()} | {
        f"lrs.{j}": r for j, r in enumerate(lrs)
    }
    torch.save(state, tmp_path / "metasgd.pt")
    ckpt = imported(tmp_path, [tmp_path / "metasgd.pt"], "--format", "learn2learn", "--scaling", "unit", *COMMON)
    assert ckpt["config"]["learn_lr"] and ckpt["config"]["inner_lr"] is None and flagsless_method(ckpt) == "metasgd"
    assert torch.equal(ckpt["inner_lrs"]["bn1.weight"], lrs[0]) and torch.equal(
        ckpt["inner_lrs"]["conv1.weight"], lrs[2]
    )
    model = randomized_from(model, tmp_path / "metasgd.pt")
    check_equal(model, ckpt, lambda u: u.double() / 255, {n: r.double() for n, r in zip(names, lrs)})


def test_a_learn2learn_anil_pair_imports_with_only_the_head_adapting(tmp_path):
    model = randomized(L2LCNN(5, 4))
    torch.save({f"0.{k}": v.float() for k, v in model.base.state_dict().items()}, tmp_path / "features.pt")
    torch.save({f"module.{k}": v.float() for k, v in model.linear.state_dict().items()}, tmp_path / "head.pt")
    ckpt = imported(tmp_path, [tmp_path / "head.pt", tmp_path / "features.pt"], "--format", "learn2learn",
                    "--scaling", "unit", "--inner-lr", "0.3", *COMMON)  # fmt: skip
    assert list(ckpt["inner_lrs"]) == ["head.weight", "head.bias"] and flagsless_method(ckpt) == "anil"
    model.load_state_dict(
        {k: v.float().double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    check_equal(model, ckpt, lambda u: u.double() / 255, {"linear.weight": 0.3, "linear.bias": 0.3})


def test_a_torchmeta_model_adapts_conv_and_classifier_but_not_its_batch_norm(tmp_path):
    model = randomized(MetaConvModel(5, 4))
    mean, std = [0.47, 0.45, 0.40], [0.28, 0.27, 0.29]
    torch.save({k: v.float() for k, v in model.state_dict().items()}, tmp_path / "tm.pt")
    ckpt = imported(tmp_path, [tmp_path / "tm.pt"], "--format", "torchmeta", "--scaling", "mean-std",
                    "--mean", *map(str, mean),
                    "--std", *map(str, std), "--inner-lr", "0.2", *COMMON)  # fmt: skip
    assert ckpt["config"]["inner_params"] == "no-bn" and flagsless_method(ckpt) == "maml-no-bn"
    model.load_state_dict(
        {k: v.float().double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    scaled = lambda u: (u.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(3, 1, 1)  # fmt: skip
    check_equal(model, ckpt, scaled, {n: 0.2 for n, _ in model.named_parameters() if ".norm." not in n})


def test_a_plain_state_dict_imports_with_its_epsilon_and_a_custom_adapting_set(tmp_path):
    model = randomized(plain_conv4(5, 4, eps=1e-3))
    torch.save({k: v.float() for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    ckpt = imported(tmp_path, [tmp_path / "sd.pt"], "--format", "state-dict", "--scaling", "unit", "--bn-eps", "1e-3",
                    "--adapt", "conv4,head", "--inner-lr", "0.2", *COMMON)  # fmt: skip
    assert list(ckpt["inner_lrs"]) == ["conv4.weight", "conv4.bias", "head.weight", "head.bias"]
    assert ckpt["config"]["inner_params"] == "custom" and flagsless_method(ckpt) == "maml-custom"
    model.load_state_dict(
        {k: v.float().double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    check_equal(
        model, ckpt, lambda u: u.double() / 255, {n: 0.2 for n in ("12.weight", "12.bias", "17.weight", "17.bias")}
    )


def tf_forward(w, x_nhwc):
    """The official MAML's forward_conv, as its TensorFlow code defines it, in plain torch: NHWC images,
    HWIO kernels, 'SAME' conv + bias, batch norm over the batch (tf.nn.moments; offset only, epsilon 1e-3)
    with ReLU, 2x2 'VALID' max-pool; the NHWC flatten times w5, plus b5."""
    h = x_nhwc
    for i in range(1, 5):
        h = (
            F.conv2d(h.permute(0, 3, 1, 2), w[f"conv{i}"].permute(3, 2, 0, 1), padding=1).permute(0, 2, 3, 1)
            + w[f"b{i}"]
        )
        mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2), unbiased=False)
        h = torch.relu((h - mean) / torch.sqrt(var + 1e-3) + w[f"beta{i}"])
        h = F.max_pool2d(h.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    return h.reshape(h.shape[0], -1) @ w["w5"] + w["b5"]


def varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not out[-1] & 0x80:
            return bytes(out)


def write_bundle(prefix, tensors):
    """A TensorFlow "V2" bundle of float32 `tensors` {name: numpy array}, written as its format says (one
    uncompressed table block of unshared keys, an index block, the footer; masked CRC32C per tensor)."""
    import tf_bundle

    field = lambda number, wire, payload: varint(number << 3 | wire) + payload
    data, entries = b"", [(b"", field(1, 0, varint(1)))]  # the header: one shard, little-endian
    for name in sorted(tensors):
        raw = tensors[name].astype("<f4").tobytes()
        dims = b"".join(field(2, 2, varint(len(d)) + d) for d in (field(1, 0, varint(n)) for n in tensors[name].shape))
        crc = tf_bundle.crc32c(raw)
        masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        proto = field(1, 0, varint(1)) + field(2, 2, varint(len(dims)) + dims) + field(4, 0, varint(len(data)))
        entries.append(
            (name.encode(), proto + field(5, 0, varint(len(raw))) + field(6, 5, masked.to_bytes(4, "little")))
        )
        data += raw
    block = lambda items: b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in items) + (
        (0).to_bytes(4, "little") + (1).to_bytes(4, "little"))  # fmt: skip
    table = block(entries)
    index = block([(entries[-1][0], varint(0) + varint(len(table)))])
    footer = (varint(0) + varint(0) + varint(len(table) + 5) + varint(len(index))).ljust(40, b"\0")
    content = table + b"\0\0\0\0\0" + index + b"\0\0\0\0\0" + footer + tf_bundle.MAGIC.to_bytes(8, "little")
    Path(f"{prefix}.index").write_bytes(content)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)


def tf_names():
    names = {f"conv{i}": f"model/conv{i}" for i in range(1, 5)} | {"w5": "model/w5", "b5": "model/b5"}
    names |= {f"b{i + 1}": f"model/Variable{'' if i == 0 else f'_{i}'}" for i in range(4)}
    return names | {f"beta{i + 1}": f"model/{i}/beta" for i in range(4)}


@pytest.mark.parametrize("bundle", ["written here", pytest.param("official", marks=needs(TF_BUNDLE))])
def test_the_official_maml_bundle_imports_to_its_tf_forward_and_inner_loop(tmp_path, bundle):
    import tf_bundle

    if bundle == "official":
        prefix, raw = TF_BUNDLE, tf_bundle.read_bundle(TF_BUNDLE)
    else:  # random weights of 4 filters, in the official code's names and layouts
        raw, prefix = tf_weights(), tmp_path / "model100"
        write_bundle(prefix, raw)
        assert {k: v.tolist() for k, v in tf_bundle.read_bundle(prefix).items()} == {
            k: v.tolist() for k, v in raw.items()
        }
    w = {k: torch.from_numpy(raw[v]).double() for k, v in tf_names().items()}
    ckpt = imported(tmp_path, [prefix], "--format", "maml-tf", "--inner-lr", "0.01", *COMMON)
    support, query, labels = images(5, seed=2), images(10, seed=3), torch.tensor([3, 1, 4, 0, 2])
    nhwc = lambda u: u.double().permute(0, 2, 3, 1) / 255
    assert (ours(ckpt, query) - tf_forward(w, nhwc(query))).abs().max() < 1e-10
    fast = {k: v.clone().requires_grad_() for k, v in w.items() if not k.startswith("beta")}  # its `weights` dict
    for _ in range(2):  # its inner loop: tf.gradients of utils.xent (per-example loss / shots), summed
        loss = F.cross_entropy(tf_forward({**w, **fast}, nhwc(support)), labels, reduction="none").sum() / 1
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {k: v - 0.01 * g for (k, v), g in zip(fast.items(), grads)}
    expected = tf_forward({**w, **fast}, nhwc(query)).detach()
    assert (ours(ckpt, query, (support, labels), 2) - expected).abs().max() < 1e-10


def tf_weights(hidden=4, ways=5, features=None, seed=7):
    """Random weights in the official code's names and layouts (HWIO, w5 over the NHWC flatten)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {f"conv{i}": (3, 3, 3 if i == 1 else hidden, hidden) for i in range(1, 5)}
    shapes |= {"w5": (features or 25 * hidden, ways), "b5": (ways,)}
    shapes |= {f"b{i}": (hidden,) for i in range(1, 5)} | {f"beta{i}": (hidden,) for i in range(1, 5)}
    return {tf_names()[k]: (torch.randn(shape, generator=g) * 0.4).numpy() for k, shape in shapes.items()}


def test_a_bundle_is_read_by_either_file_name_and_any_damaged_index_byte_is_refused_or_harmless(tmp_path):
    import tf_bundle
    from cli import CheckpointError

    raw = tf_weights()
    write_bundle(tmp_path / "model", raw)
    for name in ("model", "model.index", "model.data-00000-of-00001"):
        assert tf_bundle.read_bundle(tmp_path / name).keys() == raw.keys()
    index = (tmp_path / "model.index").read_bytes()
    for at in range(len(index)):  # every byte flipped: the same tensors, or one line (never a traceback)
        (tmp_path / "model.index").write_bytes(index[:at] + bytes([index[at] ^ 0xFF]) + index[at + 1 :])
        try:
            read = tf_bundle.read_bundle(tmp_path / "model")
        except CheckpointError:
            continue
        assert {k: v.tolist() for k, v in read.items()} == {k: v.tolist() for k, v in raw.items()}, at


def test_the_official_codes_omniglot_network_and_a_scale_it_never_had_are_refused(tmp_path):
    from cli import CheckpointError, ConfigError

    write_bundle(tmp_path / "omniglot", tf_weights(features=4))  # strided convs and a mean: w5 [filters, ways]
    with pytest.raises(CheckpointError, match="w5 takes 4 features, not the 100 of the official code's Mini-ImageNet"):
        import_model.main([str(tmp_path / "omniglot"), "--format", "maml-tf", "--out", str(tmp_path / "a"),
                           "--inner-lr", "0.01", *COMMON])  # fmt: skip
    write_bundle(tmp_path / "mini", tf_weights())
    with pytest.raises(ConfigError, match="--adapt all adapts bn1.weight, .* which .* does not have"):
        import_model.main([str(tmp_path / "mini"), "--format", "maml-tf", "--out", str(tmp_path / "b"), "--adapt",
                           "all", "--inner-lr", "0.01", *COMMON])  # fmt: skip
    offsets_too = "conv,head,bn1.bias,bn2.bias,bn3.bias,bn4.bias"  # the offsets exist: they may adapt
    ckpt = import_model.main([str(tmp_path / "mini"), "--format", "maml-tf", "--out", str(tmp_path / "c"), "--adapt",
                              offsets_too, "--inner-lr", "0.01", *COMMON])  # fmt: skip
    assert ckpt["config"]["inner_params"] == "custom" and "bn1.weight" not in ckpt["inner_lrs"]


def test_evaluate_repeats_a_trained_runs_test_json_and_an_imported_model_gets_its_own(tmp_path_factory, tmp_path):
    import json

    import evaluate
    from cli_errors_harness import finished_runs

    run = finished_runs(tmp_path_factory) / "metasgd"
    expected = json.loads((run / "test.json").read_text())
    assert evaluate.main([str(run / "best.pt"), "--no-progress"]) == (expected["test_acc"], expected["test_ci95"])
    other = evaluate.main([str(run / "best.pt"), "--no-progress", "--steps", "0", "--tasks", "7"])
    assert other != (expected["test_acc"], expected["test_ci95"])
    assert json.loads((run / "test.json").read_text()) == expected  # a trained run's test.json is maml.py's


@pytest.mark.skipif(SAMPLE is None, reason="needs MAML_TEST_DATA (the Mini-ImageNet sample)")
@needs(TF_BUNDLE)
def test_the_official_maml_model_imports_evaluates_and_probes_on_the_sample(tmp_path, capsys):
    import json

    import evaluate
    import probe

    out = tmp_path / "cbfinn"
    import_model.main([str(TF_BUNDLE), "--format", "maml-tf", "--out", str(out), "--data", str(SAMPLE), "--image-size",
                       "84", "--shots", "1", "--inner-lr", "0.01", "--inner-steps", "5", "--eval-steps", "10",
                       "--eval-queries", "1"])  # fmt: skip
    assert "inner rate 0.05 on the mean support loss (its code's 0.01" in capsys.readouterr().out
    mean, _ = evaluate.main([str(out / "best.pt"), "--tasks", "5", "--steps", "1", "--no-progress"])
    assert 0 <= mean <= 1 and not (out / "test.json").exists()  # not its own protocol: printed only
    probe.main([str(out / "best.pt"), "--iterations", "4", "--batch", "4", "--queries", "2", "--steps", "1",
                "--similarity", "--no-progress"])  # fmt: skip
    summary = json.loads((out / "probe-steps1.json").read_text())
    assert summary["settings"]["method"] == "maml-no-bn" and summary["settings"]["data"] == str(SAMPLE.resolve())


def test_an_imported_model_is_evaluated_probed_and_reported_as_imported(tmp_path, capsys):
    import analyze
    import evaluate
    import probe
    from conftest import make_jpegs

    make_jpegs(tmp_path / "ravi")
    model = randomized(nn.Sequential(*plain_conv4(2, 4, 1e-5)[:-1], nn.Linear(4, 2)))  # 20px: 1x1 maps
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    out = tmp_path / "runs" / "imported"
    import_model.main([str(tmp_path / "sd.pt"), "--format", "state-dict", "--out", str(out), "--data",
                       str(tmp_path / "ravi"), "--image-size", "20", "--shots", "1", "--inner-lr", "0.1", "--adapt",
                       "all", "--bn-eps", "1e-5", "--scaling", "unit", "--inner-steps", "1", "--eval-steps", "2",
                       "--eval-queries", "1", "--test-tasks", "6"])  # fmt: skip
    mean, ci95 = evaluate.main([str(out / "best.pt"), "--no-progress"])  # its own protocol: test.json
    assert json_of(out / "test.json")["test_acc"] == mean and json_of(out / "test.json")["tasks"] == 6
    written = (out / "test.json").read_text()
    evaluate.main([str(out / "best.pt"), "--no-progress", "--data", str(tmp_path / "ravi")])  # data given: prints only
    assert evaluate.main([str(out / "best.pt"), "--no-progress", "--tasks", "1"])[1] is None  # one task: no interval
    assert (out / "test.json").read_text() == written
    probe.main([str(out / "best.pt"), "--iterations", "4", "--batch", "4", "--queries", "1", "--off-task", "any",
                "--no-progress"])  # fmt: skip
    report = analyze.main([str(out), "--out", str(tmp_path / "report")]).read_text()
    assert "imported (see below)" in report and "| unknown |" in report and "Models trained elsewhere" in report
    assert "| state-dict | sd.pt (" in report and "| unit | 1e-05 | 0.1 on the mean loss | 1, 2 | 1 |" in report
    assert "No training curves: every model here was imported." in report
    assert not (tmp_path / "report" / "fig5_training.png").exists() and "Short runs" not in report
    assert f"{100 * mean:.2f} ± {100 * ci95:.2f}%" in report
    assert list(out.iterdir()) and not (out / "metrics.csv").exists()


def json_of(path):
    import json

    return json.loads(path.read_text())
