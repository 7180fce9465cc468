"""The hand-written floor: one process doing the work of one `loader run --incremental` for both facts,
the way a competent engineer would write it in an afternoon with pyarrow + DuckDB + deltalake.

    python bench/floor.py --landing LANDING --warehouse WAREHOUSE [--since ISO] [--until ISO] [--json]

Per fact table (orders, then lineitem):
1. window: lower = checkpoint - lookback (1h), from `<warehouse>/_floor_state.json` (or --since, or none);
   scan `<landing>/<table>` as one pyarrow dataset with the filter `cursor > lower` (pyarrow prunes row
   groups by their statistics, but every file's footer is opened: no planning of folders);
   upper = the largest cursor read.
2. DuckDB SQL: dedupe on the primary key (latest cursor wins), enrichment, region lookup through the
   dimensions, per-region rules (currency, FX, VAT, masking), the `date` of the cursor.
3. Parquet: versions already in the log (key, cursor re-read through the lookback) are dropped with an
   anti-join against the files of the overlapping days, the rest written with `write_dataset`,
   hive-partitioned region=/date=, files named run-<n>-<i>.parquet.
4. Delta: first run `write_deltalake(partition_by=["region"])`; later runs one
   `merge(predicate="t.key = s.key")` with when_matched_update_all / when_not_matched_insert_all.
Then the checkpoints (the upper of each table) go into the JSON state file, written atomically.

No leases, ledger, replay, exactly-once bookkeeping, scoped merges, or folder/row-group planning: it is
the bar the loader's overhead is measured against, not a product. The business and regional rules are
the defaults of configs/local.yaml (read from --config when given). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake

STATE_FILE = "_floor_state.json"
LOOKBACK = timedelta(hours=1)

TABLES: dict[str, dict[str, Any]] = {
    "orders": {"cursor": "o_updated_at", "key": ["o_orderkey"]},
    "lineitem": {"cursor": "l_updated_at", "key": ["l_orderkey", "l_linenumber"]},
}

# configs/local.yaml's regions: (currency, fx_rate, vat_rate, masked columns)
DEFAULT_RULES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "AFRICA": ("ZAR", "18.250000", "0.1500", ()),
    "AMERICA": ("USD", "1.000000", "0.0000", ()),
    "ASIA": ("JPY", "151.500000", "0.1000", ()),
    "EUROPE": ("EUR", "0.920000", "0.2000", ("c_name", "c_phone")),
    "MIDDLE EAST": ("AED", "3.672500", "0.0500", ()),
}


def load_rules(config: Path | None) -> dict[str, tuple[str, str, str, tuple[str, ...]]]:
    if config is None:
        return DEFAULT_RULES
    import yaml

    raw = yaml.safe_load(config.read_text())
    return {
        name: (r["currency"], str(r["fx_rate"]), str(r["vat_rate"]), tuple(r.get("mask", ())))
        for name, r in raw["regions"].items()
    }


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def rules_sql(rules: dict[str, tuple[str, str, str, tuple[str, ...]]]) -> str:
    return " UNION ALL ".join(
        f"SELECT {_lit(r)} AS rule_region, {_lit(cur)} AS currency, "
        f"CAST({Decimal(fx)} AS DECIMAL(18,6)) AS fx_rate, "
        f"CAST({Decimal(vat)} AS DECIMAL(6,4)) AS vat_rate"
        for r, (cur, fx, vat, _) in rules.items()
    )


def mask_sql(column: str, rules: dict[str, tuple[str, str, str, tuple[str, ...]]]) -> str:
    regions = [r for r, rule in rules.items() if column in rule[3]]
    if not regions:
        return column
    listed = ", ".join(_lit(r) for r in regions)
    return (f"CASE WHEN region IN ({listed}) THEN repeat('*', greatest(length({column}) - 4, 0)) "
            f"|| right({column}, 4) "
            f"ELSE {column} END")


def transform_sql(table: str, landing: Path, rules: dict[str, tuple[str, str, str, tuple[str, ...]]]) -> str:
    """DuckDB SQL over the registered Arrow table `src`: dedupe, enrich, region, rules, __date."""
    dims = {name: f"read_parquet('{landing / name}/*.parquet')"
            for name in ("customer", "supplier", "nation", "region")}
    if table == "orders":
        return (f"""
        WITH latest AS (
          SELECT * FROM src QUALIFY row_number() OVER (PARTITION BY o_orderkey ORDER BY o_updated_at DESC) = 1
        ), placed AS (
          SELECT o.*,
            year(o_orderdate)::SMALLINT AS order_year, quarter(o_orderdate)::TINYINT AS order_quarter,
            month(o_orderdate)::TINYINT AS order_month,
            o_totalprice > 200000 AS is_large_order,
            o_orderpriority IN ('1-URGENT', '2-HIGH') AS is_urgent,
            CASE WHEN o_totalprice < 0 THEN NULL WHEN o_totalprice < 50000 THEN 'Small'
                 WHEN o_totalprice < 150000 THEN 'Medium' WHEN o_totalprice < 300000 THEN 'Large'
                 ELSE 'Enterprise' END AS revenue_tier,
            c.c_name, c.c_phone,
            CASE WHEN c.c_acctbal IS NULL THEN NULL WHEN c.c_acctbal > 10000 THEN 'enterprise'
                 WHEN c.c_acctbal > 5000 THEN 'premium' ELSE 'standard' END AS customer_segment,
            n.n_name AS nation, coalesce(r.r_name, 'UNKNOWN') AS region
          FROM latest o
          LEFT JOIN {dims['customer']} c ON o.o_custkey = c.c_custkey
          LEFT JOIN {dims['nation']} n ON c.c_nationkey = n.n_nationkey
          LEFT JOIN {dims['region']} r ON n.n_regionkey = r.r_regionkey
        )
        SELECT * EXCLUDE (c_name, c_phone, nation, region, customer_segment, rule_region, currency, """
                f"""fx_rate, vat_rate),
          {mask_sql('c_name', rules)} AS c_name, {mask_sql('c_phone', rules)} AS c_phone, customer_segment,
          nation, region, currency, fx_rate, vat_rate,
          CAST(round_even(o_totalprice * CAST(fx_rate AS DECIMAL(12,6)), 2) AS DECIMAL(24,2)) AS amount_local,
          strftime(o_updated_at, '%Y-%m-%d') AS date
        FROM placed LEFT JOIN ({rules_sql(rules)}) rules ON rules.rule_region = placed.region
        """)
    return f"""
    WITH latest AS (
      SELECT * FROM src
      QUALIFY row_number() OVER (PARTITION BY l_orderkey, l_linenumber ORDER BY l_updated_at DESC) = 1
    ), priced AS (
      SELECT *, CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18,4)) AS discounted_price FROM latest
    ), placed AS (
      SELECT l.*,
        CAST(discounted_price * (1 + l_tax) AS DECIMAL(22,6)) AS charge,
        CASE WHEN l_quantity < 0 THEN NULL WHEN l_quantity < 10 THEN 'Low' WHEN l_quantity < 50 THEN 'Medium'
             WHEN l_quantity < 100 THEN 'High' ELSE 'Bulk' END AS volume_category,
        CAST(l_receiptdate - l_shipdate AS INTEGER) AS ship_delay_days,
        n.n_name AS nation, coalesce(r.r_name, 'UNKNOWN') AS region
      FROM priced l
      LEFT JOIN {dims['supplier']} s ON l.l_suppkey = s.s_suppkey
      LEFT JOIN {dims['nation']} n ON s.s_nationkey = n.n_nationkey
      LEFT JOIN {dims['region']} r ON n.n_regionkey = r.r_regionkey
    )
    SELECT * EXCLUDE (rule_region, currency, fx_rate, vat_rate), currency, fx_rate, vat_rate,
      CAST(round_even(charge * CAST(fx_rate AS DECIMAL(12,6)), 2) AS DECIMAL(24,2)) AS amount_local,
      strftime(l_updated_at, '%Y-%m-%d') AS date
    FROM placed LEFT JOIN ({rules_sql(rules)}) rules ON rules.rule_region = placed.region
    """


def read_state(warehouse: Path) -> dict[str, Any]:
    path = warehouse / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"run": 0, "checkpoints": {}}


def write_state(warehouse: Path, state: dict[str, Any]) -> None:
    tmp = warehouse / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, warehouse / STATE_FILE)


def already_written(con: duckdb.DuckDBPyConnection, out: pa.Table, folder: Path, table: str,
                    lowest: datetime, checkpoint: datetime) -> pa.Table:
    """Drop the versions (key, cursor) at or below the old checkpoint that the Parquet log already holds."""
    spec = TABLES[table]
    days = {(lowest + timedelta(days=i)).date().isoformat()
            for i in range((checkpoint.date() - lowest.date()).days + 1)}
    files = sorted(str(p) for day in days for p in folder.glob(f"region=*/date={day}/*.parquet"))
    if not files:
        return out
    cols = ", ".join([*spec["key"], spec["cursor"]])
    con.register("fresh", out)
    listed = ", ".join(_lit(f) for f in files)
    kept = con.sql(
        "SELECT f.* FROM fresh f ANTI JOIN "
        f"(SELECT {cols} FROM read_parquet([{listed}], hive_partitioning = false)) o "
        f"USING ({cols})"
    ).to_arrow_table()
    con.unregister("fresh")
    return kept


def load_table(con: duckdb.DuckDBPyConnection, table: str, *, landing: Path, warehouse: Path, run: int,
               lower: datetime | None, checkpoint: datetime | None, until: datetime | None,
               rules: dict[str, tuple[str, str, str, tuple[str, ...]]],
               sinks: tuple[str, ...] = ("parquet", "delta")) -> dict[str, Any]:
    spec = TABLES[table]
    cursor, key = spec["cursor"], spec["key"]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    dataset = ds.dataset(str(landing / table), format="parquet")  # ignores _ and . prefixed files
    ts = pa.timestamp("us", tz="UTC")
    filt = ds.field(cursor) > pa.scalar(lower, ts) if lower else None
    if until is not None:
        capped = ds.field(cursor) <= pa.scalar(until, ts)
        filt = capped if filt is None else filt & capped
    src = dataset.to_table(filter=filt)
    timings["scan"] = time.perf_counter() - started
    upper = pc.max(src[cursor]).as_py() if src.num_rows else None
    # only the lookback's rows: nothing new
    if upper is None or (checkpoint is not None and upper <= checkpoint):
        return {"rows": 0, "upper": checkpoint.isoformat() if checkpoint else None, "timings_s": timings}

    started = time.perf_counter()
    con.register("src", src)
    # ORDER BY region, date: write_dataset otherwise splits every batch across ~150 partitions and
    # writes files of many tiny row groups (3x slower to write, slower to read).
    out = con.sql(transform_sql(table, landing, rules) + " ORDER BY region, date").to_arrow_table()
    con.unregister("src")
    del src
    timings["transform"] = time.perf_counter() - started

    started = time.perf_counter()
    parquet_dir = warehouse / "parquet" / table
    versions = out
    if "parquet" not in sinks:
        versions = out.slice(0, 0)
    elif checkpoint is not None:
        lowest = pc.min(out[cursor]).as_py()
        if lowest <= checkpoint:
            versions = already_written(con, out, parquet_dir, table, lowest, checkpoint)
    if "parquet" in sinks:
        ds.write_dataset(
            versions, str(parquet_dir), format="parquet",
            partitioning=ds.partitioning(pa.schema([("region", pa.string()), ("date", pa.string())]),
                                         flavor="hive"),
            basename_template=f"run-{run:08d}-{{i}}.parquet", existing_data_behavior="overwrite_or_ignore",
            file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
        )
    timings["parquet"] = time.perf_counter() - started
    if "delta" not in sinks:
        return {"rows": out.num_rows, "parquet_rows": versions.num_rows, "upper": upper.isoformat(),
                "timings_s": timings}

    started = time.perf_counter()
    data = out.drop_columns(["date"])
    uri = str(warehouse / "delta" / table)
    if (Path(uri) / "_delta_log").exists():
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in key)
        (DeltaTable(uri).merge(data, predicate=predicate, source_alias="s", target_alias="t")
         .when_matched_update_all().when_not_matched_insert_all().execute())
    else:
        write_deltalake(uri, data, partition_by=["region"])
    timings["delta"] = time.perf_counter() - started
    return {"rows": out.num_rows, "parquet_rows": versions.num_rows, "upper": upper.isoformat(),
            "timings_s": timings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--landing", type=Path, required=True,
                        help="landing zone (orders/, lineitem/, dimensions)")
    parser.add_argument("--warehouse", type=Path, required=True,
                        help="output folder (parquet/, delta/, state file)")
    parser.add_argument("--since",
                        help="cursor lower bound (ISO timestamp), instead of the state's checkpoint - 1h")
    parser.add_argument("--until", help="cursor upper bound (ISO timestamp): load history in several runs")
    parser.add_argument("--config", type=Path, help="take the regional rules from this loader config")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON (default: one line per table)")
    parser.add_argument("--tables", default=",".join(TABLES),
                        help="fact tables to load, comma-separated (default: both)")
    parser.add_argument("--sinks", default="parquet,delta",
                        help="sinks to write, comma-separated (default: parquet,delta)")
    args = parser.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    sinks = tuple(s for s in args.sinks.split(",") if s)
    if set(tables) - set(TABLES) or set(sinks) - {"parquet", "delta"}:
        parser.error(f"--tables takes {', '.join(TABLES)}; --sinks takes parquet, delta")

    started = time.perf_counter()
    landing, warehouse = args.landing.resolve(), args.warehouse.resolve()
    warehouse.mkdir(parents=True, exist_ok=True)
    rules = load_rules(args.config)
    state = read_state(warehouse)
    run = int(state["run"]) + 1
    since = datetime.fromisoformat(args.since).astimezone(UTC) if args.since else None
    until = datetime.fromisoformat(args.until).astimezone(UTC) if args.until else None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    results: dict[str, Any] = {}
    checkpoints = dict(state["checkpoints"])
    for table in tables:
        previous = datetime.fromisoformat(checkpoints[table]) if table in checkpoints else None
        lower = since if since is not None else (previous - LOOKBACK if previous else None)
        results[table] = load_table(con, table, landing=landing, warehouse=warehouse, run=run, lower=lower,
                                    checkpoint=previous, until=until, rules=rules, sinks=sinks)
        if results[table]["upper"]:
            checkpoints[table] = results[table]["upper"]
    loaded = any(r["rows"] for r in results.values())
    if loaded:
        write_state(warehouse, {"run": run, "checkpoints": checkpoints})
    summary = {"status": "committed" if loaded else "nothing_new", "run": run if loaded else None,
               "tables": results, "wall_s": round(time.perf_counter() - started, 3)}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for table, r in results.items():
            print(f"{table}: {r['rows']} rows, upper {r['upper']}, "
                  + ", ".join(f"{k} {v:.2f}s" for k, v in r["timings_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
