"""The log lines of a real run (the CLI in a child process, stderr a pipe as under cron): JSON lines by
default, each with the pipeline and, once the run is recorded, its number; `--log-format text` for
people; the Snowflake password never written, even at DEBUG with the connector's own logging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.snowflake_emulator import PASSWORD_ENV, new_database, sink_settings

pytestmark = pytest.mark.integration
SECRET = "Tr0ub4dor-and-3-horses"  # the emulator takes any password


def test_json_lines_by_default_off_a_terminal_with_pipeline_and_run(tmp_path: Path,
                                                                    snowflake_server: dict[str, Any]) -> None:
    sinks = {"snowflake": sink_settings(snowflake_server, new_database())}
    config = write_config(tmp_path / "project", pipeline="logged", sinks=sinks)
    env = {PASSWORD_ENV: SECRET}
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2), env=env)
    done = run_cli(config, "--log-level", "DEBUG", "run", "--incremental", env=env)
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is one JSON object
    assert len(lines) > 20 and all(line["pipeline"] == "logged" for line in lines), done.stderr[-2000:]
    ours = [line for line in lines if str(line["logger"]).startswith("loader.")]
    writes = [line for line in ours if "-> snowflake" in str(line["message"])]
    # the dimension tables load first, before the run is recorded (no run number); the facts' writes carry it
    dimensions = [line for line in writes
                  if str(line["message"]).startswith(("customer", "supplier", "nation", "region"))]
    facts = [line for line in writes if line not in dimensions]
    assert dimensions and all(line["run"] is None for line in dimensions), dimensions
    assert facts and all(line["run"] == 1 for line in facts), facts
    assert any(str(line["logger"]).startswith("snowflake.connector") for line in lines)  # DEBUG reached it
    assert SECRET not in done.stderr and SECRET not in done.stdout

    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "50", "--updates", "5",
            "--late", "1", env=env)
    text = run_cli(config, "--log-format", "text", "run", "--incremental", env=env).stderr
    assert (" INFO loader.sinks.table_writes [logged run 2]: run 2: orders -> snowflake: "
            in text), text[-2000:]
    assert SECRET not in text
