"""What `loader verify` reads back from the Parquet sink's log: every version row of a table, with the
region its folder names."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader.errors import SinkRejected, SinkUnavailable
from loader.sinks.base import PARTITION_REGION
from loader.sinks.names import partition_value
from loader.storage import Location, short_error


def _folder_region(relative: str) -> str | None:
    """The value of the `region=` folder in a file's path under the table (decoded, as hive readers
    decode it), or None if it lies in none."""
    for part in relative.split("/"):
        value = partition_value(part, "region")
        if value is not None:
            return value
    return None


def read_back(where: Location, table: str, columns: list[str]) -> pa.Table | None:
    """Every version row of the log (hidden in-flight files skipped, as readers skip them), with the
    region its folder names (`PARTITION_REGION`: a reader of the hive folders goes by that)."""
    paths = data_files(where)
    if paths is None:
        return None
    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(lambda path: read_file(table, where, path, [*columns, "region"]), paths))
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def scan(where: Location, table: str, columns: list[str]) -> Iterator[pa.Table]:
    """`read_back`'s rows a file at a time."""
    paths = data_files(where)
    if paths is not None:
        for path in paths:
            yield read_file(table, where, path, [*columns, "region"])


def data_files(where: Location) -> list[str] | None:
    """The table's visible data files, or None where it does not exist."""
    try:
        if where.filesystem.get_file_info(where.path).type == pafs.FileType.NotFound:
            return None
        infos = where.filesystem.get_file_info(pafs.FileSelector(where.path, recursive=True))
    except OSError as error:
        raise SinkUnavailable(f"listing {where.uri} failed: {short_error(error)}. Check the warehouse "
                              "path, then verify again") from error
    return sorted(
        i.path for i in infos
        if (i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                and not i.base_name.startswith((".", "_")))
    )


def read_file(table: str, where: Location, path: str, wanted: list[str]) -> pa.Table:
    try:
        with where.filesystem.open_input_file(path) as handle:
            file = pq.ParquetFile(handle)
            held = set(file.schema_arrow.names)
            rows = file.read(columns=[c for c in wanted if c in held])
        for name in wanted:  # a column added after this file was written: null here, as readers see it
            if name not in held:
                rows = rows.append_column(name, pa.nulls(rows.num_rows))
        rows = rows.select(wanted)
        folder = _folder_region(path[len(where.path):])
        return rows.append_column(PARTITION_REGION,
                                  pa.repeat(pa.scalar(folder, pa.string()), rows.num_rows))
    except (OSError, pa.ArrowInvalid, KeyError) as error:
        raise SinkRejected(f"cannot read columns {wanted} of {path} (Parquet sink of {table}): "
                           f"{short_error(error)}. Fix or remove the file") from error
