"""The run protocol (see ../shared/DESIGN.md): lease -> replay or plan -> ledger -> execute -> sinks
-> one atomic checkpoint commit. A crash anywhere before the commit leaves every checkpoint where it
was; the next run replays the same run number and windows, and each sink skips what already landed."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loader import failpoints, logs, progress, quarantine
from loader.config import LoaderConfig
from loader.errors import LoaderError
from loader.planning import RunPlan, plan_run
from loader.retry import call_with_retries
from state import RunRecord, StateStore

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    pipeline: str
    status: str  # committed | nothing_new
    run_number: int | None = None
    replayed: bool = False
    executor: str | None = None  # local | ray
    executor_reason: str | None = None
    engine: str | None = None  # cpu | gpu: where the transforms ran
    engine_reason: str | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "status": self.status, "run_number": self.run_number,
            "replayed": self.replayed, "executor": self.executor, "executor_reason": self.executor_reason,
            "engine": self.engine, "engine_reason": self.engine_reason,
            "tables": self.tables, "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def lease_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@contextmanager
def held_lease(store: StateStore, pipeline: str, ttl_seconds: float) -> Iterator[str]:
    """Hold the pipeline's lease, renewing it from a thread while this process lives."""
    holder = lease_holder()
    store.acquire_lease(pipeline, holder=holder, ttl_seconds=ttl_seconds)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl_seconds / 3):
            try:
                if not store.renew_lease(pipeline, holder=holder, ttl_seconds=ttl_seconds):
                    log.error("lost the lease of pipeline %s (it expired); this run will not commit", pipeline)
                    return
            except Exception as error:  # keep beating: a transient state error must not kill the run
                log.warning("lease renewal failed: %s", error)

    beat = threading.Thread(target=logs.in_context(heartbeat), name="lease-heartbeat", daemon=True)
    beat.start()
    try:
        yield holder
    finally:
        stop.set()
        store.release_lease(pipeline, holder=holder)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started


def run_incremental(config: LoaderConfig, *, executor: str | None = None, engine: str | None = None,
                    now: datetime | None = None) -> RunSummary:
    from loader.pipeline import preflight

    preflight(config, engine)  # no GPU for `--engine gpu`, an unreachable Ray address: fail before any state
    store = StateStore.open(config.state.url)
    try:
        with held_lease(store, config.pipeline, config.state.lease_ttl.total_seconds()):
            try:
                return _run_with_lease(config, store, executor=executor, engine=engine, now=now)
            finally:  # committed, failed or nothing new: the lag and the run's outcome change either way
                from loader.metrics import publish

                publish(config, store)
    finally:
        store.close()


def _run_with_lease(config: LoaderConfig, store: StateStore, *, executor: str | None, engine: str | None,
                    now: datetime | None) -> RunSummary:
    timer = _Timer()
    pipeline = config.pipeline
    summary = RunSummary(pipeline=pipeline, status="nothing_new")
    with timer.stage("plan"):
        checkpoints = store.checkpoints(pipeline)
        unfinished = store.unfinished_run(pipeline)
        if unfinished is not None:
            record = store.record_attempt(pipeline, unfinished.run_number)
            log.warning("run %d did not finish (attempt %d): replaying it with the same windows", record.run_number, record.attempts)
            plan = call_with_retries("planning", config.source_retry, lambda: plan_run(config, checkpoints, windows=record.windows))
            summary.replayed = True
        else:
            moment = now or datetime.now(UTC)
            plan = call_with_retries("planning", config.source_retry, lambda: plan_run(config, checkpoints, now=moment))
            if plan.is_empty:
                summary.timings = timer.timings
                log.info("nothing new in any source: no run recorded, Ray not started")
                return summary
            active = {name: p for name, p in plan.sources.items() if not p.is_empty}
            plan = RunPlan(active)
            record = store.begin_run(
                pipeline, mode="incremental", windows=plan.windows(),
                base_checkpoints={name: p.base_run for name, p in active.items()},
            )
            failpoints.hit("plan.recorded")
    summary.run_number = record.run_number
    logs.set_run(record.run_number)

    def commit() -> None:
        failpoints.hit("checkpoint.before")
        with timer.stage("commit"):
            def attempt() -> None:
                store.commit_run(
                    pipeline, record.run_number,
                    checkpoints={name: p.window.upper for name, p in plan.sources.items()},
                    metrics={"tables": summary.tables, "executor": summary.executor, "engine": summary.engine,
                             "timings_s": dict(timer.timings)},
                    before_commit=lambda: failpoints.hit("checkpoint.inside"),
                )
                failpoints.hit("checkpoint.acknowledged")  # a lost acknowledgement: the retry finds it landed

            call_with_retries("checkpoint commit", config.state.retry, attempt)
        failpoints.hit("checkpoint.after")

    try:
        execute_run(config, record, plan, summary, timer, executor, engine, commit=commit)
    except LoaderError as error:
        store.fail_run(pipeline, record.run_number, error=str(error))
        raise
    except Exception as error:
        store.fail_run(pipeline, record.run_number, error=f"{type(error).__name__}: {error}")
        raise
    summary.status = "committed"
    summary.timings = timer.timings
    return summary


