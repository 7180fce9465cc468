"""Apache Iceberg: one table per source in a catalog, partitioned by region, holding the latest version
of each key; one catalog commit per batch, exactly once by the run marker (loader/sinks/iceberg/catalog.py),
merged by rewriting only the files the batch's keys fall in (facts.py).

The class joining the folder's parts: catalog.py (the catalog, tables, markers), staging.py (the parts
before a batch's last), facts.py (the batch's merge and commit), tombstones.py (hard deletes),
dimensions.py, read_back.py; here the writer lock and the order of a batch's steps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

from loader import failpoints
from loader.sinks.base import (
    Capabilities,
    PartWrite,
    SinkContext,
    SinkWrite,
    TableBatch,
    TableBegun,
    folder_problem,
    summed_regions,
)
from loader.sinks.iceberg import catalog as cat
from loader.sinks.iceberg import dimensions as iceberg_dimensions
from loader.sinks.iceberg import facts, staging
from loader.sinks.iceberg.capabilities import CAPABILITIES
from loader.sinks.iceberg.config import IcebergSinkConfig
from loader.sinks.iceberg.read_back import pieces
from loader.sinks.schema_check import refuse_type_changes, refuse_unwritable_names
from loader.sinks.table_locks import table_lock
from loader.storage import locate
from loader.transform.dimension_changes import DimensionChanges, DimensionSpec


# Each table's writers take turns (loader/sinks/table_locks.py) from reading what is stored to the commit:
# serialised there, a parallel backfill's chunks never conflict (writers in other processes do, and
# their commits are redone: `CommitConflict`).
class IcebergSink:
    name = "iceberg"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, settings: IcebergSinkConfig, context: SinkContext) -> None:
        self.root = context.path(settings.warehouse)
        self.retry = settings.retry
        self.namespace = settings.namespace
        self.catalogs = cat.Catalogs(settings, self.root)
        self.tables = cat.Tables(self.catalogs, self.namespace, int(settings.target_file_mb * 1024 * 1024),
                                 settings.keep_snapshots)

    def _lock_name(self, table: str) -> str:
        return f"{self.catalogs.uri}#{self.namespace}.{table}"

    def location(self, table: str) -> str:
        """The table's location URI (where the catalog puts it: `<warehouse>/<namespace>/<table>`)."""
        return locate(self.root).child(self.namespace, table).uri

    def close(self) -> None:
        """Forget the catalog (a later use opens it afresh)."""
        self.catalogs.forget()

    def discard_run(self, table: str, run_number: int) -> None:
        """Nothing visible is left by a run that did not commit: only the rows its parts staged, removed."""
        with self.catalogs.errors(table):
            staging.discard_run(self.root, self.namespace, table, run_number)

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """A column name Iceberg cannot store as it is, or a changed type (pyiceberg would widen int to
        long silently: the loader never casts a stored column)."""
        where = self.tables.where(table)
        refuse_unwritable_names(where, schema)
        with self.catalogs.errors(table):
            opened = self.tables.load(table)
            if opened is not None:
                refuse_type_changes(where, cat.stored_arrow_schema(opened), cat.storable(schema),
                                    cat.TYPE_FIX)

    def begin(self, batch: TableBatch) -> TableBegun | None:
        """None if the run's marker is on the table; else whether the table exists, after refusing another
        partition spec or key, or a changed column type. A replay first removes what an earlier attempt
        staged."""
        where = self.tables.where(batch.table)
        with table_lock(self._lock_name(batch.table)), self.catalogs.errors(batch.table):
            if batch.replay:
                staging.drop(staging.folder(self.root, self.namespace, batch))
            table = self.tables.load(batch.table)
            if table is None:
                return TableBegun(exists=False)
            cat.refuse_other_layout(table, where, partitioned=True, key=batch.key)
            if cat.landed(table.properties, cat.summaries(table), cat.batch_marker(batch), batch.run_number,
                          replay=batch.replay, where=where):
                return None
            refuse_type_changes(where, cat.stored_arrow_schema(table), cat.storable(batch.data.schema),
                                cat.TYPE_FIX)
            return TableBegun(exists=True)

    def write_part(self, batch: TableBatch, begun: TableBegun, *, part: int, last: bool) -> PartWrite:
        """A part before the last only stages its rows; the last part merges every staged part and its own
        in the batch's one commit, which carries the run's marker."""
        stage = staging.folder(self.root, self.namespace, batch)
        if not last:
            with self.catalogs.errors(batch.table):
                staging.stage_part(stage, batch.data, part)
            return PartWrite(0)
        data = batch.data
        if part > 0:
            with self.catalogs.errors(batch.table):
                staged = staging.staged(stage, part)
            data = pa.concat_tables([*staged, data], promote_options="default")
            data = data.sort_by([(k, "ascending") for k in batch.key])
        with table_lock(self._lock_name(batch.table)), self.catalogs.errors(batch.table):
            written = facts.write_batch(self.tables, batch, data, self.retry)
            staging.drop(stage)
        return written

    def finish(self, batch: TableBatch, begun: TableBegun, parts: list[PartWrite]) -> SinkWrite:
        """The last part committed the run already."""
        failpoints.hit("iceberg.commit", batch.table)
        return SinkWrite(self.name, batch.table, sum(p.rows for p in parts), self.location(batch.table),
                         regions=summed_regions(parts), deleted=sum(p.deleted for p in parts))

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        """The table's current rows."""
        parts = list(self.scan(table, columns))
        return pa.concat_tables(parts) if parts else None

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """`read_back`'s rows a record batch of the scan at a time (nothing where there is no table)."""
        with self.catalogs.errors(table):
            opened = self.tables.load(table)
            if opened is None:
                return
            yield from pieces(opened, columns)

    def probe(self) -> str | None:
        """The warehouse folder writable (or its bucket there), and the catalog reachable with its
        credentials and the namespace there or creatable. Writes nothing."""
        problem = folder_problem(self.name, self.root)
        return problem if problem is not None else cat.probe(self.catalogs, self.namespace)

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        with self.catalogs.errors(spec.table):
            return iceberg_dimensions.current_rows(self.tables.load(spec.table), spec, columns)

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
        with table_lock(self._lock_name(spec.table)), self.catalogs.errors(spec.table):
            iceberg_dimensions.apply_load(self.tables, spec, changes)


if TYPE_CHECKING:  # mypy checks the class against the whole contract, with its own token
    from loader.sinks.base import Sink

    _CONFORMS: type[Sink[TableBegun]] = IcebergSink
