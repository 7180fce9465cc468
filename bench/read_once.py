"""The floor of `loader verify`: read, once, the columns verify cannot avoid reading (bench/verify_bench.py).

    .venv/bin/python bench/read_once.py --landing L --warehouse W [--tables orders,lineitem] \
        [--sinks parquet,delta]

In one process, with pyarrow's threads on, per fact table: the landing files' primary key, cursor, region
lookup key (o_custkey / l_suppkey) and delete column (op); the Parquet sink's version log
(W/parquet/<table>: key, cursor, region, _deleted); the Delta table (W/delta/<table>, through deltalake's
`to_pyarrow_dataset`: key, cursor, region, and _deleted / _deleted_at where the table has one). Nothing
is computed: no dedupe, no region lookup, no checksum, and the dimension tables are not read (verify
also checks those). Prints one JSON object on stdout: rows and seconds per part, and the total.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs
from exit_now import exit_now

#: table -> (primary key, cursor, region lookup key, delete column): configs/local.yaml's sources.
TABLES = {
    "orders": (["o_orderkey"], "o_updated_at", "o_custkey", "op"),
    "lineitem": (["l_orderkey", "l_linenumber"], "l_updated_at", "l_suppkey", "op"),
}
MARKERS = ("_deleted", "_deleted_at")


def _parquet_files(folder: Path) -> ds.Dataset:
    """The folder's Parquet files by their own columns (no hive columns: the sink's files hold `region`
    themselves), the schemas unified (a column added later reads as null in older files)."""
    files = sorted(
        str(p)
        for p in folder.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )
    if not files:
        raise SystemExit(f"no Parquet files under {folder}")
    factory = ds.FileSystemDatasetFactory(
        pafs.LocalFileSystem(), files, ds.ParquetFileFormat(), ds.FileSystemFactoryOptions()
    )
    return factory.finish(schema=factory.inspect(promote_options="permissive", fragments=None))


def _read(dataset: ds.Dataset, wanted: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    columns = [c for c in wanted if c in dataset.schema.names]
    rows = dataset.to_table(columns=columns, use_threads=True).num_rows
    return rows, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--landing", type=Path, required=True)
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--tables", default="orders,lineitem")
    parser.add_argument("--sinks", default="parquet,delta")
    args = parser.parse_args(argv)
    sinks = args.sinks.split(",")
    started = time.perf_counter()
    parts: dict[str, dict[str, float]] = {}
    for table in args.tables.split(","):
        key, cursor, lookup, op = TABLES[table]
        rows, seconds = _read(_parquet_files(args.landing / table), [*key, cursor, lookup, op])
        parts[f"{table}/landing"] = {"rows": rows, "seconds": round(seconds, 3)}
        stored = [*key, cursor, "region", *MARKERS]
        if "parquet" in sinks:
            rows, seconds = _read(_parquet_files(args.warehouse / "parquet" / table), stored)
            parts[f"{table}/parquet"] = {"rows": rows, "seconds": round(seconds, 3)}
        if "delta" in sinks:
            from deltalake import DeltaTable

            opened = time.perf_counter()
            dataset = DeltaTable(str(args.warehouse / "delta" / table)).to_pyarrow_dataset()
            rows, _ = _read(dataset, stored)  # the log's replay counted too
            parts[f"{table}/delta"] = {"rows": rows, "seconds": round(time.perf_counter() - opened, 3)}
    print(
        json.dumps(
            {
                "ok": True,
                "rows": sum(int(p["rows"]) for p in parts.values()),
                "parts": parts,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    exit_now(main())
