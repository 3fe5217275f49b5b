"""The shape the project promises: maml.py small and copyable, imports running one way (scripts ->
rooms -> cli), no cycles, analyze.py never reaching the training script, no function over 50 lines."""

import ast
import importlib
import sys

import pytest

from conftest import ROOT

SCRIPTS = {"maml", "probe", "analyze", "bench", "gpu_check", "import_model", "evaluate"}
ROOMS = {
    "cli",
    "data",
    "distributed",
    "fetch",
    "figures",
    "flags",
    "gpu",
    "logs",
    "run_folder",
    "run_start",
    "stats",
    "stats_md",
    "tf_bundle",
}
SOURCES = sorted(ROOT.glob("*.py")) + sorted((ROOT / "tests").glob("*.py"))


def script_block(node):
    """`if __name__ == "__main__":`: what runs only when the file is the script, a module apart from the one
    that importing it gives (data.py's hands `python data.py fetch` to fetch.py, which imports data)."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Compare) and ast.unparse(test) == "__name__ == '__main__'"


def project_imports(path):
    """The project modules a file imports, at module level or inside functions (not in its script block)."""
    names, tree = set(), ast.parse(path.read_text())
    tree.body = [node for node in tree.body if not script_block(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & (SCRIPTS | ROOMS)


GRAPH = {path.stem: project_imports(path) for path in ROOT.glob("*.py")}


def reachable(start):
    seen, todo = set(), [start]
    while todo:
        for name in GRAPH[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


def test_every_top_level_file_is_a_script_or_a_room():
    assert set(GRAPH) == SCRIPTS | ROOMS


def test_rooms_never_import_a_script_and_no_import_comes_back_round():
    for room in ROOMS:
        assert not reachable(room) & SCRIPTS, (room, reachable(room) & SCRIPTS)
    for name in GRAPH:
        assert name not in reachable(name), f"{name} imports itself through {reachable(name)}"


def test_analyze_never_reaches_the_training_script_or_the_probe(monkeypatch):
    assert not reachable("analyze") & {"maml", "probe"}
    for name in SCRIPTS | ROOMS:  # imported afresh below (the originals come back after the test)
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.import_module("analyze")
    assert not {"maml", "probe"} & set(sys.modules)


def test_maml_py_imports_torch_and_the_standard_library_alone_at_module_level():
    tree = ast.parse((ROOT / "maml.py").read_text())
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported - {"torch"} <= set(sys.stdlib_module_names) - {"fcntl", "msvcrt", "resource", "termios"}


def test_maml_py_is_about_450_lines_and_no_other_file_but_data_py_over_600():
    assert len((ROOT / "maml.py").read_text().splitlines()) <= 460
    for path in ROOT.glob("*.py"):
        assert path.name == "data.py" or len(path.read_text().splitlines()) <= 600, path.name


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_function_is_longer_than_50_lines(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 50, f"{node.name} has {node.end_lineno - node.lineno + 1} lines"
