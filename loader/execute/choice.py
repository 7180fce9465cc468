"""Which executor and engine a run uses, the checks that fail it in seconds before any state is
touched, the prepared dimensions, and the dispatch to the executor. Two executors run the very same
stage chain (loader/execute/stages.py):

- `local` (loader/execute/local.py): in this process with pyarrow, threads for I/O and, on the CPU
  engine, a transform thread per core. No Ray start-up cost, which dominates a small increment.
- `ray` (loader/execute/ray_cluster.py): Ray Data reads into the cluster's object store, a task per
  key-range part runs the chain, and the parts stay there for the sinks to write.

Either runs the transforms on one of two engines (loader/transform/frames.py): `cpu` (pandas over
Arrow) or `gpu` (cuDF; on Ray each part's task requests one GPU). Both executors land identical tables
(tests/integration/test_engines.py compares sink contents)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from loader.config import LoaderConfig
from loader.execute.ray_cluster import cluster_gpu_status, init_ray, ray_address_problem
from loader.execute.stages import SourceRows
from loader.landing.plans import RunPlan
from loader.landing.sources import read_dimension
from loader.transform.frames import EngineChoice, EngineName, choose_transform_engine, gpu_status
from loader.transform.lookups import Lookups

Executor = Literal["local", "ray"]


@dataclass(frozen=True)
class ExecutorChoice:
    executor: Executor
    reason: str


def choose_executor(config: LoaderConfig, plan: RunPlan, *, rows: int | None = None) -> ExecutorChoice:
    """`rows`: the batch's estimate from the cut (what plan and the run's log show); else its row groups'."""
    mode = config.ray.mode
    if mode in ("local", "ray"):
        return ExecutorChoice(mode, f"executor {mode!r} requested")
    rows = plan.estimated_rows if rows is None else rows
    if config.ray.address:
        return ExecutorChoice("ray", "a Ray cluster address is configured")
    if rows > config.ray.local_max_rows:
        return ExecutorChoice("ray", f"a batch of {rows:,} estimated rows > ray.local_max_rows="
                                     f"{config.ray.local_max_rows:,}")
    return ExecutorChoice("local", f"batches of at most {rows:,} estimated rows <= ray.local_max_rows="
                                   f"{config.ray.local_max_rows:,}: one machine, one batch in memory at a "
                                   "time; Ray start-up would cost more than it saves")


def preflight(config: LoaderConfig) -> None:
    """Checks that fail a run in seconds, before any state is touched: `gpu` requested without a usable
    GPU, a Ray cluster address nobody answers at (ray.init would retry for a minute or more)."""
    preflight_engine(config)
    address = config.ray.address
    problem = address and ray_address_problem(address)
    if problem:
        from loader.errors import SourceUnavailable

        raise SourceUnavailable(f"the Ray cluster at {address} is not reachable: {problem}. Check "
                                "ray.address / RAY_ADDRESS and that the head node is up; nothing was read "
                                "or written")


def preflight_engine(config: LoaderConfig) -> None:
    """`gpu` requested on a machine without a usable GPU fails here, before any state is touched.
    With a Ray cluster address the GPUs are the cluster's: checked once Ray is up (`choose_run_engine`)."""
    if config.transform.engine == "gpu" and not config.ray.address:
        choose_transform_engine("gpu")


def choose_run_engine(config: LoaderConfig, executor: Executor) -> EngineChoice:
    """cpu or gpu for this run: on the Ray executor by the cluster's GPUs, in-process by this machine's."""
    requested = config.transform.engine
    if requested == "cpu":
        return choose_transform_engine("cpu")
    if executor == "ray":
        init_ray(config.ray)
        return choose_transform_engine(requested, cluster_gpu_status())
    return choose_transform_engine(requested, gpu_status())


def load_lookups(config: LoaderConfig, *, keep: Collection[str] = ()) -> tuple[Lookups, str]:
    """The prepared lookups, from the cache when the dimension files are unchanged since it was made,
    and the fingerprint of the files they were made from (`keep`: fingerprints whose cached entries
    stay, see loader/transform/lookup_cache.py)."""
    from loader.transform.lookup_cache import TABLES, LookupCache, load_versioned
    from loader.transform.lookups import COLUMNS

    return load_versioned(LookupCache.of(config), lambda: Lookups.from_tables(
        **{name: _current_rows(config, name, COLUMNS[name]) for name in TABLES}), keep=keep)


def _current_rows(config: LoaderConfig, name: str, columns: tuple[str, ...]) -> pa.Table:
    """The lookup's rows of a dimension: its files whole (a snapshot), or, where they are change files
    (`cursor`), the newest version of each key."""
    from loader.transform.tables import dedupe_latest

    cursor = config.dimensions.named(name).cursor
    if cursor is None:
        return read_dimension(config.dimension_path(name), name, columns)
    rows = read_dimension(config.dimension_path(name), name, (*columns, cursor))
    return dedupe_latest(rows, key=config.dimensions.key_of(name), cursor=cursor).drop_columns([cursor])


def execute(config: LoaderConfig, plan: RunPlan, executor: Executor, dims: Lookups,
            engine: EngineName) -> Iterator[SourceRows]:
    """Each source's final rows in turn: the caller writes one source before the next is computed,
    so only one source's window is held (in this process, or in the Ray cluster) at a time."""
    from loader.execute.local import run_local
    from loader.execute.ray_cluster import run_ray

    runner = run_ray if executor == "ray" else run_local
    return runner(config, plan, dims, engine)
