"""Progress for people, silence for cron: `loader run` in a pseudo-terminal draws a bar through the
run's rows and batches, with the step (per source: read and transform, write; then commit), with text
log lines above it; the
same run with stderr a pipe draws nothing and writes only JSON log lines."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli, write_config
from tests.support.demo_clock import append_args, init_args

pytestmark = pytest.mark.integration
BAR = "━"


def _in_terminal(*args: str, timeout: float = 120) -> tuple[int, str]:
    """The CLI with stdin, stdout and stderr on a pseudo-terminal (isatty() is true, as for a person)."""
    master, slave = pty.openpty()
    env = ({k: v for k, v in os.environ.items() if k != "LOADER_LOG_FORMAT"}
           | {"COLUMNS": "160", "TERM": "xterm"})
    process = subprocess.Popen([sys.executable, "-m", "loader.cli", *args], stdin=slave, stdout=slave,
                               stderr=slave, close_fds=True, cwd=ROOT, env=env)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=timeout), out.decode(errors="replace")


def test_a_bar_in_a_terminal_and_nothing_drawn_under_cron(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project", pipeline="watched")
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
    code, screen = _in_terminal("--config", str(config), "run", "--incremental", "--max-batch-rows", "5000")
    assert code == 0, screen[-3000:]
    assert BAR in screen, screen[-3000:]
    for shown in ("batch 1/3", "batch 3/3", "rows", "left"):  # the batch, rows done of the planned total, ETA
        assert shown in screen, f"{shown!r} never shown:\n{screen[-3000:]}"
    for step in ("orders: read and transform", "orders: write to parquet, delta",
                 "lineitem: read and transform", "commit"):
        assert step in screen, f"step {step!r} never shown:\n{screen[-3000:]}"
    # text logs above it
    assert "INFO loader.sinks.table_writes [watched run 1]: run 1: orders -> parquet" in screen
    assert "watched: runs 1-3 (3 batches) committed" in screen  # the summary stays after the bar

    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "40", "--updates", "5",
            "--late", "1")
    piped = run_cli(config, "run", "--incremental")  # stderr a pipe, as under cron
    assert BAR not in piped.stderr and "\x1b[" not in piped.stderr
    lines = [json.loads(line) for line in piped.stderr.splitlines()]
    assert all(line["pipeline"] == "watched" for line in lines)
    assert [line["message"].split(" committed")[0] for line in lines
            if line["message"].startswith("batch ")] == [
        "batch 1 of 1 (run 4)"]  # one line per batch under cron
