"""Import a Conv-4 meta-learner trained elsewhere as a run folder of this project, which `evaluate.py`,
`probe.py` and `analyze.py` then read like one that maml.py trained.

    python import_model.py logs/.../model59000 --format maml-tf --out runs/imported/cbfinn-maml-5w1s \\
        --data mini-imagenet --image-size 84 --shots 1 --inner-lr 0.01 --inner-steps 5 --eval-steps 10 \\
        --eval-queries 1
    python import_model.py model.pt --format learn2learn --scaling raw --inner-lr 0.5 ...

What decides the forward pass or the adaptation is read from the source where it can say it (shapes, conv
biases, Meta-SGD's learned rates), taken from the format's own code where that fixes it (`FORMATS`: the
official MAML's batch-norm epsilon 1e-3 and pixels / 255), and otherwise must be given: a missing one is
refused in one line that names its option, never guessed. What only training knew (meta learning rate,
iterations, meta-batch, seed) is recorded as unknown (None), and such a checkpoint cannot be resumed.
"""

import hashlib
import math
import secrets
import warnings
from pathlib import Path

import torch

import cli
import fetch
import flags
import run_folder
import tf_bundle
from cli import CheckpointError, ConfigError
from maml import INNER_PARAMS, as_inner_lrs

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # batch norm's; unused with batch statistics
SCALINGS = {  # --scaling: what the model's input was, as data.normalize's (pixels / 255 - mean) / std
    "unit": "pixels / 255, in [0, 1]",
    "raw": "raw pixel values 0..255 (mean 0, std 1/255 after / 255)",
    "mean-std": "(pixels / 255 - MEAN) / STD per channel (--mean, --std)",
}


# ----------------------------------------------------------------------------------------------
# Reading each format: {project name: tensor} of the Conv-4, Meta-SGD's rates if the file holds them
# ----------------------------------------------------------------------------------------------


def load_state_dict(path):
    """A torch file's dict of tensors (a state_dict, or one wrapped as {'state_dict': ...})."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; expected a torch state_dict file") from None
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as a torch state_dict ({type(e).__name__})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError(f"{path} holds no state_dict (a dict of parameter names to tensors)")
    return dict(loaded)


def without_prefix(state, prefix):
    """The entries of `state` that start with `prefix`, the prefix cut off (wrappers add 'module.')."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def unwrapped(state, source):
    """A state_dict without its wrappers (learn2learn's MAML/MetaSGD, DataParallel: `module.`, at any depth):
    (the module's entries, a MetaSGD wrapper's learned rates `lrs.{j}` in the module's parameter order, or
    None). A tensor beside the wrapped module that is neither is refused, never dropped."""
    rates = None
    while any(key.startswith(("module.", "lrs.")) for key in state):
        if any(key.startswith("lrs.") for key in state):
            if rates is not None:
                raise CheckpointError(f"{source} holds two sets of learned rates (lrs.*); one MetaSGD wrapper is read")
            count = sum(key.startswith("lrs.") for key in state)
            if any(f"lrs.{j}" not in state for j in range(count)):
                raise CheckpointError(f"{source}: its learned rates are not numbered lrs.0 to lrs.{count - 1}")
            rates = [state[f"lrs.{j}"] for j in range(count)]
        stray = [k for k in state if not k.startswith(("module.", "lrs."))]
        if stray and any(key.startswith("module.") for key in state):
            raise CheckpointError(f"{source} holds tensors beside its wrapped module ({', '.join(stray[:3])}); "
                                  "a model of another architecture cannot be imported")  # fmt: skip
        state = without_prefix(state, "module.") if any(k.startswith("module.") for k in state) else {
            k: v for k, v in state.items() if not k.startswith("lrs.")}  # fmt: skip
    return state, rates


def take(state, names, source):
    """{project name: tensor} for {project name: key in `state`}; a missing key is named in one line, and
    so is any key left over (a model of another architecture)."""
    missing = [key for key in names.values() if key not in state]
    if missing:
        raise CheckpointError(
            f"{source} has no tensor {missing[0]}; is it a Conv-4 in the {FORMAT_NAMES[source.fmt]} format?"
        )
    left = [key for key in state if key not in names.values() and key.rsplit(".", 1)[-1] not in BUFFERS]
    if left:
        raise CheckpointError(
            f"{source} holds tensors a Conv-4 in the {FORMAT_NAMES[source.fmt]} format does not "
            f"({', '.join(left[:3])}); a model of another architecture cannot be imported"
        )
    return {name: state[key] for name, key in names.items()}


