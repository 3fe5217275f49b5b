"""flags.py: one row per setting and one per method, and everything that reads them agrees with them."""

import re

import pytest

import flags
import maml
from cli import CheckpointError, ConfigError
from conftest import ROOT, tiny_flags

ANSWERS = (
    (flags.MAY_CHANGE, flags.KEPT),
    (flags.NOT_A_RESULT, flags.SEED_OR_METHOD, flags.STUDY),
)
NOT_SETTINGS = {"help", "method"}  # --help; --method is a name for --learn-lr and --inner-params, not a key


def rows_missing(parser):
    """The flags of `parser` without a complete row in flags.SETTINGS (all three answers, each allowed)."""
    missing = []
    for action in parser._actions:
        row = flags.SETTINGS.get(action.dest)
        complete = row is not None and len(row) == 3 and all(a in allowed for a, allowed in zip(row, ANSWERS))
        if action.dest not in NOT_SETTINGS and not complete:
            missing.append(action.option_strings[0])
    return missing


def test_every_flag_of_maml_py_has_a_complete_settings_row_and_a_new_flag_without_one_is_found():
    parser = flags.build_parser()
    assert rows_missing(parser) == []
    not_flags = set(flags.SETTINGS) - {a.dest for a in parser._actions}
    assert not_flags == {"channels", "omniglot_split", "data_name", "bn_eps"}  # what the data or model implies
    parser.add_argument("--warmup-steps", type=int, default=0)
    assert rows_missing(parser) == ["--warmup-steps"]


def test_the_lists_that_read_the_settings_table_are_its_rows():
    assert flags.MAY_CHANGE_ON_RESUME == {"iterations", "device", "eval_every", "save_every", "log_every",
                                          "no_progress", "debug", "resume", "out", "cache_dir", "data",
                                          "task_batching", "cuda_graph", "data_name"}  # fmt: skip
    assert flags.CONFIG_ADDED == {"inner_params": "all", "conv_bias": True, "clip_grad": None, "rotations": None,
                                  "dtype": "float32", "precision": "auto", "channels": 3,
                                  "omniglot_split": None, "data_name": None, "bn_eps": maml.BN_EPS}  # fmt: skip
    config = {**vars(flags.build_parser().parse_args([])), "channels": 3, "omniglot_split": None}
    assert set(config) - set(flags.result_settings(config)) == {"out", "resume", "no_progress", "debug", "device",
                                                                "cache_dir", "task_batching", "log_every"}  # fmt: skip
    study = set(config) - set(flags.study_settings(config))
    assert study == set(config) - set(flags.result_settings(config)) | {
        "seed", "seeds", "learn_lr", "inner_params", "save_every", "cuda_graph", "lr_init_range"}  # fmt: skip


def test_lr_init_range_makes_another_study_only_for_learned_rates_and_synthetic_size_only_for_synthetic_data():
    config = {**vars(flags.build_parser().parse_args([])), "lr_init_range": [-0.1, 0.1]}
    assert "lr_init_range" not in flags.study_settings(config) and "synthetic_per_class" in flags.study_settings(config)
    config.update(learn_lr=True, data="/data/mini")
    assert "lr_init_range" in flags.study_settings(config) and "synthetic_per_class" not in flags.study_settings(config)


def test_the_methods_table_and_every_list_of_methods_agree():
    adapts = [adapts for _, adapts, _ in flags.METHODS.values()]
    assert tuple(dict.fromkeys(adapts)) == tuple(flags.ADAPTS) == (*maml.INNER_PARAMS, "custom")
    choices = {a.dest: a.choices for a in flags.build_parser()._actions}
    assert list(choices["inner_params"]) == list(maml.INNER_PARAMS) == flags.TRAINED_ADAPTS
    assert list(choices["method"]) == [m for m, (_, adapts, _) in flags.METHODS.items() if adapts != "custom"]
    assert list(flags.METHODS) == list(flags.METHOD_NAMES)
    for method, (display, adapts, learned) in flags.METHODS.items():
        assert flags.method_of({"learn_lr": learned, "inner_params": adapts}) == method
        assert flags.METHOD_NAMES[method] == display
        if adapts == "custom":  # imported models only (import_model.py --adapt): no flag trains one
            continue
        args, _ = flags.parse(["--method", method])
        assert (args.learn_lr, args.inner_params) == (learned, adapts)
        assert flags.parse(flags.method_flags(method))[0] == args


def test_the_makefile_names_methods_only_by_method_and_holds_no_list_of_their_flags():
    lines = [line for line in (ROOT / "Makefile").read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines)
    assert "--learn-lr" not in text and "--inner-params" not in text and "KNOWN_METHODS" not in text
    named = {word for line in lines if re.match(r"\w*METHODS\s*[:?]?=", line) for word in line.split("=", 1)[1].split()}
    assert named and named <= set(flags.METHODS)


def test_adapting_refuses_a_value_it_does_not_know_naming_the_allowed_ones():
    params = maml.init_params(2, 4, 16)
    with pytest.raises(ValueError, match="one of all, head, body, no-bn .*'bogus'"):
        maml.adapting(params, "bogus")
    assert list(maml.adapting(params, "head")) == ["head.weight", "head.bias"]


def test_method_refuses_a_flag_that_contradicts_it_and_counts_as_its_flags_on_resume(tmp_path):
    with pytest.raises(ConfigError, match="--method anil means --inner-params head, which --inner-params contra"):
        flags.parse(["--method", "anil", "--inner-params", "body"])
    with pytest.raises(ConfigError, match="--method maml means neither .* --learn-lr contradicts; give one of them"):
        flags.parse(["--learn-lr", "--method", "maml"])
    args, given = flags.parse(["--method", "boil-metasgd", "--learn-lr"])  # agreeing flags are allowed
    assert (args.learn_lr, args.inner_params) == (True, "body") and "method" not in vars(args)
    assert {"learn_lr", "inner_params", "method"} <= given
    out = tmp_path / "run"
    maml.main(tiny_flags(out, "--iterations", "1", "--eval-every", "1", "--method", "metasgd"))
    with pytest.raises(CheckpointError, match="^--method maml disagrees with the checkpoint's metasgd; drop the"):
        maml.main(tiny_flags(out, "--iterations", "2", "--resume", "--method", "maml"))
    with pytest.raises(CheckpointError, match="^--inner-params head disagrees with the checkpoint's all"):
        maml.main(tiny_flags(out, "--iterations", "2", "--resume", "--inner-params", "head"))
    maml.main(tiny_flags(out, "--iterations", "2", "--resume", "--method", "metasgd"))  # its own method resumes


@pytest.mark.parametrize("method", ["anil", "boil", "anil-metasgd", "boil-metasgd"])
def test_the_progress_bar_names_the_method(tmp_path, capsys, method):
    argv = [f for f in tiny_flags(tmp_path / "run", "--iterations", "1", "--eval-every", "1") if f != "--no-progress"]
    maml.main([*argv, "--method", method, "--val-tasks", "2", "--test-tasks", "2"])
    assert re.search(rf"(^|\r){re.escape(flags.METHOD_NAMES[method])}: +100%", capsys.readouterr().err)
