"""A run with nothing new imports only what planning needs (issue #15): the config, the state store
(SQLAlchemy core) and pyarrow's filesystem and Parquet footers. Not the transforms, the sinks or their
drivers, pandas, pyarrow.compute, rich or the metrics: what `sys.modules` holds when the real CLI
exits is checked, not a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loader.sinks.registry import REGISTRY
from tests.support.cli import ROOT, run_cli, run_json, write_config
from tests.support.demo_clock import init_args

pytestmark = pytest.mark.integration

# The real `loader` entry point, recording the imported modules when it leaves (it leaves through
# os._exit, so atexit hooks would not run).
_RECORDING_CLI = """
import json, os, sys

_exit = os._exit

def _record_and_exit(code):
    with open(os.environ["LOADER_TEST_MODULES"], "w") as out:
        json.dump(sorted(sys.modules), out)
    _exit(code)

os._exit = _record_and_exit
from loader.cli import main

sys.argv = ["loader", *sys.argv[1:]]
main()
_record_and_exit(0)
"""

# Nothing of these is needed to decide "nothing new" (pandas alone costs about 0.3 s).
NOT_ON_THE_EMPTY_PATH = (
    "pandas", "pyarrow.compute", "pyarrow.dataset", "deltalake", "ray", "duckdb", "snowflake", "cudf",
    "rich", "prometheus_client", "sqlalchemy.orm",
    "loader.execute", "loader.transform.facts", "loader.transform.lookups", "loader.transform.frames",
    "loader.landing.sources",
    "loader.sinks", "loader.sinks.table_writes", "loader.landing.quarantine", "loader.observe.metrics",
)


def _imported(tmp_path: Path, *args: str,
              env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    record = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    result = subprocess.run(
        [sys.executable, "-c", _RECORDING_CLI, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, **(env or {}), "LOADER_TEST_MODULES": str(record)},
    )
    assert result.returncode == 0, (f"exit {result.returncode}\nstdout:\n{result.stdout}\n"
                                    f"stderr:\n{result.stderr}")
    return result, set(json.loads(record.read_text()))


# What the config needs of loader.sinks: the registry and each sink's config block (pydantic only), with
# the packages holding them (whose __init__ imports nothing). Every other module there is a sink's.
CONFIG_OF_THE_SINKS = {"loader.sinks", "loader.sinks.registry",
                       *(f"loader.sinks.{name}{part}" for name in REGISTRY for part in ("", ".config"))}


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules - CONFIG_OF_THE_SINKS
                  if any(m == h or m.startswith(h + ".") for h in NOT_ON_THE_EMPTY_PATH))


def test_the_sinks_config_blocks_are_not_taken_for_a_sink() -> None:
    assert _heavy({"loader.sinks.registry", "loader.sinks.delta.config"}) == []
    assert _heavy({"loader.sinks.delta.sink", "loader.sinks.base"}) == ["loader.sinks.base",
                                                                        "loader.sinks.delta.sink"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small landing zone, fully loaded: the next run has nothing new."""
    config = write_config(tmp_path_factory.mktemp("empty-run") / "project")
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    assert run_json(config, "run", "--incremental")["status"] == "committed"
    return config


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_run_with_nothing_new_imports_only_what_planning_needs(
        loaded: Path, tmp_path: Path, output: str) -> None:
    args = ["--config", str(loaded), "run", "--incremental", *(["--json"] if output == "json" else [])]
    result, modules = _imported(tmp_path, *args)
    if output == "json":
        summary = json.loads(result.stdout)
        assert summary["status"] == "nothing_new" and summary["run_number"] is None
    else:  # on a pipe: plain text, the same as rich printed it
        assert result.stdout == "tpch_local: nothing new to load (no run recorded, checkpoints unchanged)\n"
    assert "nothing new in any source" in result.stderr
    assert {"pyarrow.parquet", "state"} <= modules  # it did plan: read the checkpoints and the footers
    assert _heavy(modules) == [], "the empty run imported what it does not use"


def test_nothing_new_on_a_forced_terminal_still_goes_through_rich(loaded: Path, tmp_path: Path) -> None:
    """FORCE_COLOR makes rich style the line: the plain shortcut must not take that case."""
    result, modules = _imported(tmp_path, "--config", str(loaded), "run", "--incremental",
                                env={"FORCE_COLOR": "1"})
    assert "rich" in modules
    assert "\x1b[" in result.stdout and "nothing new to load" in result.stdout


def test_help_imports_no_data_stack(tmp_path: Path) -> None:
    _, modules = _imported(tmp_path, "--help")
    data_stack = ("pandas", "pyarrow", "numpy", "deltalake", "ray", "snowflake", "cudf", "sqlalchemy", "rich")
    assert sorted(m for m in modules if m.split(".")[0] in data_stack) == []