def block_names(body, conv, norm, blocks=range(4), first=0):
    """{project name: source key} of the four blocks, e.g. body 'base.', conv 'conv', norm 'normalize'."""
    names = {}
    for i in blocks:
        for kind, ours in ((conv, "conv"), (norm, "bn")):
            for what in ("weight", "bias"):
                names[f"{ours}{i + 1}.{what}"] = f"{body}{i + first}.{kind}.{what}"
    return names


def read_learn2learn(sources):
    """learn2learn's MiniImagenetCNN/CNN4 (one file; ≤0.1.3 `base.`/`linear.`, ≥0.1.4 `features.`/`classifier.`,
    under a MAML or MetaSGD wrapper or not), or an ANIL script's two files (features `0.{i}.*`, head)."""
    states = [(source, *unwrapped(load_state_dict(source), source)) for source in sources]
    if len(states) == 2:  # ANIL: the file with the conv blocks is the body, the other the head
        states.sort(key=lambda s: not any(".conv." in key for key in s[1]))
        (body_src, body, body_rates), (head_src, head, rates) = states
        if not any(".conv." in key for key in body) or sorted(head) != ["bias", "weight"]:
            raise CheckpointError(f"{Source(sources, 'learn2learn')} is not an ANIL pair: a features file (the conv "
                                  f"blocks) and a head file (one Linear's weight and bias; {head_src} holds "
                                  f"{', '.join(list(head)[:3])})")  # fmt: skip
        if body_rates:
            raise CheckpointError(f"{body_src}: learned rates for the body of an ANIL model are not read")
        state, adapts = {**body, **{f"head:{k}": v for k, v in head.items()}}, "head"
        heads, bodies, rated = ["head:"], ["0.", ""], [f"head:{k}" for k in head]
    else:
        (_, state, rates), adapts = states[0], "all"
        heads, bodies, rated = ["linear.", "classifier."], ["base.", "features."], list(state)
    body = next((b for b in bodies if f"{b}1.conv.weight" in state), bodies[0])
    head = next((h for h in heads if f"{h}weight" in state), heads[0])
    names = {**block_names(body, "conv", "normalize"), "head.weight": f"{head}weight", "head.bias": f"{head}bias"}
    params = take(state, names, Source(sources, "learn2learn"))
    return params, ordered_rates(rates, rated, names, sources, state), adapts, set()


def ordered_rates(rates, rated, names, sources, state):
    """MetaSGD's `lrs.{j}`: one per parameter of the wrapped module, in its parameter order, which is the
    order of its state_dict's keys `rated` without the buffers (per block normalize.weight, normalize.bias,
    conv.weight, conv.bias: `normalize` is registered first)."""
    if rates is None:
        return None
    ours = {key: name for name, key in names.items()}
    order = [ours[key] for key in rated if key in ours]
    if len(rates) != len(order) or any(r.shape != state[names[n]].shape for r, n in zip(rates, order)):
        raise CheckpointError(
            f"{' + '.join(map(str, sources))} holds {len(rates)} learned rates (lrs.*) that do not match its "
            f"{len(order)} parameters one to one"
        )
    return dict(zip(order, rates))


def read_torchmeta(sources):
    """torchmeta's MetaConvModel (pytorch-maml): features.layer{1..4}.conv / .norm, classifier."""
    state, rates = unwrapped(load_state_dict(sources[0]), sources[0])
    if rates is not None:
        raise CheckpointError(f"{sources[0]}: learned rates (lrs.*) are read from the learn2learn format only")
    names = {**block_names("features.layer", "conv", "norm", first=1), "head.weight": "classifier.weight",
             "head.bias": "classifier.bias"}  # fmt: skip
    return take(state, names, Source(sources, "torchmeta")), None, "no-bn", set()


