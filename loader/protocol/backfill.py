"""`loader backfill`: reload a cursor window (T1, T2] in chunks without moving any incremental
checkpoint. The protocol is `loader run`'s (loader/protocol/steps.py): each chunk is cut by the row budget
into batches (loader/protocol/batches.py), each a ledger run of its own with its exact input recorded.

The rules:
- One live run per pipeline: a backfill holds the same lease as `loader run`, so a backfill and an
  incremental run never write the same table at once (the one refused exits 3, naming the holder).
- A backfill does not start while an incremental run is unfinished: that run must be replayed first
  (`loader run --incremental`), because Delta skips a run number at or below what already landed.
- Chunks are fixed by the request (start, end, chunk size, sources), so the same command run again
  finds the chunks (and the batches of a chunk) already committed and resumes at the first one not
  committed. A batch that was cut short is abandoned in the ledger and loaded again under a new run
  number: every sink merges on the primary key (newest cursor wins) and skips versions it holds, so
  what the cut chunk wrote is neither lost nor duplicated. A committed chunk is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from loader.config import LoaderConfig
from loader.errors import ConfigError, LoaderError, Terminal
from loader.landing.plans import RunPlan
from loader.observe.logs import in_context
from loader.observe.results import TableResult, fold_tables
from loader.protocol.batches import BatchPlan, cut_into_batches
from loader.protocol.planning import cursor_reader, plan_run
from loader.protocol.steps import BatchRunner, Timer, commit_backfill, pipeline_session
from loader.retry import call_with_retries
from state import RunRecord, StateStore, Window

log = logging.getLogger(__name__)
MAX_CHUNKS = 10_000


class BackfillRefused(LoaderError, Terminal):
    """The backfill cannot start now (an incremental run waits to be replayed)."""


@dataclass(frozen=True)
class BackfillRequest:
    start: datetime
    end: datetime
    chunk: timedelta
    sources: tuple[str, ...]
    sinks: tuple[str, ...]
    #: `--force`: when this request was made. A forced request has an id of its own and counts as
    #: loaded only the chunks it loaded itself, so it loads a window loaded before once more.
    forced_at: datetime | None = None

    def chunks(self) -> list[Window]:
        """(start, end] cut into consecutive half-open windows of `chunk` (the last one shorter)."""
        windows, lower = [], self.start
        while lower < self.end:
            upper = min(lower + self.chunk, self.end)
            windows.append(Window(lower=lower, upper=upper))
            lower = upper
        return windows

    @property
    def id(self) -> str:
        """Names the request (same window, chunks, sources and sinks: same id): `--resume ID`."""
        text = json.dumps(self._fields(), sort_keys=True)
        return "bf-" + hashlib.sha1(text.encode()).hexdigest()[:8]

    def _fields(self) -> dict[str, Any]:
        fields = {"start": self.start.isoformat(), "end": self.end.isoformat(),
                  "chunk_s": self.chunk.total_seconds(), "sources": list(self.sources),
                  "sinks": list(self.sinks)}
        if self.forced_at is not None:  # else left out: the ids of earlier requests stay what they were
            fields["forced_at"] = self.forced_at.isoformat()
        return fields

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self._fields()}

    @classmethod
    def from_json(cls, info: dict[str, Any]) -> BackfillRequest:
        """The request a chunk run recorded in its metrics (`to_json`)."""
        return cls(start=datetime.fromisoformat(info["start"]), end=datetime.fromisoformat(info["end"]),
                   chunk=timedelta(seconds=info["chunk_s"]), sources=tuple(info["sources"]),
                   sinks=tuple(info["sinks"]),
                   forced_at=datetime.fromisoformat(info["forced_at"]) if info.get("forced_at") else None)


def build_request(config: LoaderConfig, *, start: datetime, end: datetime, chunk: timedelta,
                  sources: tuple[str, ...], sinks: tuple[str, ...],
                  forced_at: datetime | None = None) -> BackfillRequest:
    """Check everything that can be checked before a byte is read; the error says what to type."""
    if end <= start:
        raise ConfigError(f"--end {end.isoformat()} is not after --start {start.isoformat()}: the window is "
                          "(start, end]")
    if chunk <= timedelta(0):
        raise ConfigError(f"--chunk must be positive, not {chunk}")
    unknown = [s for s in sources if s not in config.sources]
    if unknown:
        raise ConfigError(f"unknown source(s) {', '.join(unknown)}: this pipeline has "
                          f"{', '.join(config.sources)}")
    from loader.sinks import enabled_names

    enabled = enabled_names(config)
    bad = [s for s in sinks if s not in enabled]
    if bad:
        raise ConfigError(f"sink(s) {', '.join(bad)} not enabled in the config: enabled are "
                          f"{', '.join(enabled)}")
    request = BackfillRequest(start, end, chunk, tuple(sources) or tuple(config.sources),
                              tuple(sinks) or tuple(enabled), forced_at)
    count = math.ceil((end - start) / chunk)
    if count > MAX_CHUNKS:
        raise ConfigError(f"(start, end] in chunks of {chunk} makes {count:,} chunks "
                          f"(at most {MAX_CHUNKS:,}): use a larger --chunk")
    return request


@dataclass
class ChunkResult:
    index: int
    window: Window
    status: str  # loaded | already_loaded | dry_run
    run_number: int | None = None  # the chunk's last batch
    run_numbers: list[int] = field(default_factory=list)  # every batch the chunk was loaded in
    replaced_run: int | None = None  # the cut-short run this chunk's load took over from
    tables: dict[str, TableResult] = field(default_factory=dict)
    files: int = 0
    estimated_rows: int = 0
    batches: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "window": self.window.to_json(), "status": self.status,
                "run_number": self.run_number,
                "run_numbers": self.run_numbers, "replaced_run": self.replaced_run, "files": self.files,
                "estimated_rows": self.estimated_rows, "batches": self.batches,
                "tables": {name: t.to_json() for name, t in self.tables.items()},
                "seconds": round(self.seconds, 3)}


@dataclass
class BackfillSummary:
    pipeline: str
    request: BackfillRequest
    chunks: list[ChunkResult] = field(default_factory=list)
    dry_run: bool = False
    checkpoints_moved: bool = False  # read back from the state store after the last chunk

    def to_json(self) -> dict[str, Any]:
        loaded = sum(c.status == "loaded" for c in self.chunks)
        return {"pipeline": self.pipeline, "request": self.request.to_json(), "dry_run": self.dry_run,
                "chunks_total": len(self.chunks), "chunks_loaded": loaded,
                "chunks_already_loaded": sum(c.status == "already_loaded" for c in self.chunks),
                "checkpoints_moved": self.checkpoints_moved, "chunks": [c.to_json() for c in self.chunks]}


def require_data(config: LoaderConfig, request: BackfillRequest) -> RunPlan:
    """The whole window's plan; a window no file of the chosen sources reaches is refused before
    anything runs (a typo in a date should not record thousands of empty chunks)."""
    plan = _plan(config, request, Window(lower=request.start, upper=request.end))
    if not any(p.files for p in plan.sources.values()):
        raise ConfigError(
            f"no row of {', '.join(request.sources)} has a cursor in ({request.start.isoformat()}, "
            f"{request.end.isoformat()}]: {_cursor_range(config, request)}. Choose --start and --end "
            f"within it (`loader status` shows how far the incremental runs got). Nothing was written"
        )
    return plan


def _cursor_range(config: LoaderConfig, request: BackfillRequest) -> str:
    """What the sources' files hold, from their footers: for an error that says which window would do."""
    everything = _plan(config, request, Window(lower=None, upper=datetime(9999, 1, 1, tzinfo=UTC)))
    lows = [g[2] for p in everything.sources.values() for f in p.files for g in f.stats if g[2] is not None]
    highs = [g[3] for p in everything.sources.values() for f in p.files for g in f.stats if g[3] is not None]
    if not lows or not highs:
        return "the landing zone holds no rows of them"
    return f"their cursors run from {min(lows).isoformat()} to {max(highs).isoformat()}"


