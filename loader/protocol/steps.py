"""The run protocol, one copy for incremental runs and backfill (see ../shared/DESIGN.md):

    lease -> (replay the unfinished batch) -> plan -> cut into batches -> for each batch:
        record it in the ledger with its exact input -> read, dedupe, transform -> every sink commits
        idempotently -> one state transaction (incremental: advance the checkpoints; backfill: mark the
        chunk's run committed)

`pipeline_session` holds the pipeline (preflight, state store, lease, metrics at the end);
`BatchRunner.run` carries one recorded batch through execution and its commit. The drivers
(loader/protocol/incremental.py for `run --incremental`, loader/protocol/backfill.py for `backfill`) only
decide which batches to run. A crash loses at most the batch in flight: its ledger row stays `planned`, the
next run replays exactly its recorded input, and the sinks skip what already landed.
"""

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
from functools import partial
from typing import TYPE_CHECKING, Any

from loader import failpoints
from loader.config import LoaderConfig
from loader.errors import EXPECTED_ERRORS
from loader.landing.plans import RunPlan
from loader.observe import logs, progress
from loader.observe.results import SinkResult, TableResult
from loader.retry import call_with_retries
from state import RunRecord, StateStore

if TYPE_CHECKING:  # imported where used: a run with nothing new never loads executors, sinks or lookups
    from loader.execute.choice import ExecutorChoice
    from loader.execute.read_ahead import ReadAhead
    from loader.sinks.base import Sink
    from loader.transform.frames import EngineChoice
    from loader.transform.lookup_versions import VersionLookups
    from loader.transform.lookups import Lookups

log = logging.getLogger(__name__)


def lease_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_process(holder: str) -> tuple[str, int] | None:
    """The host and process id a `lease_holder()` names; None for a holder of another shape."""
    host, _, rest = holder.partition(":")
    pid = rest.split(":", 1)[0]
    return (host, int(pid)) if host and pid.isdigit() else None


def holder_alive(holder: str) -> bool | None:
    """Whether the lease holder's process still runs: known only on its own host (True, False), else None.
    Only for what to tell people: a lease is honoured until it expires, whatever this says."""
    from loader.scratch import alive

    process = holder_process(holder)
    if process is None or process[0] != socket.gethostname():
        return None
    return alive(process[1])


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
                    log.error("lost the lease of pipeline %s (it expired); this run will not commit",
                              pipeline)
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


@contextmanager
def pipeline_session(config: LoaderConfig) -> Iterator[StateStore]:
    """Preflight (fails in seconds, before any state), the state store and the pipeline's lease;
    the metrics are published at the end whatever happened (the lag and the outcome change either way)."""
    if _preflight_has_work(config):
        from loader.execute.choice import preflight

        preflight(config)
    store = StateStore.open(config.state.url)
    try:
        with held_lease(store, config.pipeline, config.state.lease_ttl.total_seconds()):
            try:
                yield store
            finally:
                if config.metrics.textfile or config.metrics.pushgateway:  # else publish() has nothing to do
                    from loader.observe.metrics import publish

                    publish(config.metrics, config.pipeline, store)
    finally:
        store.close()


def _preflight_has_work(config: LoaderConfig) -> bool:
    """Whether `loader.execute.choice.preflight` has anything to check: `gpu` requested, or a Ray cluster
    address (its two checks). Otherwise it is skipped, and so is importing loader.execute (pyarrow.compute,
    the transforms): a run with nothing new to load never needs them."""
    return config.transform.engine == "gpu" or bool(config.ray.address)