def read_state_dict(sources):
    """A plain torch.nn Conv-4 in forward order: four (Conv2d, BatchNorm2d) pairs, then a Linear; the
    ReLU and MaxPool2d between them hold no tensors. BatchNorm without affine gets scale 1 and offset 0,
    which are then not the source's parameters (`absent`: no inner loop may adapt them)."""
    state, rates = unwrapped(load_state_dict(sources[0]), sources[0])
    modules = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in state))
    kinds = [module_kind(state, m) for m in modules]
    if kinds != ["conv", "bn"] * 4 + ["linear"]:
        raise CheckpointError(
            f"{sources[0]} is not a Conv-4 in forward order (conv, batch norm four times, then linear); its "
            f"modules are: {', '.join(kinds[:12])}"
        )
    if f"{modules[8]}.bias" not in state:
        raise CheckpointError(f"{sources[0]}: its Linear has no bias, which this project's Conv-4 head has")
    names, filled = {}, {}
    for i in range(4):
        conv, bn = modules[2 * i], modules[2 * i + 1]
        names[f"conv{i + 1}.weight"] = f"{conv}.weight"
        if f"{conv}.bias" in state:
            names[f"conv{i + 1}.bias"] = f"{conv}.bias"
        channels = state[f"{conv}.weight"].shape[0]
        for what, value in (("weight", torch.ones(channels)), ("bias", torch.zeros(channels))):
            if f"{bn}.{what}" in state:
                names[f"bn{i + 1}.{what}"] = f"{bn}.{what}"
            else:  # BatchNorm2d(affine=False)
                filled[f"bn{i + 1}.{what}"] = value
    names |= {"head.weight": f"{modules[8]}.weight", "head.bias": f"{modules[8]}.bias"}
    params = {**take(state, names, Source(sources, "state-dict")), **filled}
    return params, ordered_rates(rates, list(state), names, sources, state), None, set(filled)


def module_kind(state, module):
    weight = state.get(f"{module}.weight")
    if f"{module}.running_mean" in state or (weight is not None and weight.dim() == 1):
        return "bn"
    return {4: "conv", 2: "linear"}.get(weight.dim() if weight is not None else 0, f"{module} (unknown)")


def read_maml_tf(sources):
    """The official MAML's TensorFlow bundle: conv1..4 (HWIO), their biases Variable, Variable_1..3 (in
    creation order), batch-norm offsets 0..3/beta (no scale), w5 [features, ways] over the NHWC flatten, b5."""
    tensors = {k.removeprefix("model/"): torch.from_numpy(v) for k, v in tf_bundle.read_bundle(sources[0]).items()}
    biases = ["Variable", "Variable_1", "Variable_2", "Variable_3"]
    names = {f"conv{i}": f"conv{i}" for i in range(1, 5)} | {f"b{i + 1}": b for i, b in enumerate(biases)}
    names |= {f"beta{i + 1}": f"{i}/beta" for i in range(4)} | {"w5": "w5", "b5": "b5"}
    tf = take(tensors, names, Source(sources, "maml-tf"))
    if any(v.dtype != torch.float32 for v in tf.values()):
        raise CheckpointError(f"{sources[0]}: the official MAML's tensors are float32; this bundle holds others")
    dims = {k: v.dim() for k, v in tf.items()}
    if any(dims[k] != (4 if k.startswith("conv") else 2 if k == "w5" else 1) for k in tf):
        raise CheckpointError(f"{sources[0]}: its tensors do not have the official MAML Conv-4's ranks ({dims})")
    w5, hidden = tf["w5"], tf["conv4"].shape[-1]
    if w5.shape[0] != 25 * hidden:
        raise CheckpointError(
            f"{sources[0]}: w5 takes {w5.shape[0]} features, not the {25 * hidden} of the official code's "
            "Mini-ImageNet network (max-pooled 5x5 maps); its Omniglot network (strided convs, a mean over the maps) "
            "is another architecture than this project's Conv-4"
        )
    params = {}
    for i in range(1, 5):
        params[f"conv{i}.weight"] = tf[f"conv{i}"].permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        params[f"conv{i}.bias"] = tf[f"b{i}"]
        params[f"bn{i}.weight"] = torch.ones_like(tf[f"beta{i}"])  # TF's batch_norm(scale=False)
        params[f"bn{i}.bias"] = tf[f"beta{i}"]
    # TF flattens [N, H, W, C]; this project's features flatten [N, C, H, W]
    params["head.weight"] = w5.T.reshape(-1, 5, 5, hidden).permute(0, 3, 1, 2).reshape(w5.shape[1], -1)
    params["head.bias"] = tf["b5"]
    return params, None, "no-bn", {f"bn{i}.weight" for i in range(1, 5)}  # TF's batch_norm(scale=False)


