"""An independent computation of what the warehouse must hold, in DuckDB SQL over the landing zone
(none of the loader's code): every primary key once, latest cursor wins, and every column a sink
stores: the landing columns as they are (all but the deletes column `op`, landing bookkeeping no sink
gets), then the business rules and the regional rules of configs/local.yaml written out again as SQL,
typed as the loader declares them. A row no dimension row places gets region UNKNOWN and nulls (the
loader quarantines such rows: a landing zone holding them is outside this oracle).

Upstream deletes (configs/local.yaml: `deletes: {column: op, values: [D]}`): a key whose newest
version has `op = 'D'` is a tombstone (a tombstone at a live version's cursor is the newer of the two).
`expected` leaves such keys out (what Delta and Snowflake hold, and the Parquet log's live latest
versions); `expected_tombstones` lists them as the Parquet log holds their newest version: key, cursor,
and the region of the tombstone's own customer / supplier (UNKNOWN when it has none); its other
columns are null.

Customer changes, one right enrichment per row: the loader enriches a batch from the dimension files
as they were when it planned the batch, and a replay keeps them. A fact version (key, cursor, tombstone
or not) is enriched once, by the batch that first loads it: a later run's lookback re-reads it and
every sink skips it. So its customer columns (region, nation, c_name, c_phone, customer_segment and
what the region's rules give) come from the snapshot that was the landing zone's when that batch was
planned. A test that replaces the customer snapshot (`demo-data append --customer-changes N`) keeps
the one it replaces with `keep_customers` just before, once the loader has planned every fact file
there under it, and passes the kept ones, oldest first, as `customers`. A version's snapshot is then the
first kept one whose `facts` hold the file it first arrived in (the earliest file carrying it), else
the landing zone's current customer file. Exactly one snapshot per version: never "any of them".
Suppliers, nations and regions are read from the landing zone as they are now (no test changes them)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

FX = {"AFRICA": "18.250000", "AMERICA": "1.000000", "ASIA": "151.500000", "EUROPE": "0.920000",
      "MIDDLE EAST": "3.672500"}
CURRENCY = {"AFRICA": "ZAR", "AMERICA": "USD", "ASIA": "JPY", "EUROPE": "EUR", "MIDDLE EAST": "AED"}
VAT = {"AFRICA": "0.1500", "AMERICA": "0.0000", "ASIA": "0.1000", "EUROPE": "0.2000", "MIDDLE EAST": "0.0500"}
MASKED_REGIONS = ("EUROPE",)
UNKNOWN = "UNKNOWN"
FACTS = ("orders", "lineitem")
DELETES_COLUMN = "op"

_RULES = " UNION ALL ".join(
    f"SELECT '{r}' AS r, '{CURRENCY[r]}' AS currency, CAST({fx} AS DECIMAL(18,6)) AS fx_rate, "
    f"CAST({VAT[r]} AS DECIMAL(6,4)) AS vat_rate" for r, fx in FX.items())
_CUSTOMER_COLUMNS = "c_custkey, c_name, c_phone, c_acctbal, c_nationkey"


@dataclass(frozen=True)
class CustomerSnapshot:
    """A customer snapshot the landing zone held before its current one: `file`, a copy of its
    customer file (outside the landing zone), and `facts`, the fact files (relative to the landing
    zone) there when it was replaced, whose versions it enriched unless an earlier snapshot did."""

    file: Path
    facts: frozenset[str]


def fact_files(landing: Path) -> frozenset[str]:
    """The landing zone's fact files, relative to it (a file under a hidden name is being written)."""
    return frozenset(p.relative_to(landing).as_posix() for table in FACTS
                     for p in (landing / table).rglob("*.parquet") if not p.name.startswith("."))


def keep_customers(landing: Path, copy: Path) -> CustomerSnapshot:
    """The landing zone's customer snapshot, its file copied to `copy`, with the fact files there now.
    Call it just before the snapshot is replaced, once the loader planned every fact file there into a
    batch under it: a run that finished did; a killed run's recorded batch did (its replay keeps the
    snapshot), not the batches it had yet to record."""
    files = sorted(p for p in (landing / "customer").glob("*.parquet") if not p.name.startswith((".", "_")))
    assert len(files) == 1, f"{landing / 'customer'}: one snapshot file expected, found {files}"
    shutil.copy2(files[0], copy)
    return CustomerSnapshot(copy, fact_files(landing))


def _mask(column: str) -> str:
    return (f"CASE WHEN region IN {MASKED_REGIONS!r} THEN repeat('*', greatest(length({column}) - 4, 0)) "
            f"|| right({column}, 4) ELSE {column} END").replace(",)", ")")


def _source(landing: Path, table: str) -> str:
    return (f"read_parquet('{landing}/{table}/**/*.parquet', hive_partitioning = false, "
            f"union_by_name = true, filename = true)")


