"""`loader report --out report.html` after real runs, rendered in headless Chromium (Debian's package):
the scripts ran, each chart drew one point per committed run per series (rows per table, seconds per
stage, rows quarantined per table, lag per source), the latest run's per-region table has a row per (table, sink, region) with the
counts the run reported, and the file needs no network (no src or href at all)."""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.support.browser import dump_dom
from tests.support.cli import run_cli, run_json, write_config

pytestmark = pytest.mark.integration


class _Drawn(HTMLParser):
    """Circles per (chart, series) and the cells of the latest-run table, from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.chart: str | None = None
        self.points: Counter[tuple[str, str]] = Counter()
        self.in_latest = False
        self.cells: list[str] = []
        self.cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "svg":
            self.chart = found.get("data-chart")
        elif tag == "circle" and self.chart:
            self.points[(self.chart, str(found.get("data-series")))] += 1
        elif tag == "table" and found.get("id") == "latest-table":
            self.in_latest = True
        elif tag == "td" and self.in_latest:
            self.cell = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.chart = None
        elif tag == "table":
            self.in_latest = False
        elif tag == "td" and self.cell is not None:
            self.cells.append(self.cell)
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data


def test_report_draws_every_run_in_chromium(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project", pipeline="reported")
    run_cli(config, "demo-data", "init", "--scale", "0.002", "--days", "2")
    summaries = [run_json(config, "run", "--incremental")]
    for orders in (120, 80):
        run_cli(config, "demo-data", "append", "--orders", str(orders), "--updates", "10", "--late", "1")
        summaries.append(run_json(config, "run", "--incremental"))
    run_cli(config, "demo-data", "append", "--orders", "30", "--updates", "0", "--late", "0")
    assert run_cli(config, "run", "--incremental", check=False,
                   env={"LOADER_FAILPOINTS": "parquet.write=terminal"}).returncode == 1  # not drawn: not committed

    out = tmp_path / "out" / "report.html"
    done = run_cli(config, "report", "--out", str(out))
    assert f"wrote {out} (4 run(s) of pipeline reported)" in done.stdout
    page = out.read_text()
    assert not re.search(r"\b(src|href)\s*=", page), "the report refers to another file or the network"

    dom = dump_dom(out)
    assert 'data-drawn="yes"' in dom, "the report's script did not finish"
    drawn = _Drawn()
    drawn.feed(dom)
    committed = len(summaries)
    expected = {("rows", t): committed for t in ("orders", "lineitem")}
    expected |= {("stages", s): committed for s in ("plan", "execute", "sinks")}
    expected |= {("quarantined", t): committed for t in ("orders", "lineitem")}
    expected |= {("lag", s): committed for s in ("orders", "lineitem")}
    assert dict(drawn.points) == expected

    latest = summaries[-1]["tables"]
    want = sorted((t, sink, region, f"{rows:,}") for t, info in latest.items()
                  for sink, written in info["sinks"].items() for region, rows in written["regions"].items())
    got = sorted(tuple(drawn.cells[i:i + 4]) for i in range(0, len(drawn.cells), 4))
    assert got == want

    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1])
    assert data["charts"]["rows"]["series"]["orders"] == [[i + 1, s["tables"]["orders"]["rows"]]
                                                         for i, s in enumerate(summaries)]
