"""Size limits on the code that runs on a production host: functions a reader can hold in mind.

The runtime is the ``pam_duo_py`` package. The operator commands (``pam_duo_tools``)
and the Duo simulator (``pam_duo_sim``) are packages of their own and not scanned;
``pam_duo_py/__main__.py`` is the command line, not the runtime.
"""
from __future__ import annotations

import ast
import os

from conftest import ROOT

RUNTIME = os.path.join(ROOT, "pam_duo_py")
RUNTIME_LIMIT = 60  # lines, any function of the runtime
ENGINE_LIMIT = 40  # lines, any function of the decision engine
NOT_RUNTIME = {"__main__.py"}


def function_lengths(path: str) -> dict[str, int]:
    """``file:Class.function`` -> lines, for every function and method in ``path`` (nested ones too)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    name = os.path.basename(path)
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualified = prefix + child.name
                lengths[f"{name}:{qualified}"] = child.end_lineno - child.lineno + 1
                visit(child, qualified + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return lengths


def runtime_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for name in sorted(os.listdir(RUNTIME)):
        if name.endswith(".py") and name not in NOT_RUNTIME:
            lengths.update(function_lengths(os.path.join(RUNTIME, name)))
    return lengths


def test_the_scan_sees_the_runtime():
    lengths = runtime_lengths()
    assert "engine.py:Engine.run" in lengths and "login.py:authenticate" in lengths
    assert not any(key.startswith(("cli.py:", "simulator.py:")) for key in lengths)


def test_no_runtime_function_is_over_the_limit():
    too_long = {key: lines for key, lines in runtime_lengths().items() if lines > RUNTIME_LIMIT}
    assert too_long == {}, f"functions over {RUNTIME_LIMIT} lines: split them"


def test_no_engine_function_is_over_its_limit():
    too_long = {key: lines for key, lines in function_lengths(os.path.join(RUNTIME, "engine.py")).items()
                if lines > ENGINE_LIMIT}
    assert too_long == {}, f"engine functions over {ENGINE_LIMIT} lines: split them"
