"""`loader run --incremental`: the protocol of loader/protocol/steps.py over the new data, in batches.

Under the pipeline's lease: an unfinished batch of an earlier run is replayed first (same run number,
same recorded input); then the window since the checkpoints is planned once (its upper bound fixed for
this run, like Structured Streaming's "available now" trigger), cut into batches of about
`run.max_batch_rows` rows (loader/protocol/batches.py), and each batch is recorded, executed, written and
committed before the next starts. A crash loses at most the batch in flight; a run killed after its
k-th batch resumes at batch k+1 (after replaying the batch in flight), never reading 1..k again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loader import failpoints
from loader.config import LoaderConfig
from loader.errors import LeaseHeld
from loader.landing.plans import RunPlan
from loader.observe import logs, progress
from loader.observe.results import TableResult, fold_tables
from loader.protocol.batches import Cutting, cut_into_batches
from loader.protocol.dimension_loads import load_dimension_tables
from loader.protocol.fact_gaps import check_fact_history
from loader.protocol.planning import cursor_reader, plan_from_input, plan_run
from loader.protocol.steps import (
    BatchOutcome,
    BatchRunner,
    Timer,
    commit_incremental,
    holder_alive,
    holder_process,
    lease_holder,
    pipeline_session,
)
from loader.retry import call_with_retries
from state import LeaseInfo, RunRecord, StateStore

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    pipeline: str
    status: str  # committed | nothing_new
    run_number: int | None = None  # the first batch's run (the replayed one, if any); all: run_numbers
    replayed: bool = False  # the first batch replayed an interrupted run
    executor: str | None = None  # local | ray
    executor_reason: str | None = None
    engine: str | None = None  # cpu | gpu: where the transforms ran
    engine_reason: str | None = None
    tables: dict[str, TableResult] = field(default_factory=dict)  # totals over the batches
    timings: dict[str, float] = field(default_factory=dict)
    batches: list[BatchOutcome] = field(default_factory=list)
    planned_rows: int = 0  # estimated from row-group statistics when the run was planned
    max_batch_rows: int | None = None
    #: The dimension tables loaded this run (their files changed): per dimension, rows and per sink
    #: versions opened and closed (loader/protocol/dimension_loads.py).
    dimensions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, outcome: BatchOutcome) -> None:
        self.batches.append(outcome)
        self.status = "committed"
        self.run_number = self.batches[0].run_number
        self.executor, self.executor_reason = outcome.executor, outcome.executor_reason
        self.engine, self.engine_reason = outcome.engine, outcome.engine_reason
        fold_tables(self.tables, outcome.tables)

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.batches)

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "status": self.status, "run_number": self.run_number,
            "run_numbers": [b.run_number for b in self.batches],
            "replayed": self.replayed, "executor": self.executor, "executor_reason": self.executor_reason,
            "engine": self.engine, "engine_reason": self.engine_reason, "rows": self.rows,
            "planned_rows": self.planned_rows, "max_batch_rows": self.max_batch_rows,
            "tables": {name: t.to_json() for name, t in self.tables.items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "batches": [b.to_json() for b in self.batches],
            "dimensions": self.dimensions,
        }


def run_incremental(config: LoaderConfig, *, now: datetime | None = None) -> RunSummary:
    """One run over what is new (the command line's overrides are in `config`: `LoaderConfig.overridden`)."""
    with pipeline_session(config) as store:
        return _run_with_lease(config, store, now=now)


def _run_with_lease(config: LoaderConfig, store: StateStore, *, now: datetime | None) -> RunSummary:
    timer = Timer()
    pipeline = config.pipeline
    max_batch_rows = config.run.max_batch_rows
    summary = RunSummary(pipeline=pipeline, status="nothing_new", max_batch_rows=max_batch_rows)
    batches = BatchRunner(config, store, commit=commit_incremental(config, store), timer=timer)
    check_fact_history(config, store)  # before a replay writes to a sink enabled since (fact_gaps.py)
    unfinished = store.unfinished_run(pipeline)
    if unfinished is not None:
        summary.replayed = True
        summary.add(_replay(config, store, batches, timer, unfinished))
    with timer.stage("dimensions"):
        loaded = load_dimension_tables(config, store)
    summary.dimensions = {name: outcome.to_json() for name, outcome in loaded.items()}
    with timer.stage("plan"):
        checkpoints = store.checkpoints(pipeline)
        moment = now or datetime.now(UTC)
        plan = call_with_retries("planning", config.source_retry,
                                 lambda: plan_run(config, checkpoints, now=moment))
        cutting = cut_into_batches(plan, max_rows=max_batch_rows, cursors=cursor_reader(config))
    if not cutting.batches:
        summary.timings = timer.timings
        if not summary.batches:
            log.info("nothing new in any source: no run recorded, Ray not started")
        return summary
    for warning in cutting.warnings:
        log.warning("%s", warning)
    total = len(cutting.batches)
    summary.planned_rows = sum(b.estimated_rows for b in cutting.batches)
    log.info("%s rows planned (estimated) in %d batch(es) of at most about %s rows",
             f"{summary.planned_rows:,}", total, f"{cutting.budget:,}")
    progress.begin(summary.planned_rows, batches=total)
    largest = max(cutting.batches, key=lambda b: b.estimated_rows)
    batches.prepare(largest.plan, estimated_rows=largest.estimated_rows)  # the log says what plan says
    series = uuid.uuid4().hex[:12]  # names this run's batches in the ledger (status: batch i of n)
    planning_s = timer.timings.get("plan", 0.0)  # the first batch carries the run's planning
    # The next sources are read and transformed while the current ones are written (run.read_ahead).
    ahead = (batches.read_ahead([b.plan for b in cutting.batches], budget=cutting.budget)
             if config.run.read_ahead else None)
    try:
        for index, batch in enumerate(cutting.batches):
            info = {"batch": {"series": series, "index": batch.number, "of": total,
                              "estimated_rows": batch.estimated_rows, "planned_rows": summary.planned_rows}}
            started = time.perf_counter()
            with timer.stage("plan"):
                base = {name: (cp.run_number if (cp := store.checkpoints(pipeline).get(name)) else None)
                        for name in batch.plan.sources}
                record = store.begin_run(pipeline, mode="incremental", windows=batch.plan.windows(),
                                         base_checkpoints=base, inputs=batches.inputs(batch.plan),
                                         metrics=info)
            failpoints.hit("plan.recorded")
            logs.set_run(record.run_number)
            progress.batch(batch.number, total)
            outcome = batches.run(record, batch.plan, metrics=info, ahead=ahead, index=index,
                                  planning_s=planning_s + time.perf_counter() - started)
            outcome.estimated_rows = batch.estimated_rows
            planning_s = 0.0
            summary.add(outcome)
            _log_batch(outcome, batch.number, total)
    finally:
        if ahead is not None:
            ahead.close()
        batches.close()
    summary.timings = timer.timings
    return summary


def _replay(config: LoaderConfig, store: StateStore, batches: BatchRunner, timer: Timer,
            unfinished: RunRecord) -> BatchOutcome:
    """The interrupted batch again: same run number, same windows, the very input it recorded (a
    late file landed in its window since is left to the next run's lookback, in every sink alike)."""
    record = store.record_attempt(config.pipeline, unfinished.run_number)
    log.warning("run %d did not finish (attempt %d): replaying it with the same input", record.run_number,
                record.attempts)
    logs.set_run(record.run_number)
    started = time.perf_counter()
    with timer.stage("plan"):
        plan = _replay_plan(config, store, record)
    progress.begin(plan.estimated_rows, batches=1)
    progress.batch(1, 1, replay=True)
    info = {key: record.metrics[key] for key in ("batch",) if key in record.metrics}
    outcome = batches.run(record, plan, metrics=info, planning_s=time.perf_counter() - started)
    outcome.estimated_rows = info.get("batch", {}).get("estimated_rows")  # as its first attempt planned it
    _log_batch(outcome, 1, 1)
    return outcome


def _replay_plan(config: LoaderConfig, store: StateStore, record: RunRecord) -> RunPlan:
    if record.inputs is not None:
        return call_with_retries("checking the replayed input", config.source_retry,
                                 lambda: plan_from_input(config, record.run_number, record.windows,
                                                         record.inputs or {},
                                                         began_writing=bool(record.metrics.get("writing"))))
    # Recorded before the ledger kept inputs (state schema 1): plan the same windows again.
    return call_with_retries("planning", config.source_retry,
                             lambda: plan_run(config, store.checkpoints(config.pipeline),
                                              windows=record.windows))


def _log_batch(outcome: BatchOutcome, number: int, total: int) -> None:
    uppers = ", ".join(f"{name} {t.window.to_json()['upper']}" for name, t in outcome.tables.items()
                       if t.window)
    log.info("batch %d of %d (run %d%s) committed: %s rows in %.1fs; checkpoints now %s", number, total,
             outcome.run_number, ", replayed" if outcome.replayed else "", f"{outcome.rows:,}",
             outcome.seconds, uppers or "unchanged")


@dataclass(frozen=True)
class NextRun:
    """What the next incremental run would do (`loader plan`): its plan and the batches it would cut."""

    plan: RunPlan
    cutting: Cutting
    replay_of: int | None  # the unfinished run it would replay first, if any


def preview_next_run(config: LoaderConfig) -> NextRun:
    """Plan the next run without a lease, without Ray and without writing: an unfinished run is shown
    as the replay of its recorded windows."""
    store = StateStore.open_to_read(config.state.url)
    try:
        unfinished = store.unfinished_run(config.pipeline)
        windows = unfinished.windows if unfinished else None
        plan = plan_run(config, store.checkpoints(config.pipeline), windows=windows)
    finally:
        store.close()
    cutting = cut_into_batches(plan, max_rows=config.run.max_batch_rows, cursors=cursor_reader(config))
    return NextRun(plan, cutting, unfinished.run_number if unfinished else None)


def abandon_run(config: LoaderConfig, run_number: int, *, reason: str) -> None:
    """Stop replaying an unfinished run: the next run plans afresh from the checkpoints. Done under the
    pipeline's lease, like a run: while a live process holds it (it may be running that very run, and
    would then fail at its commit) this refuses with LeaseHeld (exit 3), naming the holder."""
    store = StateStore.open(config.state.url)
    try:
        holder, ttl = lease_holder(), config.state.lease_ttl.total_seconds()
        try:
            store.acquire_lease(config.pipeline, holder=holder, ttl_seconds=ttl)
        except LeaseHeld:
            lease = store.lease(config.pipeline)
            if lease is None:  # released in between: let the user simply try again
                raise
            raise LeaseHeld(_abandon_refused(config.pipeline, run_number, lease)) from None
        try:
            store.abandon_run(config.pipeline, run_number, reason=reason)
        finally:
            store.release_lease(config.pipeline, holder=holder)
    finally:
        store.close()


def _abandon_refused(pipeline: str, run_number: int, lease: LeaseInfo) -> str:
    expires = lease.expires_at.isoformat(timespec="seconds")
    process = holder_process(lease.holder)
    who = (f"process {process[1]} on host {process[0]}" if process else "its holder")
    gone = holder_alive(lease.holder) is False
    return (f"cannot abandon run {run_number} of pipeline {pipeline!r}: its lease is held by {lease.holder} "
            f"({who}{', which is gone' if gone else ''}) until {expires}, and run {run_number} may be the "
            f"one it is loading. "
            + (f"Its lease expires by itself at {expires}: run `loader runs abandon {run_number}` again then."
               if gone else
               f"Wait for it to finish (it commits or fails the run itself), or stop {who} and run "
               f"`loader runs abandon {run_number}` again once its lease expires ({expires} at the latest)."))
