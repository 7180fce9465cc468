"""Writing one table's rows of a run with every sink: the sinks side by side (threads), and within a
sink its parts where they are. A part held in this process is written here; a part in the Ray
cluster's object store is written by a Ray task, which Ray places on a node holding it, so the rows
never pass through the driver. Parts are written side by side, except for a sink whose parts each
commit (Delta: one after another, the last carrying the run's commit). Each sink's `begin` and
`finish` run here, on the driver. The whole write is retried (a replay of the sink's part of the run)
unless the sink retries its own steps; both are read from the sink's declared `capabilities`."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, TypeVar

import pyarrow as pa

from loader.observe.logs import in_context
from loader.retry import call_with_retries
from loader.sinks.base import PartWrite, Sink, SinkWrite, TableBatch, schema_only, skipped

log = logging.getLogger(__name__)
B = TypeVar("B")


def write_table(sinks: list[Sink[Any]], batch: TableBatch,
                parts: list[Any]) -> list[tuple[SinkWrite, list[str]]]:
    """Every sink writes `parts` (tables, or Ray object references to tables) of `batch` (whose data
    gives only the schema) and commits. Returns each sink's result and the Ray nodes that wrote parts.
    Each sink's commit is idempotent, so one failing leaves the others safe to replay."""
    attempts: dict[str, int] = {}

    def write_once(sink: Sink[Any]) -> tuple[SinkWrite, list[str]]:
        # A retry is a replay of this sink's part of the run: it first removes what the failed try wrote.
        attempts[sink.name] = attempts.get(sink.name, 0) + 1
        head = schema_only(batch if attempts[sink.name] == 1 else replace(batch, replay=True))
        return _write_with(sink, head, parts)

    def write(sink: Sink[Any]) -> tuple[SinkWrite, list[str]]:
        started = time.perf_counter()
        if sink.capabilities.retries_own_steps:
            result, nodes = write_once(sink)
        else:
            result, nodes = call_with_retries(f"{batch.table} -> {sink.name}", sink.retry,
                                              lambda: write_once(sink))
        log.info("run %d: %s -> %s: %s in %.2fs", batch.run_number, batch.table, sink.name,
                 "already landed" if result.skipped else f"{result.rows:,} rows",
                 time.perf_counter() - started)
        return result, nodes

    with ThreadPoolExecutor(max_workers=max(1, len(sinks))) as pool:
        futures = [pool.submit(in_context(write), sink) for sink in sinks]
        wait(futures)
    return [future.result() for future in futures]  # re-raises the first sink's error, if any


def _write_with(sink: Sink[B], head: TableBatch, parts: list[Any]) -> tuple[SinkWrite, list[str]]:
    """One try: begin, the parts, finish (the token `begin` returned handed to the others)."""
    begun = sink.begin(head)
    if begun is None:
        return skipped(sink, head), []
    written = _write_parts(sink, head, begun, parts)
    return sink.finish(head, begun, written), sorted({p.node for p in written if p.node})


def _write_parts(sink: Sink[B], head: TableBatch, begun: B, parts: list[Any]) -> list[PartWrite]:
    last = len(parts) - 1
    if all(isinstance(part, pa.Table) for part in parts):
        return [sink.write_part(replace(head, data=part), begun, part=i, last=i == last)
                for i, part in enumerate(parts)]
    import ray

    task: Any = ray.remote(_write_part_on_node)
    if sink.capabilities.parts_in_sequence:
        return [_fetch(task.remote(sink, head, begun, part, i, i == last)) for i, part in enumerate(parts)]
    return _fetch([task.remote(sink, head, begun, part, i, i == last) for i, part in enumerate(parts)])


def _write_part_on_node(sink: Sink[B], head: TableBatch, begun: B, part: pa.Table, number: int,
                        last: bool) -> PartWrite:
    import ray

    written = sink.write_part(replace(head, data=part), begun, part=number, last=last)
    return replace(written, node=ray.get_runtime_context().get_node_id())


def _fetch(refs: Any) -> Any:
    """ray.get, re-raising a loader error raised in the task as itself (transient ones are retried)."""
    import ray

    from loader.errors import LoaderError

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, LoaderError):
            raise cause from None
        raise
