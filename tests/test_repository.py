"""Checks over the whole source tree: functions stay short enough to read, and the docs and docstrings
cite only what the repository holds."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 60
# The numba kernels are written as whole loops (and LLVM IR builders) on purpose: splitting them would
# cost the register tiling they exist for.
EXEMPT_FILES = {os.path.join("deploy", "kernels.py")}


def source_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def long_functions(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]


def test_no_function_longer_than_60_lines_outside_the_kernels():
    found = [f"{path}:{name} ({lines} lines)" for path in source_files() if path not in EXEMPT_FILES
             for name, lines in long_functions(path)]
    assert not found, "split these functions: " + ", ".join(found)


def test_the_checker_sees_a_long_function(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    assert long_functions("long.py") == [("long", MAX_LINES + 1)]


def test_nothing_cites_files_outside_the_repository():
    pattern = re.compile(r"(\.\./shared|\bspec/[\w-]+\.md)")
    tests = [os.path.join("tests", n) for n in os.listdir(os.path.join(ROOT, "tests")) if n.endswith(".py")
             and n != "test_repository.py"]
    paths = list(source_files()) + tests + [os.path.join("docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
                                    if n.endswith(".md")] + ["README.md"]
    found = []
    for path in paths:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            found += [f"{path}:{i}" for i, line in enumerate(f, 1) if pattern.search(line)]
    assert not found, "cites a file the repository does not hold: " + ", ".join(found)
