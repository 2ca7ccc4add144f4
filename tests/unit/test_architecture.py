"""docs/architecture.md's layers are the runtime's real imports: each module imports only lower layers."""
from __future__ import annotations

import ast
import os
import re

from conftest import ROOT

RUNTIME = os.path.join(ROOT, "pam_duo_py")
DOC = os.path.join(ROOT, "docs", "architecture.md")


def documented_layers() -> dict[str, int]:
    with open(DOC, encoding="utf-8") as handle:
        text = handle.read()
    block = text.split("<!-- layers: read by tests/unit/test_architecture.py -->", 1)[1].split("```")[1]
    layers: dict[str, int] = {}
    for line in block.strip().splitlines():
        match = re.fullmatch(r"layer (\d+): (.+)", line.strip())
        assert match, f"unreadable layer line in {DOC}: {line!r}"
        for module in match.group(2).split():
            assert module not in layers, f"{module} is placed twice"
            layers[module] = int(match.group(1))
    return layers


def runtime_imports(module: str) -> set[str]:
    """Runtime modules that ``module`` imports anywhere (in functions and under TYPE_CHECKING too)."""
    with open(os.path.join(RUNTIME, module + ".py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module and node.module.startswith("pam_duo_py."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pam_duo_py."))
    return found - {module}


def runtime_modules() -> list[str]:
    return sorted(name[:-3] for name in os.listdir(RUNTIME)
                  if name.endswith(".py") and name not in ("__init__.py", "__main__.py"))


def test_every_runtime_module_has_a_layer_and_every_placed_module_exists():
    layers = documented_layers()
    assert sorted(layers) == runtime_modules()


def test_each_runtime_module_imports_only_lower_layers():
    layers = documented_layers()
    wrong = [f"{module} (layer {layers[module]}) imports {other} (layer {layers.get(other)})"
             for module in runtime_modules() for other in sorted(runtime_imports(module))
             if other in layers and layers[other] >= layers[module]]
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_imports_inside_functions():
    assert "engine" in runtime_imports("login")  # imported inside authenticate()
    assert "pam" in runtime_imports("pam_entry")  # an absolute import of the package
