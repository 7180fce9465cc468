"""Delta Lake: one table per source, partitioned by region, holding the latest version of each key.
The class joining the folder's parts: facts.py (each step of a part's write), dimensions.py,
read_back.py; here the table's handles, its writer lock, and the order of a part's commits.

How it works, and why: docs/design.md, "The Delta Lake sink"."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from loader import failpoints
from loader.errors import SinkRejected, SinkUnavailable
from loader.sinks.base import (
    Capabilities,
    PartWrite,
    SinkContext,
    SinkWrite,
    TableBatch,
    TableBegun,
    folder_problem,
    live_rows,
    region_counts,
    summed_regions,
)
from loader.sinks.delta import dimensions as delta_dimensions
from loader.sinks.delta import read_back as delta_read_back
from loader.sinks.delta.capabilities import CAPABILITIES
from loader.sinks.delta.config import DeltaSinkConfig
from loader.sinks.delta.facts import (
    TOMBSTONES,
    KeyRanges,
    add_deleted_at,
    delete_moved,
    drop_landed_versions,
    merge_rows,
    open_table,
    remember_tombstones,
    run_app,
    split_new_keys,
    with_deleted_at,
    writer_properties,
)
from loader.sinks.schema_check import refuse_case_clashes, refuse_type_changes, refuse_unwritable_names
from loader.sinks.table_locks import table_lock
from loader.storage import locate, short_error, storage_error
from loader.transform.dimension_changes import DimensionChanges, DimensionSpec

_TYPE_FIX = ("Cast the column in the transform back to the stored type, or move the table away to let the "
             "loader recreate it")


# The table's lock (loader/sinks/table_locks.py) is held from reading what is stored to the commit: two
# chunks of a parallel backfill holding versions of one key must not both find it absent and both append
# it (Delta appends never conflict: the key would be stored twice). It also keeps the sink's open handle
# of a table (`DeltaSink._current`) to one thread at a time.
class DeltaSink:
    name = "delta"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, settings: DeltaSinkConfig, context: SinkContext) -> None:
        self.root = context.path(settings.path)
        self.storage_options = _storage_options(self.root)
        self.retry = settings.retry
        # Bounded files clustered by key (rows arrive sorted by key): a scoped merge rewrites few of them.
        self.target_file_size = int(settings.target_file_mb * 1024 * 1024)
        # Each table opened once per sink (the run's sinks live as long as the run) and brought up to
        # date before each use by reading only the commits made since: the log is replayed once per run,
        # not per batch or step. Used under the table's lock (`table_lock`); per process.
        self._tables: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tables": {}}

    def _current(self, uri: str) -> Any:
        """The table as it is now (None where there is none yet); call under `table_lock(uri)`."""
        table = self._tables.get(uri)
        if table is None:
            table = self._open(uri)
            if table is not None:
                self._tables[uri] = table
        else:
            try:
                table.update_incremental()
            except Exception:  # a table removed or replaced under us: open it afresh
                self._tables.pop(uri, None)
                return self._current(uri)
        return table

    def close(self) -> None:
        """Forget the open tables (a later use opens them afresh)."""
        self._tables.clear()

    def discard_run(self, table: str, run_number: int) -> None:
        """Nothing to do: a run's commits are merges where the newest version wins, visible only whole."""

    def table_uri(self, table: str) -> str:
        location = locate(self.root).child(table)
        return location.uri

    def location(self, table: str) -> str:
        return self.table_uri(table)

    def tombstones_uri(self, table: str) -> str:
        """The side table remembering a hard-deleting table's tombstones (inside the table's folder)."""
        return locate(self.root).child(table, TOMBSTONES).uri

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """A column name Delta cannot store as it is, one equal to another's but for case (Delta's names
        ignore case), or a changed type."""
        uri = self.table_uri(table)
        with table_lock(uri), self._errors(uri):
            opened = self._current(uri)
            stored = None if opened is None else pa.schema(opened.schema().to_arrow())
        refuse_unwritable_names(f"Delta table {uri}", schema)
        refuse_case_clashes(f"Delta table {uri}", schema, [] if stored is None else stored.names,
                            "Delta takes as one column")
        if stored is not None:
            refuse_type_changes(f"Delta table {uri}", stored, schema, _TYPE_FIX)

    def begin(self, batch: TableBatch) -> TableBegun | None:
        """None if the run's app transaction is in the table already; else whether the table exists,
        after refusing a changed column type."""
        uri = self.table_uri(batch.table)
        with table_lock(uri), self._errors(uri):
            table = self._current(uri)
            if table is None:
                return TableBegun(exists=False)
            if (table.transaction_version(run_app(batch)) or 0) >= batch.run_number:
                return None
            refuse_type_changes(f"Delta table {uri}", pa.schema(table.schema().to_arrow()), batch.data.schema,
                                _TYPE_FIX)
            return TableBegun(exists=True)

    def write_part(self, batch: TableBatch, begun: TableBegun, *, part: int, last: bool) -> PartWrite:
        """Merge the part's keys that may be stored, append the rest. Only the last part's last commit
        carries the run's app transaction; every earlier commit is a merge where the newer version wins
        (or an append of keys no file holds), so repeating it after a crash changes nothing."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        uri = self.table_uri(batch.table)
        final = (CommitProperties(app_transactions=[Transaction(run_app(batch), batch.run_number)])
                 if last else None)
        data = with_deleted_at(batch)
        deleted = 0
        with table_lock(uri), self._errors(uri):
            table = self._current(uri)
            if batch.deletes == "hard":  # before any commit to the table (its own, idempotent commit)
                data = remember_tombstones(batch, data, side_uri=self.tombstones_uri(batch.table),
                                           current=self._current, storage_options=self.storage_options)
            if table is None:  # the first part of the table's first run creates it
                if last:
                    failpoints.hit("delta.write", batch.table)
                data = live_rows(batch, data)  # tombstones of a table not yet there delete nothing
                write_deltalake(
                    uri, data, partition_by=["region"], mode="append", commit_properties=final,
                    storage_options=self.storage_options, target_file_size=self.target_file_size,
                    writer_properties=writer_properties(data),
                    configuration={"delta.targetFileSize": str(self.target_file_size)},
                )
                return PartWrite(data.num_rows, region_counts(data))
            if batch.deletes == "soft":
                add_deleted_at(table, batch)
            ranges = KeyRanges(table, batch.key[0])
            new_rows, old_rows = split_new_keys(ranges, data, batch.key[0])
            new_rows = live_rows(batch, new_rows)  # tombstones of keys no file holds: nothing to delete
            absent, old_rows, moved = drop_landed_versions(table, ranges, old_rows, batch)
            absent = live_rows(batch, absent)  # likewise
            if absent.num_rows:  # keys inside stored files' ranges that no stored row holds: appended too
                new_rows = pa.concat_tables([new_rows, absent]) if new_rows.num_rows else absent
            if moved.num_rows:
                delete_moved(table, moved, batch.key)
            if old_rows.num_rows:
                if last and not new_rows.num_rows:  # the merge is the run's last commit
                    failpoints.hit("delta.write", batch.table)
                deleted = merge_rows(table, old_rows, batch, ranges,
                                     None if new_rows.num_rows else final)
            # an empty last part still commits the run
            if new_rows.num_rows or (last and not old_rows.num_rows):
                if last:
                    failpoints.hit("delta.write", batch.table)  # after the merge, before the last commit
                write_deltalake(
                    table, new_rows, mode="append", commit_properties=final, schema_mode="merge",
                    storage_options=self.storage_options, target_file_size=self.target_file_size,
                    writer_properties=writer_properties(new_rows),
                )
        merged = live_rows(batch, old_rows)  # what the counts report: live rows written
        regions = region_counts(new_rows)
        for region, count in region_counts(merged).items():
            regions[region] = regions.get(region, 0) + count
        return PartWrite(new_rows.num_rows + merged.num_rows, regions, deleted=deleted)

    def finish(self, batch: TableBatch, begun: TableBegun, parts: list[PartWrite]) -> SinkWrite:
        """The last part committed the run already."""
        failpoints.hit("delta.commit", batch.table)
        return SinkWrite(self.name, batch.table, sum(p.rows for p in parts), self.table_uri(batch.table),
                         regions=summed_regions(parts), deleted=sum(p.deleted for p in parts))

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        """The table's current rows."""
        return delta_read_back.read_back(self.table_uri(table), columns, self.storage_options)

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """`read_back`'s rows in pieces of the dataset's batches (a million rows at most; one empty piece
        for a table without rows, none where there is no table)."""
        yield from delta_read_back.scan(self.table_uri(table), columns, self.storage_options)

    def probe(self) -> str | None:
        return folder_problem(self.name, self.root)

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        uri = self.table_uri(spec.table)
        with self._errors(uri):
            return delta_dimensions.current_rows(self._open(uri), spec, columns)

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
        uri = self.table_uri(spec.table)
        with self._errors(uri):
            delta_dimensions.apply(self._open(uri), uri, spec, changes, self.storage_options)

    def _open(self, uri: str) -> Any:
        """The table at `uri` opened afresh, or None where there is none."""
        return open_table(uri, self.storage_options)

    @staticmethod
    @contextmanager
    def _errors(uri: str) -> Iterator[None]:
        """deltalake's and the object store's errors -> loader errors naming the table and the fix."""
        from deltalake.exceptions import DeltaError, DeltaProtocolError, SchemaMismatchError

        try:
            yield
        except (SchemaMismatchError, DeltaProtocolError, pa.ArrowInvalid) as error:
            fits = "refuses" if not isinstance(error, pa.ArrowInvalid) else "does not fit"
            raise SinkRejected(
                f"Delta table {uri} {fits} this run's rows: {error}. Make the table's schema match the "
                f"source (or move the table away to recreate it), then run again: the run replays"
            ) from error
        except DeltaError as error:  # commit conflicts with a concurrent writer
            raise SinkUnavailable(f"Delta commit to {uri} failed: {short_error(error)}. Run again: the run "
                                  "replays safely") from error
        except OSError as error:  # object store: refused credentials and missing buckets are terminal
            raise storage_error(error, uri, side="sink", doing="Delta write to") from error


