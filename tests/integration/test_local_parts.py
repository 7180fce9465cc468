"""The in-process executor transforms a large batch in parts on threads (one per core): the rows it
hands the sinks are those of one piece, dedupe then transform, in the same (key) order and types."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from loader.config import load_config
from loader.execute import local
from loader.execute.choice import load_lookups
from loader.execute.stages import StageChain, read_checks
from loader.landing.quarantine import split_no_region
from loader.landing.sources import read_source
from loader.protocol.planning import plan_run
from loader.transform.facts import transform_fact
from loader.transform.frames import frames_for
from loader.transform.region_rules import rules_of
from loader.transform.tables import dedupe_latest
from tests.support.cli import LOCAL_CONFIG, run_cli, write_config
from tests.support.demo_clock import append_args, init_args

pytestmark = [pytest.mark.integration]


def test_parts_on_threads_give_the_rows_of_one_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the demo's `deletes` blocks: the expected rows below are the plain chain's (tombstones and
    # their `_deleted` column are tests/unit/execute/test_deletes.py's and
    # tests/integration/test_deletes.py's).
    sources = yaml.safe_load(LOCAL_CONFIG.read_text())["sources"]
    for source in sources.values():
        source.pop("deletes", None)
    config_path = write_config(tmp_path / "project", sources=sources)
    run_cli(config_path, "demo-data", "init", "--scale", "0.002", *init_args(2))
    # updates and late rows: keys repeat inside the window, so the dedupe has versions to choose from
    run_cli(config_path, "demo-data", "append", *append_args(config_path),
            "--orders", "50", "--updates", "40", "--late", "5")
    config = load_config(config_path)
    plan = plan_run(config, {})
    dims, _ = load_lookups(config)
    rules = rules_of(config.regions)

    expected = {}
    for name, source_plan in plan.sources.items():
        source = config.sources[name]
        checks = read_checks(source, config.quarantine.future_tolerance)
        rows, _ = read_source(source_plan, cursor=source.cursor, checks=checks)
        latest = dedupe_latest(rows, key=source.primary_key, cursor=source.cursor)
        if name == "orders":
            assert latest.num_rows < rows.num_rows  # versions were dropped
        expected[name], _ = split_no_region(transform_fact(latest, kind=source.kind, dims=dims, rules=rules,
                                                           frames=frames_for("cpu")))

    monkeypatch.setattr(local, "_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(pa, "cpu_count", lambda: 3)  # uneven parts
    pieces: dict[str, int] = {}  # the pieces each source's transform ran on
    transform = StageChain.transform

    def counted(chain: StageChain, rows: pa.Table, dims: object) -> pa.Table:
        pieces[chain.source.kind] = pieces.get(chain.source.kind, 0) + 1
        return transform(chain, rows, dims)  # type: ignore[arg-type]

    monkeypatch.setattr(StageChain, "transform", counted)
    got = {item.name: item.parts[0] for item in local.run_local(config, plan, dims, "cpu")}
    assert got.keys() == expected.keys()
    for name, table in got.items():
        assert pieces[config.sources[name].kind] == 3, name  # it did run in parts
        assert table.column(0).num_chunks == 1, name  # joined in one chunk: the sinks take rows by position
        assert table.equals(expected[name]), name
