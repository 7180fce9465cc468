"""The Ray executor: tasks read the planned row groups of each file into the cluster's object store;
a task per block cuts it into key-range parts and a task per part runs the stage chain
(loader/execute/stages.py) on it whole. The parts stay where they are: the sinks write them from Ray
tasks (loader/sinks/table_writes.py), and the driver never holds a table's rows, only references,
counts and the schema. Also Ray's start-up (`init_ray`), the cluster's address and GPUs, and the part
arithmetic."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from loader.config import LoaderConfig, RayConfig
from loader.execute import ray_folders
from loader.execute.stages import SourceRows, StageChain, log_read
from loader.landing.files import files_schema
from loader.landing.plans import RunPlan, SourcePlan
from loader.landing.quarantine import merge_bad
from loader.landing.sources import Checks, read_parquet, window_mask
from loader.sinks.base import DELETED
from loader.transform.frames import EngineName, GpuStatus
from loader.transform.lookups import Lookups
from state import Window

log = logging.getLogger(__name__)


def ray_address_problem(address: str) -> str | None:
    """Why the Ray cluster at `address` cannot be reached over TCP within seconds, or None. "auto" and
    "local" (a cluster on this machine, found or started by Ray itself) are not probed."""
    from urllib.parse import urlparse

    from loader.net import unreachable

    if address == "auto" or address.startswith("local"):
        return None
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    port = parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    return unreachable(parsed.hostname or "localhost", port)


def cluster_gpu_status() -> GpuStatus:
    """GPUs of the connected Ray cluster (the workers run the transforms), and cuDF on this machine (the
    loader's image is the same on every node)."""
    import importlib.util

    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if importlib.util.find_spec("cudf") is None:
        return GpuStatus(False, "cuDF is not installed (pip install -e '.[gpu]' in the loader's image)")
    if gpus < 1:
        return GpuStatus(False, "the Ray cluster reports no GPU "
                                "(start GPU workers with `ray start --num-gpus N`)")
    return GpuStatus(True, f"the Ray cluster has {gpus} GPU(s), cuDF installed", gpus)


_FORWARDED_ENV = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
})