if TYPE_CHECKING:  # mypy checks the class against the whole contract, with its own token
    from loader.sinks.base import Sink

    _CONFORMS: type[Sink[TableBegun]] = DeltaSink


def _storage_options(root: str) -> dict[str, str] | None:
    """deltalake's object-store options for s3:// roots, from the same environment pyarrow uses.

    Credentials are passed on explicitly when set (delta-rs would otherwise fall back to instance
    metadata); plain http is allowed only for an http:// endpoint (emulators). Its own retries are cut
    to a few tries within seconds, like pyarrow's (loader/storage.py): longer outages are retried,
    logged and bounded by the sink's tenacity policy, and a dead endpoint fails the run in seconds."""
    if not root.startswith("s3://"):
        return None
    import os

    from loader.storage import S3_CONNECT_TIMEOUT_S, S3_DRIVER_ATTEMPTS, s3_endpoint

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    options = {"AWS_REGION": region}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(name):
            options[name] = os.environ[name]
    endpoint = s3_endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    # Commits are conditional puts (deltalake's default on S3; no unsafe rename, which lets two writers
    # overwrite each other's log entry). Stores that take it as an ETag condition (MinIO, R2) say so.
    if os.environ.get("AWS_CONDITIONAL_PUT"):
        options["aws_conditional_put"] = os.environ["AWS_CONDITIONAL_PUT"]
    options["max_retries"] = str(S3_DRIVER_ATTEMPTS - 1)
    options["retry_timeout"] = "10s"
    options["connect_timeout"] = f"{S3_CONNECT_TIMEOUT_S:g}s"
    return options