class Timer:
    """Seconds per stage, summed over the batches of a run (threads of a parallel backfill included)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add({name: time.perf_counter() - started})

    def add(self, timings: dict[str, float]) -> None:
        with self._lock:
            for name, seconds in timings.items():
                self.timings[name] = self.timings.get(name, 0.0) + seconds


@dataclass
class BatchOutcome:
    """What one batch did: the ledger run it was, and per table rows and sink writes (as the summary
    and the ledger's metrics show them)."""

    run_number: int
    replayed: bool
    tables: dict[str, TableResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    executor: str | None = None
    executor_reason: str | None = None
    engine: str | None = None
    engine_reason: str | None = None
    estimated_rows: int | None = None  # the cut's estimate, as `loader plan` showed it (None: a replay)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    def to_json(self) -> dict[str, Any]:
        return {"run_number": self.run_number, "replayed": self.replayed, "rows": self.rows,
                "estimated_rows": self.estimated_rows, "seconds": round(self.seconds, 3),
                "windows": {name: t.window.to_json() if t.window else None
                            for name, t in self.tables.items()},
                "tables": {name: t.rows for name, t in self.tables.items()}}


Commit = Callable[[RunRecord, RunPlan, dict[str, Any]], None]


def commit_incremental(config: LoaderConfig, store: StateStore) -> Commit:
    """The checkpoint transaction: every source of the batch to its window's upper bound, the run
    marked committed, its metrics stored, all at once (retried: an acknowledgement lost is found landed)."""

    def commit(record: RunRecord, plan: RunPlan, metrics: dict[str, Any]) -> None:
        failpoints.hit("checkpoint.before")

        def attempt() -> None:
            store.commit_run(
                config.pipeline, record.run_number,
                checkpoints={name: p.window.upper for name, p in plan.sources.items()},
                metrics=metrics, before_commit=lambda: failpoints.hit("checkpoint.inside"),
            )
            failpoints.hit("checkpoint.acknowledged")

        call_with_retries("checkpoint commit", config.state.retry, attempt)
        failpoints.hit("checkpoint.after")

    return commit


def commit_backfill(config: LoaderConfig, store: StateStore) -> Commit:
    """A backfill batch: its ledger row committed, no checkpoint moved."""

    def commit(record: RunRecord, _plan: RunPlan, metrics: dict[str, Any]) -> None:
        call_with_retries("backfill chunk commit", config.state.retry,
                          lambda: store.commit_backfill_run(config.pipeline, record.run_number,
                                                            metrics=metrics))

    return commit


class BatchRunner:
    """Runs recorded batches one after another (or from the threads of a parallel backfill). What
    does not change between the batches of a run is decided and loaded once: the executor and the
    engine (by the largest batch), the dimension tables."""

    def __init__(self, config: LoaderConfig, store: StateStore, *, commit: Commit, timer: Timer,
                 only_sinks: tuple[str, ...] | None = None) -> None:
        self.config, self.store, self.commit = config, store, commit
        self.timer, self.only_sinks = timer, only_sinks
        self._lock = threading.Lock()
        self._prepared: tuple[ExecutorChoice, EngineChoice, Lookups] | None = None
        self.dimension_version = ""  # the fingerprint of the dimension files this run's batches read
        self._sinks: list[Sink[Any]] | None = None

    @property
    def sinks(self) -> list[Sink[Any]]:
        """The run's sinks, made once: what they open (a Delta table's log, a Snowflake connection) is
        kept for the run's next batches instead of opened again for each. `close()` lets go of it."""
        with self._lock:
            if self._sinks is None:
                from loader.sinks import enabled_sinks

                self._sinks = enabled_sinks(self.config, only=self.only_sinks)
            return self._sinks

    def close(self) -> None:
        """Let go of what the run's sinks hold open (connections)."""
        for sink in self._sinks or []:
            sink.close()
        self._sinks = None

    def prepare(self, largest: RunPlan, *, estimated_rows: int | None = None) -> None:
        """Choose executor and engine for batches like `largest` (of `estimated_rows`, the cut's estimate,
        when given; else its row groups' rows), and load the dimensions, once: their
        region lookups are kept in the state store (once per version of the files) before any batch
        records that version, so `loader verify` can place each row as its batch did, and so are the
        prepared lookups, so a replay enriches from the same lookups wherever it runs."""
        with self._lock:
            if self._prepared is not None:
                return
            # Imported here: a run with nothing new never pays for transforms, sinks or their drivers.
            from loader.execute.choice import choose_executor, choose_run_engine, load_lookups

            choice = choose_executor(self.config, largest, rows=estimated_rows)
            engine = choose_run_engine(self.config, choice.executor)
            log.info("executor %s (%s); transforms on the %s (%s)", choice.executor, choice.reason,
                     engine.engine.upper(), engine.reason)
            with self.timer.stage("execute"):
                unfinished = self._unfinished_versions()
                dims, version = load_lookups(self.config, keep=unfinished)
                self._keep_lookup_version(version, dims, unfinished)
            self._prepared = (choice, engine, dims)
            self.dimension_version = version

    def inputs(self, plan: RunPlan) -> dict[str, Any]:
        """What a batch records before any write: its fact files (`RunPlan.to_input`) and the version of
        the dimension files its rows are enriched from (a replay uses that version and no other)."""
        self.prepare(plan)
        return {**plan.to_input(), "dimensions": self.dimension_version}

    def _unfinished_versions(self) -> set[str]:
        """The dimension versions unfinished runs recorded: their prepared lookups stay cached."""
        runs = [self.store.unfinished_run(self.config.pipeline, mode=m) for m in ("incremental", "backfill")]
        return {version for run in runs
                if run is not None and (version := (run.inputs or {}).get("dimensions"))}

    def _keep_lookup_version(self, version: str, dims: Lookups, keep: set[str]) -> None:
        """The version's regions (for verify, for good), its prepared lookups (whole while it is the
        newest or an unfinished run's: a replay enriches from them anywhere) and the changes that make
        them from the newest version kept whole (for good: `loader verify --deep` enriches every row as
        its batch did), in the state store, once."""
        pipeline = self.config.pipeline
        if not self.store.has_lookup_version(pipeline, version, prepared=True):
            from loader.transform.lookup_cache import lookup_regions, pack

            base, delta = self._delta_from_newest(version, dims)
            regions, prepared = lookup_regions(dims), pack(dims)
            call_with_retries("recording the dimension version", self.config.state.retry,
                              lambda: self.store.record_lookup_version(pipeline, version, regions, prepared,
                                                                       base=base, delta=delta))
            self.store.drop_prepared_lookups(pipeline, keep={version, *keep})

    def _delta_from_newest(self, version: str, dims: Lookups) -> tuple[str | None, bytes | None]:
        """(the newest other version kept whole, the changes from its lookups to `dims`), or (None, None)
        when there is none (the first version: kept whole for good)."""
        from loader.transform.lookup_versions import diff

        versions = self._kept_versions()
        whole = [v for v in versions.chain.values() if v.whole and v.fingerprint != version]
        before = versions.get(whole[-1].fingerprint) if whole else None
        return (None, None) if before is None else (whole[-1].fingerprint, diff(before, dims))

    def _kept_versions(self) -> VersionLookups:
        """The dimension versions the state store keeps (`VersionLookups`), this machine's cache first."""
        from loader.transform.lookup_cache import LookupCache, load_version
        from loader.transform.lookup_versions import VersionLookups

        cache = LookupCache.of(self.config)
        return VersionLookups(self.store, self.config.pipeline, local=lambda v: load_version(cache, v))

    def _dimensions_of(self, record: RunRecord) -> Lookups:
        """The prepared dimensions `record` was enriched from: this run's, or for a replay of a batch
        that recorded another version of the dimension files, that version's kept lookups (the local
        cache's, else the state store's)."""
        assert self._prepared is not None
        version = (record.inputs or {}).get("dimensions")
        if version is None or version == self.dimension_version:
            return self._prepared[2]
        from loader.errors import BadSourceData
        from loader.transform.lookup_cache import LookupCache, load_version

        dims = load_version(LookupCache.of(self.config), version)
        if dims is None:  # the state store's: kept whole, or rebuilt through the kept changes
            dims = self._kept_versions().get(version)
        if dims is None:
            raise BadSourceData(
                f"run {record.run_number} enriched its rows from the dimension files as they were when it "
                f"was planned (version {version[:12]}); they changed since, and the lookups prepared from "
                "them are kept neither in the dimension cache nor in the state store (a run recorded by "
                "an older loader). A replay from today's files would enrich the rows some sinks already "
                "hold differently in the others: restore the dimension files as they were and run again"
            )
        log.info("run %d: replayed with the dimension version it recorded (%s), not today's files",
                 record.run_number, version[:12])
        return dims

    def read_ahead(self, plans: list[RunPlan], *, budget: int) -> ReadAhead:
        """A `ReadAhead` computing the sources of `plans` (fresh batches of this run, enriched from this
        run's dimensions) ahead of their writes, within `budget` rows in flight."""
        from loader.execute.choice import execute
        from loader.execute.read_ahead import ReadAhead, source_rows

        assert self._prepared is not None
        choice, engine, dims = self._prepared
        return ReadAhead(lambda plan: execute(self.config, plan, choice.executor, dims, engine.engine), plans,
                         weights=[source_rows(plan) for plan in plans], budget=budget)

    def run(self, record: RunRecord, plan: RunPlan, *, metrics: dict[str, Any] | None = None,
            planning_s: float = 0.0, ahead: ReadAhead | None = None, index: int = 0) -> BatchOutcome:
        """Execute the recorded batch and commit it; on any error the run stays `planned` (replayed
        later) with the error kept in the ledger, and the error goes on. `planning_s`: the batch's
        share of planning (recorded with its stage timings). `ahead`: the run's `ReadAhead`, which
        computed the sources of the run's `index`-th batch, instead of computing them here."""
        self.prepare(plan)
        started = time.perf_counter()
        outcome = BatchOutcome(record.run_number, replayed=record.attempts > 1)
        try:
            with logs.run_context(record.run_number):
                self._execute(record, plan, outcome, dict(metrics or {}), planning_s, ahead, index)
        except EXPECTED_ERRORS as error:
            self.store.fail_run(self.config.pipeline, record.run_number, error=str(error))
            raise
        except Exception as error:
            self.store.fail_run(self.config.pipeline, record.run_number,
                                error=f"{type(error).__name__}: {error}")
            raise
        if (record.inputs or {}).get("dimensions") not in (None, self.dimension_version):
            # A replay of another version committed: its prepared lookups are no longer needed.
            self.store.drop_prepared_lookups(self.config.pipeline,
                                             keep={self.dimension_version, *self._unfinished_versions()})
        outcome.seconds = time.perf_counter() - started
        # The batch's rows are gone: hand the freed pages of Arrow's allocator back to the system, so the
        # next batch starts from the run's base, not from this one's high-water mark.
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
        return outcome

    def _check_sinks_take(self, sinks: list[Sink[Any]], plan: RunPlan) -> None:
        """Every table's columns (from the planned files' footers, through the stage chain's schema)
        against every enabled sink, before any sink writes: a column one sink cannot take stops the
        batch with nothing written anywhere (SinkRejected names the column, the sink and the fix)."""
        from loader.execute.stages import StageChain
        from loader.landing.plans import landing_schema

        for name, source_plan in plan.sources.items():
            if source_plan.is_empty:
                continue
            landing = landing_schema(source_plan)
            if landing is None:
                continue
            schema = StageChain.for_source(self.config, name, source_plan.window).output_schema(landing)
            for sink in sinks:  # a dropped connection or a busy store is retried as the writes are
                call_with_retries(f"checking {name}'s columns against {sink.name}", sink.retry,
                                  partial(sink.check_columns, name, schema))

    def _execute(self, record: RunRecord, plan: RunPlan, outcome: BatchOutcome, metrics: dict[str, Any],
                 planning_s: float, ahead: ReadAhead | None, index: int) -> None:
        from loader.execute.choice import execute
        from loader.landing.quarantine import QuarantineStore
        from loader.sinks.base import TableBatch
        from loader.sinks.table_writes import write_table

        assert self._prepared is not None
        # Bad rows are kept beside the warehouse, written with the Parquet sink's retry policy.
        kept_apart = QuarantineStore(self.config.sink_path("quarantine"), self.config.sinks.parquet.retry,
                                     self.config.quarantine)
        choice, engine, _ = self._prepared
        dims = self._dimensions_of(record)
        outcome.executor, outcome.executor_reason = choice.executor, choice.reason
        outcome.engine, outcome.engine_reason = engine.engine, engine.reason
        # this batch's own seconds; added to the run's at the end (planning is the run's already)
        timer = Timer()
        timer.timings["plan"] = planning_s
        sinks = self.sinks
        with timer.stage("sinks"):
            self._check_sinks_take(sinks, plan)
        # Computed ahead (on the read-ahead thread) or here, source by source; "execute" counts the
        # computing either way, "execute_wait" the time the writes waited for it when computed ahead.
        computed = None if ahead is None else ahead.items(index)
        tables = (execute(self.config, plan, choice.executor, dims, engine.engine) if computed is None
                  else computed)
        waited = "execute" if computed is None else "execute_wait"
        writing = bool(record.metrics.get("writing"))
        for name in [n for n, p in plan.sources.items() if not p.is_empty]:  # the executors' order
            progress.step(f"{name}: read and transform")
            with timer.stage(waited):
                item = next(tables, None)
            if item is None:
                break
            source = self.config.sources[item.name]
            with timer.stage("execute"):  # before any sink writes: too many bad rows stop the run here
                quarantined = kept_apart.record(item.name, run_number=record.run_number,
                                                bad=item.quarantined, rows_read=item.read,
                                                replay=record.attempts > 1)
            if quarantined:
                log.warning("run %d: %s: %s row(s) quarantined (%s) in %s", record.run_number, item.name,
                            f"{sum(quarantined.values()):,}",
                            ", ".join(f"{n:,} {r}" for r, n in sorted(quarantined.items())),
                            kept_apart.location(item.name).uri)
            progress.step(f"{item.name}: write to {', '.join(s.name for s in sinks)}")
            if not writing:  # from here a sink may hold rows of this run: its replay must read the same input
                call_with_retries("marking the run as writing", self.config.state.retry,
                                  lambda: self.store.mark_run_writing(self.config.pipeline,
                                                                      record.run_number))
                writing = True
            with timer.stage("sinks"):
                batch = TableBatch(
                    pipeline=self.config.pipeline, table=item.name, run_number=record.run_number,
                    data=item.schema.empty_table(), key=source.primary_key, cursor=source.cursor,
                    window=plan.sources[item.name].window, replay=record.attempts > 1, mode=record.mode,
                    deletes=source.deletes.mode if source.deletes else None,
                )
                writes = write_table(sinks, batch, item.parts)
                outcome.tables[item.name] = TableResult(
                    rows=item.rows - item.tombstones,  # the live rows loaded; the tombstones beside them:
                    deleted=item.tombstones,
                    window=plan.sources[item.name].window,
                    files_read=len(plan.sources[item.name].files),
                    parts=len(item.parts),
                    ray_nodes=len(item.nodes),
                    ray_write_nodes=len({node for _, nodes in writes for node in nodes}),
                    quarantined=dict(quarantined or {}),
                    sinks={w.sink: SinkResult(rows=w.rows, deleted=w.deleted, location=w.location,
                                              skipped=w.skipped,
                                              regions=dict(w.regions or {})) for w, _ in writes},
                )
            progress.advance(plan.sources[item.name].estimated_rows)
            del item, batch  # free this source's rows before the next one is computed
        if computed is not None and ahead is not None:
            # the last source is written: its rows leave what the read-ahead counts in flight
            computed.close()
            timer.add({"execute": ahead.seconds[index]})
        progress.step("commit")
        with timer.stage("commit"):
            self.commit(record, plan, {**metrics,
                                       "tables": {n: t.to_json() for n, t in outcome.tables.items()},
                                       "executor": outcome.executor,
                                       "engine": outcome.engine, "timings_s": dict(timer.timings)})
        outcome.timings = timer.timings
        self.timer.add({stage: seconds for stage, seconds in timer.timings.items() if stage != "plan"})
