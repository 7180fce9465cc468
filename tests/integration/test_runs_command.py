"""`loader runs`: the ledger (`runs list`), and `runs abandon` refused while a live process holds the
pipeline's lease (it may be running that very run, which would then fail at its commit). And what
`loader status` tells a person about a run in progress or cut short (never a bare None), and that the run
summary and status fit an 80-column terminal without cutting a checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli, run_json, write_config
from tests.support.demo_clock import init_args
from tests.support.gate import Gate, HeldProcess

pytestmark = [pytest.mark.integration]

LEASE_TTL_S = 2


@pytest.fixture
def project(tmp_path: Path) -> Path:
    config = write_config(tmp_path / "project",
                          state={"url": "sqlite:///state/loader.db", "lease_ttl": f"{LEASE_TTL_S}s"})
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    return config


def _runs(config: Path, *args: str) -> list[dict[str, object]]:
    return list(json.loads(run_cli(config, "runs", "list", "--json", *args).stdout))


def _lease_gone(config: Path) -> None:
    """Until the lease a killed process left has expired (it renews no more)."""
    deadline = time.monotonic() + 60
    while run_json(config, "status")["lease"] is not None:
        assert time.monotonic() < deadline, "the lease of a killed process never expired"
        time.sleep(0.2)


def test_abandon_is_refused_while_a_live_run_holds_the_lease(project: Path, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    holder = HeldProcess(project, "run", "--incremental", failpoints=gate.failpoint("plan.recorded"))
    try:
        holder.held()  # run 1 is recorded in the ledger, its process alive and holding the lease
        refused = run_cli(project, "runs", "abandon", "1", check=False)
        assert refused.returncode == 3, refused.stderr
        pid = holder.process.pid
        assert f"{os.uname().nodename}:{pid}:" in refused.stderr  # the holder, as `run` names it
        assert f"process {pid} on host {os.uname().nodename}" in refused.stderr
        assert "Wait for it to finish" in refused.stderr and f"stop process {pid}" in refused.stderr
        assert "lease expires" in refused.stderr
        assert [(r["run_number"], r["outcome"]) for r in _runs(project)] == [(1, "unfinished")]

        status = run_json(project, "status")
        assert status["unfinished_run"]["state"] == "running" and status["lease"]["holder_alive"] is True
        text = run_cli(project, "status").stdout
        assert "run in progress" in text and "unfinished" not in text and "None" not in text, text
        assert f":{pid}:" in text  # the lease line names the holder
    finally:
        holder.kill()

    # Killed: the run is unfinished, whatever its lease still says until it expires.
    status = run_json(project, "status")
    assert status["unfinished_run"]["state"] == "interrupted", status
    assert status["batches"]["state"] == "interrupted"
    _lease_gone(project)
    done = run_cli(project, "runs", "abandon", "1")
    assert "run 1 of pipeline tpch_local abandoned" in done.stdout
    assert [(r["run_number"], r["outcome"]) for r in _runs(project)] == [(1, "abandoned")]
    assert run_json(project, "status")["unfinished_run"] is None
    # the next run plans afresh from the checkpoints (none yet): everything, as run 2
    assert run_json(project, "run", "--incremental")["run_number"] == 2


def test_status_after_a_kill_says_unfinished_and_what_comes_next(project: Path) -> None:
    killed = run_cli(project, "run", "--incremental", check=False,
                     env={"LOADER_FAILPOINTS": "plan.recorded=crash"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # at once (the dead process's lease still there) and after its lease expired: the same story
    for moment in ("lease left", "lease expired"):
        if moment == "lease expired":
            _lease_gone(project)
        status = run_json(project, "status")
        assert status["unfinished_run"]["state"] == "interrupted", (moment, status)
        assert status["unfinished_run"]["error"] is None
        text = run_cli(project, "status", env={"COLUMNS": ""}).stdout
        assert "None" not in text, text
        assert "in progress" not in text and "did not finish" not in text, text
        assert "unfinished" in text and "the next `loader run --incremental` replays" in text, text
        if status["lease"] is not None:  # killed on this host: status knows its process is gone
            assert status["lease"]["holder_alive"] is False and "its process is gone" in text, text
    replayed = run_json(project, "run", "--incremental")
    assert replayed["run_number"] == 1 and replayed["replayed"] is True
    assert "None" not in run_cli(project, "status").stdout


def test_runs_list_shows_the_ledger(project: Path) -> None:
    run_cli(project, "run", "--incremental")
    run_cli(project, "demo-data", "append", "--now", "2024-01-04T00:00:00Z")
    killed = run_cli(project, "run", "--incremental", check=False,
                     env={"LOADER_FAILPOINTS": "plan.recorded=crash"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    runs = _runs(project)
    assert [(r["run_number"], r["mode"], r["outcome"]) for r in runs] == [
        (2, "incremental", "unfinished"), (1, "incremental", "committed")]
    assert set(runs[0]) == {"run_number", "mode", "outcome", "attempts", "started_at", "finished_at", "batch",
                            "windows", "error"}
    assert set(runs[0]["windows"]) == {"orders", "lineitem"}  # type: ignore[arg-type]
    assert runs[1]["batch"] == {"index": 1, "of": 1, "series": runs[1]["batch"]["series"]}  # type: ignore[index]
    assert [r["run_number"] for r in _runs(project, "--limit", "1")] == [2]

    text = run_cli(project, "runs", "list", env={"COLUMNS": ""}).stdout
    lines = text.splitlines()
    assert any(line.split("│")[1:4] == [" 2   ", " incremental ", " unfinished "] for line in lines), text
    assert any(line.split("│")[1:4] == [" 1   ", " incremental ", " committed  "] for line in lines), text
    started = datetime.fromisoformat(str(runs[1]["started_at"])).astimezone(UTC)
    assert started.strftime("%Y-%m-%d %H:%M:%S") in text
    assert "the next `loader run --incremental` replays it" in text and "loader runs abandon 2" in text
    assert run_cli(project, "runs").stdout == text  # `loader runs` alone lists too

    # what the ledger messages point at exists
    missing = run_cli(project, "runs", "abandon", "99", check=False)
    assert missing.returncode == 1 and "see `loader runs list`" in missing.stderr, missing.stderr


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def _terminal(project: Path, *args: str, columns: int, cwd: Path | None = None) -> str:
    """What a terminal of `columns` would show (rich told it prints to one, TTY_COMPATIBLE=1), without
    its styles: a pipe is printed wide whatever COLUMNS says."""
    env = {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    shown = run_cli(project, *args, env=env, **({"cwd": cwd} if cwd else {})).stdout
    return re.sub(r"\x1b\[[0-9;]*m", "", shown)


def test_summary_status_and_runs_fit_80_columns(project: Path, tmp_path: Path) -> None:
    here = project.parent
    summary = _terminal(project, "run", "--incremental", columns=80, cwd=here)
    assert _widest(summary) <= 80, summary
    assert str(here) not in summary and "window (UTC): (-inf, 2024-01-0" in summary, summary

    # wide (a pipe without COLUMNS): paths under the current folder relative to it, others as given
    run_cli(project, "demo-data", "append", "--now", "2024-01-04T00:00:00Z")
    wide = run_cli(project, "run", "--incremental", env={"COLUMNS": ""}, cwd=here).stdout
    assert "warehouse/parquet/orders" in wide and "warehouse/delta/lineitem" in wide, wide
    assert str(here) not in wide, wide
    run_cli(project, "demo-data", "append", "--now", "2024-01-06T00:00:00Z")
    elsewhere = _terminal(project, "run", "--incremental", columns=400, cwd=ROOT)
    assert f"{here / 'warehouse' / 'parquet' / 'orders'}" in elsewhere, elsewhere

    status = _terminal(project, "status", columns=80)
    assert _widest(status) <= 80, status
    for source in run_json(project, "status")["sources"].values():
        checkpoint = datetime.fromisoformat(source["checkpoint"]).astimezone(UTC)
        # complete, to the microsecond: the date and the time, wrapped onto two lines of its cell
        assert checkpoint.date().isoformat() in status and checkpoint.time().isoformat() in status, status
    assert "None" not in status

    listed = _terminal(project, "runs", "list", columns=80)
    assert _widest(listed) <= 80, listed