def _landing_columns(con: duckdb.DuckDBPyConnection, landing: Path, table: str) -> list[str]:
    """The table's landing columns, in order (the deletes column and the file name apart)."""
    return [row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {_source(landing, table)}").fetchall()
            if row[0] != "filename"]


def _eras(con: duckdb.DuckDBPyConnection, landing: Path, table: str,
          customers: Sequence[CustomerSnapshot]) -> None:
    """Registers `eras(filename, era)`: per fact file of `table`, the index in `customers` of the first
    snapshot whose `facts` hold it, else len(customers) (the landing zone's current customer file)."""
    kept = [snapshot.facts for snapshot in customers]
    assert all(a <= b for a, b in zip(kept, kept[1:], strict=False)), \
        "customers: each kept snapshot's fact files must include the one's before it (oldest first)"
    files = [row[0] for row in con.sql(f"SELECT file FROM glob('{landing}/{table}/**/*.parquet')").fetchall()]
    relative = [Path(f).relative_to(landing).as_posix() for f in files]
    era = [next((i for i, facts in enumerate(kept) if path in facts), len(kept)) for path in relative]
    con.register("eras", pa.table({"filename": pa.array(files, pa.string()),
                                   "era": pa.array(era, pa.int32())}))


def _customers(landing: Path, customers: Sequence[CustomerSnapshot]) -> str:
    """SQL of every customer snapshot's rows with its era: the kept ones', then the landing zone's."""
    files = [*(f"'{s.file}'" for s in customers), f"'{landing}/customer/*.parquet'"]
    return " UNION ALL ".join(f"SELECT {_CUSTOMER_COLUMNS}, {era} AS era FROM read_parquet({f})"
                              for era, f in enumerate(files))


def _newest(con: duckdb.DuckDBPyConnection, landing: Path, table: str, key: str, cursor: str, *,
            tombstones: bool = False) -> str:
    """SQL of each key's newest version, with the era of the earliest file carrying it (a tombstone wins
    a tie with a live version at its cursor): only the live ones (newest not a tombstone), or with
    `tombstones` only the tombstones."""
    has_op = DELETES_COLUMN in _landing_columns(con, landing, table)
    dead = f"{DELETES_COLUMN} IS NOT DISTINCT FROM 'D'" if has_op else "false"
    newest = f"""SELECT v.*, e.era FROM {_source(landing, table)} v JOIN eras e USING (filename)
      QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {cursor} DESC, {dead} DESC, e.era) = 1"""
    return f"SELECT * FROM ({newest}) WHERE {dead if tombstones else f'NOT ({dead})'}"


def _passed_through(con: duckdb.DuckDBPyConnection, landing: Path, table: str) -> str:
    """The landing columns a sink stores as they are: all but the deletes column."""
    return ", ".join(f'"{c}"' for c in _landing_columns(con, landing, table) if c != DELETES_COLUMN)


def expected_orders(landing: Path, customers: Sequence[CustomerSnapshot] = ()) -> pa.Table:
    """`customers`: the kept earlier customer snapshots (see the module's doc)."""
    con = duckdb.connect()
    _eras(con, landing, "orders", customers)
    sql = f"""
    WITH latest AS (
      {_newest(con, landing, "orders", "o_orderkey", "o_updated_at")}
    ), placed AS (
      SELECT o.*, c.c_name, c.c_phone, c.c_acctbal, n.n_name AS nation,
        coalesce(r.r_name, '{UNKNOWN}') AS region
      FROM latest o
      LEFT JOIN ({_customers(landing, customers)}) c ON o.o_custkey = c.c_custkey AND o.era = c.era
      LEFT JOIN read_parquet('{landing}/nation/*.parquet') n ON c.c_nationkey = n.n_nationkey
      LEFT JOIN read_parquet('{landing}/region/*.parquet') r ON n.n_regionkey = r.r_regionkey
    )
    SELECT {_passed_through(con, landing, "orders")},
      CAST(year(o_orderdate) AS SMALLINT) AS order_year,
      CAST(quarter(o_orderdate) AS TINYINT) AS order_quarter,
      CAST(month(o_orderdate) AS TINYINT) AS order_month,
      o_totalprice > 200000 AS is_large_order,
      o_orderpriority IN ('1-URGENT', '2-HIGH') AS is_urgent,
      CASE WHEN o_totalprice IS NULL OR o_totalprice < 0 THEN NULL WHEN o_totalprice < 50000 THEN 'Small'
           WHEN o_totalprice < 150000 THEN 'Medium' WHEN o_totalprice < 300000 THEN 'Large'
           ELSE 'Enterprise' END AS revenue_tier,
      {_mask('c_name')} AS c_name, {_mask('c_phone')} AS c_phone,
      CASE WHEN c_acctbal IS NULL THEN NULL WHEN c_acctbal > 10000 THEN 'enterprise'
           WHEN c_acctbal > 5000 THEN 'premium' ELSE 'standard' END AS customer_segment,
      nation, region, rules.currency, rules.fx_rate, rules.vat_rate,
      CAST(round_even(CAST(o_totalprice AS DECIMAL(38,8)) * rules.fx_rate, 2) AS DECIMAL(24,2))
        AS amount_local
    FROM placed LEFT JOIN ({_RULES}) rules ON rules.r = placed.region
    ORDER BY o_orderkey
    """
    return con.sql(sql).fetch_arrow_table()