class Source(list):
    """The source files as one printable name, with the format they are read as."""

    def __init__(self, paths, fmt):
        super().__init__(paths)
        self.fmt = fmt

    def __str__(self):
        return " + ".join(map(str, self))


# The inner loss of a format's code, as a multiple of this project's (the mean over the support set): the
# official MAML's is the sum of the per-example losses over shots (utils.xent, summed by tf.gradients), ways
# times the mean, so its rate `update_lr` is this project's `update_lr * ways`.
MEAN, SUM_OVER_SHOTS = "the mean over the support set", "the sum over the support set / shots (ways x the mean)"
# name: (reader, in words, BatchNorm epsilon of its code, input scaling of its code, its inner loss); None: given
FORMATS = {
    "learn2learn": (read_learn2learn, "learn2learn", 1e-5, None, MEAN),
    "torchmeta": (read_torchmeta, "torchmeta MetaConvModel", 1e-5, None, MEAN),
    "maml-tf": (read_maml_tf, "official MAML TensorFlow", 1e-3, "unit", SUM_OVER_SHOTS),
    "state-dict": (read_state_dict, "plain torch.nn", None, None, MEAN),
}
FORMAT_NAMES = {name: row[1] for name, row in FORMATS.items()}


# ----------------------------------------------------------------------------------------------
# Checking what was read, and what the user must say
# ----------------------------------------------------------------------------------------------


def check_conv4(params, source, image_size):
    """The shapes of this project's Conv-4 (conv_bias on or off), one line for the first that differs."""
    hidden, channels = params["conv1.weight"].shape[:2]
    ways, features = params["head.weight"].shape
    side = image_size // 16  # four 2x2 poolings
    expected = {"head.weight": (ways, hidden * side * side), "head.bias": (ways,)}
    for i in range(1, 5):
        expected[f"conv{i}.weight"] = (hidden, channels if i == 1 else hidden, 3, 3)
        expected |= {f"conv{i}.bias": (hidden,), f"bn{i}.weight": (hidden,), f"bn{i}.bias": (hidden,)}
    for name, tensor in params.items():
        if tuple(tensor.shape) != expected[name]:
            why = f" (--image-size {image_size} gives {side}x{side} feature maps)" if name == "head.weight" else ""
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, a Conv-4 needs {expected[name]}{why}"
            )
    if ways < 2 or channels not in (1, 3) or sum(f"conv{i}.bias" in params for i in range(1, 5)) not in (0, 4):
        raise CheckpointError(
            f"{source}: not a Conv-4 of 2 or more ways on 1 or 3 channels with all conv biases or none"
        )


def adapting_set(adapt, params, source):
    """--adapt as (the name of the set, the parameters it names): a set of maml.INNER_PARAMS, or parameter
    names or prefixes separated by commas (e.g. conv,head.weight): 'custom' unless it is a named set."""
    named = {name: [n for n in params if rule(n)] for name, rule in INNER_PARAMS.items()}
    if adapt in named:
        return adapt, named[adapt]
    items = [item.strip() for item in adapt.split(",") if item.strip()]
    unknown = [item for item in items if not any(n.startswith(item) for n in params)]
    if unknown or not items:
        raise ConfigError(
            f"--adapt {adapt!r} names no parameter ({', '.join(unknown) or 'empty'}); give one of "
            f"{', '.join(INNER_PARAMS)} or names or prefixes of {', '.join(params)}"
        )
    chosen = [n for n in params if any(n.startswith(item) for item in items)]
    return next((name for name, names in named.items() if names == chosen), "custom"), chosen


