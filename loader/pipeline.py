"""Execution of the planned reads: read -> window filter -> dedupe on the primary key (latest cursor
wins) -> enrich -> region lookup -> regional rules. Two executors run the very same stage functions:

- `local`: in this process with pyarrow (threads for I/O). No Ray start-up cost (about 7 s on 2 cores
  for `ray.init` plus the first job), which dominates a small increment.
- `ray`: Ray Data reads the planned files in parallel tasks into the cluster's object store, numbers
  the rows into key-range parts, and an actor pool dedupes and transforms each part whole. The parts
  stay where they are: the sinks write them from Ray tasks (loader/table_writes.py), and the driver
  never holds a table's rows, only references, counts and the schema.

Either executor runs the transforms on one of two engines (loader/frames.py): `cpu` (pandas over
Arrow) or `gpu` (cuDF; on Ray each actor requests one GPU and the pool has one actor per GPU).

The stages are row-local and dedupe keeps exactly one deterministic row per key, so both executors
land identical tables (tests/integration/test_engines.py compares sink contents).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from loader.config import LoaderConfig, SourceConfig
from loader.dimensions import Dimensions
from loader.frames import EngineChoice, EngineName, GpuStatus, choose_transform_engine, frames_for, gpu_status
from loader.planning import RunPlan, SourcePlan
from loader.region_rules import RegionRule
from loader.retry import call_with_retries
from loader.sources import read_dimension, read_source, rows_in_window
from loader.tables import dedupe_latest
from loader.transforms import transform_fact
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
        return ExecutorChoice("ray", f"{rows:,} estimated rows > ray.local_max_rows={config.ray.local_max_rows:,}")
    return ExecutorChoice("local", f"{rows:,} estimated rows <= ray.local_max_rows={config.ray.local_max_rows:,}: Ray start-up would cost more than the work")


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
    tables = {name: read_dimension(config, name) for name in ("customer", "supplier", "nation", "region")}
    return Dimensions.from_tables(**tables)


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


def run_local(config: LoaderConfig, plan: RunPlan, dims: Dimensions, engine: EngineName) -> Iterator[SourceRows]:
    rules = region_rules(config)
    frames = frames_for(engine)
    for name, source_plan in plan.sources.items():
        if source_plan.is_empty:
            continue
        source = config.sources[name]
        rows = call_with_retries(  # already filtered to the window
            f"reading {name}", config.source_retry, partial(read_source, source_plan, cursor=source.cursor)
        )
        read = rows.num_rows
        # Dedupe first, then drop the raw rows: only one full copy of the window is alive at a time.
        latest = dedupe_latest(rows, key=source.primary_key, cursor=source.cursor)
        del rows
        _log_read(name, source_plan, read, latest.num_rows)
        table = transform_fact(latest, kind=source.kind, dims=dims, rules=rules, frames=frames)
        yield SourceRows(name, table.schema, [table], table.num_rows, [])


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


def _actor_pool(engine: EngineName) -> dict[str, Any]:
    """map_groups arguments: on the GPU one actor per GPU in the cluster, each holding one; on the CPU
    one actor per node to start, up to one per CPU.

    GPU actors reserve no CPU slot: a pool of one actor per GPU, each also holding a CPU, can take
    every CPU of a node and starve the read tasks that feed it (seen: 2 CPUs, 2 GPUs, a hang)."""
    import ray

    if engine == "gpu":  # choose_run_engine saw at least one GPU in the cluster
        gpus = max(1, int(ray.cluster_resources().get("GPU", 0)))
        return {"num_gpus": 1, "num_cpus": 0, "compute": ray.data.ActorPoolStrategy(size=gpus)}
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
    # Start with an actor per node (Ray Data spreads them), but leave a CPU for the reads feeding them.
    start = max(1, min(nodes, cpus - 1))
    return {"compute": ray.data.ActorPoolStrategy(min_size=start, max_size=max(start, cpus))}


def part_count(config: LoaderConfig, engine: EngineName, rows: int, cpus: int) -> int:
    """How many key-range parts a source's window is cut into: one per CPU at least (every core
    transforms and writes), none over ray.rows_per_part rows (a part is what one worker holds; on the
    GPU none over transform.gpu_batch_rows), never more than rows."""
    largest = config.ray.rows_per_part
    if engine == "gpu":
        largest = min(largest, config.transform.gpu_batch_rows)
    return max(1, min(rows, max(cpus, math.ceil(rows / largest))))


def run_ray(config: LoaderConfig, plan: RunPlan, dims: Dimensions, engine: EngineName) -> Iterator[SourceRows]:
    """Each source's window stays in the cluster: read in parallel tasks (held in the object store, on
    the nodes), numbered into key-range parts, each part deduplicated and transformed whole by one actor
    (Ray's groupby hands a group to one call), and handed to the sinks as object references. The driver
    fetches only counts, the key's range and the schema."""
    import ray
    from ray.data.aggregate import Count, Max, Min

    init_ray(config)
    rules = region_rules(config)
    dims_ref = ray.put(dims)
    pool = _actor_pool(engine)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    for name, source_plan in plan.sources.items():
        if source_plan.is_empty:
            continue
        source = config.sources[name]
        window = source_plan.window
        first = source.primary_key[0]
        dataset = ray.data.read_parquet(
            _ray_paths(source_plan), filesystem=source_plan.location.filesystem, partitioning=None,
        ).filter(expr=_window_expression(source.cursor, window))
        # Ray packs small files into few read tasks: cut the rows into at least a block per CPU (per
        # planned file when there are more) so the reads, and what follows, spread over the nodes.
        raw = dataset.repartition(max(len(source_plan.files), cpus)).materialize()
        stats = raw.aggregate(Count(), Min(first), Max(first))
        read = stats["count()"]
        if not read:
            empty = stage_batch(_empty_input(source_plan), source=source, window=window, dims=dims, rules=rules,
                                engine=engine)
            _log_read(name, source_plan, 0, 0)
            yield SourceRows(name, empty.schema, [empty], 0, [])
            continue
        parts = part_count(config, engine, read, cpus)
        staged = raw.map_batches(
            _number_parts, batch_format="pyarrow",
            fn_kwargs={"key": first, "parts": parts, "low": stats[f"min({first})"], "high": stats[f"max({first})"]},
        ).groupby(PART_COLUMN, num_partitions=parts).map_groups(
            _RayStage, batch_format="pyarrow", **pool,
            fn_constructor_kwargs={"source": source, "window": window, "dims": dims_ref, "rules": rules, "engine": engine},
        ).materialize()
        del raw  # the window's raw rows leave the object store
        # The non-empty blocks only (a shuffle partition left without a group yields an empty one).
        blocks = [(ref, meta.num_rows) for bundle in staged.iter_internal_ref_bundles()
                  for ref, meta in zip(bundle.block_refs, bundle.metadata, strict=True)]
        refs = [ref for ref, rows in blocks if rows]
        kept = sum(rows for _, rows in blocks)
        # Where the parts are is where they were transformed (an actor's output stays on its node).
        located = ray.experimental.get_object_locations(refs)
        nodes = sorted({node for info in located.values() for node in info.get("node_ids", [])})
        _log_read(name, source_plan, read, kept)
        log.info("%s: %d part(s) deduplicated and transformed on %d Ray node(s)", name, parts, len(nodes))
        yield SourceRows(name, staged.schema().base_schema, refs, kept, nodes)


PART_COLUMN = "__loader_part"


def _number_parts(batch: pa.Table, *, key: str, parts: int, low: Any, high: Any) -> pa.Table:
    """The part of each row: its first key column's place in [low, high] cut in `parts` equal ranges
    (key-range parts keep each Delta merge to its own files), or a hash of it for keys with no order
    that divides (strings). All versions of a key share the part, so a part dedupes on its own."""
    import pandas as pd

    column = batch[key]
    if pa.types.is_integer(column.type) and isinstance(low, int) and isinstance(high, int):
        values = column.to_numpy(zero_copy_only=False)
        span = high - low + 1
        numbers = ((values.astype("float64") - low) * parts // span).clip(0, parts - 1)
    else:
        hashed = pd.util.hash_array(column.to_numpy(zero_copy_only=False).astype(object))
        numbers = hashed % parts
    numbers = pa.array(numbers, type=pa.int32()).fill_null(0) if column.null_count == 0 else pc.if_else(
        pc.is_null(column), 0, pa.array(numbers, type=pa.int32(), from_pandas=True))
    return batch.append_column(PART_COLUMN, numbers)


def _window_expression(cursor: str, window: Window) -> Any:
    """Pushed into Ray's Parquet scan. Null cursors pass, so the stage can refuse them loudly."""
    from ray.data.expressions import col, lit

    inside = col(cursor) <= lit(window.upper)
    if window.lower is not None:
        inside = inside & (col(cursor) > lit(window.lower))
    return col(cursor).is_null() | inside


class _RayStage:
    """A Ray actor holding the broadcast dimensions once (and, on the GPU, their device copy). Each call
    gets one whole part (every version of its keys): window check, dedupe, enrichment, region, rules;
    on the GPU straight from Arrow to cuDF and back."""

    def __init__(self, *, source: SourceConfig, window: Window, dims: object, rules: Mapping[str, RegionRule],
                 engine: EngineName) -> None:
        import ray

        self.source, self.window, self.rules, self.engine = source, window, rules, engine
        self.dims: Dimensions = ray.get(dims) if isinstance(dims, ray.ObjectRef) else dims  # type: ignore[assignment]

    def __call__(self, part: pa.Table) -> pa.Table:
        source = self.source
        rows = rows_in_window(part.drop_columns([PART_COLUMN]), source=source.path, cursor=source.cursor,
                              window=self.window)
        latest = dedupe_latest(rows, key=source.primary_key, cursor=source.cursor)
        return transform_fact(latest, kind=source.kind, dims=self.dims, rules=self.rules, frames=frames_for(self.engine))


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
