"""References that resolve: what code, tests, scripts and docs cite is in this repository.

* No citation of design files kept outside the repository (the contract and the platform
  notes are docs/behaviour.md and docs/platform.md).
* ``docs/NAME.md §N`` names a file that exists and a ``## §N`` section in it.
* A Markdown link in README.md, SECURITY.md or docs/ names a file that exists and, after ``#``,
  a heading of that file (GitHub's anchors).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = ("pam_duo_py", "pam_duo_tools", "pam_duo_sim", "tests", "scripts", "docs", "etc", ".ci")
TOP_FILES = ("README.md", "SECURITY.md", "pyproject.toml")
# Written in two pieces so that this file does not cite them itself.
OUTSIDE = re.compile(r"\bSPEC" r"(?:\.md)?\s*§|\bSPEC" r"\.md\b|\bFACTS" r"(?:\.md)?\b|/work/" r"shared")
SECTION_REF = re.compile(r"(docs/[\w-]+\.md)((?:(?:,\s*|\s+and\s+|\s+)§\d+)+)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _text_files() -> list[Path]:
    found = [ROOT / name for name in TOP_FILES]
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and "data" not in path.relative_to(ROOT).parts:
                found.append(path)
    texts = []
    for path in found:
        try:
            path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(path)
    return texts


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _sections(markdown: Path) -> set[str]:
    return set(re.findall(r"^## §(\d+)\b", markdown.read_text(encoding="utf-8"), flags=re.M))


def test_nothing_cites_files_outside_the_repository():
    bad = []
    for path in _text_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        bad += [f"{path.relative_to(ROOT)}:{_line(text, m.start())}: {m.group()}" for m in OUTSIDE.finditer(text)]
    assert bad == []


def test_section_references_name_sections_that_exist():
    bad = []
    count = 0
    for path in _text_files():
        text = path.read_text(encoding="utf-8")
        for match in SECTION_REF.finditer(text):
            target = ROOT / match[1]
            numbers = re.findall(r"§(\d+)", match[2])
            count += len(numbers)
            missing = set(numbers) - (_sections(target) if target.is_file() else set())
            if missing:
                bad.append(f"{path.relative_to(ROOT)}:{_line(text, match.start())}: {match[1]} §{', §'.join(sorted(missing))}")
    assert count > 20, "the pattern no longer finds the references"
    assert bad == []


def test_behaviour_md_cites_its_own_sections():
    page = ROOT / "docs" / "behaviour.md"
    numbers = set(re.findall(r"\(§(\d+)\)", page.read_text(encoding="utf-8")))
    assert numbers and numbers <= _sections(page)


@pytest.mark.parametrize("markdown", [ROOT / "README.md", ROOT / "SECURITY.md",
                                      *sorted((ROOT / "docs").rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(markdown):
    text = markdown.read_text(encoding="utf-8")
    bad = []
    for match in LINK.finditer(text):
        target = match[1]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (markdown.parent / file_part).resolve() if file_part else markdown
        where = f"{markdown.relative_to(ROOT)}:{_line(text, match.start())}: {target}"
        if not dest.exists():
            bad.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{where}: no such heading")
    assert bad == []


def test_the_slug_rule():
    assert _slug(" §3 Install and PAM stacks") == "3-install-and-pam-stacks"
    assert _slug(" The broker under `systemd`") == "the-broker-under-systemd"
    assert _slug(" pam_python") == "pam_python"
