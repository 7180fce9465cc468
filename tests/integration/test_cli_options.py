"""The global options work where the README writes them, before or after the command (`loader status
--config F`), one given after the command overriding one before it, and `loader run` alone is the
incremental run (`--incremental` still accepted, as cron lines name it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, write_config
from tests.support.demo_clock import init_args

pytestmark = pytest.mark.integration


def loader(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, the arguments exactly as given (no --config put first)."""
    return subprocess.run([sys.executable, "-m", "loader.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_global_options_after_the_command_and_run_without_incremental(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "p"))
    made = loader("demo-data", "init", "--scale", "0.002", *init_args(2), "--config", config)
    assert made.returncode == 0, made.stderr  # a group's command takes them too

    first = loader("run", "--config", config, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "committed"  # `run` alone: the incremental run
    again = loader("run", "--incremental", "--json", "--config", config)
    assert json.loads(again.stdout)["status"] == "nothing_new"

    # after the command it overrides the one before: the missing file before it is never read
    status = loader("--config", str(tmp_path / "missing.yaml"), "status", "--config", config, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["sources"]["orders"]["checkpoint_run"] == 1

    debug = loader("verify", "--config", config, "--log-level", "debug", "--log-format", "json")
    quiet = loader("--log-level", "debug", "verify", "--config", config, "--log-level", "error")
    levels = {json.loads(line)["level"] for line in debug.stderr.splitlines() if line.startswith("{")}
    assert "DEBUG" in levels, debug.stderr
    assert "DEBUG" not in quiet.stderr and "INFO" not in quiet.stderr


def test_help_shows_the_global_options_on_every_command() -> None:
    for command in (["run"], ["status"], ["backfill"], ["demo-data", "init"], ["runs", "abandon"]):
        shown = loader(*command, "--help")
        assert shown.returncode == 0 and "--config FILE" in shown.stdout and "--log-level" in shown.stdout, \
            command
