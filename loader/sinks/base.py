"""The shape every sink shares.

A sink writes one table's rows of one run in three steps, so the rows never have to meet in one
process (the Ray executor keeps them on its workers, in key-disjoint parts):

- `begin` (on the driver): checks and preparation; says whether this run already landed here;
- `write_part` (anywhere: in-process, or a Ray task on the node holding the part): one part's rows;
- `finish` (on the driver): the run's commit, once every part is written.

loader/sinks/table_writes.py drives the three for a run. A sink also says what it is, as data the
run side reads (`Capabilities`), reads back what it holds for `loader verify` (`read_back`), and says
whether it is usable from here for `loader doctor` (`probe`). The sinks are listed once, in the
registry of `loader.sinks`.

Upstream deletes (`TableBatch.deletes`) follow one rule in every sink: per key the version with the
greatest cursor decides, and a tombstone wins a tie. A tombstone at the cursor of a live version
deletes it (a CDC delete stamped with the version's own time means the row is gone), whichever of the
two arrives first, in one batch (the stage chain's dedupe keeps the tombstone) or in different runs:
hard, the key leaves the table; soft, the row stays with `_deleted_at` = that cursor; a log of
versions (Parquet) holds both versions and its readers take the tombstone (`dedupe_latest` with its
`tombstones` mask). A live version at a tombstone's cursor arriving later leaves the key deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from loader.config_parts import RetryConfig, join_path
from loader.transform.dimension_changes import DimensionChanges, DimensionSpec
from state import Window

#: The boolean column marking a tombstone (an upstream delete) in a batch whose source has `deletes`.
DELETED = "_deleted"
#: The nullable timestamp column of a soft-deleting table: when the key was deleted upstream (the
#: tombstone's cursor), null while the key is live.
DELETED_AT = "_deleted_at"
def deleted_flags(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """`_deleted` as read back, as booleans: null (a version written before the source had deletes, or
    a file without the column at all) as false."""
    if pa.types.is_null(column.type):
        column = column.cast(pa.bool_())
    return pc.fill_null(column, False)


#: The column `read_back` adds where a row's place says its region apart from its `region` column
#: (Parquet's `region=` folders): `loader verify` checks that both agree.
PARTITION_REGION = "_partition_region"


@dataclass(frozen=True)
class SinkContext:
    """What a sink is built from besides its own config block (`sinks.<name>`): every sink's class is
    built as `Sink(settings, context)` (loader/sinks/__init__.py)."""

    pipeline: str
    warehouse: str  # the root its relative paths are under

    def path(self, relative: str) -> str:
        return join_path(self.warehouse, relative)


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
    #: None: the source has no deletes (no `_deleted` column); "hard": tombstones remove keys; "soft":
    #: tombstones mark them (`_deleted_at`).
    deletes: Literal["hard", "soft"] | None = None


@dataclass(frozen=True)
class SinkWrite:
    sink: str
    table: str
    rows: int
    location: str
    skipped: bool = False  # the run had already landed in this sink
    regions: dict[str, int] = field(default_factory=dict)
    deleted: int = 0  # keys removed (hard) or marked (soft), or tombstone versions written (Parquet)


@dataclass(frozen=True)
class PartWrite:
    """What writing one part did: small, it travels back from a Ray worker to the driver."""

    rows: int
    regions: dict[str, int] = field(default_factory=dict)
    node: str | None = None  # the Ray node that wrote it (None in-process)
    #: Tombstones of this part: versions written (Parquet), keys removed or marked (Delta), staged
    #: (Snowflake, whose MERGE in `finish` counts the keys it removed or marked).
    deleted: int = 0


@dataclass(frozen=True)
class Capabilities:
    """What a sink is, declared as data (a class attribute) for the code that drives it."""

    #: True where every part commits to the table itself (Delta): parts are then written one after
    #: another, the last one carrying the run's commit, never two at once (no commit conflicts).
    parts_in_sequence: bool
    #: True where the sink retries each of its steps itself (with its `retry` policy): the runner then
    #: must not retry the whole write on top of them.
    retries_own_steps: bool
    #: "latest": one row per key, the newest version (Delta, Snowflake); "versions": a log of every
    #: (key, cursor) version written (Parquet; a tombstone may share its (key, cursor) with a live version,
    #: and wins the tie). Says how `loader verify` compares what `read_back` returns.
    holds: Literal["latest", "versions"]
    #: What a replay of a run that already landed here does: "skips" (`begin` finds the run landed:
    #: Delta's app transaction, Snowflake's ledger row; the result says `skipped`) or "rewrites"
    #: (Parquet: the run's files are removed and written again: the same rows, counts and versions).
    replay_of_landed: Literal["skips", "rewrites"]
    #: What the replay of a run interrupted here writes and counts: "whole" (the attempt left nothing
    #: visible, or the replay removes it first: every row and delete again) or "rest" (Delta: the commits
    #: made before the fault stay, each idempotent; the replay counts only what they had not done).
    replay_of_interrupted: Literal["whole", "rest"]


#: The token `begin` hands to `write_part` and `finish`: each sink types its own (it travels to Ray
#: workers with the parts, so it pickles).
Begun = TypeVar("Begun")


@dataclass(frozen=True)
class TableBegun:
    """`begin`'s token of a sink that only needs to know whether the table existed when the run began
    (Delta, Iceberg)."""

    exists: bool


class Sink(Protocol[Begun]):
    name: str
    capabilities: ClassVar[Capabilities]
    #: Retries of transient failures: of the whole write by the runner, or of each step where the sink
    #: retries its own (`capabilities.retries_own_steps`).
    retry: RetryConfig

    def location(self, table: str) -> str:
        """Where `table` is written, for people (a URI, or Snowflake's account/database.schema.TABLE)."""
        ...

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """Refuse (SinkRejected, naming the column and the fix) a schema this sink cannot take: a name it
        cannot hold, two names it would take as one, a type its stored column cannot hold. Called for
        every table of a batch and every enabled sink before any sink writes; writes nothing."""
        ...

    def begin(self, batch: TableBatch) -> Begun | None:
        """Prepare the table for this run; None if the run already landed here (skip it)."""
        ...

    def write_part(self, batch: TableBatch, begun: Begun, *, part: int, last: bool) -> PartWrite:
        """Write one part (`batch.data`: rows whose keys no other part holds). `last`: no part follows
        (for sinks whose parts run in sequence)."""
        ...

    def finish(self, batch: TableBatch, begun: Begun, parts: list[PartWrite]) -> SinkWrite:
        """Commit the run once every part is written; a second call changes nothing."""
        ...

    def close(self) -> None:
        """Let go of what the sink kept open between batches (connections, open tables): the run ended.
        The sink may be used again after (it opens what it needs afresh)."""
        ...

    def discard_run(self, table: str, run_number: int) -> None:
        """Remove what a run that will never be replayed (a cut backfill chunk, loaded again under a
        new number) left behind, where leftovers would be visible; a no-op where they are not."""
        ...

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        """What the sink holds of `table`, for `loader verify`: `columns` and `region`, one row per row
        held (the current rows where it holds the latest, every version where it holds versions), or
        None if the table does not exist here. Integers as integers, timestamps as timestamps. A sink
        whose files sit in region folders adds `PARTITION_REGION`, the region the folder names."""
        ...

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """`read_back`'s rows in pieces (a file, a batch of the dataset or of the fetch), for readers
        that keep memory bounded (`loader verify --deep`); nothing where the table does not exist."""
        ...

    def probe(self) -> str | None:
        """None if the sink is usable from here (reachable, writable); else one line saying what is
        wrong and what to fix. Quick and bounded in time; writes nothing."""
        ...

    # Dimension tables (loader/protocol/dimension_loads.py; the changes:
    # loader/transform/dimension_changes.py)

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        """The rows of dimension `spec.table` the next load compares with: scd2, the current versions
        (`is_current`); merge and replace, every row. `columns` of them (all when None), the stored
        types. None if the table does not exist here yet."""
        ...

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
        """Apply one load's changes at once (readers see all of them or none; a crash leaves the table
        as it was, or, where the sink cannot do that, as the replay's comparison repairs it). Creates the
        table on first use. `changes` is never empty; its `closes` hold the compared columns only."""
        ...


def skipped(sink: Sink[Any], batch: TableBatch) -> SinkWrite:
    return SinkWrite(sink.name, batch.table, 0, sink.location(batch.table), skipped=True)


def schema_only(batch: TableBatch) -> TableBatch:
    """The batch without its rows: what `begin` and `finish` need."""
    return replace(batch, data=batch.data.schema.empty_table())


def tombstones(batch: TableBatch, data: pa.Table | None = None) -> pa.ChunkedArray | None:
    """The `_deleted` column of `data` (the batch's rows by default) as a non-null boolean mask, or None
    where the batch carries no deletes (then nothing differs from a batch without them)."""
    data = batch.data if data is None else data
    if batch.deletes is None or DELETED not in data.column_names:
        return None
    return pc.fill_null(data[DELETED], False)


def live_rows(batch: TableBatch, data: pa.Table) -> pa.Table:
    """`data` without its tombstones and without the `_deleted` column (stored by no table that
    holds the latest version); `data` itself where the batch carries no deletes."""
    mask = tombstones(batch, data)
    if mask is None:
        return data
    if not pc.any(mask).as_py():  # no tombstone (a first load's usual case): no copy of the rows
        return data.drop_columns([DELETED])
    return data.filter(pc.invert(mask)).drop_columns([DELETED])


def count_true(mask: pa.ChunkedArray | pa.Array | None) -> int:
    return 0 if mask is None else int(pc.sum(mask).as_py() or 0)


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


def folder_problem(name: str, root: str) -> str | None:
    """`probe` of a sink writing files under `root` (a local folder, or s3://): the bucket exists, or
    the folder can be written or made here."""
    from pathlib import Path

    from pyarrow import fs as pafs

    from loader.config_parts import is_remote
    from loader.storage import locate, short_error, unwritable

    location = locate(root)
    if not is_remote(root):
        blocked = unwritable(Path(location.path))
        return (None if blocked is None
                else f"cannot write under {blocked}: fix the permissions or the warehouse path")
    bucket = location.path.split("/", 1)[0]
    try:
        info = location.filesystem.get_file_info(bucket)
    except OSError as error:
        return f"{root}: {short_error(error)}: check the credentials and the endpoint (AWS_* variables)"
    if info.type == pafs.FileType.NotFound:
        return f"bucket {bucket!r} of {root} not found: create it or fix warehouse / sinks.{name}.path"
    return None
