"""Partitioned Parquet: an append-only log of record versions in region folders. The class joining the
folder's parts: facts.py (the log, how each version is written once, and why), dimensions.py,
read_back.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

from loader import failpoints
from loader.sinks.base import (
    Capabilities,
    PartWrite,
    SinkContext,
    SinkWrite,
    TableBatch,
    count_true,
    folder_problem,
    region_counts,
    summed_regions,
    tombstones,
)
from loader.sinks.parquet import dimensions as parquet_dimensions
from loader.sinks.parquet import read_back as parquet_read_back
from loader.sinks.parquet.capabilities import CAPABILITIES
from loader.sinks.parquet.config import ParquetSinkConfig
from loader.sinks.parquet.facts import (
    new_versions,
    region_folders,
    remove_run,
    stored_schema,
    write_partitions,
)
from loader.sinks.schema_check import refuse_type_changes, refuse_unwritable_names
from loader.storage import Location, locate, storage_error
from loader.transform.dimension_changes import DimensionChanges, DimensionSpec

_TYPE_FIX = ("Cast the column in the transform back to the stored type, or move the table's folder away to "
             "start a new version log")


@dataclass(frozen=True)
class ParquetBegun:
    """`begin`'s token: the table's region folders (the parts' version check lists days inside them)."""

    regions: tuple[str, ...]


class ParquetSink:
    name = "parquet"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, settings: ParquetSinkConfig, context: SinkContext) -> None:
        self.root_uri = context.path(settings.path)
        self.root = locate(self.root_uri)
        self.retry = settings.retry
        codec = settings.compression
        self.compression = None if codec == "none" else codec

    def table_location(self, table: str) -> Location:
        return self.root.child(table)

    def location(self, table: str) -> str:
        return self.table_location(table).uri

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """A column name Parquet cannot store as it is, or a changed column type (names differing only in
        case are two columns here)."""
        where = self.table_location(table)
        refuse_unwritable_names(f"Parquet table {where.uri}", schema)
        try:
            stored = stored_schema(where, region_folders(where))
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="reading the schema of") from error
        if stored is not None:
            refuse_type_changes(f"Parquet table {where.uri}", stored, schema, _TYPE_FIX)

    def begin(self, batch: TableBatch) -> ParquetBegun:
        """Remove what an earlier attempt of the run wrote, refuse a changed column type. Returns the
        table's region folders (the parts' version check lists days inside them)."""
        where = self.table_location(batch.table)
        try:
            if batch.replay:
                remove_run(where, batch.run_number)
            regions = region_folders(where)
            stored = stored_schema(where, regions)
        except OSError as error:  # refused credentials or a missing bucket: terminal; the rest: transient
            raise storage_error(error, where.uri, side="sink", doing="writing Parquet under") from error
        if stored is not None:
            refuse_type_changes(f"Parquet table {where.uri}", stored, batch.data.schema, _TYPE_FIX)
        return ParquetBegun(tuple(regions))

    def write_part(self, batch: TableBatch, begun: ParquetBegun, *, part: int, last: bool) -> PartWrite:
        """The part's new versions, a file per (region, date) named `run-<n>-<part>.parquet`."""
        where = self.table_location(batch.table)
        try:
            data = new_versions(where, batch, begun.regions)
            if data.num_rows:
                write_partitions(where, batch.run_number, data, batch.cursor, batch.table, part=part,
                                 compression=self.compression)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="writing Parquet under") from error
        # Tombstones are versions like any other (`_deleted` true), the UNKNOWN region's included.
        return PartWrite(data.num_rows, region_counts(data), deleted=count_true(tombstones(batch, data)))

    def finish(self, batch: TableBatch, begun: ParquetBegun, parts: list[PartWrite]) -> SinkWrite:
        """Nothing to commit: each file appeared whole (renamed into place); the checkpoint publishes the
        run."""
        failpoints.hit("parquet.commit", batch.table)
        return SinkWrite(self.name, batch.table, sum(p.rows for p in parts), self.location(batch.table),
                         regions=summed_regions(parts), deleted=sum(p.deleted for p in parts))

    def close(self) -> None:
        """Nothing is kept open between batches."""

    def discard_run(self, table: str, run_number: int) -> None:
        """Delete the run's files, half-written ones included: its versions are written again by the
        run that takes its place."""
        where = self.table_location(table)
        try:
            remove_run(where, run_number)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink",
                                doing="removing a cut run's files under") from error

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        """Every version row of the log (hidden in-flight files skipped, as readers skip them), with the
        region its folder names (`PARTITION_REGION`: a reader of the hive folders goes by that)."""
        return parquet_read_back.read_back(self.table_location(table), table, columns)

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """`read_back`'s rows a file at a time."""
        yield from parquet_read_back.scan(self.table_location(table), table, columns)

    def probe(self) -> str | None:
        return folder_problem(self.name, self.root_uri)

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        where = self.table_location(spec.table)
        try:
            return parquet_dimensions.current_rows(where, spec, columns)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="reading the dimension log") from error

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
        where = self.table_location(spec.table)
        try:
            parquet_dimensions.append(where, spec, changes, self.compression)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="writing the dimension log") from error


if TYPE_CHECKING:  # mypy checks the class against the whole contract, with its own token
    from loader.sinks.base import Sink

    _CONFORMS: type[Sink[ParquetBegun]] = ParquetSink
