"""The demo landing zone on the real clock (no --now): its newest cursor is moments old, so after `loader
run --incremental` the lag `loader status` shows is minutes, not the years of a zone dated 2024, and an
append made later is loaded with a lag as short."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loader.demo.generator import read_demo_state
from tests.support.cli import run_cli, run_json, write_config

pytestmark = pytest.mark.integration

DAY = timedelta(days=1).total_seconds()


def test_status_after_init_and_append_on_the_real_clock_shows_a_lag_under_a_day(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project")
    started = datetime.now(UTC)
    run_cli(config, "demo-data", "init", "--scale", "0.002", "--days", "2")
    newest = read_demo_state(tmp_path / "project" / "landing").max_cursor
    assert started - timedelta(days=1) < newest < datetime.now(UTC)

    first = run_json(config, "run", "--incremental")
    assert first["status"] == "committed" and first["tables"]["orders"]["rows"] == 3000  # nothing held back
    sources = run_json(config, "status")["sources"]
    assert set(sources) == {"orders", "lineitem"}
    for name, source in sources.items():
        assert 0 <= source["lag_seconds"] < DAY, (name, source)

    run_cli(config, "demo-data", "append", "--orders", "40", "--updates", "5", "--late", "1")
    second = run_json(config, "run", "--incremental")
    assert second["status"] == "committed" and second["tables"]["orders"]["rows"] >= 40 + 5 + 1
    assert not any(sum((info.get("quarantined") or {}).values()) for info in second["tables"].values())
    appended = read_demo_state(tmp_path / "project" / "landing").max_cursor
    sources = run_json(config, "status")["sources"]
    assert sources["orders"]["checkpoint"] == appended.isoformat()  # the append's newest cursor, loaded
    for name, source in sources.items():
        assert newest < datetime.fromisoformat(source["checkpoint"]) <= appended, (name, source)
        assert 0 <= source["lag_seconds"] < (datetime.now(UTC) - newest).total_seconds(), (name, source)
