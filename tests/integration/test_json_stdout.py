"""`--json` keeps stdout for its one JSON object: a library printing to stdout while the command works
(Ray's driver prints raylet warnings there, whatever `log_to_driver` says) is sent to stderr. The noise
here comes from a `sitecustomize` module in the child process: once the run starts executing (it
imports loader.execute.choice), a thread prints to `sys.stdout` as it is at each print, as Ray's does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli, write_config
from tests.support.demo_clock import init_args

pytestmark = pytest.mark.integration

NOISY = """
import sys, threading, time

def _noise():
    for _ in range(20):
        print("(raylet) WARNING: noise on stdout", file=sys.stdout, flush=True)
        time.sleep(0.005)

def _on_import(event, args):
    if event == "import" and args[0] == "loader.execute.choice":
        threading.Thread(target=_noise).start()

sys.addaudithook(_on_import)
"""


def test_run_json_stdout_is_one_object_while_a_library_prints(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project")
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(1))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NOISY)
    result = run_cli(config, "run", "--incremental", "--json", env={"PYTHONPATH": f"{site}:{ROOT}"})
    assert result.stderr.count("noise on stdout") == 20, result.stderr[-2000:]  # the stand-in did print
    assert json.loads(result.stdout)["status"] == "committed", result.stdout[:500]
    _assert_json_shapes(config, json.loads(result.stdout))


#: The keys `--json` has always given (scripts read them): a typed result that drops or renames one
#: breaks them, so the shapes are pinned here, key for key.
RUN_KEYS = {"pipeline", "status", "run_number", "run_numbers", "replayed", "executor", "executor_reason",
            "engine", "engine_reason", "rows", "planned_rows", "max_batch_rows", "tables", "timings_s",
            "batches", "dimensions"}
RUN_TABLE_KEYS = {"rows", "deleted", "window", "files_read", "parts", "ray_nodes", "ray_write_nodes",
                  "quarantined", "sinks"}
RUN_SINK_KEYS = {"rows", "deleted", "location", "skipped", "regions"}
BATCH_KEYS = {"run_number", "replayed", "rows", "estimated_rows", "seconds", "windows", "tables"}
HISTORY_KEYS = {"run_number", "mode", "outcome", "attempts", "started_at", "finished_at", "duration_s",
                "windows", "lag_seconds", "tables", "timings_s", "executor", "engine", "error", "batch"}
HISTORY_TABLE_KEYS = {"rows", "parts", "quarantined", "deleted", "sinks"}
HISTORY_SINK_KEYS = {"rows", "skipped", "regions", "deleted"}


def _assert_json_shapes(config: Path, run: dict) -> None:
    assert set(run) == RUN_KEYS
    assert run["tables"] and all(set(t) == RUN_TABLE_KEYS for t in run["tables"].values())
    assert all(set(s) == RUN_SINK_KEYS for t in run["tables"].values() for s in t["sinks"].values())
    assert all(set(t["window"]) == {"lower", "upper"} for t in run["tables"].values())
    assert run["batches"] and all(set(b) == BATCH_KEYS for b in run["batches"])
    entries = json.loads(run_cli(config, "history", "--json").stdout)
    assert entries and all(set(e) == HISTORY_KEYS for e in entries)
    tables = [t for e in entries for t in e["tables"].values()]
    assert tables and all(set(t) == HISTORY_TABLE_KEYS for t in tables)
    assert all(set(s) == HISTORY_SINK_KEYS for t in tables for s in t["sinks"].values())
    # The same numbers through both: the run's rows per table are its batches' in the history.
    batches = [e for e in entries if e["run_number"] in run["run_numbers"]]
    assert len(batches) == len(run["run_numbers"])
    assert {n: t["rows"] for n, t in run["tables"].items()} == {
        n: sum(e["tables"][n]["rows"] for e in batches) for n in run["tables"]}
