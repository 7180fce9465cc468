"""Dimension tables in the Delta sink: one unpartitioned table each, changed by one commit per load.

- scd2: one MERGE of the load's closes and opens (an `_action` column tells them apart): a close
  matches the stored current version (key and valid_from) and sets its `valid_to` and `is_current`;
  an open never matches and is inserted. Both in the same commit: readers see the old versions or the
  new ones, never a key with no current version.
- merge: one MERGE on the key: deletions (keys gone from the snapshot) delete, the rest upsert.
- replace: an overwrite commit (the snapshot becomes the table; time travel keeps the old one).
A crash before the commit leaves the table as it was; the replay compares again and writes the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from loader import failpoints
from loader.transform.dimension_changes import (
    IS_CURRENT,
    VALID_FROM,
    VALID_TO,
    DimensionChanges,
    DimensionSpec,
)

ACTION = "_action"


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def current_rows(table: Any, spec: DimensionSpec, columns: Sequence[str] | None) -> pa.Table | None:
    """`columns` of the rows a load compares with (scd2: the current versions, filtered in the scan)."""
    if table is None:
        return None
    import pyarrow.dataset as ds

    current = ds.field(IS_CURRENT) if spec.mode == "scd2" else None
    rows: pa.Table = table.to_pyarrow_dataset().to_table(columns=None if columns is None else list(columns),
                                                         filter=current)
    return rows


def _with_action(rows: pa.Table, action: str) -> pa.Table:
    return rows.append_column(ACTION, pa.array(np.full(rows.num_rows, action), pa.string()))


def apply(table: Any, uri: str, spec: DimensionSpec, changes: DimensionChanges,
          storage_options: dict[str, str] | None) -> None:
    from deltalake import write_deltalake

    if table is None or spec.mode == "replace":
        failpoints.hit("delta.dimension", spec.table)
        write_deltalake(uri, changes.opens, mode="overwrite" if table is not None else "error",
                        storage_options=storage_options)
        return
    on = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in spec.key)
    columns = changes.opens.column_names if changes.opens.num_rows else changes.closes.column_names
    every = {_quote(c): f"s.{_quote(c)}" for c in columns}
    if spec.mode == "merge":
        source = pa.concat_tables([_with_action(changes.opens, "upsert"),
                                   _with_action(changes.closes, "delete")],
                                  promote_options="default")  # closes: the compared columns only
        merger = table.merge(source, predicate=on, source_alias="s", target_alias="t").when_matched_delete(
            predicate=f"s.{ACTION} = 'delete'").when_matched_update(
            updates=every, predicate=f"s.{ACTION} = 'upsert'").when_not_matched_insert(
            updates=every, predicate=f"s.{ACTION} = 'upsert'")
    else:
        source = pa.concat_tables([_with_action(changes.opens, "open"),
                                   _with_action(changes.closes, "close")],
                                  promote_options="default")  # closes: the compared columns only
        close = (f"{on} AND t.{_quote(VALID_FROM)} = s.{_quote(VALID_FROM)} AND t.{_quote(IS_CURRENT)} "
                 f"AND s.{ACTION} = 'close'")
        merger = table.merge(source, predicate=close, source_alias="s", target_alias="t").when_matched_update(
            updates={_quote(VALID_TO): f"s.{_quote(VALID_TO)}",
                     _quote(IS_CURRENT): "false"}).when_not_matched_insert(
            updates=every, predicate=f"s.{ACTION} = 'open'")
    failpoints.hit("delta.dimension", spec.table)
    merger.execute()
