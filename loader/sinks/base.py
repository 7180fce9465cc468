"""The shape every sink shares.

A sink writes one table's rows of one run in three steps, so the rows never have to meet in one
process (the Ray executor keeps them on its workers, in key-disjoint parts):

- `begin` (on the driver): checks and preparation; says whether this run already landed here;
- `write_part` (anywhere: in-process, or a Ray task on the node holding the part): one part's rows;
- `finish` (on the driver): the run's commit, once every part is written.

`write` does the three in this process for a whole table in one part (the local executor, tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import pyarrow as pa

from loader.config import RetryConfig
from state import Window


@dataclass(frozen=True)
class TableBatch:
    """One table's rows of one run: deduplicated, transformed, with a `region` column. In `begin` and
    `finish` `data` may hold no rows (only its schema counts); in `write_part` it holds one part's rows."""

    pipeline: str
    table: str
    run_number: int
    data: pa.Table
    key: tuple[str, ...]
    cursor: str
    window: Window
    replay: bool  # an earlier attempt of this run may have written part of it
    mode: str = "incremental"  # or "backfill": a chunk, whose run may land out of run-number order


@dataclass(frozen=True)
class SinkWrite:
    sink: str
    table: str
    rows: int
    location: str
    skipped: bool = False  # the run had already landed in this sink
    regions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PartWrite:
    """What writing one part did: small, it travels back from a Ray worker to the driver."""

    rows: int
    regions: dict[str, int] = field(default_factory=dict)
    node: str | None = None  # the Ray node that wrote it (None in-process)


class Sink(Protocol):
    name: str
    retry: RetryConfig
    #: True where every part commits to the table itself (Delta): parts are then written one after
    #: another, the last one carrying the run's commit, never two at once (no commit conflicts).
    parts_in_sequence: bool

    def location(self, table: str) -> str:
        """Where `table` is written, for people (a URI, or Snowflake's account/database.schema.TABLE)."""
        ...

    def begin(self, batch: TableBatch) -> Any | None:
        """Prepare the table for this run; None if the run already landed here (skip it)."""
        ...

    def write_part(self, batch: TableBatch, begun: Any, *, part: int, last: bool) -> PartWrite:
        """Write one part (`batch.data`: rows whose keys no other part holds). `last`: no part follows
        (for sinks whose parts run in sequence)."""
        ...

    def finish(self, batch: TableBatch, begun: Any, parts: list[PartWrite]) -> SinkWrite:
        """Commit the run once every part is written; a second call changes nothing."""
        ...

    def write(self, batch: TableBatch) -> SinkWrite:
        """Write and commit `batch`; a second call with the same run number changes nothing."""
        ...

    def discard_run(self, table: str, run_number: int) -> None:
        """Remove what a run that will never be replayed (a cut backfill chunk, loaded again under a
        new number) left behind, where leftovers would be visible; a no-op where they are not."""
        ...


class WritesInParts:
    """`write` for a sink that implements begin / write_part / finish: the whole table as one part."""

    name: str

    def write(self, batch: TableBatch) -> SinkWrite:
        sink: Sink = self  # type: ignore[assignment]
        begun = sink.begin(batch)
        if begun is None:
            return skipped(sink, batch)
        return sink.finish(batch, begun, [sink.write_part(batch, begun, part=0, last=True)])


def skipped(sink: Sink, batch: TableBatch) -> SinkWrite:
    return SinkWrite(sink.name, batch.table, 0, sink.location(batch.table), skipped=True)


def schema_only(batch: TableBatch) -> TableBatch:
    """The batch without its rows: what `begin` and `finish` need."""
    return replace(batch, data=batch.data.schema.empty_table())


def region_counts(data: pa.Table) -> dict[str, int]:
    if data.num_rows == 0:
        return {}
    counts = data.group_by("region").aggregate([("region", "count")])
    return dict(zip(counts["region"].to_pylist(), counts["region_count"].to_pylist(), strict=True))


def summed_regions(parts: Iterable[PartWrite]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for region, count in part.regions.items():
            total[region] = total.get(region, 0) + count
    return total
