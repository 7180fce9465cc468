"""Execution of the planned reads: read -> window filter -> dedupe on the primary key (latest cursor
wins) -> enrich -> region lookup -> regional rules. Two executors run the very same stage functions:

- `local`: in this process with pyarrow (threads for I/O, and on the CPU engine a transform thread per
  core, each on a row-contiguous part of the deduplicated rows). No Ray start-up cost (about 7 s on 2 cores
  for `ray.init` plus the first job), which dominates a small increment.
- `ray`: Ray Data reads the planned files in parallel tasks into the cluster's object store; a task
  per block cuts it into key-range parts and a task per part dedupes and transforms it whole. The parts
  stay where they are: the sinks write them from Ray tasks (loader/sinks/table_writes.py), and the driver
  never holds a table's rows, only references, counts and the schema.

Either executor runs the transforms on one of two engines (loader/transform/frames.py): `cpu` (pandas over
Arrow) or `gpu` (cuDF; on Ray each part's task requests one GPU).

The stages are row-local and dedupe keeps exactly one deterministic row per key, so both executors
land identical tables (tests/integration/test_engines.py compares sink contents).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from loader.config import LoaderConfig, SourceConfig
from loader.landing.quarantine import merge_bad, split_bad_rows, split_no_region
from loader.landing.sources import Checks, read_dimension, read_source, rows_in_window
from loader.protocol.planning import RunPlan, SourcePlan
from loader.retry import call_with_retries
from loader.transform.dimensions import Dimensions
from loader.transform.facts import transform_fact
from loader.transform.frames import (
    EngineChoice,
    EngineName,
    GpuStatus,
    choose_transform_engine,
    frames_for,
    gpu_status,
)
from loader.transform.region_rules import RegionRule
from loader.transform.tables import dedupe_latest, latest_rows, normalize_strings
from state import Window

log = logging.getLogger(__name__)

Executor = Literal["local", "ray"]


@dataclass(frozen=True)
class ExecutorChoice:
    executor: Executor
    reason: str


def choose_executor(config: LoaderConfig, plan: RunPlan, override: str | None = None) -> ExecutorChoice:
    mode = override or config.ray.mode
    if mode in ("local", "ray"):
        return ExecutorChoice(mode, f"executor {mode!r} requested")  # type: ignore[arg-type]
    rows = plan.estimated_rows
    if _cluster_address(config):
        return ExecutorChoice("ray", "a Ray cluster address is configured")
    if rows > config.ray.local_max_rows:
        return ExecutorChoice("ray", f"a batch of {rows:,} estimated rows > ray.local_max_rows={config.ray.local_max_rows:,}")
    return ExecutorChoice("local", f"batches of at most {rows:,} estimated rows <= ray.local_max_rows="
                                   f"{config.ray.local_max_rows:,}: one machine, one batch in memory at a time; "
                                   "Ray start-up would cost more than it saves")


def _cluster_address(config: LoaderConfig) -> str | None:
    return config.ray.address or os.environ.get("RAY_ADDRESS")


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


def preflight(config: LoaderConfig, engine: str | None) -> None:
    """Checks that fail a run in seconds, before any state is touched: `gpu` requested without a usable
    GPU, a Ray cluster address nobody answers at (ray.init would retry for a minute or more)."""
    preflight_engine(config, engine)
    address = _cluster_address(config)
    problem = address and ray_address_problem(address)
    if problem:
        from loader.errors import SourceUnavailable

        raise SourceUnavailable(f"the Ray cluster at {address} is not reachable: {problem}. Check ray.address / "
                                "RAY_ADDRESS and that the head node is up; nothing was read or written")


def preflight_engine(config: LoaderConfig, override: str | None) -> None:
    """`gpu` requested on a machine without a usable GPU fails here, before any state is touched.
    With a Ray cluster address the GPUs are the cluster's: checked once Ray is up (`choose_run_engine`)."""
    if (override or config.transform.engine) == "gpu" and not _cluster_address(config):
        choose_transform_engine("gpu")


def cluster_gpu_status() -> GpuStatus:
    """GPUs of the connected Ray cluster (the workers run the transforms), and cuDF on this machine (the
    loader's image is the same on every node)."""
    import importlib.util

    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if importlib.util.find_spec("cudf") is None:
        return GpuStatus(False, "cuDF is not installed (pip install -e '.[gpu]' in the loader's image)")
    if gpus < 1:
        return GpuStatus(False, "the Ray cluster reports no GPU (start GPU workers with `ray start --num-gpus N`)")
    return GpuStatus(True, f"the Ray cluster has {gpus} GPU(s), cuDF installed", gpus)


