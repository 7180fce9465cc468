"""The GPU engine's plumbing, on any machine: with a stand-in cuDF (tests/support/gpu_standin: cuDF's API and
Arrow boundary on pandas) and Ray told it has GPUs, the loader picks the GPU engine, every part of the
Ray stage runs in a task holding exactly one GPU, every batch goes Arrow -> frame -> Arrow through the
GPU backend, and the sinks end up exact.

What this cannot show is cuDF's own arithmetic: tests/unit/transform/test_transform_parity.py compares the
real cuDF with the CPU engine where a GPU exists (here it runs against the stand-in, below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.warehouse import assert_warehouse_exact

STANDIN = ROOT / "tests" / "support" / "gpu_standin"
pytestmark = [pytest.mark.integration]


def _standin_env(log: Path, gpus: int) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(STANDIN), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "LOADER_STANDIN_LOG": str(log), "LOADER_STANDIN_GPUS": str(gpus)}


def _batches(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_parity_suite_passes_against_the_standin(tmp_path: Path) -> None:
    """The parity cases, skipped on this machine, run with the stand-in: the GPU backend's adapter
    (from_arrow, dtype names, the cast back to the CPU's schema) gives the CPU's rows and types."""
    env = {**os.environ, **_standin_env(tmp_path / "log", 1)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "tests/unit/transform/test_transform_parity.py", "-rs",
                           f"--basetemp={tmp_path / 'pytest'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "15 passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


@pytest.mark.ray
def test_ray_executor_runs_every_gpu_part_in_a_task_holding_one_gpu(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project", ray={"mode": "auto", "num_gpus": 2, "num_cpus": 2})
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(3))
    log = tmp_path / "batches.jsonl"
    env = _standin_env(log, 0)  # no device in this process: only the cluster's GPUs count on Ray
    done = run_cli(config, "run", "--incremental", "--executor", "ray", "--json", env=env, cwd=config.parent)
    summary = json.loads(done.stdout)
    assert summary["executor"] == "ray" and summary["engine"] == "gpu", summary
    assert "the Ray cluster has 2 GPU(s)" in summary["engine_reason"]
    batches = _batches(log)
    assert len(batches) >= 4, batches  # two sources, at least a part per CPU each
    assert all(len(b["gpu_ids"]) == 1 for b in batches), batches  # type: ignore[arg-type]  # one GPU each
    assert {g for b in batches for g in b["gpu_ids"]} <= {"0", "1"}  # type: ignore[attr-defined]
    assert all(info["parts"] >= 2 for info in summary["tables"].values()), summary["tables"]
    assert_warehouse_exact(config.parent / "warehouse", config.parent / "landing")


def test_local_executor_auto_takes_the_gpu_when_one_is_visible(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project")
    run_cli(config, "demo-data", "init", "--scale", "0.005", *init_args(2))
    log = tmp_path / "batches.jsonl"
    env = _standin_env(log, 1)
    first = json.loads(run_cli(config, "run", "--incremental", "--executor", "local", "--json",
                               env=env).stdout)
    assert first["engine"] == "gpu" and "cuDF 0.0-standin, 1 CUDA device(s) (auto)" in first["engine_reason"]
    assert len(_batches(log)) >= 2  # orders and lineitem went through the GPU backend
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "100", "--updates", "20",
            "--late", "2")
    second = json.loads(run_cli(config, "run", "--incremental", "--engine", "gpu", "--json", env=env).stdout)
    assert second["engine"] == "gpu" and second["status"] == "committed"
    assert_warehouse_exact(config.parent / "warehouse", config.parent / "landing")
