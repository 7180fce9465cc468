"""An independent computation of what the warehouse must hold, in DuckDB SQL over the landing zone
(none of the loader's code): every primary key once, latest cursor wins, with the business rules and
regional rules of configs/local.yaml written out again as SQL.

Upstream deletes (configs/local.yaml: `deletes: {column: op, values: [D]}`): a key whose newest
version has `op = 'D'` is a tombstone. `expected` leaves such keys out (what Delta and Snowflake hold,
and the Parquet log's live latest versions); `expected_tombstones` lists them as the Parquet log holds
their newest version: key, cursor, and the region of the tombstone's own customer / supplier
(UNKNOWN when it has none)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

FX = {"AFRICA": "18.250000", "AMERICA": "1.000000", "ASIA": "151.500000", "EUROPE": "0.920000", "MIDDLE EAST": "3.672500"}
MASKED_REGIONS = ("EUROPE",)

_RULES = " UNION ALL ".join(f"SELECT '{r}' AS r, CAST({fx} AS DECIMAL(18,6)) AS fx" for r, fx in FX.items())


def _mask(column: str) -> str:
    return (f"CASE WHEN region IN {MASKED_REGIONS!r} THEN repeat('*', greatest(length({column}) - 4, 0)) "
            f"|| right({column}, 4) ELSE {column} END").replace(",)", ")")


def _has_op(landing: Path, table: str) -> bool:
    """Whether the table's landing files carry the `op` column (a landing zone from elsewhere may not)."""
    names = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{landing}/{table}/**/*.parquet', "
                       f"hive_partitioning = false, union_by_name = true)").fetchall()
    return any(row[0] == "op" for row in names)


def _newest(landing: Path, table: str, key: str, cursor: str, *, tombstones: bool = False) -> str:
    """SQL of each key's newest version; only the live ones (newest not a tombstone), or with
    `tombstones` only the tombstones."""
    newest = f"""SELECT * FROM read_parquet('{landing}/{table}/**/*.parquet', hive_partitioning = false,
                                         union_by_name = true)
      QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {cursor} DESC) = 1"""
    if not _has_op(landing, table):
        return newest if not tombstones else f"SELECT * FROM ({newest}) WHERE false"
    keep = "op = 'D'" if tombstones else "op IS DISTINCT FROM 'D'"
    return f"SELECT * FROM ({newest}) WHERE {keep}"


def _customer(landing: Path, customer: Path | None) -> str:
    """The customer files the facts' lookup reads: the landing zone's, or an earlier snapshot's file."""
    return str(customer) if customer is not None else f"{landing}/customer/*.parquet"


def expected_orders(landing: Path, customer: Path | None = None) -> pa.Table:
    """`customer`: a Parquet file of another customer snapshot to enrich the orders from (what a run
    that loaded before the snapshot changed wrote)."""
    sql = f"""
    WITH latest AS (
      {_newest(landing, "orders", "o_orderkey", "o_updated_at")}
    ), placed AS (
      SELECT o.*, c.c_name, c.c_phone, c.c_acctbal, n.n_name AS nation, r.r_name AS region
      FROM latest o
      LEFT JOIN read_parquet('{_customer(landing, customer)}') c ON o.o_custkey = c.c_custkey
      LEFT JOIN read_parquet('{landing}/nation/*.parquet') n ON c.c_nationkey = n.n_nationkey
      LEFT JOIN read_parquet('{landing}/region/*.parquet') r ON n.n_regionkey = r.r_regionkey
    )
    SELECT o_orderkey, o_updated_at, o_totalprice, o_orderstatus, region, nation,
      year(o_orderdate) AS order_year, quarter(o_orderdate) AS order_quarter, month(o_orderdate) AS order_month,
      o_totalprice > 200000 AS is_large_order,
      o_orderpriority IN ('1-URGENT', '2-HIGH') AS is_urgent,
      CASE WHEN o_totalprice < 50000 THEN 'Small' WHEN o_totalprice < 150000 THEN 'Medium'
           WHEN o_totalprice < 300000 THEN 'Large' ELSE 'Enterprise' END AS revenue_tier,
      CASE WHEN c_acctbal > 10000 THEN 'enterprise' WHEN c_acctbal > 5000 THEN 'premium' ELSE 'standard' END AS customer_segment,
      {_mask('c_name')} AS c_name, {_mask('c_phone')} AS c_phone,
      CAST(round_even(CAST(o_totalprice AS DECIMAL(38,8)) * rules.fx, 2) AS DECIMAL(24,2)) AS amount_local
    FROM placed LEFT JOIN ({_RULES}) rules ON rules.r = placed.region
    ORDER BY o_orderkey
    """
    return duckdb.sql(sql).fetch_arrow_table()


