"""The dlt side of the benchmark: the same incremental job written the way a dlt user would write it.

    python bench/dlt_load.py --landing LANDING --warehouse WAREHOUSE [--tables orders,lineitem] [--json]
                             [--full-scan] [--table-format delta|iceberg]
    python bench/dlt_load.py --warehouse WAREHOUSE --count [--tables ...] [--table-format ...] [--json]

Runs in its own venv (`python bench/dlt_env.py` makes it); imports nothing from the project.

What a user writes: one `@dlt.resource` per fact table that reads `LANDING/<table>/ingest_date=*/` as a
pyarrow dataset and yields an Arrow table (dlt's fast path: no row-by-row Python); the cursor is a
`dlt.sources.incremental("<cursor>")` argument, whose state lives in the pipeline; the table is loaded
with `write_disposition={"disposition": "merge", "strategy": "upsert"}` on its primary key into the
`filesystem` destination as Delta (`bucket_url=WAREHOUSE/dlt`, `table_format="delta"`) or, with
`--table-format iceberg`, as Iceberg (`table_format="iceberg"`, dlt's `pyiceberg` extra). Each call is one
incremental run; the pipeline's working folder (`pipelines_dir`) is inside WAREHOUSE, so copying the
warehouse copies dlt's state too. Tables land in `WAREHOUSE/dlt/tpch/<table>`.

Iceberg, as dlt 1.31 does it: no catalog is configured, so each load registers the table from its latest
`metadata/*.metadata.json` into an in-memory SQLite catalog (the metadata holds absolute paths: copy a
warehouse back to the same path, not elsewhere). Its merge (upsert) is pyiceberg's `Table.upsert`, called
once per 1,000 rows of the load, each call its own commit (a snapshot, a metadata file, a data file), the
first load included: dlt has no append path for a merge table that already exists, and it creates the
table empty first.

Two things the user has to add on top of the docs' minimal resource:
- pushdown: the resource filters the scan with `cursor >= incremental.start_value` (pyarrow skips row
  groups by their statistics). Without it (`--full-scan`) every run reads the whole landing zone and dlt's
  incremental throws away the old rows after reading them: a run costs O(history), not O(new data).
- one row per key: dlt's upsert expects unique primary keys in what it loads. Without this, a first
  load keeps both versions of a key and a later merge fails (delta-rs: "MERGE matched a target row
  with multiple source rows"), so when the window holds several versions of a key the latest wins.

`--count` loads nothing: it prints the rows each table holds (for Iceberg also its data files and
snapshots), read with deltalake or pyiceberg from this venv, for the bench's check.

No transforms: dlt loads the raw landing rows as they are (Arrow items get no `_dlt_*` columns), not
the loader's enriched, per-region rows. dlt's incremental only moves forward: a row landing with a cursor
older than the last one loaded (a late arrival) is dropped, where the loader's 1 h lookback keeps it;
`dlt.sources.incremental(lag=3600)` would re-read that hour, but reloads it on every run, empty or not.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")  # e.g. "nullable hint of the primary key kept"

import dlt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402

TABLES = {
    "orders": ("o_updated_at", ["o_orderkey"]),
    "lineitem": ("l_updated_at", ["l_orderkey", "l_linenumber"]),
}


def latest_per_key(table: pa.Table, key: list[str], cursor: str) -> pa.Table:
    """One row per key, the one with the largest cursor (upsert needs unique keys)."""
    latest = table.group_by(key).aggregate([(cursor, "max")]).rename_columns({f"{cursor}_max": cursor})
    if latest.num_rows == table.num_rows:
        return table
    return table.join(latest, keys=[*key, cursor], join_type="inner").select(table.column_names)


def fact(landing: Path, name: str, full_scan: bool):
    cursor, key = TABLES[name]

    @dlt.resource(name=name, primary_key=key,
                  write_disposition={"disposition": "merge", "strategy": "upsert"})
    def rows(updated=dlt.sources.incremental(cursor)):  # noqa: B008 (dlt binds its state to this default)
        dataset = ds.dataset(landing / name, format="parquet")
        since = None if full_scan or updated.start_value is None else ds.field(cursor) >= updated.start_value
        table = dataset.to_table(filter=since)
        if table.num_rows:
            yield latest_per_key(table, key, cursor)

    return rows


def held(warehouse: Path, tables: list[str], table_format: str) -> dict[str, Any]:
    """What the tables hold now, without dlt: rows (and for Iceberg, data files and snapshots)."""
    root = warehouse / "dlt" / "tpch"
    if table_format == "delta":
        from deltalake import DeltaTable

        return {"rows": {t: DeltaTable(str(root / t)).to_pyarrow_dataset().count_rows() for t in tables}}
    from pyiceberg.table import StaticTable

    result: dict[str, Any] = {"rows": {}, "data_files": {}, "snapshots": {}}
    for t in tables:
        # the newest of <version>-<uuid>.metadata.json, as dlt finds it when it registers the table
        latest = max((root / t / "metadata").glob("*.metadata.json"), key=lambda p: int(p.name.split("-")[0]))
        table = StaticTable.from_metadata(str(latest))
        scan = table.scan()
        tasks = list(scan.plan_files())
        deletes = any(task.delete_files for task in tasks)  # pyiceberg's upsert rewrites files: none
        result["rows"][t] = scan.count() if deletes else sum(task.file.record_count for task in tasks)
        result["data_files"][t] = len(tasks)
        result["snapshots"][t] = len(table.metadata.snapshots)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--landing", type=Path, help="required unless --count")
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--tables", default="orders,lineitem")
    parser.add_argument("--full-scan", action="store_true", help="no pushdown: let dlt's incremental filter")
    parser.add_argument("--table-format", choices=["delta", "iceberg"], default="delta",
                        help="the filesystem destination's table format (iceberg: dlt[pyiceberg])")
    parser.add_argument("--count", action="store_true", help="load nothing: print what the tables hold")
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    args = parser.parse_args()
    tables = [t for t in args.tables.split(",") if t]
    warehouse = args.warehouse.absolute()
    if args.count:
        result = held(warehouse, tables, args.table_format)
        print(json.dumps(result) if args.json else result)
        return
    if args.landing is None:
        parser.error("--landing is required (unless --count)")

    start = time.perf_counter()
    pipeline = dlt.pipeline(
        pipeline_name="tpch_dlt",
        pipelines_dir=str(warehouse / "_dlt_pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=str(warehouse / "dlt")),
        dataset_name="tpch",
    )
    pipeline.run([fact(args.landing.absolute(), t, args.full_scan) for t in tables],
                 table_format=args.table_format)
    seconds = time.perf_counter() - start

    info = pipeline.last_trace.last_normalize_info
    counts = info.row_counts if info else {}
    result = {"rows": {t: counts.get(t, 0) for t in tables}, "seconds": round(seconds, 3),
              "table_format": args.table_format, "dlt_version": dlt.__version__}
    if args.table_format == "iceberg":
        import pyiceberg

        result["pyiceberg_version"] = pyiceberg.__version__
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