def input_norm(args, channels):
    """The checkpoint's normalisation (data.normalize: (pixels / 255 - mean) / std) that reproduces the
    input the model was trained on; float64, so that float64 logits match the source's exactly."""
    if args.scaling == "mean-std":
        if not (args.mean and args.std and len(args.mean) == len(args.std) == channels):
            raise ConfigError(f"--scaling mean-std needs --mean and --std with {channels} value(s) each")
        if not all(math.isfinite(v) for v in args.mean) or not all(0 < v < math.inf for v in args.std):
            raise ConfigError(f"--mean must be finite and --std positive and finite (got {args.mean}, {args.std})")
        mean, std = args.mean, args.std
    elif args.mean or args.std:
        raise ConfigError("--mean and --std go with --scaling mean-std")
    else:
        mean, std = [0.0] * channels, [1.0 if args.scaling == "unit" else 1 / 255] * channels
    return {"mean": torch.tensor(mean, dtype=torch.float64), "std": torch.tensor(std, dtype=torch.float64)}


def required(args, fmt, rates):
    """Fill in what the format's code fixes; refuse what neither the source nor the user says."""
    _, words, bn_eps, scaling, _ = FORMATS[fmt]
    args.bn_eps = bn_eps if args.bn_eps is None else args.bn_eps
    args.scaling = args.scaling or scaling
    needed = {
        "--scaling": (
            args.scaling,
            "the input the model was trained on: unit (pixels / 255), raw (0..255) or mean-std",
        ),
        "--bn-eps": (args.bn_eps, "batch norm's epsilon, which a state_dict does not hold"),
        "--adapt": (args.adapt, "which parameters its inner loop adapted, which a plain state_dict cannot say"),
        "--inner-lr": (args.inner_lr if rates is None else 0, "its inner rate, which a MAML checkpoint does not hold"),
    }
    for option in ("--shots", "--inner-steps", "--eval-steps", "--eval-queries", "--image-size", "--data"):
        needed[option] = (getattr(args, option[2:].replace("-", "_")), "which the source cannot say")
    for option, (value, what) in needed.items():
        if value is None:
            raise ConfigError(f"{option} is needed to import a {words} model: {what}")
    if rates is not None and args.inner_lr is not None:
        raise ConfigError("--inner-lr: the source holds Meta-SGD's learned rates, which the import keeps; drop it")
    bad = [
        f"--{n.replace('_', '-')} must be at least 1"
        for n in ("shots", "eval_queries", "test_tasks")
        if getattr(args, n) < 1
    ]
    bad += [
        f"--{n.replace('_', '-')} cannot be negative" for n in ("inner_steps", "eval_steps") if getattr(args, n) < 0
    ]
    bad += ["--image-size must be at least 16 for four 2x2 poolings"] if args.image_size < 16 else []
    bad += [] if 0 < args.bn_eps < math.inf else [f"--bn-eps must be a positive finite number (got {args.bn_eps})"]
    bad += [] if args.inner_lr is None or math.isfinite(args.inner_lr) else ["--inner-lr must be a finite number"]
    if bad:
        raise ConfigError(bad[0])


# ----------------------------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------------------------


def imported_config(args, params, inner_lrs, rates, adapts, out):
    """A config with every key of flags.SETTINGS: what the import knows, None for what only training knew."""
    hidden, channels = params["conv1.weight"].shape[:2]
    data_name = args.data if args.data in fetch.SOURCES and not Path(args.data).exists() else None
    known = {
        "ways": params["head.weight"].shape[0],
        "shots": args.shots,
        "inner_steps": args.inner_steps,
        "hidden": hidden,
        "image_size": args.image_size,
        "test_tasks": args.test_tasks,
        "eval_steps": args.eval_steps,
        "eval_queries": args.eval_queries,
        "inner_lr": None if rates is not None else float(next(iter(inner_lrs.values()))),
        "learn_lr": rates is not None,
        "inner_params": adapts,
        "conv_bias": "conv1.bias" in params,
        "data": None if data_name else str(Path(args.data).resolve()),
        "data_name": data_name,
        "out": str(out),
        "resume": False,
        "device": "auto",
        "dtype": "float32",
        "precision": "auto",
        "cache_dir": "default",
        "no_progress": False,
        "debug": False,
        "channels": channels,
        "bn_eps": args.bn_eps,
    }
    return {key: known.get(key) for key in flags.SETTINGS}


