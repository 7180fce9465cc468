"""The floor of a first load: read the landing zone once and write each sink once, with plain pyarrow and
delta-rs at the sinks' file settings (the physical limit `loader run` is measured against on a machine).

    .venv/bin/python bench/write_once.py --landing L --out DIR [--tables orders,lineitem] \
        [--sinks parquet,delta] [--batch-rows 1000000] [--json]
    .venv/bin/python bench/write_once.py --landing L --read-only [--json]    # the landing read alone

Plan: every landing file of each fact table (`L/<table>/ingest_date=*/*.parquet`, sorted by path: ingest
order) is opened for its footer only. The rows are cut into batches of about --batch-rows rows in all
tables together, each batch taking the same share of every table in file order (the landing files are
in cursor order, so a batch holds orders and their lineitems, as the loader's cursor-cut batches do).
Per batch, per table (orders, then lineitem), one phase after the other:
1. read: the row groups the batch needs (`ParquetFile.read_row_groups`, pyarrow's threads on), sliced to
   the batch's rows, the rest kept for the next batch: every row is read once; string_view / large_string
   columns cast to string; the `op` column (landing bookkeeping no sink stores) dropped.
2. prepare: the two partition columns without any enrichment: `region`, a stand-in picked from the five
   TPC-H region names by `o_custkey % 5` / `l_suppkey % 5` (a take from a five-element array), and the
   UTC day of the cursor (o_updated_at / l_updated_at); one stable sort by (region, day), so the landing
   order holds within a file; the dictionary columns chosen once (loader/sinks/encoding.py).
3. write, the two sinks at once on two threads, as the loader does:
   - Parquet: one file per (region, day), `DIR/parquet/<table>/region=R/date=D/run-<batch>-0.parquet`,
     zstd, a dictionary only for the chosen columns, from a pool of max(2, cores) threads (the sink's
     `_write_partitions`: slices of the sorted copy; no hidden name and rename);
   - Delta: `write_deltalake(DIR/delta/<table>, partition_by=["region"], mode="append")`, 8 MiB target
     files (`target_file_size` and `delta.targetFileSize`), the same per-column dictionary choice in
     `writer_properties` (the sink's `_writer_properties`) and, as there, snappy (delta-rs's default
     codec, which `writer_properties` without a codec would turn off); --delta-compression zstd|none
     names another.
No dedupe, no transforms, no dimensions, no state, no bookkeeping: the floor of I/O and encoding.
DIR/parquet/<table> and DIR/delta/<table> are removed first (untimed). --read-only runs the plan and
phase 1 only, with the same batches: the landing read floor.

Prints a summary, or with --json one JSON object on stdout: seconds per phase (plan, read, prepare,
parquet and delta, each summed over their threads' runs, write: the wall time of the concurrent pairs,
total: the whole wall time), the same per table, rows per table, batches, files written, and the peak
RSS (getrusage ru_maxrss, MiB; also as it stood at the start, after the imports).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import ColumnProperties, WriterProperties, write_deltalake
from exit_now import exit_now

from loader.sinks.encoding import dictionary_columns

#: table -> (cursor, the key the stand-in region is picked by): configs/local.yaml's sources.
TABLES = {"orders": ("o_updated_at", "o_custkey"), "lineitem": ("l_updated_at", "l_suppkey")}
REGIONS = pa.array(["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"])
DROPPED = ("op",)  # landing bookkeeping (the delete marker): no sink stores it
WRITERS = max(2, pa.cpu_count())  # loader/sinks/parquet/facts.py's _WRITERS
TARGET_FILE_SIZE = 8 * 1024 * 1024  # configs/local.yaml: sinks.delta.target_file_mb: 8
COMPRESSION = "zstd"  # configs/local.yaml: sinks.parquet.compression


class Reader:
    """One table's landing rows in file order, taken `take(n)` rows at a time: whole row groups read once,
    the rows past `n` kept for the next take."""

    def __init__(self, folder: Path) -> None:
        paths = sorted(p for p in folder.glob("ingest_date=*/*.parquet") if not p.name.startswith((".", "_")))
        if not paths:
            raise SystemExit(f"no landing files under {folder}/ingest_date=*/")
        self.files = [pq.ParquetFile(p) for p in paths]  # the footers: the plan
        self.rows = sum(f.metadata.num_rows for f in self.files)
        self.queue = [(i, g) for i, f in enumerate(self.files) for g in range(f.metadata.num_row_groups)]
        self.rest: pa.Table | None = None

    def take(self, n: int) -> pa.Table:
        parts = [] if self.rest is None else [self.rest]
        have = 0 if self.rest is None else self.rest.num_rows
        wanted: dict[int, list[int]] = {}
        while have < n and self.queue:
            file, group = self.queue.pop(0)
            wanted.setdefault(file, []).append(group)
            have += self.files[file].metadata.row_group(group).num_rows
        parts += [self.files[file].read_row_groups(groups, use_threads=True)
                  for file, groups in wanted.items()]
        rows = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")
        self.rest = rows.slice(n) if rows.num_rows > n else None
        return _plain(rows.slice(0, n))


def _plain(table: pa.Table) -> pa.Table:
    """string_view and large_string columns as string; the dropped columns gone."""
    table = table.drop_columns([c for c in DROPPED if c in table.column_names])
    fields = [
        pa.field(f.name, pa.string(), f.nullable, f.metadata)
        if pa.types.is_string_view(f.type) or pa.types.is_large_string(f.type) else f
        for f in table.schema
    ]
    schema = pa.schema(fields, table.schema.metadata)
    return table if schema == table.schema else table.cast(schema)


def prepare(table: pa.Table, cursor: str,
            lookup: str) -> tuple[pa.Table, list[tuple[int, int, str, str]], list[str]]:
    """The rows with `region`, sorted by (region, day); each (region, day)'s slice; the dictionary columns."""
    region = REGIONS.take(pc.modulo(table[lookup], 5))
    unit = table[cursor].type.unit if pa.types.is_timestamp(table[cursor].type) else "us"
    days = pc.cast(pc.cast(table[cursor], pa.timestamp(unit)), pa.date32())
    keys = pa.table({"region": region, "day": days})
    order = pc.sort_indices(keys, sort_keys=[("region", "ascending"), ("day", "ascending")])  # stable
    keys = keys.take(order)
    ordered = table.append_column("region", region).take(order)
    regions = keys["region"].combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    day_numbers = keys["day"].combine_chunks().cast(pa.int32()).to_numpy(zero_copy_only=False)
    changes = np.flatnonzero((regions[1:] != regions[:-1]) | (day_numbers[1:] != day_numbers[:-1])) + 1
    starts = [0, *changes.tolist()]
    slices = [
        (begin, end, keys["region"][begin].as_py(), keys["day"][begin].as_py().isoformat())
        for begin, end in zip(starts, [*starts[1:], ordered.num_rows], strict=True)
    ] if ordered.num_rows else []
    return ordered, slices, dictionary_columns(ordered)