def execute_run(
    config: LoaderConfig, record: RunRecord, plan: RunPlan, summary: RunSummary, timer: _Timer,
    executor: str | None, engine: str | None, *, commit: Callable[[], None],
    only_sinks: tuple[str, ...] | None = None,
) -> None:
    """Read, transform and write every sink (or `only_sinks`) for the planned run, then `commit()`:
    the checkpoint transaction of an incremental run, the ledger row of a backfill chunk."""
    with logs.run_context(record.run_number):
        _execute_run(config, record, plan, summary, timer, executor, engine, commit=commit, only_sinks=only_sinks)


def _execute_run(
    config: LoaderConfig, record: RunRecord, plan: RunPlan, summary: RunSummary, timer: _Timer,
    executor: str | None, engine: str | None, *, commit: Callable[[], None], only_sinks: tuple[str, ...] | None,
) -> None:
    # Imported here: a run with nothing new never pays for transforms, sinks or their drivers.
    from loader.pipeline import choose_executor, choose_run_engine, execute, load_dimensions
    from loader.sinks import TableBatch, build_sinks
    from loader.table_writes import write_table

    choice = choose_executor(config, plan, executor)
    engine_choice = choose_run_engine(config, choice.executor, engine)
    summary.executor, summary.executor_reason = choice.executor, choice.reason
    summary.engine, summary.engine_reason = engine_choice.engine, engine_choice.reason
    log.info("run %d: executor %s (%s); transforms on the %s (%s)", record.run_number, choice.executor, choice.reason,
             engine_choice.engine.upper(), engine_choice.reason)
    with timer.stage("execute"):
        dims = load_dimensions(config)
    sinks = [sink for sink in build_sinks(config) if only_sinks is None or sink.name in only_sinks]
    tables = execute(config, plan, choice.executor, dims, engine_choice.engine)
    active = [name for name, p in plan.sources.items() if not p.is_empty]  # the executors' order
    progress.begin(2 * len(active) + 1)
    for name in active:
        progress.step(f"{name}: read and transform")
        with timer.stage("execute"):
            item = next(tables, None)
        if item is None:
            break
        source = config.sources[item.name]
        with timer.stage("execute"):  # before any sink writes: too many bad rows stop the run here
            quarantined = quarantine.record(config, item.name, run_number=record.run_number,
                                            bad=item.quarantined, rows_read=item.read, replay=record.attempts > 1)
        if quarantined:
            log.warning("run %d: %s: %s row(s) quarantined (%s) in %s", record.run_number, item.name,
                        f"{sum(quarantined.values()):,}", ", ".join(f"{n:,} {r}" for r, n in sorted(quarantined.items())),
                        quarantine.location(config, item.name).uri)
        progress.step(f"{item.name}: write to {', '.join(s.name for s in sinks)}")
        with timer.stage("sinks"):
            batch = TableBatch(
                pipeline=config.pipeline, table=item.name, run_number=record.run_number,
                data=item.schema.empty_table(), key=source.primary_key, cursor=source.cursor,
                window=plan.sources[item.name].window, replay=record.attempts > 1, mode=record.mode,
            )
            writes = write_table(sinks, batch, item.parts)
            summary.tables[item.name] = {
                "rows": item.rows,
                "window": plan.sources[item.name].window.to_json(),
                "files_read": len(plan.sources[item.name].files),
                "parts": len(item.parts),
                "ray_nodes": len(item.nodes),
                "ray_write_nodes": len({node for _, nodes in writes for node in nodes}),
                "quarantined": quarantined,
                "sinks": {w.sink: {"rows": w.rows, "location": w.location, "skipped": w.skipped, "regions": w.regions}
                          for w, _ in writes},
            }
        del item, batch  # free this source's rows before the next one is computed
    progress.step("commit")
    commit()
