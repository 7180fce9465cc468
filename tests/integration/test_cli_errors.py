"""Every command maps the loader's errors the same way (loader/cli.py's `main`): one line
`error: <what happened and the fix>` on stderr, the error's exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli, write_config

pytestmark = pytest.mark.integration

COMMANDS = [
    ("run", "--incremental"), ("plan",), ("status",), ("history",), ("report", "--out", "report.html"),
    ("backfill", "--start", "2024-01-01", "--end", "2024-01-02"), ("verify",), ("validate-config",),
    ("runs", "abandon", "1"), ("demo-data", "init", "--scale", "0.01"), ("demo-data", "append"), ("doctor",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_config_error_is_one_line_and_exit_2_for_every_command(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    config = write_config(tmp_path / "p", run={"max_batch_rows": 0})  # not a positive integer
    result = run_cli(config, *command, check=False, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "run.max_batch_rows" in result.stderr, result.stderr


def test_a_failed_run_is_exit_1_with_the_fix(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p")  # no landing zone made
    result = run_cli(config, "run", "--incremental", check=False, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: " in result.stderr and "demo-data init" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [("status",), ("run", "--incremental")], ids=lambda c: c[0])
def test_a_state_store_error_goes_through_the_same_mapping(tmp_path: Path, command: tuple[str, ...]) -> None:
    """The state store raises its own errors (state/errors.py); a state URL that is no database URL is
    still a configuration error: one line with the fix, exit 2."""
    config = write_config(tmp_path / "p", state={"url": "not a database url"})
    result = run_cli(config, *command, check=False, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "sqlite:///" in errors[0], result.stderr