def _chunk_metrics(request: BackfillRequest, index: int, total: int, part: int = 1,
                   parts: int = 1) -> dict[str, Any]:
    """What a chunk's batch records in the ledger: the request, which chunk, which of its batches."""
    return {"backfill": {**request.to_json(), "chunk": index + 1, "of": total, "part": part, "parts": parts}}


def _covers(run: RunRecord, windows: dict[str, Window], request: BackfillRequest) -> bool:
    """Whether a committed run loaded these windows into the request's sinks, as far as the request
    counts it: any backfill's run, or for a forced request only its own."""
    info = run.metrics.get("backfill", {})
    if request.forced_at is not None and info.get("id") != request.id:
        return False
    return run.windows == windows and set(request.sinks) <= set(info.get("sinks", []))


def _of_chunk(run: RunRecord, request: BackfillRequest, index: int) -> bool:
    info = run.metrics.get("backfill", {})
    return info.get("id") == request.id and info.get("chunk") == index + 1


def _chunk_done(runs: list[RunRecord], request: BackfillRequest, index: int,
                windows: dict[str, Window]) -> bool:
    """Every batch of the chunk committed (by this request), or the whole chunk by an earlier one."""
    if any(r.status == "committed" and _covers(r, windows, request) for r in runs):
        return True
    mine = [r.metrics["backfill"] for r in runs if r.status == "committed" and _of_chunk(r, request, index)]
    return bool(mine) and len({m.get("part", 1) for m in mine}) >= int(mine[0].get("parts", 1))