def init_ray(settings: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = settings.address  # RAY_ADDRESS is settled into it with the config
    kwargs: dict[str, object] = {"include_dashboard": False, "log_to_driver": False,
                                 "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
        # Workers started by the cluster do not have this process's environment: hand them the S3
        # endpoint and credentials the driver uses (nodes with an instance role need none of it).
        forwarded = {k: v for k, v in os.environ.items() if k in _FORWARDED_ENV}
        if forwarded:
            kwargs["runtime_env"] = {"env_vars": forwarded}
    else:  # a private local instance: Ray detects CPUs and GPUs itself unless told
        # "local": never attach to another Ray cluster started on this machine (`ray start`, a test's
        # cluster), which plain ray.init() would do, running our tasks on someone else's workers.
        kwargs["address"] = "local"
        # Ray's session files and spill in folders of ours, removed at exit (not in /tmp/ray forever)
        folders = ray_folders.claim(settings.temp_dir, settings.spill_dir)
        kwargs["_temp_dir"] = str(folders.temp)
        if folders.spill is not None:
            kwargs["object_spilling_directory"] = str(folders.spill)
        if settings.num_cpus:
            kwargs["num_cpus"] = settings.num_cpus
        if settings.num_gpus is not None:
            kwargs["num_gpus"] = settings.num_gpus
    ray.init(**kwargs)  # type: ignore[arg-type]
    ray.data.DataContext.get_current().enable_progress_bars = False


def _stage_resources(engine: EngineName) -> dict[str, Any]:
    """What a stage task holds: one GPU on the GPU engine (so at most one task per GPU at a time), a
    CPU otherwise. The reads are done (held in the object store) before any stage task starts, so a
    GPU task holding a CPU starves nothing."""
    return {"num_gpus": 1} if engine == "gpu" else {"num_cpus": 1}


def part_count(settings: RayConfig, gpu_batch_rows: int, engine: EngineName, rows: int, cpus: int) -> int:
    """How many key-range parts a source's window is cut into: one per CPU at least (every core
    transforms and writes), none over ray.rows_per_part rows (a part is what one worker holds; on the
    GPU none over transform.gpu_batch_rows), never more than rows."""
    largest = settings.rows_per_part
    if engine == "gpu":
        largest = min(largest, gpu_batch_rows)
    return max(1, min(rows, max(cpus, math.ceil(rows / largest))))


def run_ray(config: LoaderConfig, plan: RunPlan, dims: Lookups,
            engine: EngineName) -> Iterator[SourceRows]:
    """Each source's window stays in the cluster: tasks read its planned row groups into the object
    store (on the nodes); a task per read block splits it into key-range parts; a task per part gathers
    its pieces (every version of its keys) and runs the stage chain on them; the parts go to the sinks
    as object references. The driver fetches only counts, the key's range and node ids.

    (Ray Data's own groupby/map_groups does the same shuffle through aggregator actors: 15 s more per
    source on 2 cores for 300k rows, measured; plain tasks reuse the pooled workers.)"""
    import ray

    init_ray(config.ray)
    dims_ref = _in_object_store(dims)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    for name, source_plan in plan.sources.items():
        if source_plan.is_empty:
            continue
        chain = StageChain.for_source(config, name, source_plan.window, engine=engine)
        first = chain.source.primary_key[0]
        # A task per planned file (per share of its row groups when the files are fewer than the CPUs)
        # reads only the row groups the batch recorded, filtered to the window, into the object store.
        reader: Any = ray.remote(_read_row_groups)
        blocks = [reader.remote(source_plan.location, path, groups, chain.source.cursor, chain.window,
                                chain.checks, name)
                  for path, groups in _read_tasks(source_plan, cpus)]
        read, low, high = _key_range(ray.get([ray.remote(_block_stats).remote(b, first) for b in blocks]))
        parts = part_count(config.ray, config.transform.gpu_batch_rows, engine, read, cpus)
        split: Any = ray.remote(_split_block).options(num_returns=parts)
        pieces = [split.remote(block, first, parts, low, high) for block in blocks]
        pieces = [p if isinstance(p, list) else [p] for p in pieces]  # num_returns=1 gives a bare ref
        stage: Any = ray.remote(_stage_part).options(num_returns=5, **_stage_resources(engine))
        staged = ([stage.remote(chain, dims_ref, *(p[i] for p in pieces)) for i in range(parts)] if pieces
                  else [])
        del blocks, pieces  # the raw rows leave the object store once the stage tasks have them
        counts = ray.get([rows for _, rows, _, _, _ in staged])
        tombstones = sum(ray.get([dead for _, _, _, _, dead in staged]))
        nodes = sorted(set(ray.get([node for _, _, node, _, _ in staged])))
        quarantined = merge_bad(ray.get([bad for _, _, _, bad, _ in staged]))  # rows that failed a check: few
        refs = [table for (table, _, _, _, _), rows in zip(staged, counts, strict=True) if rows]
        log_read(name, source_plan, read, sum(counts))
        log.info("%s: %d part(s) deduplicated and transformed on %d Ray node(s)", name, parts, len(nodes))
        if refs:
            yield SourceRows(name, ray.get(ray.remote(_schema_of).remote(refs[0])), refs, sum(counts), nodes,
                             read=read, quarantined=quarantined, tombstones=tombstones)
        else:  # nothing in the window: the sinks still commit the run (and create the table)
            empty, _ = chain.run(_empty_input(source_plan), dims)
            yield SourceRows(name, empty.schema, [empty], 0, nodes, read=read, quarantined=quarantined)


_DIMS_PUT: list[tuple[str, Lookups, Any]] = []  # the lookups put last: (Ray job id, lookups, reference)


def _in_object_store(dims: Lookups) -> Any:
    """`dims` in the object store once per run (the batches of a run share one version), not once
    per batch; put again for another version or another Ray session."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    if not _DIMS_PUT or _DIMS_PUT[0][0] != job or _DIMS_PUT[0][1] is not dims:
        _DIMS_PUT[:] = [(job, dims, ray.put(dims))]
    return _DIMS_PUT[0][2]


def _read_tasks(source_plan: SourcePlan, cpus: int) -> list[tuple[str, tuple[int, ...]]]:
    """(file, row groups) per read task: a task per planned file, a file's row groups shared among
    several tasks while the tasks are fewer than the CPUs (so the reads, and what follows, spread)."""
    files = [(f.path, tuple(f.row_groups)) for f in source_plan.files]
    while len(files) < cpus:
        widest = max(range(len(files)), key=lambda i: len(files[i][1]), default=None)
        if widest is None or len(files[widest][1]) < 2:
            break
        path, groups = files.pop(widest)
        half = len(groups) // 2
        files += [(path, groups[:half]), (path, groups[half:])]
    return files


def _read_row_groups(location: Any, path: str, groups: tuple[int, ...], cursor: str, window: Window,
                     checks: Checks, source: str) -> pa.Table:
    """The row groups `groups` of one landing file, only the rows the stage can take: inside the window,
    and those the stage's checks quarantine (a null cursor, one in the future)."""
    rows = read_parquet(location, path, what=f"source {source!r}", row_groups=groups)
    if cursor not in rows.column_names:
        return rows  # the stage names the missing column
    values = rows[cursor]
    keep = pc.or_kleene(pc.is_null(values), window_mask(rows, cursor, window))
    future = datetime.fromtimestamp(checks.now.timestamp() + checks.tolerance_s, UTC)
    keep = pc.or_kleene(keep, pc.greater(values, pa.scalar(future, type=values.type)))
    return rows if pc.all(keep).as_py() else rows.filter(keep)


def _block_stats(block: pa.Table, key: str) -> tuple[int, Any, Any]:
    """Rows, least and greatest value of `key` in one block (fetched by the driver: three numbers)."""
    bounds = pc.min_max(block[key])
    return block.num_rows, bounds["min"].as_py(), bounds["max"].as_py()


def _key_range(stats: list[tuple[int, Any, Any]]) -> tuple[int, Any, Any]:
    lows = [low for rows, low, _ in stats if rows and low is not None]
    highs = [high for rows, _, high in stats if rows and high is not None]
    return sum(rows for rows, _, _ in stats), min(lows, default=None), max(highs, default=None)


def _split_block(block: pa.Table, key: str, parts: int, low: Any, high: Any) -> Any:
    """One read block cut into `parts` pieces by part number (a Ray task with `parts` returns)."""
    numbers = part_numbers(block[key], parts=parts, low=low, high=high)
    pieces = [block.filter(pc.equal(numbers, i)) for i in range(parts)]
    return pieces if parts > 1 else pieces[0]


def _stage_part(chain: StageChain, dims: Lookups,
                *pieces: pa.Table) -> tuple[pa.Table, int, str, pa.Table | None, int]:
    """One part, whole (every version of its keys), through the stage chain; on the GPU straight from
    Arrow to cuDF and back. Returns the rows, their count, this node, the rows that failed a check, and
    how many of the rows are tombstones (upstream deletes)."""
    import ray

    out, bad = chain.run(pa.concat_tables(pieces, promote_options="permissive"), dims)
    dead = int(pc.sum(out[DELETED]).as_py() or 0) if chain.source.deletes is not None else 0
    return out, out.num_rows, ray.get_runtime_context().get_node_id(), bad, dead


def _schema_of(table: pa.Table) -> pa.Schema:
    return table.schema


def part_numbers(column: pa.ChunkedArray | pa.Array, *, parts: int, low: Any, high: Any) -> pa.Array:
    """The part of each row: its first key column's place in [low, high] cut in `parts` equal ranges
    (key-range parts keep each Delta merge to its own files), or a hash of it for keys that do not
    divide so (strings). All versions of a key share a part, so a part dedupes on its own. Null keys
    go to part 0, where the dedupe refuses them."""
    import numpy as np
    import pandas as pd

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_integer(column.type) and isinstance(low, int) and isinstance(high, int):
        values = column.fill_null(low).to_numpy(zero_copy_only=False).astype("float64")
        numbers = np.clip((values - low) * parts // (high - low + 1), 0, parts - 1).astype("int32")
    else:
        hashed = pd.util.hash_array(np.asarray(column.to_numpy(zero_copy_only=False), dtype=object))
        numbers = (hashed % np.uint64(parts)).astype("int32")
    if column.null_count:
        numbers[column.is_null().to_numpy(zero_copy_only=False)] = 0
    return pa.array(numbers, type=pa.int32())


def _empty_input(source_plan: SourcePlan) -> pa.Table:
    schema = files_schema(source_plan.location, [source_plan.files[0].path])
    assert schema is not None  # one file's schema always combines
    return schema.empty_table()
