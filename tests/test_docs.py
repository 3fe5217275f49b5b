"""The two manual pages, README.md and docs/reference.md, name only what exists: every backticked `*.py` file,
every --flag (in some script's --help) and every backticked `module.name` of the project's top-level modules."""

import argparse
import contextlib
import functools
import importlib
import re
from unittest import mock

import pytest

import analyze
import bench
import evaluate
import flags
import gpu_check
import import_model
import probe
from conftest import ROOT

PAGES = ("README.md", "docs/reference.md")
MODULES = {path.stem for path in ROOT.glob("*.py")}
# Named on the pages but not the project's: torchrun's flags, ruff's `format --check`, and the file of MAML's
# original code that the Omniglot section compares with.
FOREIGN = {"--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_endpoint", "--check", "data_generator.py"}
FILE_ENDINGS = {"py", "md", "json", "csv", "pt", "png", "lock", "txt"}  # `stats.md`, `probe.json`: files, not names


def parser_of(function, *args):
    """The parser that `function` builds and parses with (analyze.py, gpu_check.py and tests/same_behaviour.py
    build theirs inside a function): caught at parse_args, before any work."""
    built = []

    def catch(parser, *_, **__):
        built.append(parser)
        raise SystemExit

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch), contextlib.suppress(SystemExit):
        function(*args)
    return built[0]


@functools.cache
def script_flags():
    """Every option of every script's --help: maml.py (flags.py), probe.py, bench.py, analyze.py, gpu_check.py,
    import_model.py, evaluate.py and tests/same_behaviour.py."""
    same_behaviour = importlib.import_module("same_behaviour")
    parsers = [flags.build_parser(), probe.build_parser(), bench.build_parser(), parser_of(analyze.main, [])]
    parsers += [import_model.build_parser(), evaluate.build_parser()]
    parsers += [parser_of(gpu_check.parse_args, []), parser_of(same_behaviour.main)]
    return {option for parser in parsers for option in parser._option_string_actions}


def missing_names(text):
    """The files, flags and module attributes that `text` names and that do not exist, in that order per
    backticked span (files, then `module.name`s), then the flags."""
    missing, code = [], re.compile(r"^```\w*\n(.*?)^```", re.M | re.S)  # a fenced block is one span
    for span in code.findall(text) + re.findall(r"`([^`]+)`", code.sub("", text)):
        for name in re.findall(r"[\w./-]+\.py\b", span):
            if name not in FOREIGN and not any((folder / name).is_file() for folder in (ROOT, ROOT / "tests")):
                missing.append(name)
        for module, name in re.findall(r"\b([a-z_]+)\.([A-Za-z_]\w*)", span):
            if module in MODULES and name not in FILE_ENDINGS and not hasattr(importlib.import_module(module), name):
                missing.append(f"{module}.{name}")
    for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", text):
        if flag not in script_flags() and flag not in FOREIGN:
            missing.append(flag)
    return missing


@pytest.mark.parametrize("page", PAGES)
def test_every_file_flag_and_function_the_page_names_exists(page):
    assert missing_names((ROOT / page).read_text()) == []


def test_the_check_reports_a_missing_file_function_and_flag():
    text = "```bash\npython gone.py --ways 5\n```\n"
    text += "Then --no-such-flag, `maml.no_such_function`, `maml.py`, `stats.md`.\n"
    assert missing_names(text) == ["gone.py", "maml.no_such_function", "--no-such-flag"]
