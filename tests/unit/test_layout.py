"""The three packages and their dependency direction.

``pam_duo_py`` (the runtime a production host runs) imports neither ``pam_duo_tools``
(the operator's commands) nor ``pam_duo_sim`` (the simulator, absent from production
hosts); the simulator imports neither of the other two. Read from the source with
``ast``, so a lazy import inside a function counts as much as one at the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pam_duo_py", "pam_duo_tools", "pam_duo_sim")
MAY_NOT_IMPORT = {
    "pam_duo_py": ("pam_duo_tools", "pam_duo_sim"),
    "pam_duo_tools": (),
    "pam_duo_sim": ("pam_duo_py", "pam_duo_tools"),
}
# ``python3 -m pam_duo_py`` is the command line: run by hand, never imported by a login.
ALLOWED = {("pam_duo_py/__main__.py", "pam_duo_tools.cli")}


def _imports(path: Path, package: str, strings: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved; with
    ``strings``, also every string constant that names one of the packages."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((node.lineno, node.module or ""))
            else:
                assert node.level == 1, f"{path}:{node.lineno}: no imports from above the package"
                base = f"{package}.{node.module}" if node.module else package
                found.append((node.lineno, base))
                if not node.module:  # from . import x, y
                    found += [(node.lineno, f"{package}.{alias.name}") for alias in node.names]
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("pam_duo_tools...") and the like
            if any(node.value == p or node.value.startswith(p + ".") for p in PACKAGES):
                found.append((node.lineno, node.value))
    return found


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package):
    sources = _sources(package)
    assert sources and (ROOT / package / "__init__.py").is_file()
    bad = [f"{src.relative_to(ROOT)}:{line}: imports {name}"
           for src in sources for line, name in _imports(src, package, strings=True)
           if any(name == other or name.startswith(other + ".") for other in MAY_NOT_IMPORT[package])
           and (src.relative_to(ROOT).as_posix(), name) not in ALLOWED]
    assert bad == []


def test_nothing_in_the_runtime_imports_its_main():
    """The exception above stays one: no runtime module imports ``pam_duo_py.__main__``."""
    bad = [f"{src.relative_to(ROOT)}:{line}" for src in _sources("pam_duo_py")
           for line, name in _imports(src, "pam_duo_py", strings=True) if name == "pam_duo_py.__main__"]
    assert bad == []


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_within_the_project_name_modules_that_exist(package):
    """A module moved to another package leaves no import behind that names its old place."""
    modules = {f"{p}.{src.relative_to(ROOT / p).with_suffix('').as_posix().replace('/', '.')}"
               for p in PACKAGES for src in _sources(p)}
    modules |= set(PACKAGES)
    missing = [f"{src.relative_to(ROOT)}:{line}: {name}"
               for src in _sources(package) for line, name in _imports(src, package)
               if name.split(".")[0] in PACKAGES and name not in modules]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_what_it_is(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and doc.startswith(f"{package}: ")
