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