def choose_run_engine(config: LoaderConfig, executor: Executor, override: str | None) -> EngineChoice:
    """cpu or gpu for this run: on the Ray executor by the cluster's GPUs, in-process by this machine's."""
    requested = override or config.transform.engine
    if requested == "cpu":
        return choose_transform_engine("cpu")
    if executor == "ray":
        init_ray(config)
        return choose_transform_engine(requested, cluster_gpu_status())
    return choose_transform_engine(requested, gpu_status())


def region_rules(config: LoaderConfig) -> dict[str, RegionRule]:
    return {
        name: RegionRule(currency=r.currency, fx_rate=r.fx_rate, vat_rate=r.vat_rate, mask_columns=tuple(r.mask))
        for name, r in config.regions.items()
    }


def load_dimensions(config: LoaderConfig) -> Dimensions:
    """The prepared lookups: from the cache when the dimension files are unchanged since it was made."""
    from loader.transform.dimension_cache import TABLES, load_cached
    from loader.transform.dimensions import COLUMNS

    return load_cached(config, lambda: Dimensions.from_tables(
        **{name: read_dimension(config, name, COLUMNS[name]) for name in TABLES}))


def stage_batch(
    batch: pa.Table, *, source: SourceConfig, window: Window, dims: Dimensions, rules: Mapping[str, RegionRule],
    engine: EngineName,
) -> pa.Table:
    """The row-local stages for one batch: window filter, enrichment, region, regional rules."""
    batch = rows_in_window(batch, source=source.path, cursor=source.cursor, window=window)
    return transform_fact(batch, kind=source.kind, dims=dims, rules=rules, frames=frames_for(engine))


@dataclass
class SourceRows:
    """One source's final rows, as an executor hands them to the sinks: in this process as one table,
    or on the Ray cluster as key-disjoint parts the driver holds only references to."""

    name: str
    schema: pa.Schema
    parts: list[Any]  # pa.Table (in this process) or a ray.ObjectRef of one (in the cluster's object store)
    rows: int
    nodes: list[str]  # the Ray nodes whose actors transformed the rows (none in-process)
    read: int = 0  # rows read in the window (for the quarantine's fraction)
    quarantined: pa.Table | None = None  # rows that failed a check, with their reason (few, or the run fails)


def read_checks(config: LoaderConfig, source: SourceConfig) -> Checks:
    return Checks(key=source.primary_key, now=datetime.now(UTC),
                  tolerance_s=config.quarantine.future_tolerance.total_seconds())