def expected_lineitem(landing: Path) -> pa.Table:
    sql = f"""
    WITH latest AS (
      {_newest(landing, "lineitem", "l_orderkey, l_linenumber", "l_updated_at")}
    ), placed AS (
      SELECT l.*, r.r_name AS region
      FROM latest l
      LEFT JOIN read_parquet('{landing}/supplier/*.parquet') s ON l.l_suppkey = s.s_suppkey
      LEFT JOIN read_parquet('{landing}/nation/*.parquet') n ON s.s_nationkey = n.n_nationkey
      LEFT JOIN read_parquet('{landing}/region/*.parquet') r ON n.n_regionkey = r.r_regionkey
    )
    SELECT l_orderkey, l_linenumber, l_updated_at, region,
      CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18,4)) AS discounted_price,
      CAST(l_extendedprice * (1 - l_discount) * (1 + l_tax) AS DECIMAL(22,6)) AS charge,
      CASE WHEN l_quantity < 10 THEN 'Low' WHEN l_quantity < 50 THEN 'Medium'
           WHEN l_quantity < 100 THEN 'High' ELSE 'Bulk' END AS volume_category,
      CAST(l_receiptdate - l_shipdate AS INTEGER) AS ship_delay_days
    FROM placed
    ORDER BY l_orderkey, l_linenumber
    """
    return duckdb.sql(sql).fetch_arrow_table()


def key_columns(table: str) -> list[str]:
    return ["o_orderkey"] if table == "orders" else ["l_orderkey", "l_linenumber"]


def expected(table: str, landing: Path, customer: Path | None = None) -> pa.Table:
    return expected_orders(landing, customer) if table == "orders" else expected_lineitem(landing)


def expected_tombstones(table: str, landing: Path, customer: Path | None = None) -> pa.Table:
    """The keys whose newest version is a tombstone: key columns, cursor and region, sorted by key
    (orders: the region through `customer`, another snapshot's file, when given)."""
    if table == "orders":
        newest = _newest(landing, "orders", "o_orderkey", "o_updated_at", tombstones=True)
        join, columns = (f"read_parquet('{_customer(landing, customer)}') c ON d.o_custkey = c.c_custkey "
                         f"LEFT JOIN read_parquet('{landing}/nation/*.parquet') n ON c.c_nationkey = n.n_nationkey",
                         "o_orderkey, o_updated_at")
    else:
        newest = _newest(landing, "lineitem", "l_orderkey, l_linenumber", "l_updated_at", tombstones=True)
        join, columns = (f"read_parquet('{landing}/supplier/*.parquet') s ON d.l_suppkey = s.s_suppkey "
                         f"LEFT JOIN read_parquet('{landing}/nation/*.parquet') n ON s.s_nationkey = n.n_nationkey",
                         "l_orderkey, l_linenumber, l_updated_at")
    sql = f"""
    SELECT {columns}, coalesce(r.r_name, 'UNKNOWN') AS region
    FROM ({newest}) d
    LEFT JOIN {join}
    LEFT JOIN read_parquet('{landing}/region/*.parquet') r ON n.n_regionkey = r.r_regionkey
    ORDER BY {', '.join(key_columns(table))}
    """
    return duckdb.sql(sql).fetch_arrow_table()
