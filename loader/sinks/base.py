"""The shape every sink shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from loader.config import RetryConfig
from state import Window


@dataclass(frozen=True)
class TableBatch:
    """One table's rows of one run: deduplicated, transformed, with a `region` column."""

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


class Sink(Protocol):
    name: str
    retry: RetryConfig

    def write(self, batch: TableBatch) -> SinkWrite:
        """Write and commit `batch`; a second call with the same run number changes nothing."""
        ...

    def discard_run(self, table: str, run_number: int) -> None:
        """Remove what a run that will never be replayed (a cut backfill chunk, loaded again under a
        new number) left behind, where leftovers would be visible; a no-op where they are not."""
        ...


def region_counts(data: pa.Table) -> dict[str, int]:
    if data.num_rows == 0:
        return {}
    counts = data.group_by("region").aggregate([("region", "count")])
    return dict(zip(counts["region"].to_pylist(), counts["region_count"].to_pylist(), strict=True))
