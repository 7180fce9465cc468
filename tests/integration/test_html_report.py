"""`loader report --out report.html` after real runs, rendered in headless Chromium (Debian's package):
plotly.js (embedded once, inline) drew every chart, and what each chart plotted (read back from the
charts in the browser) is the ledger: rows per table and seconds per stage per committed run, lag per
source in a human unit, rows quarantined and keys deleted (charts only when a run had any, else a line
of text); the first run's batches are named on the axis and listed; the latest run's per-region table
holds the counts the run reported; the page fetched nothing; and it follows the light and dark schemes."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plotly.offline import get_plotlyjs

from tests.support.browser import dump_dom, screenshot
from tests.support.cli import run_cli, run_json, write_config

pytestmark = pytest.mark.integration
UNITS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


class _Page(HTMLParser):
    """From the rendered DOM: the drawn record, the text a person sees, and the report's tables' cells."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.drawn_text = ""
        self.text: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.table: str | None = None
        self.feed(dom)
        self.drawn: dict[str, Any] = json.loads(self.drawn_text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.stack.append(str(found.get("id") or tag))
        if tag == "table":
            self.table = str(found.get("id"))
            self.tables[self.table] = []
        elif tag == "tr" and self.table:
            self.tables[self.table].append([])

    def handle_endtag(self, tag: str) -> None:
        self.stack.pop()
        if tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "report-drawn":
            self.drawn_text += data
        elif self.stack and self.stack[-1] not in ("script", "style", "report-data", "report-figures",
                                                   "report-themes"):
            self.text.append(data)
            if self.table and self.stack[-1] == "td":
                self.tables[self.table][-1].append(data)

    def cells(self, table: str) -> list[list[str]]:
        return [row for row in self.tables[table] if row]


def _render(page: Path, scheme: str = "light") -> _Page:
    rendered = _Page(dump_dom(page, scheme=scheme))
    assert rendered.drawn["scheme"] == scheme
    assert rendered.drawn["resources"] == 0, "the report fetched something"
    for name, chart in rendered.drawn["charts"].items():
        assert chart["svg"] >= 1, f"plotly drew no SVG in chart {name}"
    return rendered


def _traces(page: _Page, chart: str) -> dict[str, tuple[list[Any], list[Any]]]:
    return {t["name"]: (t["x"], t["y"]) for t in page.drawn["charts"][chart]["traces"]}


def _bad_row(landing: Path) -> None:
    """An order with no key just after the newest landed cursor, in its ingest day (the next demo batch
    comes after it): quarantined ("null key") by the next run."""
    template = pq.read_table(sorted((landing / "orders").rglob("*.parquet"))[-1])
    row = template.slice(0, 1)
    cursor = max(template["o_updated_at"].to_pylist()) + timedelta(seconds=1)
    for column, value in (("o_orderkey", None), ("o_updated_at", cursor)):
        row = row.set_column(row.schema.get_field_index(column), column, pa.array([value], row[column].type))
    pq.write_table(row, sorted((landing / "orders").glob("ingest_date=*"))[-1] / "part-bad.parquet")


def test_report_draws_the_ledger_with_plotly_in_chromium(tmp_path: Path) -> None:
    # Small batches: the first run is cut in several; one bad row is not over the quarantine limit.
    config = write_config(tmp_path / "project", pipeline="reported", run={"max_batch_rows": 6000},
                          quarantine={"max_fraction": 0.5})
    # Landing history from 2024 (the appends land at today's time): the first runs' lag is years.
    run_cli(config, "demo-data", "init", "--scale", "0.002", "--days", "2", "--now", "2024-01-03T00:00:00Z")
    first = run_json(config, "run", "--incremental")
    assert len(first["batches"]) > 1, first["batches"]
    early = tmp_path / "out" / "first.html"
    run_cli(config, "report", "--out", str(early))

    _bad_row(config.parent / "landing")
    run_cli(config, "demo-data", "append", "--orders", "120", "--updates", "10", "--late", "1",
            "--deletes", "5")
    summaries = [first, run_json(config, "run", "--incremental")]
    assert summaries[-1]["tables"]["orders"]["quarantined"] == {"null key o_orderkey": 1}
    run_cli(config, "demo-data", "append", "--orders", "80", "--updates", "10", "--late", "1")
    summaries.append(run_json(config, "run", "--incremental"))
    run_cli(config, "demo-data", "append", "--orders", "30", "--updates", "0", "--late", "0")
    # not drawn: not committed
    assert run_cli(config, "run", "--incremental", check=False,
                   env={"LOADER_FAILPOINTS": "parquet.write=terminal"}).returncode == 1

    out = tmp_path / "out" / "report.html"
    history = cast(list[dict[str, Any]], run_json(config, "history"))  # a list, newest first
    done = run_cli(config, "report", "--out", str(out))
    assert f"wrote {out} ({len(history)} run(s) of pipeline reported)" in done.stdout
    committed = [e for e in reversed(history) if e["outcome"] == "committed"]
    assert len(committed) == len(history) - 1 == len(first["batches"]) + 2

    # Self-contained: plotly.js inline once, nothing loaded from elsewhere (the library's own text
    # names map-tile hosts for chart kinds the report never draws, so the rest of the page is checked).
    page = out.read_text()
    library = get_plotlyjs()
    assert page.count(library[:500]) == 1
    own = page.replace(library, "")
    assert not re.search(r"<script[^>]*\bsrc\s*=|<link\b|<img\b|https?://cdn", own, re.I), (
        "the report loads another file")
    assert not re.search(r"\b(src|href)\s*=", own), "the report refers to another file or the network"

    drawn = _render(out)
    assert set(drawn.drawn["charts"]) == {"rows", "stages", "lag", "quarantined", "deleted", "regions"}
    tables = ("orders", "lineitem")
    for t in tables:
        runs = [e for e in committed if t in e["tables"]]
        assert _traces(drawn, "rows")[t] == ([e["run_number"] for e in runs],
                                             [e["tables"][t]["rows"] for e in runs])
        assert _traces(drawn, "quarantined")[t] == (
            [e["run_number"] for e in runs], [sum(e["tables"][t]["quarantined"].values()) for e in runs])
        assert _traces(drawn, "deleted")[t] == ([e["run_number"] for e in runs],
                                                [e["tables"][t]["deleted"] for e in runs])
    assert sum(sum(_traces(drawn, "deleted")[t][1]) for t in tables) > 0
    for stage in ("plan", "execute", "sinks"):
        assert _traces(drawn, "stages")[stage] == ([e["run_number"] for e in committed],
                                                   [round(e["timings_s"][stage], 3) for e in committed])

    # Lag in the largest unit the biggest lag reaches twice, never a count of seconds in the millions.
    lags = {s: [e["lag_seconds"][s] for e in committed if s in e["lag_seconds"]] for s in tables}
    biggest = max(max(v) for v in lags.values())
    unit = next((u for u, size in UNITS.items() if biggest >= 2 * size), "seconds")
    assert unit == "days" and drawn.drawn["charts"]["lag"]["y_title"] == "lag (days)"
    for source, seconds in lags.items():
        assert _traces(drawn, "lag")[source][1] == pytest.approx([s / UNITS[unit] for s in seconds],
                                                                 abs=0.006)
    text = " ".join(drawn.text)
    assert f"{int(biggest):,}" not in text and str(int(biggest)) not in text

    # The latest committed run (one batch) per table, sink and region, as the run reported it.
    latest = summaries[-1]["tables"]
    want = sorted((t, sink, region, f"{rows:,}") for t, info in latest.items()
                  for sink, written in info["sinks"].items() for region, rows in written["regions"].items())
    assert sorted(tuple(row) for row in drawn.cells("latest-table")) == want
    assert [row[:2] for row in drawn.cells("batches-table")] == [["1 of 1", str(summaries[-1]["run_number"])]]
    regions = _traces(drawn, "regions")
    assert {(name, region, y) for name, (xs, ys) in regions.items()
            for region, y in zip(xs, ys, strict=True)} == {
        (f"{t} → {sink}", region, rows) for t, info in latest.items()
        for sink, written in info["sinks"].items() for region, rows in written["regions"].items()}

    embedded = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert embedded is not None
    data = json.loads(embedded[1])
    assert data["charts"]["rows"]["series"]["orders"] == [[e["run_number"], e["tables"]["orders"]["rows"]]
                                                          for e in committed]

    # The first report: nothing quarantined or deleted yet, so a line of text instead of a chart; the
    # first run's batches named on the run axis and listed.
    before = _render(early)
    assert set(before.drawn["charts"]) == {"rows", "stages", "lag", "regions"}
    assert "No rows were quarantined in these runs" in before.text
    assert "No keys were deleted upstream in these runs" in before.text
    n = len(first["batches"])
    for i, run in enumerate(first["run_numbers"], start=1):
        assert f"{run} ({i}/{n})" in before.text
    assert [row[:2] for row in before.cells("batches-table")] == [
        [f"{i} of {n}", str(run)] for i, run in enumerate(first["run_numbers"], start=1)]

    # Dark: the page and every chart on a dark background, the same numbers drawn.
    dark = _render(out, "dark")
    assert dark.drawn["background"] != drawn.drawn["background"]
    for name, chart in dark.drawn["charts"].items():
        assert chart["paper_bgcolor"] != drawn.drawn["charts"][name]["paper_bgcolor"], name
        assert chart["traces"] == drawn.drawn["charts"][name]["traces"], name
    shots = [screenshot(out, tmp_path / f"report-{scheme}.png", scheme=scheme)
             for scheme in ("light", "dark")]
    assert shots[0].read_bytes() != shots[1].read_bytes()
