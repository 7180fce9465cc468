"""Apache Iceberg: one table per source in a catalog, partitioned by region, holding the latest version
of each key; one catalog commit per batch, exactly once by the run marker (loader/sinks/iceberg/catalog.py),
merged by rewriting only the files the batch's keys fall in (facts.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from loader import failpoints
from loader.errors import SinkRejected, SinkUnavailable
from loader.retry import call_with_retries
from loader.sinks.base import (
    DELETED,
    DELETED_AT,
    Capabilities,
    PartWrite,
    SinkContext,
    SinkWrite,
    TableBatch,
    folder_problem,
    summed_regions,
)
from loader.sinks.iceberg import catalog as cat
from loader.sinks.iceberg import dimensions as iceberg_dimensions
from loader.sinks.iceberg import facts
from loader.sinks.iceberg.capabilities import CAPABILITIES
from loader.sinks.iceberg.config import IcebergSinkConfig
from loader.sinks.iceberg.read_back import pieces
from loader.sinks.schema_check import refuse_type_changes, refuse_unwritable_names
from loader.storage import locate, short_error
from loader.transform.dimension_changes import DimensionChanges, DimensionSpec

log = logging.getLogger(__name__)

_TYPE_FIX = ("Cast the column in the transform back to the stored type, or move the table away (drop or "
             "rename it in the catalog) to let the loader recreate it")


class CommitConflict(SinkUnavailable):
    """A commit lost to a concurrent writer of the table (its files in the batch's key span, or a file the
    batch rewrites replaced): the merge is redone on fresh metadata."""


@dataclass(frozen=True)
class IcebergBegun:
    """`begin`'s token: whether the table existed when the run began."""

    exists: bool


# Writers of one table in this process, one at a time from reading what is stored to the commit: a
# parallel backfill's chunks are threads; serialised here they never conflict (writers in other
# processes do, and their commits are redone: `CommitConflict`).
_WRITERS_GUARD = threading.Lock()
_WRITERS: dict[str, threading.Lock] = {}


@contextmanager
def _one_writer(name: str) -> Iterator[None]:
    with _WRITERS_GUARD:
        lock = _WRITERS.setdefault(name, threading.Lock())
    with lock:
        yield