def imported_checkpoint(args, params, rates, adapts, names, out):
    """A checkpoint of this project (run_folder.load_checkpoint reads it) that says where it came from. Its
    tensors are float64: the source's float32 weights widened exactly, and the rate given kept as given
    (config dtype float32 still runs the scripts in float32)."""
    params = {n: p.detach().clone().double() for n, p in params.items()}
    if rates is None:  # the source's rate on this project's inner loss, the mean (FORMATS)
        rate = args.inner_lr * (params["head.weight"].shape[0] if FORMATS[args.format][4] == SUM_OVER_SHOTS else 1)
        inner_lrs = as_inner_lrs(rate, {n: params[n] for n in names})
    else:
        inner_lrs = {n: rates[n].detach().clone().double() for n in names}
    sources = [{"file": str(Path(s).resolve()), "sha256": sha256(s)} for s in source_files(args)]
    return {
        "program": run_folder.PROGRAM,
        "format": run_folder.CHECKPOINT_FORMAT,
        "config": imported_config(args, params, inner_lrs, rates, adapts, out),
        "iteration": None,
        "params": params,
        "inner_lrs": inner_lrs,
        "norm": input_norm(args, params["conv1.weight"].shape[1]),
        "best_val": [None, None],
        "data_identity": None,
        "run_id": secrets.token_hex(8),  # probes of it name it, so analyze.py can tell whose they are
        "imported": {
            "format": args.format,
            "sources": sources,
            "scaling": args.scaling,
            "inner_lr": args.inner_lr,
            "inner_loss": FORMATS[args.format][4],
        },  # fmt: skip
    }


def source_files(args):
    """Every file read: a TensorFlow bundle is its index and its data file."""
    if args.format != "maml-tf":
        return args.sources
    prefix = str(args.sources[0]).removesuffix(".index")
    return [prefix + ".index", prefix + ".data-00000-of-00001"]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(ckpt):
    """One paragraph saying what was imported, with every setting that decides the model's behaviour."""
    c, imported = ckpt["config"], ckpt["imported"]
    rates = "its learned Meta-SGD rates" if c["learn_lr"] else f"inner rate {c['inner_lr']:g} on the mean support loss"
    if imported["inner_loss"] != MEAN and not c["learn_lr"]:
        rates += f" (its code's {imported['inner_lr']:g} on its inner loss, {imported['inner_loss']})"
    adapted = ", ".join(ckpt["inner_lrs"])
    return (
        f"imported {FORMAT_NAMES[imported['format']]} model: {c['ways']}-way {c['shots']}-shot, {c['hidden']} filters, "
        f"{c['image_size']}px, {c['channels']} channel(s); input {SCALINGS[imported['scaling']]}; batch norm eps "
        f"{c['bn_eps']:g}; {rates}, {c['inner_steps']} steps in training, {c['eval_steps']} at test with "
        f"{c['eval_queries']} queries per class; method {flags.METHOD_NAMES[flags.method_of(c)]} (adapts {adapted})"
    )


# ----------------------------------------------------------------------------------------------
# Script
# ----------------------------------------------------------------------------------------------