def expected_lineitem(landing: Path) -> pa.Table:
    con = duckdb.connect()
    _eras(con, landing, "lineitem", ())
    sql = f"""
    WITH latest AS (
      {_newest(con, landing, "lineitem", "l_orderkey, l_linenumber", "l_updated_at")}
    ), placed AS (
      SELECT l.*, n.n_name AS nation, coalesce(r.r_name, '{UNKNOWN}') AS region,
        CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18,4)) AS discounted_price,
        CAST(l_extendedprice * (1 - l_discount) * (1 + l_tax) AS DECIMAL(22,6)) AS charge
      FROM latest l
      LEFT JOIN read_parquet('{landing}/supplier/*.parquet') s ON l.l_suppkey = s.s_suppkey
      LEFT JOIN read_parquet('{landing}/nation/*.parquet') n ON s.s_nationkey = n.n_nationkey
      LEFT JOIN read_parquet('{landing}/region/*.parquet') r ON n.n_regionkey = r.r_regionkey
    )
    SELECT {_passed_through(con, landing, "lineitem")}, discounted_price, charge,
      CASE WHEN l_quantity IS NULL OR l_quantity < 0 THEN NULL WHEN l_quantity < 10 THEN 'Low'
           WHEN l_quantity < 50 THEN 'Medium' WHEN l_quantity < 100 THEN 'High' ELSE 'Bulk'
      END AS volume_category,
      CAST(l_receiptdate - l_shipdate AS INTEGER) AS ship_delay_days,
      nation, region, rules.currency, rules.fx_rate, rules.vat_rate,
      CAST(round_even(CAST(charge AS DECIMAL(38,12)) * rules.fx_rate, 2) AS DECIMAL(24,2)) AS amount_local
    FROM placed LEFT JOIN ({_RULES}) rules ON rules.r = placed.region
    ORDER BY l_orderkey, l_linenumber
    """
    return con.sql(sql).fetch_arrow_table()


def key_columns(table: str) -> list[str]:
    return ["o_orderkey"] if table == "orders" else ["l_orderkey", "l_linenumber"]


def expected(table: str, landing: Path, customers: Sequence[CustomerSnapshot] = ()) -> pa.Table:
    """Every column of the live latest version of every key, sorted by key."""
    return expected_orders(landing, customers) if table == "orders" else expected_lineitem(landing)


def expected_tombstones(table: str, landing: Path, customers: Sequence[CustomerSnapshot] = ()) -> pa.Table:
    """The keys whose newest version is a tombstone: key columns, cursor and region, sorted by key
    (orders: the region through the customer snapshot of the tombstone's era, see the module's doc)."""
    con = duckdb.connect()
    _eras(con, landing, table, customers if table == "orders" else ())
    if table == "orders":
        newest = _newest(con, landing, "orders", "o_orderkey", "o_updated_at", tombstones=True)
        join, columns = (f"({_customers(landing, customers)}) c "
                         f"ON d.o_custkey = c.c_custkey AND d.era = c.era "
                         f"LEFT JOIN read_parquet('{landing}/nation/*.parquet') n "
                         f"ON c.c_nationkey = n.n_nationkey",
                         "o_orderkey, o_updated_at")
    else:
        newest = _newest(con, landing, "lineitem", "l_orderkey, l_linenumber", "l_updated_at",
                         tombstones=True)
        join, columns = (f"read_parquet('{landing}/supplier/*.parquet') s ON d.l_suppkey = s.s_suppkey "
                         f"LEFT JOIN read_parquet('{landing}/nation/*.parquet') n "
                         f"ON s.s_nationkey = n.n_nationkey",
                         "l_orderkey, l_linenumber, l_updated_at")
    sql = f"""
    SELECT {columns}, coalesce(r.r_name, '{UNKNOWN}') AS region
    FROM ({newest}) d
    LEFT JOIN {join}
    LEFT JOIN read_parquet('{landing}/region/*.parquet') r ON n.n_regionkey = r.r_regionkey
    ORDER BY {', '.join(key_columns(table))}
    """
    return con.sql(sql).fetch_arrow_table()
