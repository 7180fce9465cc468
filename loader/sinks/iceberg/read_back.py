"""What `loader verify` reads back from the Iceberg sink: a table's current rows (one per key; soft deletes
keep theirs, with `_deleted_at`), read through pyiceberg's scan of the current snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa


def plain_types(rows: pa.Table) -> pa.Table:
    """pyiceberg reads strings and binaries as their large Arrow types: given back as the plain ones the
    other sinks return (the values are the same)."""
    fields = []
    for f in rows.schema:
        if pa.types.is_large_string(f.type) or f.type == pa.string_view():
            f = f.with_type(pa.string())
        elif pa.types.is_large_binary(f.type):
            f = f.with_type(pa.binary())
        fields.append(f.remove_metadata())
    schema = pa.schema(fields)
    return rows if schema == rows.schema else rows.cast(schema)


def pieces(table: Any, columns: list[str], row_filter: Any = None) -> Iterator[pa.Table]:
    """`columns` and `region` of the table's current rows, a record batch of the scan at a time (one
    empty piece for a table without rows)."""
    wanted = list(dict.fromkeys([*columns, "region"]))
    scan = table.scan(selected_fields=tuple(wanted)) if row_filter is None else table.scan(
        selected_fields=tuple(wanted), row_filter=row_filter)
    reader = scan.to_arrow_batch_reader()
    yielded = False
    for batch in reader:
        if batch.num_rows:
            yielded = True
            yield plain_types(pa.Table.from_batches([batch]).select(wanted))
    if not yielded:
        yield plain_types(reader.schema.empty_table().select(wanted))
