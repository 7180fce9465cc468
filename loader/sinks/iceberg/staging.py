"""The rows a batch's parts before the last leave for it: a Parquet file each under
`<warehouse>/_staging/<namespace>/<table>/<pipeline>/<run>/`, read back by the last part (the parts run in
sequence) and removed once the batch is committed, replayed or discarded. Never read by anyone else."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from loader.sinks.base import TableBatch
from loader.storage import Location, locate


def folder(root: str, namespace: str, batch: TableBatch) -> Location:
    """Where the parts before a batch's last one leave their rows for it (never read by anyone else)."""
    run = f"backfill-{batch.run_number}" if batch.mode == "backfill" else f"run-{batch.run_number}"
    return locate(root).child("_staging", namespace, batch.table, batch.pipeline, run)


def stage_part(stage: Location, data: pa.Table, part: int) -> None:
    stage.filesystem.create_dir(stage.path, recursive=True)
    pq.write_table(data, f"{stage.path}/part-{part:05d}.parquet", filesystem=stage.filesystem)


def staged(stage: Location, parts: int) -> list[pa.Table]:
    """The rows parts 0 .. `parts` - 1 of this attempt staged (each wrote its file before the last
    part runs: the parts run in sequence)."""
    return [pq.read_table(f"{stage.path}/part-{i:05d}.parquet", filesystem=stage.filesystem)
            for i in range(parts)]


def drop(stage: Location) -> None:
    if stage.filesystem.get_file_info(stage.path).type != pafs.FileType.NotFound:
        stage.filesystem.delete_dir(stage.path)


def discard_run(root: str, namespace: str, table: str, run_number: int) -> None:
    """What run `run_number` of `table` staged, under any pipeline, incremental or backfill: removed."""
    tables = locate(root).child("_staging", namespace, table)
    for pipeline in tables.filesystem.get_file_info(pafs.FileSelector(tables.path, allow_not_found=True)):
        for run in (f"run-{run_number}", f"backfill-{run_number}"):
            stage = f"{pipeline.path}/{run}"
            if tables.filesystem.get_file_info(stage).type == pafs.FileType.Directory:
                tables.filesystem.delete_dir(stage)