class IcebergSink:
    name = "iceberg"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, settings: IcebergSinkConfig, context: SinkContext) -> None:
        self.settings = settings
        self.root = context.path(settings.warehouse)
        self.retry = settings.retry
        self.namespace = settings.namespace
        self.catalogs = cat.Catalogs(settings, self.root)
        self.target_bytes = int(settings.target_file_mb * 1024 * 1024)

    # ------------------------------------------------------------------------------------- places

    def _where(self, table: str) -> str:
        return f"Iceberg table {self.namespace}.{table} ({self.catalogs.name})"

    def _lock_name(self, table: str) -> str:
        return f"{self.catalogs.uri}#{self.namespace}.{table}"

    def location(self, table: str) -> str:
        """The table's location URI (where the catalog puts it: `<warehouse>/<namespace>/<table>`)."""
        return locate(self.root).child(self.namespace, table).uri

    def _stage(self, batch: TableBatch) -> Any:
        """Where the parts before a batch's last one leave their rows for it (never read by anyone else)."""
        run = f"backfill-{batch.run_number}" if batch.mode == "backfill" else f"run-{batch.run_number}"
        return locate(self.root).child("_staging", self.namespace, batch.table, batch.pipeline, run)

    def _load(self, table: str) -> Any:
        return cat.load(self.catalogs.get(), self.namespace, table)

    def close(self) -> None:
        """Forget the catalog (a later use opens it afresh)."""
        self.catalogs.forget()

    def discard_run(self, table: str, run_number: int) -> None:
        """Nothing visible is left by a run that did not commit: only the rows its parts staged, removed."""
        from pyarrow import fs as pafs

        root = locate(self.root).child("_staging", self.namespace, table)
        with self.catalogs.errors(table):
            for pipeline in root.filesystem.get_file_info(pafs.FileSelector(root.path, allow_not_found=True)):
                for run in (f"run-{run_number}", f"backfill-{run_number}"):
                    folder = f"{pipeline.path}/{run}"
                    if root.filesystem.get_file_info(folder).type == pafs.FileType.Directory:
                        root.filesystem.delete_dir(folder)

    # ----------------------------------------------------------------------------------- checks

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """A column name Iceberg cannot store as it is, or a changed type (pyiceberg would widen int to
        long silently: the loader never casts a stored column)."""
        where = self._where(table)
        refuse_unwritable_names(where, schema)
        with self.catalogs.errors(table):
            opened = self._load(table)
            if opened is not None:
                refuse_type_changes(where, cat.stored_arrow_schema(opened), cat.storable(schema), _TYPE_FIX)

    def begin(self, batch: TableBatch) -> IcebergBegun | None:
        """None if the run's marker is on the table; else whether the table exists, after refusing another
        partition spec or key, or a changed column type. A replay first removes what an earlier attempt
        staged."""
        where = self._where(batch.table)
        with _one_writer(self._lock_name(batch.table)), self.catalogs.errors(batch.table):
            if batch.replay:
                self._drop_stage(batch)
            table = self._load(batch.table)
            if table is None:
                return IcebergBegun(exists=False)
            cat.refuse_other_layout(table, where, partitioned=True, key=batch.key)
            if cat.landed(table.properties, cat.summaries(table), self._marker(batch), batch.run_number,
                          replay=batch.replay, where=where):
                return None
            refuse_type_changes(where, cat.stored_arrow_schema(table), cat.storable(batch.data.schema),
                                _TYPE_FIX)
            return IcebergBegun(exists=True)

    @staticmethod
    def _marker(batch: TableBatch) -> str:
        return cat.marker_id(batch.pipeline, batch.table,
                             backfill_run=batch.run_number if batch.mode == "backfill" else None)

    # ----------------------------------------------------------------------------------- writes

    def write_part(self, batch: TableBatch, begun: IcebergBegun, *, part: int, last: bool) -> PartWrite:
        """A part before the last only stages its rows; the last part merges every staged part and its own
        in the batch's one commit, which carries the run's marker."""
        if not last:
            self._stage_part(batch, part)
            return PartWrite(0)
        data = batch.data
        if part > 0:
            data = pa.concat_tables([*self._staged(batch, part), data], promote_options="default")
            data = data.sort_by([(k, "ascending") for k in batch.key])
        return self._write_batch(batch, data)

    def _stage_part(self, batch: TableBatch, part: int) -> None:
        import pyarrow.parquet as pq

        stage = self._stage(batch)
        with self.catalogs.errors(batch.table):
            stage.filesystem.create_dir(stage.path, recursive=True)
            pq.write_table(batch.data, f"{stage.path}/part-{part:05d}.parquet", filesystem=stage.filesystem)

    def _staged(self, batch: TableBatch, parts: int) -> list[pa.Table]:
        """The rows parts 0 .. `parts` - 1 of this attempt staged (each wrote its file before the last
        part runs: the parts run in sequence)."""
        import pyarrow.parquet as pq

        stage = self._stage(batch)
        with self.catalogs.errors(batch.table):
            return [pq.read_table(f"{stage.path}/part-{i:05d}.parquet", filesystem=stage.filesystem)
                    for i in range(parts)]

    def _drop_stage(self, batch: TableBatch) -> None:
        from pyarrow import fs as pafs

        stage = self._stage(batch)
        if stage.filesystem.get_file_info(stage.path).type != pafs.FileType.NotFound:
            stage.filesystem.delete_dir(stage.path)

    def _write_batch(self, batch: TableBatch, data: pa.Table) -> PartWrite:
        where = self._where(batch.table)
        with _one_writer(self._lock_name(batch.table)), self.catalogs.errors(batch.table):
            data = _with_deleted_at(batch, data)
            if batch.deletes == "hard" and data.num_rows:
                data = self._remember_tombstones(batch, data)
            written = call_with_retries(f"{batch.table} -> iceberg commit", self.retry,
                                        lambda: self._merge(batch, data, where),
                                        retry_if=lambda error: isinstance(error, CommitConflict))
            self._drop_stage(batch)
        return written

    def _merge(self, batch: TableBatch, data: pa.Table, where: str) -> PartWrite:
        """One try of the batch's commit, on the table's current metadata: the touched files found, read,
        decided and rewritten, then one transaction (schema, marker, snapshot). A lost race raises
        `CommitConflict` (its files removed); the retry computes it all again."""
        from pyiceberg.exceptions import CommitFailedException, ValidationException

        catalog = self.catalogs.get()
        marker = self._marker(batch)
        live = data.drop_columns([DELETED]) if DELETED in data.column_names else data
        table = self._load(batch.table)
        if table is None:  # the first part of the table's first run creates it
            table = cat.create(catalog, self.namespace, batch.table, live.schema, partitioned=True,
                               key=batch.key)
        cat.refuse_other_layout(table, where, partitioned=True, key=batch.key)
        if cat.landed(table.properties, cat.summaries(table), marker, batch.run_number, replay=True,
                      where=where):
            return PartWrite(0)  # landed meanwhile (a concurrent attempt of this run won the race)
        refuse_type_changes(where, cat.stored_arrow_schema(table), cat.storable(live.schema), _TYPE_FIX)
        tx = table.transaction()
        done = facts.Rewrite()
        try:
            known = {column.name for column in table.schema().fields}
            new = [f.with_nullable(True) for f in cat.storable(live.schema) if f.name not in known]
            if new:  # new columns, nullable: the stored rows read them as null
                with tx.update_schema() as update:
                    update.union_by_name(pa.schema(new))
            from pyiceberg.io.pyarrow import schema_to_pyarrow

            schema = schema_to_pyarrow(tx.table_metadata.schema())
            first = batch.key[0]
            keys = facts.sorted_keys(data[first])
            ranges = facts.FileRanges.of(table, first)
            touched = ranges.touched(keys)
            stored = facts.read_touched(table, ranges, touched, schema)
            decision = facts.decide(data, stored, batch.key, batch.cursor, batch.deletes, schema)
            done = facts.rewrite(table, ranges, touched, stored, decision.removed, decision.additions, first,
                                 schema, self.target_bytes, partitioned=True)
            failpoints.hit("iceberg.write", batch.table)
            tx.set_properties({cat.marker_property(marker): str(batch.run_number)})
            summary = cat.summary_of(batch.pipeline, batch.table, batch.run_number, marker)
            facts.commit(tx, table, done, summary, facts.conflict_filter(first, keys))
        except ValidationException as error:
            facts.delete_files(table, done.written)
            raise CommitConflict(f"{where}: a concurrent commit touched this batch's keys: "
                                 f"{short_error(error)}. Redone on fresh metadata") from error
        except BaseException:
            facts.delete_files(table, done.written)  # nothing committed: the new files are nobody's
            raise
        try:
            committed = tx.commit_transaction()
        except (CommitFailedException, ValidationException) as error:  # known not to have landed
            facts.delete_files(table, done.written)
            raise CommitConflict(f"{where}: the commit lost to a concurrent writer: {short_error(error)}. "
                                 "Redone on fresh metadata") from error
        log.info("%s -> iceberg: %s row(s) written, %s deleted, %s of %s file(s) read, %s rewritten, %s new "
                 "file(s)", batch.table, f"{decision.rows:,}", f"{decision.deleted:,}", len(touched),
                 len(ranges.tasks), len(done.deleted), len(done.written))
        self._expire(committed, batch.table)
        return PartWrite(decision.rows, decision.regions, deleted=decision.deleted)

    def _expire(self, table: Any, name: str) -> None:
        """Keep `keep_snapshots` snapshots (best effort: a failure here loses nothing, the next commit
        expires them)."""
        try:
            expired = cat.expire_snapshots(table, self.settings.keep_snapshots)
        except Exception as error:  # noqa: BLE001 - a concurrent commit; logged, retried next commit
            log.warning("%s -> iceberg: expiring old snapshots failed (%s); the next commit tries again",
                        name, short_error(error))
            return
        if expired:
            log.debug("%s -> iceberg: %d old snapshot(s) expired", name, expired)

    def _remember_tombstones(self, batch: TableBatch, data: pa.Table) -> pa.Table:
        """Hard deletes: `data` without its live rows no newer than their key's remembered tombstone; the
        companion table `<table>__tombstones` updated first (the batch's tombstones remembered, revived
        keys forgotten) in one commit of its own, idempotent, or none where nothing changes. Reads only
        the companion's files whose key range holds one of the batch's keys."""
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        name = batch.table + facts.TOMBSTONES_SUFFIX
        keys, first = list(batch.key), batch.key[0]
        fields = pa.schema([data.schema.field(k) for k in keys] + [data.schema.field(batch.cursor)])
        side = self._load(name)
        wanted = facts.sorted_keys(data[first])
        if side is None:
            remembered = pa.table({**{k: data[k].slice(0, 0) for k in keys},
                                   "__tomb": data[batch.cursor].slice(0, 0)})
            ranges, touched, stored = facts.FileRanges(), [], None
        else:
            schema = schema_to_pyarrow(side.schema())
            ranges = facts.FileRanges.of(side, first)
            touched = ranges.touched(wanted)
            stored = facts.read_touched(side, ranges, touched, schema)
            remembered = stored.select([*keys, batch.cursor]).rename_columns([*keys, "__tomb"])
        sorted_out = facts.sort_out_tombstones(data, remembered, batch.key, batch.cursor)
        if sorted_out.forget.num_rows or sorted_out.remember.num_rows:
            def commit_side() -> None:
                self._commit_tombstones(batch, name, fields, sorted_out, wanted)

            call_with_retries(f"{name} -> iceberg commit", self.retry, commit_side,
                              retry_if=lambda error: isinstance(error, CommitConflict))
            log.info("%s -> iceberg: %s tombstone(s) remembered, %s entr(ies) forgotten", batch.table,
                     f"{sorted_out.remember.num_rows:,}", f"{sorted_out.forget.num_rows:,}")
        del ranges, touched, stored
        if sorted_out.dropped:
            log.info("%s -> iceberg: %s live row(s) no newer than their key's delete dropped", batch.table,
                     f"{sorted_out.dropped:,}")
        return sorted_out.kept

    def _commit_tombstones(self, batch: TableBatch, name: str, fields: pa.Schema,
                           sorted_out: facts.Remembered, wanted: Any) -> None:
        from pyiceberg.exceptions import CommitFailedException, ValidationException
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        side = self._load(name)
        if side is None:
            side = cat.create(self.catalogs.get(), self.namespace, name, fields, partitioned=False,
                              key=batch.key)
        schema = schema_to_pyarrow(side.schema())
        first = batch.key[0]
        ranges = facts.FileRanges.of(side, first)
        touched = ranges.touched(wanted)
        stored = facts.read_touched(side, ranges, touched, schema)
        removed = facts.removed_by_keys(stored, sorted_out.forget, batch.key)
        additions = facts.conform(sorted_out.remember, schema)
        tx = side.transaction()
        done = facts.Rewrite()
        try:
            done = facts.rewrite(side, ranges, touched, stored, removed, additions, first, schema,
                                 self.target_bytes, partitioned=False)
            summary = cat.summary_of(batch.pipeline, batch.table, batch.run_number, self._marker(batch))
            facts.commit(tx, side, done, summary, facts.conflict_filter(first, wanted))
            committed = tx.commit_transaction()
        except (CommitFailedException, ValidationException) as error:
            facts.delete_files(side, done.written)
            raise CommitConflict(f"{self._where(name)}: the commit lost to a concurrent writer: "
                                 f"{short_error(error)}. Redone on fresh metadata") from error
        except BaseException:
            facts.delete_files(side, done.written)
            raise
        if len(ranges.tasks) - len(done.deleted) + len(done.written) > facts.TOMBSTONE_FILES:
            committed = self._compact(committed, schema, batch)
        self._expire(committed, name)

    def _compact(self, side: Any, schema: pa.Schema, batch: TableBatch) -> Any:
        """The companion table's files rewritten into one (each of its commits adds one); no row changes,
        so a crash at any point leaves it right."""
        ranges = facts.FileRanges.of(side, batch.key[0])
        rows = facts.conform(side.scan().to_arrow(), schema).sort_by([(k, "ascending") for k in batch.key])
        tx = side.transaction()
        done = facts.Rewrite(deleted=[task.file for task in ranges.tasks])
        try:
            if rows.num_rows:
                one_file = max(self.target_bytes, rows.nbytes + 1)
                done.written = facts.write_files(side, rows, schema, one_file, None)
            facts.commit(tx, side, done, {"loader.compaction": "tombstones"}, None)
            return tx.commit_transaction()
        except BaseException:
            facts.delete_files(side, done.written)
            raise

    def finish(self, batch: TableBatch, begun: IcebergBegun, parts: list[PartWrite]) -> SinkWrite:
        """The last part committed the run already."""
        failpoints.hit("iceberg.commit", batch.table)
        return SinkWrite(self.name, batch.table, sum(p.rows for p in parts), self.location(batch.table),
                         regions=summed_regions(parts), deleted=sum(p.deleted for p in parts))

    # ------------------------------------------------------------------------------------ reads

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        """The table's current rows."""
        parts = list(self.scan(table, columns))
        return pa.concat_tables(parts) if parts else None

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """`read_back`'s rows a record batch of the scan at a time (nothing where there is no table)."""
        with self.catalogs.errors(table):
            opened = self._load(table)
            if opened is None:
                return
            yield from pieces(opened, columns)

    def probe(self) -> str | None:
        """The warehouse folder writable (or its bucket there), and the catalog reachable with its
        credentials and the namespace there or creatable. Writes nothing: a SQLite catalog file not made
        yet is only checked to be creatable."""
        problem = folder_problem(self.name, self.root)
        if problem is not None:
            return problem
        import os

        from loader.storage import unwritable

        path = cat.sqlite_file(self.catalogs.uri) if self.settings.catalog == "sql" else None
        if path is not None and not os.path.exists(path):
            from pathlib import Path

            blocked = unwritable(Path(path).parent)
            return (None if blocked is None else
                    f"cannot make the Iceberg catalog file {path} (under {blocked}): fix the permissions or "
                    "sinks.iceberg.uri")
        if path is not None and not os.access(path, os.W_OK):
            return f"cannot write the Iceberg catalog file {path}: fix its permissions or sinks.iceberg.uri"
        try:
            with self.catalogs.errors():
                self.catalogs.get().namespace_exists(self.namespace)
        except (SinkUnavailable, SinkRejected) as error:
            return str(error)
        except Exception as error:  # noqa: BLE001 - the probe reports, it never raises
            return f"Iceberg {self.catalogs.name}: {short_error(error)}: check sinks.iceberg"
        finally:
            self.catalogs.forget()
        return None

    # ------------------------------------------------------------------------------- dimensions

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        with self.catalogs.errors(spec.table):
            return iceberg_dimensions.current_rows(self._load(spec.table), spec, columns)

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
        where = self._where(spec.table)
        with _one_writer(self._lock_name(spec.table)), self.catalogs.errors(spec.table):
            table = self._load(spec.table)
            if table is None:
                schema = changes.opens.schema if changes.opens.num_rows else changes.closes.schema
                table = cat.create(self.catalogs.get(), self.namespace, spec.table, schema, partitioned=False,
                                   key=spec.key)
            cat.refuse_other_layout(table, where, partitioned=False, key=spec.key)
            if changes.opens.num_rows:
                refuse_type_changes(where, cat.stored_arrow_schema(table), cat.storable(changes.opens.schema),
                                    _TYPE_FIX)
            summary = {cat.SUMMARY_PIPELINE: spec.pipeline, cat.SUMMARY_TABLE: spec.table,
                       "loader.dimension": spec.mode}
            committed = iceberg_dimensions.apply(table, spec, changes, summary, self.target_bytes)
            self._expire(committed, spec.table)


def _with_deleted_at(batch: TableBatch, data: pa.Table) -> pa.Table:
    """Soft deletes: the rows with a null `_deleted_at` (of the cursor's type), what live rows store."""
    if batch.deletes != "soft" or DELETED_AT in data.column_names:
        return data
    kind = data.schema.field(batch.cursor).type
    return data.append_column(pa.field(DELETED_AT, kind, nullable=True), pa.nulls(data.num_rows, kind))


if TYPE_CHECKING:  # mypy checks the class against the whole contract, with its own token
    from loader.sinks.base import Sink

    _CONFORMS: type[Sink[IcebergBegun]] = IcebergSink
