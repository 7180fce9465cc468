"""`loader history` and the Prometheus metrics, from real runs (the CLI in child processes): the
history matches what each run reported; the node_exporter textfile and the Pushgateway body parse as
Prometheus text with the numbers of the runs; a failed run shows as failed; an unreachable Pushgateway
never fails a run. The Pushgateway is a Go binary not on PyPI: a small HTTP server here receives its
protocol (PUT /metrics/job/<job>/<label>/<value>, text exposition body)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.s3_server import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def pushgateway() -> Iterator[list[tuple[str, str, str]]]:
    received: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.append(("URL", f"http://127.0.0.1:{server.server_address[1]}", ""))
    try:
        yield received
    finally:
        server.shutdown()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_history_and_metrics_follow_the_runs(tmp_path: Path, pushgateway: list[tuple[str, str, str]]) -> None:
    url = pushgateway.pop(0)[1]
    config = write_config(tmp_path / "project", pipeline="watched",
                          metrics={"textfile": "metrics/loader.prom", "pushgateway": url})
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
    first = run_json(config, "run", "--incremental")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "200", "--updates", "30",
            "--late", "2")
    second = run_json(config, "run", "--incremental")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "50", "--updates", "0",
            "--late", "0")
    failed = run_cli(config, "run", "--incremental", check=False,
                     env={"LOADER_FAILPOINTS": "delta.write=terminal"})
    assert failed.returncode == 1

    entries = run_json(config, "history")
    assert [(e["run_number"], e["mode"], e["outcome"]) for e in entries] == [
        (3, "incremental", "failed"), (2, "incremental", "committed"), (1, "incremental", "committed")]
    assert "injected terminal fault" in entries[0]["error"]
    for entry, summary in ((entries[1], second), (entries[2], first)):
        assert ({t: i["rows"] for t, i in entry["tables"].items()}
                == {t: i["rows"] for t, i in summary["tables"].items()})
        for table, info in summary["tables"].items():
            for sink, written in info["sinks"].items():
                assert entry["tables"][table]["sinks"][sink]["regions"] == written["regions"]
        assert entry["windows"] == {t: i["window"] for t, i in summary["tables"].items()}
        assert set(entry["timings_s"]) >= {"plan", "execute", "sinks"} and entry["duration_s"] > 0
        assert set(entry["lag_seconds"]) == {"orders", "lineitem"}
    assert len(run_json(config, "history", "--limit", "1")) == 1
    text = run_cli(config, "history", env={"COLUMNS": "200"}).stdout
    assert "watched: the newest 3 run(s)" in text and "failed" in text
    # the text has what --json has of each run: its window, rows per table, the lag it left
    upper = datetime.fromisoformat(second["tables"]["orders"]["window"]["upper"]).astimezone(UTC)
    assert upper.strftime("%Y-%m-%d %H:%M") in text and "window (cursor, UTC)" in text and "lag" in text
    assert f"orders {second['tables']['orders']['rows']:,}" in text
    assert "None" not in text

    prom = (config.parent / "metrics" / "loader.prom").read_text()
    samples = _samples(prom)
    for table in ("orders", "lineitem"):
        for sink in ("parquet", "delta"):
            loaded = sum(_value(samples, "loader_rows_loaded_total", pipeline="watched", table=table,
                                region=r, sink=sink)
                         for r in ("AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"))
            assert loaded == sum(s["tables"][table]["sinks"][sink]["rows"]
                                 for s in (first, second)), (table, sink)
    assert _value(samples, "loader_last_run_success", pipeline="watched") == 0
    assert _value(samples, "loader_runs_total", pipeline="watched", mode="incremental",
                  outcome="committed") == 2
    assert _value(samples, "loader_runs_total", pipeline="watched", mode="incremental", outcome="failed") == 1
    assert _value(samples, "loader_source_lag_seconds", pipeline="watched", source="orders") > 0
    assert _value(samples, "loader_run_duration_seconds", pipeline="watched", mode="incremental",
                  stage="total") > 0

    puts = [(method, path, body) for method, path, body in pushgateway if method == "PUT"]
    assert len(puts) == 3 and all(path == "/metrics/job/loader/pipeline/watched" for _, path, _ in puts)
    assert _samples(puts[-1][2]) == samples  # the same numbers as the textfile


def test_an_unreachable_pushgateway_never_fails_a_run(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project", metrics={"pushgateway": f"http://127.0.0.1:{free_port()}",
                                                         "push_timeout": "2s"})
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
    done = run_cli(config, "run", "--incremental")
    assert "could not publish the metrics" in done.stderr
    assert run_json(config, "status")["last_run"]["run_number"] == 1
