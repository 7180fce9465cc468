"""Four `loader run` processes started together on one pipeline: exactly one runs, the others exit at
once with the lease-held code naming the holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli, run_json
from tests.support.demo_clock import init_args
from tests.support.gate import Gate
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration


def test_only_one_of_four_concurrent_runs_proceeds(config_path: Path, tmp_path: Path) -> None:
    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(1))
    # The winner waits after recording its plan until the three others have ended: they surely found the
    # lease taken, however long each took to start on a busy machine.
    gate = Gate(tmp_path)
    env = {**os.environ, "LOADER_FAILPOINTS": gate.failpoint("plan.recorded")}
    command = [sys.executable, "-m", "loader.cli", "--config", str(config_path), "run", "--incremental",
               "--json"]
    processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for _ in range(4)]
    try:
        deadline = time.monotonic() + 300
        while sum(p.poll() is not None for p in processes) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gate.open()
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
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