def dry_run(config: LoaderConfig, request: BackfillRequest) -> BackfillSummary:
    """The chunks with the files, rows and batches each would read; nothing is written, no lease taken."""
    summary = BackfillSummary(config.pipeline, request, dry_run=True)
    require_data(config, request)
    for index, window in enumerate(request.chunks()):
        plan = _plan(config, request, window)
        cutting = cut_into_batches(plan, max_rows=config.run.max_batch_rows, cursors=cursor_reader(config))
        summary.chunks.append(ChunkResult(index, window, "dry_run",
                                          files=sum(len(p.files) for p in plan.sources.values()),
                                          estimated_rows=plan.estimated_rows, batches=len(cutting.batches)))
    return summary


def _plan(config: LoaderConfig, request: BackfillRequest, window: Window) -> RunPlan:
    windows = {name: window for name in request.sources}
    return call_with_retries("planning", config.source_retry, lambda: plan_run(config, {}, windows=windows))


def run_backfill(config: LoaderConfig, request: BackfillRequest, *, parallel: int = 1,
                 on_chunk: Callable[[ChunkResult, int], None] | None = None) -> BackfillSummary:
    """Load every chunk not yet loaded, `parallel` at a time (threads of this process, one lease),
    each chunk in batches of about `run.max_batch_rows` rows through the shared run protocol."""
    pipeline = config.pipeline
    summary = BackfillSummary(pipeline, request)
    with pipeline_session(config) as store:
        pending = store.unfinished_run(pipeline, mode="incremental")
        if pending is not None:
            raise BackfillRefused(
                f"incremental run {pending.run_number} of pipeline {pipeline!r} did not finish: run "
                f"`loader run --incremental` first (it replays it), then the backfill. Nothing was written"
            )
        require_data(config, request)
        checkpoints = store.checkpoints(pipeline)
        history = store.runs(pipeline, limit=None, mode="backfill")
        chunks = request.chunks()
        lock = threading.Lock()
        batches = BatchRunner(config, store, commit=commit_backfill(config, store), timer=Timer(),
                                only_sinks=request.sinks)
        budget = config.run.max_batch_rows

        def load(index: int) -> ChunkResult:
            result = _load_chunk(config, store, batches, request, history, index, chunks[index], len(chunks),
                                 budget)
            with lock:
                summary.chunks.append(result)
                if on_chunk is not None:
                    on_chunk(result, len(chunks))
            return result

        if parallel <= 1:
            for index in range(len(chunks)):
                load(index)
        else:
            with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="backfill") as pool:
                futures = [pool.submit(in_context(load), index) for index in range(len(chunks))]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    for future in futures:  # start no new chunk; the running ones finish or fail
                        future.cancel()
                    raise
        summary.chunks.sort(key=lambda c: c.index)
        summary.checkpoints_moved = store.checkpoints(pipeline) != checkpoints
    return summary