def build_parser():
    p = cli.argument_parser(
        "Import a Conv-4 meta-learner trained elsewhere (learn2learn, torchmeta, the official MAML's TensorFlow "
        "checkpoint, a plain torch.nn state_dict) as a run folder (best.pt) that evaluate.py, probe.py and "
        "analyze.py read. What the source cannot say must be given; nothing is guessed."
    )
    a = p.add_argument
    a("sources", nargs="+", metavar="SRC", help="the model file; a TF bundle's PREFIX or PREFIX.index; an "
      "ANIL script's features file and head file (learn2learn)")  # fmt: skip
    a(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="what wrote SRC: " + "; ".join(f"{k}: {v[1]}" for k, v in FORMATS.items()),
    )
    a("--out", type=cli.folder_name, required=True, help="the run folder to write (best.pt): a new or empty folder")
    a("--data", help="the dataset it was trained on: a folder or a name (omniglot, mini-imagenet), as maml.py --data")
    a("--image-size", type=int, help="the images' side in pixels it was trained on (84 for Mini-ImageNet)")
    a("--shots", type=int, help="support images per class of its tasks (K)")
    a("--inner-lr", type=float, help="its inner rate alpha, as its code applies it (maml-tf: update_lr, whose loss "
      "is ways x the mean; recorded x ways); not for a source that holds Meta-SGD's learned rates")  # fmt: skip
    a("--inner-steps", type=int, help="inner steps it was trained with (probe.py's default)")
    a("--eval-steps", type=int, help="inner steps its authors tested with (evaluate.py's default)")
    a("--eval-queries", type=int, help="query images per class its authors tested with (batch norm sees them together)")
    a("--test-tasks", type=int, default=600, help="tasks evaluate.py draws by default (600, MAML's protocol)")
    a("--scaling", choices=list(SCALINGS), help="its input: " + "; ".join(f"{k}: {v}" for k, v in SCALINGS.items())
      + " (default: the format's own code's, where it has one)")  # fmt: skip
    a("--mean", type=float, nargs="+", help="--scaling mean-std: per-channel mean of pixels / 255")
    a("--std", type=float, nargs="+", help="--scaling mean-std: per-channel std of pixels / 255")
    a("--adapt", help="what its inner loop adapted: " + ", ".join(INNER_PARAMS) + ", or parameter names or prefixes "
      "separated by commas (conv,head); default: what the format's code adapts (maml-tf and torchmeta: no-bn; "
      "learn2learn: all, an ANIL pair: head)")  # fmt: skip
    a("--bn-eps", type=float, help="batch norm's epsilon (default: the format's code's: 1e-3 for maml-tf, 1e-5 else)")
    a("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def import_model(args):
    """Read, check, and write OUT/best.pt; returns the checkpoint."""
    fmt, out = args.format, Path(args.out)
    if len(args.sources) > (2 if fmt == "learn2learn" else 1):
        raise ConfigError(f"--format {fmt} reads one source file (two only for a learn2learn ANIL pair)")
    cli.check_out_folder(out)
    if out.is_dir() and any(out.iterdir()):  # another run's test.json or probe would be reported as this one's
        raise ConfigError(f"{out} already holds files; an import writes a new run folder: choose another --out")
    params, rates, adapts, absent = FORMATS[fmt][0](args.sources)
    args.adapt = adapts if args.adapt is None else args.adapt
    required(args, fmt, rates)
    source = Source(args.sources, fmt)
    check_conv4(params, source, args.image_size)
    check_data(args.data, params["conv1.weight"].shape[1])
    adapts, names = adapting_set(args.adapt, params, source)
    if rates is not None and not set(names) <= set(rates):
        raise ConfigError(f"--adapt {args.adapt}: the source has learned rates only for {', '.join(rates)}")
    if set(names) & absent:
        raise ConfigError(
            f"--adapt {args.adapt} adapts {', '.join(sorted(set(names) & absent))}, which {source} does not have "
            "(batch norm without that parameter: it is fixed at 1 or 0 here); leave them out, e.g. --adapt no-bn"
        )
    for what, tensors in (("", params), ("the learned rate of ", rates or {})):
        bad = next((name for name, tensor in tensors.items() if not tensor.isfinite().all()), None)
        if bad:
            raise CheckpointError(f"{source}: {what}{bad} holds values that are not finite")
    ckpt = imported_checkpoint(args, params, rates, adapts, names, out)
    with cli.lock_outputs(out, "run.lock", "a run"):
        run_folder.write_checkpoint(ckpt, out / "best.pt")
    print(describe(ckpt))
    print(
        f"wrote {out / 'best.pt'}; next: python evaluate.py {out / 'best.pt'}, then python probe.py {out / 'best.pt'}"
    )
    return ckpt


def check_data(value, channels):
    """--data: a dataset name whose images have the model's channels, or a folder that exists."""
    if value in fetch.SOURCES and not Path(value).exists():
        fetch.refuse_other_channels(value, channels)
    elif not Path(value).is_dir():
        raise ConfigError(f"--data {value} is neither a folder nor a dataset name ({', '.join(fetch.SOURCES)})")


def main(argv=None):
    return import_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run_cli(main)
