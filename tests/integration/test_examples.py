"""Every example the README, the docs pages and `--help` show runs as shown on a fresh demo zone, on
any day: each is run, word for word, by the real command line in a project made the way a new user
makes one (configs/local.yaml copied, `demo-data init` on today's clock, one run), and must exit 0.

An example is a `loader ...` line of a fenced code block or an inline code span (indented blocks are
sample output), or an indented `loader ...` line of a command's help. Syntax lines (with `[`, `|`,
`...` or a placeholder such as N, T1, ID) are not examples. `NOT_RUN` names the few that are not run,
each with why; a test fails when one of them is no longer shown, so the list cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.support.cli import LOCAL_CONFIG, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("examples")]

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {
    "loader demo-data init --scale 10": "makes 15M orders (minutes); init's other examples run",
    "loader backfill": "the command's name in prose; its examples carry a window",
}

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`]+)`")
_PLACEHOLDER = re.compile(r"(?<![\w-])[A-Z][A-Z0-9_]*(?![\w-])")


def _commands_in(text: str) -> Iterator[str]:
    for block in _FENCE.findall(text):
        for line in block.splitlines():
            line = line.strip()
            for prefix in (".venv/bin/loader ", "loader "):
                if line.startswith(prefix):
                    yield "loader " + re.split(r"\s+#", line[len(prefix):])[0].strip()
    prose = "\n".join(line for line in _FENCE.sub("", text).splitlines() if not line.startswith("    "))
    for span in _SPAN.findall(prose):
        span = " ".join(span.split())
        if span.startswith("loader "):
            yield span


def _help_texts() -> Iterator[tuple[str, str]]:
    from loader.cli import cli

    def walk(command: click.Command, path: list[str]) -> Iterator[tuple[str, str]]:
        yield " ".join(path), command.get_help(click.Context(command, info_name=" ".join(path)))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    yield from walk(cli, ["loader"])


def _commands_in_help(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if re.match(r"^\s+loader [a-z]", line):
            yield re.split(r"\s{2,}|\s+#", line.strip())[0]


def is_example(command: str) -> bool:
    return not (any(mark in command for mark in ("[", "|", "...", "<")) or _PLACEHOLDER.search(command))


def shown_examples() -> dict[str, str]:
    """Every example and where it is shown (the first place)."""
    found: dict[str, str] = {}
    for page in PAGES:
        for command in _commands_in(page.read_text()):
            found.setdefault(command, str(page.relative_to(ROOT)))
    for where, text in _help_texts():
        for command in _commands_in_help(text):
            found.setdefault(command, f"{where} --help")
    return {command: where for command, where in found.items() if is_example(command)}


EXAMPLES = shown_examples()


def test_examples_are_found_where_they_are_shown() -> None:
    """The collection itself: examples from the README, a docs page and --help, syntax lines left out."""
    wheres = set(EXAMPLES.values())
    assert "README.md" in wheres and "docs/commands.md" in wheres and "loader backfill --help" in wheres
    assert EXAMPLES["loader run --incremental"] == "README.md"
    assert not is_example("loader runs abandon N") and not is_example("loader plan [--json]")
    assert is_example("loader demo-data init --now 2025-06-02T00:00:00Z")


def test_every_example_not_run_is_still_shown() -> None:
    assert set(NOT_RUN) <= set(EXAMPLES)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new user's project: configs/local.yaml copied into cfg/ (data beside it, in data/), a demo
    zone made on today's clock, and one run."""
    folder = tmp_path_factory.mktemp("examples") / "loaded"
    _project(folder)
    for command in ("loader demo-data init --scale 0.01", "loader run"):
        _run(folder, command)
    return folder


def _project(folder: Path) -> None:
    (folder / "cfg").mkdir(parents=True)
    shutil.copy(LOCAL_CONFIG, folder / "cfg" / "local.yaml")


def _run(folder: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOADER_CONFIG": str(folder / "cfg" / "local.yaml")}
    done = subprocess.run([sys.executable, "-m", "loader.cli", *shlex.split(command)[1:]], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.parametrize("command", sorted(c for c in EXAMPLES if c not in NOT_RUN))
def test_the_example_runs_as_shown(command: str, loaded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    if command.startswith("loader demo-data init"):
        _project(folder)  # init makes a zone where there is none
    else:
        shutil.copytree(loaded, folder)
    _run(folder, command)