def _load_chunk(config: LoaderConfig, store: StateStore, batches: BatchRunner, request: BackfillRequest,
                history: list[RunRecord], index: int, window: Window, total: int, budget: int) -> ChunkResult:
    pipeline = config.pipeline
    windows = {name: window for name in request.sources}
    started = time.perf_counter()
    if _chunk_done(history, request, index, windows):
        return ChunkResult(index, window, "already_loaded", seconds=time.perf_counter() - started)
    # A batch of this chunk cut short: what it wrote is removed, its run abandoned, its rows loaded again.
    cut = [r for r in history
           if r.status == "planned" and (_of_chunk(r, request, index) or r.windows == windows)]
    if cut:
        from loader.sinks import enabled_sinks

        sinks = enabled_sinks(config, only=request.sinks)
        for run in cut:
            for sink in sinks:
                for table in run.windows:
                    sink.discard_run(table, run.run_number)
            store.abandon_run(pipeline, run.run_number,
                              reason="backfill chunk cut short; loaded again as a new run")
    plan = _plan(config, request, window)
    cutting = cut_into_batches(plan, max_rows=budget, cursors=cursor_reader(config))
    for warning in cutting.warnings:
        log.warning("backfill chunk %d: %s", index + 1, warning)
    result = ChunkResult(index, window, "loaded", replaced_run=cut[-1].run_number if cut else None,
                         files=sum(len(p.files) for p in plan.sources.values()),
                         estimated_rows=plan.estimated_rows, batches=len(cutting.batches))
    # A chunk without rows is still a run of its own: a resumed backfill finds it done.
    chunk_batches = cutting.batches or [BatchPlan(1, plan, 0)]
    parts = len(chunk_batches)
    for batch in chunk_batches:
        batch_windows = batch.plan.windows()
        if parts > 1 and any(r.status == "committed" and _covers(r, batch_windows, request)
                             for r in history):
            continue  # this batch of the chunk landed before the backfill was interrupted
        metrics = _chunk_metrics(request, index, total, batch.number, parts)
        record = store.begin_run(pipeline, mode="backfill", windows=batch_windows, base_checkpoints={},
                                 metrics=metrics, inputs=batches.inputs(batch.plan))
        outcome = batches.run(record, batch.plan, metrics=metrics)
        result.run_numbers.append(outcome.run_number)
        result.run_number = outcome.run_number
        fold_tables(result.tables, outcome.tables)
    result.seconds = time.perf_counter() - started
    return result


def find_request(config: LoaderConfig, backfill_id: str) -> BackfillRequest:
    """The request of an earlier backfill, by the id `loader status` and `--json` show."""
    store = StateStore.open(config.state.url)
    try:
        runs = store.runs(config.pipeline, limit=None, mode="backfill")
    finally:
        store.close()
    for run in runs:
        info = run.metrics.get("backfill", {})
        if info.get("id") == backfill_id:
            return BackfillRequest.from_json(info)
    known = sorted({r.metrics.get("backfill", {}).get("id") for r in runs} - {None})
    raise ConfigError(f"no backfill {backfill_id!r} in pipeline {config.pipeline!r}'s ledger"
                      + (f": known ids {', '.join(known)}" if known else ": it has no backfill yet"))


def backfill_status(store: StateStore, pipeline: str, *, lease_held: bool = False) -> dict[str, Any] | None:
    """The latest backfill request: chunks done of total, and whether it finished, is running (a chunk
    is planned and the pipeline's lease is held) or was cut short."""
    runs = store.runs(pipeline, limit=None, mode="backfill")
    latest = runs[0].metrics.get("backfill") if runs else None
    if not latest:
        return None
    request_ = BackfillRequest.from_json(latest)
    same = [r for r in runs if r.metrics.get("backfill", {}).get("id") == latest["id"]]
    total = int(latest["of"])
    done = {i for i in range(total) if _chunk_done(same, request_, i, {})}
    planned = [r.run_number for r in same if r.status == "planned"]
    state = "finished" if len(done) >= total else ("running" if planned and lease_held else "interrupted")
    request = BackfillRequest.from_json(latest).to_json()
    return {"request": request, "chunks_done": len(done), "chunks_total": total, "state": state,
            "unfinished_runs": planned}


__all__ = ["BackfillRefused", "BackfillRequest", "BackfillSummary", "backfill_status", "build_request",
           "dry_run", "find_request", "run_backfill"]