def run_local(config: LoaderConfig, plan: RunPlan, dims: Dimensions, engine: EngineName) -> Iterator[SourceRows]:
    rules = region_rules(config)
    frames = frames_for(engine)
    for name, source_plan in plan.sources.items():
        if source_plan.is_empty:
            continue
        source = config.sources[name]
        rows, bad = call_with_retries(  # already filtered to the window
            f"reading {name}", config.source_retry,
            partial(read_source, source_plan, cursor=source.cursor, checks=read_checks(config, source)),
        )
        rows = normalize_strings(rows)  # take rejects string_view (read_source gives plain strings: a no-op)
        read = rows.num_rows
        order = latest_rows(rows, key=source.primary_key, cursor=source.cursor)
        kept = read if order is None else len(order)
        _log_read(name, source_plan, read, kept)
        # The CPU engine transforms in row-contiguous parts, one per core, on threads of their own
        # (pyarrow's kernels release the GIL; the DataFrame transforms otherwise use one core). The
        # transforms are row-local and the parts go back together in order: the same rows, in key order.
        parts = 1 if engine != "cpu" else max(1, min(pa.cpu_count(), kept // _ROWS_PER_THREAD))
        with ThreadPoolExecutor(max_workers=parts) as pool:
            run = pool.map if parts > 1 else map  # one part (and the GPU): on this thread
            pieces = _latest_pieces(rows, order, parts, run)
            # The raw rows go before the transforms add columns: one full copy of the window at a time.
            del rows, order
            transformed = list(run(partial(transform_fact, kind=source.kind, dims=dims, rules=rules, frames=frames),
                                   pieces))
        del pieces
        table, no_region = split_no_region(transformed[0] if parts == 1 else pa.concat_tables(transformed))
        del transformed
        yield SourceRows(name, table.schema, [table], table.num_rows, [], read=read,
                         quarantined=merge_bad([bad, no_region]))


#: Fewest rows a transform thread takes: below that, thread overhead outweighs the second core.
_ROWS_PER_THREAD = 200_000


def _latest_pieces(rows: pa.Table, order: Any, parts: int, run: Callable[..., Iterator[pa.Table]]) -> list[pa.Table]:
    """The deduplicated rows (`rows` taken at `order`, in key order; `rows` itself when None) in `parts`
    row-contiguous pieces, taken by `run` (a pool's map: in parallel)."""
    count = rows.num_rows if order is None else len(order)
    bounds = [count * i // parts for i in range(parts + 1)]

    def piece(i: int) -> pa.Table:
        low, high = bounds[i], bounds[i + 1]
        return rows.slice(low, high - low) if order is None else rows.take(pa.array(order[low:high]))

    return list(run(piece, range(parts)))


def _log_read(name: str, plan: SourcePlan, read: int, kept: int) -> None:
    log.info("%s: read %s rows in the window from %d file(s), %d row group(s); %s after dedupe",
             name, f"{read:,}", len(plan.files), plan.row_groups, f"{kept:,}")


def _ray_paths(source_plan: SourcePlan) -> list[str]:
    return [f.path for f in source_plan.files]


_FORWARDED_ENV = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
})


def init_ray(config: LoaderConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = _cluster_address(config)
    kwargs: dict[str, object] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
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
        if config.ray.num_cpus:
            kwargs["num_cpus"] = config.ray.num_cpus
        if config.ray.num_gpus is not None:
            kwargs["num_gpus"] = config.ray.num_gpus
    ray.init(**kwargs)  # type: ignore[arg-type]
    ray.data.DataContext.get_current().enable_progress_bars = False


def _stage_resources(engine: EngineName) -> dict[str, Any]:
    """What a stage task holds: one GPU on the GPU engine (so at most one task per GPU at a time), a
    CPU otherwise. The reads are done (held in the object store) before any stage task starts, so a
    GPU task holding a CPU starves nothing."""
    return {"num_gpus": 1} if engine == "gpu" else {"num_cpus": 1}


def part_count(config: LoaderConfig, engine: EngineName, rows: int, cpus: int) -> int:
    """How many key-range parts a source's window is cut into: one per CPU at least (every core
    transforms and writes), none over ray.rows_per_part rows (a part is what one worker holds; on the
    GPU none over transform.gpu_batch_rows), never more than rows."""
    largest = config.ray.rows_per_part
    if engine == "gpu":
        largest = min(largest, config.transform.gpu_batch_rows)
    return max(1, min(rows, max(cpus, math.ceil(rows / largest))))


def run_ray(config: LoaderConfig, plan: RunPlan, dims: Dimensions, engine: EngineName) -> Iterator[SourceRows]:
    """Each source's window stays in the cluster: Ray Data reads it in parallel tasks into the object
    store (on the nodes); a task per read block splits it into key-range parts; a task per part gathers
    its pieces (every version of its keys), dedupes and transforms them; the parts go to the sinks as
    object references. The driver fetches only counts, the key's range and node ids.

    (Ray Data's own groupby/map_groups does the same shuffle through aggregator actors: 15 s more per
    source on 2 cores for 300k rows, measured; plain tasks reuse the pooled workers.)"""
    import ray

    init_ray(config)
    rules = region_rules(config)
    dims_ref = ray.put(dims)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    for name, source_plan in plan.sources.items():
        if source_plan.is_empty:
            continue
        source = config.sources[name]
        window = source_plan.window
        first = source.primary_key[0]
        checks = read_checks(config, source)
        dataset = ray.data.read_parquet(
            _ray_paths(source_plan), filesystem=source_plan.location.filesystem, partitioning=None,
        ).filter(expr=_window_expression(source.cursor, window, checks))
        # Ray packs small files into few read tasks: cut the rows into at least a block per CPU (per
        # planned file when there are more) so the reads, and what follows, spread over the nodes.
        raw = dataset.repartition(max(len(source_plan.files), cpus)).materialize()
        blocks = _block_refs(raw)
        read, low, high = _key_range(ray.get([ray.remote(_block_stats).remote(b, first) for b in blocks]))
        parts = part_count(config, engine, read, cpus)
        split: Any = ray.remote(_split_block).options(num_returns=parts)
        pieces = [split.remote(block, first, parts, low, high) for block in blocks]
        pieces = [p if isinstance(p, list) else [p] for p in pieces]  # num_returns=1 gives a bare ref
        stage: Any = ray.remote(_stage_part).options(num_returns=4, **_stage_resources(engine))
        staged = [stage.remote(source, window, checks, dims_ref, rules, engine, *(p[i] for p in pieces))
                  for i in range(parts)] if pieces else []
        del raw, blocks, pieces  # the raw rows leave the object store once the stage tasks have them
        counts = ray.get([rows for _, rows, _, _ in staged])
        nodes = sorted(set(ray.get([node for _, _, node, _ in staged])))
        quarantined = merge_bad(ray.get([bad for _, _, _, bad in staged]))  # rows that failed a check: few
        refs = [table for (table, _, _, _), rows in zip(staged, counts, strict=True) if rows]
        _log_read(name, source_plan, read, sum(counts))
        log.info("%s: %d part(s) deduplicated and transformed on %d Ray node(s)", name, parts, len(nodes))
        if refs:
            yield SourceRows(name, ray.get(ray.remote(_schema_of).remote(refs[0])), refs, sum(counts), nodes,
                             read=read, quarantined=quarantined)
        else:  # nothing in the window: the sinks still commit the run (and create the table)
            empty = stage_batch(_empty_input(source_plan), source=source, window=window, dims=dims, rules=rules,
                                engine=engine)
            yield SourceRows(name, empty.schema, [empty], 0, nodes, read=read, quarantined=quarantined)


def _block_refs(dataset: Any) -> list[Any]:
    """The object references of a materialized dataset's non-empty blocks (nothing is fetched)."""
    return [ref for bundle in dataset.iter_internal_ref_bundles()
            for ref, meta in zip(bundle.block_refs, bundle.metadata, strict=True) if meta.num_rows]


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


def _stage_part(source: SourceConfig, window: Window, checks: Checks, dims: Dimensions,
                rules: Mapping[str, RegionRule], engine: EngineName,
                *pieces: pa.Table) -> tuple[pa.Table, int, str, pa.Table | None]:
    """One part, whole (every version of its keys): quarantine checks, window, dedupe, enrichment,
    region, rules; on the GPU straight from Arrow to cuDF and back. Returns the rows, their count, this
    node, and the rows that failed a check."""
    import ray

    rows = normalize_strings(pa.concat_tables(pieces, promote_options="permissive"))
    rows, bad = split_bad_rows(rows, key=checks.key, cursor=source.cursor, now=checks.now,
                               tolerance_s=checks.tolerance_s)
    rows = rows_in_window(rows, source=source.path, cursor=source.cursor, window=window)
    latest = dedupe_latest(rows, key=source.primary_key, cursor=source.cursor)
    out, no_region = split_no_region(
        transform_fact(latest, kind=source.kind, dims=dims, rules=rules, frames=frames_for(engine)))
    return out, out.num_rows, ray.get_runtime_context().get_node_id(), merge_bad([bad, no_region])


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


def _window_expression(cursor: str, window: Window, checks: Checks) -> Any:
    """Pushed into Ray's Parquet scan. Null cursors and cursors in the future pass: the stage
    quarantines them (as the in-process reader does)."""
    from ray.data.expressions import col, lit

    inside = col(cursor) <= lit(window.upper)
    if window.lower is not None:
        inside = inside & (col(cursor) > lit(window.lower))
    future = datetime.fromtimestamp(checks.now.timestamp() + checks.tolerance_s, UTC)
    return col(cursor).is_null() | inside | (col(cursor) > lit(future))


def _empty_input(source_plan: SourcePlan) -> pa.Table:
    import pyarrow.parquet as pq

    first = source_plan.files[0].path
    with source_plan.location.filesystem.open_input_file(first) as handle:
        return pq.ParquetFile(handle).schema_arrow.empty_table()


def execute(config: LoaderConfig, plan: RunPlan, executor: Executor, dims: Dimensions,
            engine: EngineName) -> Iterator[SourceRows]:
    """Each source's final rows in turn: the caller writes one source before the next is computed,
    so only one source's window is held (in this process, or in the Ray cluster) at a time."""
    runner = run_ray if executor == "ray" else run_local
    return runner(config, plan, dims, engine)