def write_parquet(folder: Path, batch: int, rows: pa.Table, slices: list[tuple[int, int, str, str]],
                  dictionary: list[str]) -> int:
    def write_one(piece: tuple[int, int, str, str]) -> None:
        begin, end, region, day = piece
        where = folder / f"region={region}" / f"date={day}"  # the five names need no escaping
        where.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows.slice(begin, end - begin), where / f"run-{batch:08d}-0.parquet",
                       compression=COMPRESSION, use_dictionary=dictionary)

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(write_one, slices))
    return len(slices)


def write_delta(uri: Path, rows: pa.Table, dictionary: list[str], compression: str | None) -> None:
    chosen = set(dictionary)
    properties = WriterProperties(compression=compression, column_properties={
        name: ColumnProperties(dictionary_enabled=name in chosen) for name in rows.column_names})
    write_deltalake(str(uri), rows, partition_by=["region"], mode="append",
                    target_file_size=TARGET_FILE_SIZE,
                    configuration={"delta.targetFileSize": str(TARGET_FILE_SIZE)},
                    writer_properties=properties)


def _timed(work: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = work(*args)
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--landing", type=Path, required=True, help="landing zone (orders/, lineitem/)")
    parser.add_argument("--out", type=Path, help="output folder (parquet/, delta/); not with --read-only")
    parser.add_argument("--tables", default=",".join(TABLES),
                        help="fact tables, comma-separated (default: both)")
    parser.add_argument("--sinks", default="parquet,delta",
                        help="sinks, comma-separated (default: parquet,delta)")
    parser.add_argument("--batch-rows", type=int, default=1_000_000,
                        help="rows per batch, all tables together")
    parser.add_argument("--delta-compression", choices=["snappy", "zstd", "none"], default="snappy",
                        help="the Delta codec (default snappy, as the loader)")
    parser.add_argument("--read-only", action="store_true", help="only read every planned row once")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a summary)")
    args = parser.parse_args(argv)
    rss_at_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tables = [t for t in args.tables.split(",") if t]
    sinks = [s for s in args.sinks.split(",") if s]
    if set(tables) - set(TABLES) or set(sinks) - {"parquet", "delta"} or not tables:
        parser.error(f"--tables takes {', '.join(TABLES)}; --sinks takes parquet, delta")
    if args.batch_rows < 1:
        parser.error("--batch-rows must be positive")
    if args.read_only:
        sinks = []
    elif args.out is None:
        parser.error("--out is required unless --read-only")
    elif not sinks:
        parser.error("--sinks names no sink (use --read-only to only read)")
    if sinks:
        for table in tables:  # a fresh first load, untimed
            for sink in sinks:
                shutil.rmtree(args.out / sink / table, ignore_errors=True)

    started = time.perf_counter()
    readers = {table: Reader(args.landing / table) for table in tables}
    total_rows = sum(r.rows for r in readers.values())
    batches = max(1, -(-total_rows // args.batch_rows))
    phases = ("read", "prepare", "parquet", "delta", "write")
    seconds = {"plan": time.perf_counter() - started, **dict.fromkeys(phases, 0.0)}
    per_table = {t: {"rows": 0, "seconds": dict.fromkeys(phases, 0.0)} for t in tables}
    files = {"parquet": 0}
    with ThreadPoolExecutor(max_workers=2) as pair:
        for batch in range(batches):
            for table, reader in readers.items():
                spent = per_table[table]["seconds"]
                n = reader.rows * (batch + 1) // batches - reader.rows * batch // batches
                rows, spent_read = _timed(reader.take, n)
                per_table[table]["rows"] += rows.num_rows
                spent["read"] += spent_read
                if not sinks or not rows.num_rows:
                    continue
                cursor, lookup = TABLES[table]
                (ordered, slices, dictionary), spent_prepare = _timed(prepare, rows, cursor, lookup)
                spent["prepare"] += spent_prepare
                del rows
                writing = time.perf_counter()
                jobs = {}
                if "parquet" in sinks:
                    jobs["parquet"] = pair.submit(_timed, write_parquet, args.out / "parquet" / table,
                                                  batch + 1, ordered, slices, dictionary)
                if "delta" in sinks:
                    jobs["delta"] = pair.submit(_timed, write_delta, args.out / "delta" / table, ordered,
                                                dictionary,
                                                None if args.delta_compression == "none"
                                                else args.delta_compression)
                for sink, job in jobs.items():
                    result, took = job.result()
                    spent[sink] += took
                    if sink == "parquet":
                        files["parquet"] += result
                spent["write"] += time.perf_counter() - writing
                del ordered
    for part in per_table.values():
        for phase in phases:
            seconds[phase] += part["seconds"][phase]
    seconds["total"] = time.perf_counter() - started
    summary: dict[str, Any] = {
        "mode": "read_only" if args.read_only else "write",
        "tables": tables,
        "sinks": sinks,
        "batch_rows": args.batch_rows,
        "batches": batches,
        "rows": {t: p["rows"] for t, p in per_table.items()},
        "seconds": {k: round(v, 3) for k, v in seconds.items() if sinks or k in ("plan", "read", "total")},
        "per_table": {
            t: {k: round(v, 3) for k, v in p["seconds"].items() if sinks or k == "read"}
            for t, p in per_table.items()
        },
        "parquet_files": files["parquet"] if "parquet" in sinks else None,
        "delta_compression": args.delta_compression if "delta" in sinks else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_at_start_mib": round(rss_at_start, 1),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        s = summary["seconds"]
        print(f"{summary['mode']}: {sum(summary['rows'].values()):,} rows in {batches} batch(es), "
              + ", ".join(f"{k} {v:.2f}s" for k, v in s.items())
              + f", peak RSS {summary['peak_rss_mib']} MiB")
    return 0


if __name__ == "__main__":
    exit_now(main())
