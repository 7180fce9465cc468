"""What `loader verify` reads back from a Delta table: its current rows, whole or in pieces."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from loader.errors import SinkUnavailable
from loader.sinks.delta.facts import open_table
from loader.storage import short_error


def read_back(uri: str, columns: list[str], storage_options: dict[str, str] | None) -> pa.Table | None:
    """The table's current rows."""
    parts = list(scan(uri, columns, storage_options))
    return pa.concat_tables(parts) if parts else None


def scan(uri: str, columns: list[str], storage_options: dict[str, str] | None) -> Iterator[pa.Table]:
    """`read_back`'s rows in pieces of the dataset's batches (a million rows at most; one empty piece
    for a table without rows, none where there is no table)."""
    from deltalake.exceptions import DeltaError

    try:
        opened = open_table(uri, storage_options)
        if opened is None:
            return
        dataset = opened.to_pyarrow_dataset()
        wanted = [*columns, "region"]
        pieces = dataset.to_batches(columns=wanted, batch_size=1 << 20)
        yielded = False
        for piece in pieces:
            if piece.num_rows:
                yielded = True
                yield pa.Table.from_batches([piece])
        if not yielded:
            yield dataset.schema.empty_table().select(wanted)
    except (DeltaError, OSError) as error:
        raise SinkUnavailable(f"reading the Delta table {uri} failed: {short_error(error)}. Check the "
                              "warehouse path, then verify again") from error
