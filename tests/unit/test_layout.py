"""The layout section of docs/development.md matches the tree: every module of loader/ and state/
is named under its folder's entry, and every module named there exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_entries() -> dict[str, str]:
    """Entry path -> its text (the first line and its indented continuation lines)."""
    page = (ROOT / "docs" / "development.md").read_text()
    section = page[page.index("# Development"):]
    block = section[section.index("```\n") + 4:]
    block = block[:block.index("```")]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line and not line[0].isspace():
            current, _, text = line.partition(" ")
            entries[current] = text
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def named_modules(text: str) -> set[str]:
    return set(re.findall(r"\b(\w+\.py)\b", text)) - {"__init__.py"}


def test_every_package_folder_has_an_entry_naming_exactly_its_modules() -> None:
    entries = layout_entries()
    folders = [ROOT / "loader", ROOT / "state",
               *(p.parent for p in (ROOT / "loader").glob("*/__init__.py")),
               *(p.parent for p in (ROOT / "loader" / "sinks").glob("*/__init__.py"))]  # a folder per sink
    for folder in folders:
        entry = f"{folder.relative_to(ROOT)}/"
        assert entry in entries, f"docs/development.md's layout has no entry for {entry}"
        modules = {p.name for p in folder.glob("*.py")} - {"__init__.py"}
        if folder == ROOT / "loader":
            modules -= {"cli.py"}  # its own entry
        assert named_modules(entries[entry]) == modules, entry


def test_every_named_path_exists() -> None:
    for entry, text in layout_entries().items():
        assert (ROOT / entry.split(" ")[0]).exists(), entry
        folder = ROOT / entry
        if folder.is_dir():
            for module in named_modules(text):
                assert (folder / module).is_file(), (
                    f"{entry}{module} named in docs/development.md is not there")


def test_unit_tests_mirror_the_package() -> None:
    """A module's own unit tests sit under tests/unit/<its package>/ (the project-wide ones, and those of
    the modules at loader/'s top, at tests/unit/ itself): each folder there names a package."""
    unit = ROOT / "tests" / "unit"
    folders = sorted(p.name for p in unit.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders, "no package folders under tests/unit"
    for name in folders:
        package = ROOT / "state" if name == "state" else ROOT / "loader" / name
        assert (package / "__init__.py").is_file(), (
            f"tests/unit/{name}/ mirrors no package of loader/ or state/")
        assert (unit / name / "__init__.py").is_file(), f"tests/unit/{name}/ has no __init__.py"
