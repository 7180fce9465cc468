"""Execution of the planned reads: read -> window filter -> enrich -> region lookup -> regional rules,
then dedupe on the primary key (latest cursor wins). Two executors run the very same stage functions:

- `local`: in this process with pyarrow (threads for I/O). No Ray start-up cost (about 7 s on 2 cores
  for `ray.init` plus the first job), which dominates a small increment.
- `ray`: Ray Data reads the planned files in parallel tasks and runs the row-local stages in
  `map_batches` on an actor pool; the dedupe runs on the driver over the transformed rows.

Either executor runs the transforms on one of two engines (loader/frames.py): `cpu` (pandas over
Arrow) or `gpu` (cuDF; on Ray each actor requests one GPU and the pool has one actor per GPU).

The stages are row-local and dedupe keeps exactly one deterministic row per key, sorted by key, so
both executors produce identical tables (tests/integration/test_engines.py compares sink contents).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pyarrow as pa

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


#: What an executor yields per source: its name, its final rows, and the Ray nodes whose actors
#: transformed them (empty in-process).
SourceRows = tuple[str, pa.Table, list[str]]


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
        yield name, transform_fact(latest, kind=source.kind, dims=dims, rules=rules, frames=frames), []


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


def _actor_pool(config: LoaderConfig, engine: EngineName) -> dict[str, Any]:
    """map_batches arguments: on the GPU one actor per GPU in the cluster, each holding one and taking
    batches of transform.gpu_batch_rows; on the CPU one actor per node to start, up to one per CPU, a block
    at a time.

    GPU actors reserve no CPU slot: a pool of one actor per GPU, each also holding a CPU, can take
    every CPU of a node and starve the read tasks that feed it (seen: 2 CPUs, 2 GPUs, a hang)."""
    import ray

    if engine == "gpu":  # choose_run_engine saw at least one GPU in the cluster
        gpus = max(1, int(ray.cluster_resources().get("GPU", 0)))
        return {"num_gpus": 1, "num_cpus": 0, "compute": ray.data.ActorPoolStrategy(size=gpus),
                "batch_size": config.transform.gpu_batch_rows}
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
    # Start with an actor per node (Ray Data spreads them), but leave a CPU for the reads feeding them.
    start = max(1, min(nodes, cpus - 1))
    return {"compute": ray.data.ActorPoolStrategy(min_size=start, max_size=max(start, cpus))}


def run_ray(config: LoaderConfig, plan: RunPlan, dims: Dimensions, engine: EngineName) -> Iterator[SourceRows]:
    import ray

    init_ray(config)
    rules = region_rules(config)
    dims_ref = ray.put(dims)
    pool = _actor_pool(config, engine)
    for name, source_plan in plan.sources.items():
        if source_plan.is_empty:
            continue
        source = config.sources[name]
        window = source_plan.window
        dataset = ray.data.read_parquet(
            _ray_paths(source_plan), filesystem=source_plan.location.filesystem, partitioning=None,
        ).filter(expr=_window_expression(source.cursor, window))
        # Ray packs small files into few read tasks: cut the rows into at least a block per CPU (per
        # planned file when there are more) so the stage's actors, spread over the nodes, all get work.
        dataset = dataset.repartition(max(len(source_plan.files), int(ray.cluster_resources().get("CPU", 1))))
        staged = dataset.map_batches(
            _RayStage, batch_format="pyarrow", **pool,
            fn_constructor_kwargs={"source": source, "window": window, "dims": dims_ref, "rules": rules, "engine": engine},
        )
        parts = ray.get(staged.to_arrow_refs())
        nodes = sorted({node for t in parts if (node := _stage_node(t))})
        parts = [_without_node(t) for t in parts if t.num_rows]
        table = pa.concat_tables(parts, promote_options="permissive") if parts else stage_batch(
            _empty_input(source_plan), source=source, window=window, dims=dims, rules=rules, engine=engine
        )
        latest = dedupe_latest(table, key=source.primary_key, cursor=source.cursor)
        _log_read(name, source_plan, table.num_rows, latest.num_rows)
        log.info("%s: transformed on %d Ray node(s)", name, len(nodes))
        del table, parts
        yield name, latest, nodes


def _window_expression(cursor: str, window: Window) -> Any:
    """Pushed into Ray's Parquet scan. Null cursors pass, so the stage can refuse them loudly."""
    from ray.data.expressions import col, lit

    inside = col(cursor) <= lit(window.upper)
    if window.lower is not None:
        inside = inside & (col(cursor) > lit(window.lower))
    return col(cursor).is_null() | inside


class _RayStage:
    """A Ray actor holding the broadcast dimensions once (and, on the GPU, their device copy), applying
    the row-local stages per Arrow batch: on the GPU straight from Arrow to cuDF and back."""

    def __init__(self, *, source: SourceConfig, window: Window, dims: object, rules: Mapping[str, RegionRule],
                 engine: EngineName) -> None:
        import ray

        self.source, self.window, self.rules, self.engine = source, window, rules, engine
        self.dims: Dimensions = ray.get(dims) if isinstance(dims, ray.ObjectRef) else dims  # type: ignore[assignment]

        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = stage_batch(batch, source=self.source, window=self.window, dims=self.dims, rules=self.rules,
                          engine=self.engine)
        # Which node did the work, for the run summary; dropped on the driver before the sinks.
        return out.replace_schema_metadata({**(out.schema.metadata or {}), _NODE_KEY: self.node.encode()})


_NODE_KEY = b"loader.ray_node"


def _stage_node(table: pa.Table) -> str | None:
    value = (table.schema.metadata or {}).get(_NODE_KEY)
    return value.decode() if value else None


def _without_node(table: pa.Table) -> pa.Table:
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != _NODE_KEY}
    return table.replace_schema_metadata(metadata or None)


def _empty_input(source_plan: SourcePlan) -> pa.Table:
    import pyarrow.parquet as pq

    first = source_plan.files[0].path
    with source_plan.location.filesystem.open_input_file(first) as handle:
        return pq.ParquetFile(handle).schema_arrow.empty_table()


def execute(config: LoaderConfig, plan: RunPlan, executor: Executor, dims: Dimensions,
            engine: EngineName) -> Iterator[SourceRows]:
    """Each source's final rows in turn: the caller writes one source before the next is computed,
    so only one source's window is in memory at a time."""
    runner = run_ray if executor == "ray" else run_local
    return runner(config, plan, dims, engine)
