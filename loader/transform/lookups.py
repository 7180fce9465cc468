"""The small lookup tables the region lookup needs, pre-joined once so each batch needs one lookup
per added column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.errors import BadSourceData
from loader.kinds import fact_kind
from loader.landing.sources import normalize_strings
from loader.transform.decimal_rules import customer_segment
from loader.transform.frames import Frames, PandasFrames, on_table
from loader.transform.tables import MONEY, require_columns

#: The columns of each dimension table the lookups use: only these are read (customer at SF10 is 1.5M
#: rows; read whole, its other columns cost about 700 MB of resident memory the allocator keeps).
COLUMNS: dict[str, tuple[str, ...]] = {
    "customer": ("c_custkey", "c_name", "c_phone", "c_acctbal", "c_nationkey"),
    "supplier": ("s_suppkey", "s_nationkey"),
    "nation": ("n_nationkey", "n_name", "n_regionkey"),
    "region": ("r_regionkey", "r_name"),
}


def _sorted_unique(table: pa.Table, key: str, what: str) -> pa.Table:
    """`table` sorted by `key` (each run then finds a batch's keys by binary search); raises when a
    key is null or repeated (an ambiguous lookup). Sorted input (the usual dump) costs one pass."""
    column = table.column(key)
    if column.null_count:
        raise BadSourceData(
            f"{what} has {column.null_count} row(s) with a null {key}: fix or remove those rows in "
            "the landing zone"
        )
    keys = column.to_numpy()
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        order = np.argsort(keys, kind="stable")
        table, keys = table.take(order), keys[order]
        repeated = int(np.count_nonzero(keys[1:] == keys[:-1]))
        if repeated:
            raise BadSourceData(
                f"{what} has {repeated} duplicate {key} value(s), so the lookup would be "
                "ambiguous: keep one row per key in the landing zone"
            )
    return table


def _lookup(keys: pa.ChunkedArray | pa.Array, value_set: pa.ChunkedArray) -> pa.ChunkedArray:
    """Row index of each key in `value_set` (null when absent or null). Preserves input order."""
    values = value_set.combine_chunks() if isinstance(value_set, pa.ChunkedArray) else value_set
    if keys.type != values.type:
        keys = keys.cast(values.type)
    return pc.index_in(keys, value_set=values, skip_nulls=True)


def _referenced(table: pa.Table, key: str, keys: Any) -> pa.Table:
    """The rows of `table` (sorted by unique `key`) whose key is in `keys`; nulls and misses dropped."""
    wanted = keys.to_arrow() if hasattr(keys, "to_arrow") else pa.array(keys)
    if isinstance(wanted, pa.ChunkedArray):
        wanted = wanted.combine_chunks()
    stored = table.column(key)
    wanted = pc.drop_null(wanted.cast(stored.type) if wanted.type != stored.type else wanted)
    found = np.unique(wanted.to_numpy(zero_copy_only=False))
    sorted_keys = stored.to_numpy()
    slot = np.searchsorted(sorted_keys, found)
    hit = slot < len(sorted_keys)
    hit[hit] = sorted_keys[slot[hit]] == found[hit]
    return table.take(pa.array(slot[hit]))


@dataclass(frozen=True, eq=False)
class Lookups:
    """customers: c_custkey, c_name, c_phone, c_acctbal, c_nationkey, customer_segment, nation, region
    suppliers: s_suppkey, s_nationkey, nation, region
    nations:   n_nationkey, n_name, r_name
    `nation`/`region` are null here when the nation or region is missing; `attach_region` turns a
    null region into UNKNOWN. Plain Arrow tables, so the object pickles (Ray broadcasts it), sorted
    by key (see `lookups`). Equality is identity (tables are not hashable); compare the tables to compare
    contents.
    """

    customers: pa.Table
    suppliers: pa.Table
    nations: pa.Table

    def __repr__(self) -> str:
        return (
            f"Lookups(customers={self.customers.num_rows} rows, suppliers={self.suppliers.num_rows} rows, "
            f"nations={self.nations.num_rows} rows)"
        )

    def lookups(self, frames: Frames, kind: str, keys: Any) -> Any:
        """A frame of the kind's dimension indexed by its key (columns: the added ones and region), in
        `frames`' library, holding only the rows `keys` (a batch's fact keys: a frame column or Arrow
        array) reference, found by binary search in the key-sorted table: a batch pays for its own
        keys, not for the dimension's size. Made afresh for each call (the caller may write to it)."""
        lookup = fact_kind(kind).lookup  # the dimension, its key and the columns added
        referenced = _referenced(getattr(self, lookup.dimension), lookup.key, keys)
        return frames.frame(referenced.select([lookup.key, *lookup.columns, "region"])).set_index(lookup.key)

    @classmethod
    def from_tables(
        cls, customer: pa.Table, supplier: pa.Table, nation: pa.Table, region: pa.Table
    ) -> Lookups:
        """Build from whole TPC-H dimension tables (extra columns are ignored).

        Raises BadSourceData on missing columns, null keys or duplicate keys (an ambiguous lookup).
        """
        tables = {"customer": customer, "supplier": supplier, "nation": nation, "region": region}
        for name, table in tables.items():
            require_columns(list(COLUMNS[name]), table.column_names, name)
        customer, supplier, nation, region = (
            normalize_strings(table.select(list(COLUMNS[name]))) for name, table in tables.items())
        customer = _sorted_unique(customer, "c_custkey", "customer")
        supplier = _sorted_unique(supplier, "s_suppkey", "supplier")
        nation = _sorted_unique(nation, "n_nationkey", "nation")
        region = _sorted_unique(region, "r_regionkey", "region")
        empty = pc.sum(pc.equal(region.column("r_name"), "")).as_py() or 0
        # a region names folders and partitions: Delta would store "" as null, Parquet as a bare `region=`
        if empty:
            raise BadSourceData(
                f"region has {empty} row(s) with an empty r_name: a region needs a name (it names partitions "
                "and folders in the sinks). Fix the region table in the landing zone; nothing was written"
            )

        region_index = _lookup(nation.column("n_regionkey"), region.column("r_regionkey"))
        nations = pa.table(
            {
                "n_nationkey": nation.column("n_nationkey"),
                "n_name": nation.column("n_name"),
                "r_name": pc.take(region.column("r_name"), region_index),
            }
        ).combine_chunks()

        def with_geo(table: pa.Table, nation_key: str) -> pa.Table:
            index = _lookup(table.column(nation_key), nations.column("n_nationkey"))
            table = table.append_column("nation", pc.take(nations.column("n_name"), index))
            return table.append_column("region", pc.take(nations.column("r_name"), index))

        # a few thousand rows, once per run: the CPU engine whatever the run's engine
        customers = on_table(customer_segment, customer, PandasFrames())
        return cls(
            customers=with_geo(customers, "c_nationkey").combine_chunks(),
            suppliers=with_geo(supplier, "s_nationkey").combine_chunks(),
            nations=nations,
        )

    @classmethod
    def empty(cls) -> Lookups:
        """No rows, TPC-H types: every lookup misses (region UNKNOWN). Used to derive output schemas."""
        return cls.from_tables(
            pa.schema(
                [
                    ("c_custkey", pa.int64()),
                    ("c_name", pa.string()),
                    ("c_phone", pa.string()),
                    ("c_acctbal", MONEY),
                    ("c_nationkey", pa.int64()),
                ]
            ).empty_table(),
            pa.schema([("s_suppkey", pa.int64()), ("s_nationkey", pa.int64())]).empty_table(),
            pa.schema(
                [("n_nationkey", pa.int64()), ("n_name", pa.string()), ("n_regionkey", pa.int64())]
            ).empty_table(),
            pa.schema([("r_regionkey", pa.int64()), ("r_name", pa.string())]).empty_table(),
        )
