"""Prometheus metrics of a pipeline, published after every run (and every backfill), from the ledger:

    loader_rows_loaded_total{pipeline,table,region,sink}   rows loaded by committed runs (counter)
    loader_rows_quarantined_total{pipeline,table,reason}    rows quarantined by committed runs (counter)
    loader_keys_deleted_total{pipeline,table,sink}          keys deleted upstream and applied by committed
                                                            runs (removed, or marked deleted in soft mode)
                                                            (counter)
    loader_runs_total{pipeline,mode,outcome}                runs in the ledger by outcome (counter)
    loader_run_duration_seconds{pipeline,mode,stage}        the latest committed run: per stage, and total
    loader_last_run_success{pipeline}                       1 if the latest run committed, 0 if it failed
    loader_last_run_timestamp_seconds{pipeline}             when the latest run ended (failed: began)
    loader_source_lag_seconds{pipeline,source}              now minus the source's checkpoint cursor

Counters are recomputed from the ledger, so they survive restarts and never count a replay twice.
Publishing is best effort: a failure is logged and never fails the run it describes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loader.config import MetricsConfig
from loader.observe.run_history import (
    RunEntry,
    deleted_totals,
    history,
    quarantined_totals,
    rows_loaded_totals,
)
from loader.redaction import redact

log = logging.getLogger(__name__)


def registry_for(pipeline: str, entries: list[RunEntry], checkpoints: dict[str, datetime],
                 now: datetime) -> Any:
    from prometheus_client import CollectorRegistry, Counter, Gauge

    registry = CollectorRegistry()
    rows = Counter("loader_rows_loaded", "Rows loaded by committed runs, per table, region and sink",
                   ["pipeline", "table", "region", "sink"], registry=registry)
    for (table, region, sink), count in sorted(rows_loaded_totals(entries).items()):
        rows.labels(pipeline, table, region, sink).inc(count)
    quarantined = Counter("loader_rows_quarantined",
                          "Rows quarantined by committed runs, per table and reason",
                          ["pipeline", "table", "reason"], registry=registry)
    for (table, reason), count in sorted(
            quarantined_totals([e for e in entries if e.outcome == "committed"]).items()):
        quarantined.labels(pipeline, table, reason).inc(count)
    deleted = Counter("loader_keys_deleted", "Keys deleted upstream and applied by committed runs (removed, "
                      "or marked deleted in soft mode), per table and sink", ["pipeline", "table", "sink"],
                      registry=registry)
    for (table, sink), count in sorted(deleted_totals(entries).items()):
        deleted.labels(pipeline, table, sink).inc(count)
    runs = Counter("loader_runs", "Runs in the ledger, by mode and outcome", ["pipeline", "mode", "outcome"],
                   registry=registry)
    for entry in entries:
        runs.labels(pipeline, entry.mode, entry.outcome).inc()
    committed = [e for e in entries if e.outcome == "committed"]
    if committed:  # newest first
        latest = committed[0]
        duration = Gauge("loader_run_duration_seconds", "Seconds the latest committed run took, per stage "
                         "(stage=total: start to finish)", ["pipeline", "mode", "stage"], registry=registry)
        duration.labels(pipeline, latest.mode, "total").set(latest.duration_s or 0)
        for stage, seconds in latest.timings_s.items():
            duration.labels(pipeline, latest.mode, stage).set(seconds)
    ended = [e for e in entries if e.outcome in ("committed", "failed")]
    if ended:
        last = ended[0]
        Gauge("loader_last_run_success", "1 if the latest run committed, 0 if it failed", ["pipeline"],
              registry=registry).labels(pipeline).set(1 if last.outcome == "committed" else 0)
        Gauge("loader_last_run_timestamp_seconds", "When the latest run ended (a failed one: when it began)",
              ["pipeline"], registry=registry).labels(pipeline).set(
            (last.finished_at or last.started_at).timestamp())
    lag = Gauge("loader_source_lag_seconds", "Now minus the source's checkpoint cursor",
                ["pipeline", "source"], registry=registry)
    for source, cursor in checkpoints.items():
        lag.labels(pipeline, source).set(round((now - cursor).total_seconds(), 3))
    return registry


def publish(settings: MetricsConfig, pipeline: str, store: Any) -> None:
    """Write the textfile and/or push to the Pushgateway, as configured; never raises."""
    if not (settings.textfile or settings.pushgateway):
        return
    try:
        from prometheus_client import push_to_gateway, write_to_textfile

        entries = history(store, pipeline, limit=None)
        checkpoints = {name: cp.cursor for name, cp in store.checkpoints(pipeline).items()}
        registry = registry_for(pipeline, entries, checkpoints, datetime.now(UTC))
        if settings.textfile:
            Path(settings.textfile).parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(settings.textfile, registry)  # a temp file renamed into place
        if settings.pushgateway:
            push_to_gateway(settings.pushgateway, job="loader", grouping_key={"pipeline": pipeline},
                            registry=registry, timeout=settings.push_timeout.total_seconds())
    except Exception as error:
        where = redact(" and ".join(filter(None, (settings.textfile, settings.pushgateway))))
        log.warning("could not publish the metrics to %s: %s (the run itself is not affected)", where,
                    redact(str(error)))
