"""Four `loader run` processes started together on one pipeline: exactly one runs, the others exit at
once with the lease-held code naming the holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli, run_json
from tests.support.demo_clock import init_args
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration


def test_only_one_of_four_concurrent_runs_proceeds(config_path: Path) -> None:
    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(1))
    # The winner lingers after recording its plan, so the others surely find the lease taken.
    env = {**os.environ, "LOADER_FAILPOINTS": "plan.recorded=sleep:4"}
    command = [sys.executable, "-m", "loader.cli", "--config", str(config_path), "run", "--incremental", "--json"]
    processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 3, 3, 3], results
    winner = next(json.loads(out) for code, out, _ in results if code == 0)
    assert winner["run_number"] == 1
    winner_pid = next(p.pid for p, (code, _, _) in zip(processes, results, strict=True) if code == 0)
    for code, _, err in results:
        if code == 3:
            assert f"is being run by {os.uname().nodename}:{winner_pid}:" in err, err
    assert run_json(config_path, "run", "--incremental")["status"] == "nothing_new"
    assert_warehouse_exact(config_path.parent / "warehouse", config_path.parent / "landing")
