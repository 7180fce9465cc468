"""`loader doctor`: what this machine and config can use, each check quick and bounded in time.

Ray (local, or the configured cluster address reachable), GPU and cuDF, the landing zone, the
dimension cache, every enabled sink (from the registry, each by its own `probe`) and the state store.
A check that cannot pass here but is optional (no GPU) is reported as unavailable, not failed; a failed
check says what to fix. Nothing is written anywhere.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loader.config import LoaderConfig
from loader.redaction import redact


@dataclass
class DoctorCheck:
    name: str
    status: str  # ok | unavailable (optional, not here) | failed
    detail: str
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "seconds": round(self.seconds, 3)}


def _timed(name: str, probe: Callable[[], tuple[str, str]]) -> DoctorCheck:
    started = time.perf_counter()
    try:
        status, detail = probe()
    except Exception as error:  # a probe's own failure is a failed check, with the reason
        status, detail = "failed", (f"{type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''}")
    return DoctorCheck(name, status, redact(detail), time.perf_counter() - started)  # text and --json alike


def check_ray(config: LoaderConfig) -> tuple[str, str]:
    if importlib.util.find_spec("ray") is None:
        return "failed", "ray is not installed: pip install -e . (ray[data] is a dependency)"
    from importlib.metadata import version

    address = config.ray.address
    if not address or address == "auto" or address.startswith("local"):
        where = ("a local Ray instance is started by a run that needs it" if not address
                 else f"address {address!r}")
        return "ok", f"Ray {version('ray')} installed, {os.cpu_count()} CPUs here; {where}"
    from loader.execute.ray_cluster import ray_address_problem

    problem = ray_address_problem(address)
    if problem:
        return "failed", (f"Ray cluster {address}: {problem}. Check ray.address / RAY_ADDRESS and that the "
                          "head is up")
    return "ok", f"Ray {version('ray')}; cluster {address} accepts connections"


def check_gpu(config: LoaderConfig) -> tuple[str, str]:
    """What `transform.engine` would pick here: unavailable (not failed) without a GPU unless it says gpu."""
    from loader.transform.frames import gpu_status

    status = gpu_status()
    requested = config.transform.engine
    if status.usable:
        chosen = "cpu (as configured)" if requested == "cpu" else "gpu"
        return "ok", f"{status.detail}; transform.engine {requested} -> {chosen}"
    if requested == "gpu":
        return "failed", (f"{status.detail}; transform.engine is gpu, so runs fail: install the GPU stack or "
                          "set it to auto")
    return "unavailable", f"{status.detail}; transforms run on the CPU (transform.engine {requested})"


def check_landing_zone(config: LoaderConfig) -> tuple[str, str]:
    from pyarrow import fs as pafs

    from loader.storage import locate

    found = []
    for name in config.sources:
        location = locate(config.source_path(name))
        info = location.filesystem.get_file_info(location.path)
        if info.type == pafs.FileType.NotFound:
            return "failed", (f"source {name}: {location.uri} does not exist. Fix sources.{name}.path or "
                              f"landing_zone, or make demo data: loader demo-data init")
        found.append(f"{name} at {location.uri}")
    return "ok", "; ".join(found)


def check_dimension_cache(config: LoaderConfig) -> tuple[str, str]:
    """Whether the prepared dimensions can be kept, and whether the next run finds them (reads footers
    only)."""
    from loader.errors import LoaderError
    from loader.storage import unwritable
    from loader.transform.lookup_cache import LookupCache, current_entry

    if not config.run.dimension_cache:
        return "ok", "dimension cache: off (run.dimension_cache: false): every run reads the dimension tables"
    cache = LookupCache.of(config)
    folder = cache.folder
    blocked = unwritable(folder)
    if blocked is not None:
        return "failed", (f"dimension cache: cannot write under {blocked}: set run.cache_dir to a "
                          "writable local folder (or run.dimension_cache: false)")
    try:
        entry = current_entry(cache)
    except LoaderError as error:  # the landing zone's own check names the problem
        return "ok", (f"dimension cache: {folder} (the dimension files cannot be read here: "
                      f"{str(error).splitlines()[0]})")
    if entry.is_dir():
        return "ok", f"dimension cache: {entry} matches the dimension files: the next run maps it"
    return "ok", (f"dimension cache: {folder} (no entry for the dimension files as they are: the next run "
                  "prepares one)")


def check_sink(config: LoaderConfig, name: str) -> tuple[str, str]:
    """The sink's own probe: None is usable, anything else says what is wrong and what to fix."""
    from loader.sinks import enabled_sinks

    [sink] = enabled_sinks(config, only=(name,))
    problem = sink.probe()
    if problem:
        return "failed", f"{name}: {problem}"
    return "ok", f"{name}: usable, tables at {sink.location('<table>')}"


def check_state(config: LoaderConfig) -> tuple[str, str]:
    from state import StateStore

    store = StateStore.open(config.state.url)
    try:
        checkpoints = store.checkpoints(config.pipeline)
        lease = store.lease(config.pipeline)
    finally:
        store.close()
    held = f"; lease held by {lease.holder}" if lease is not None else ""
    return "ok", f"{redact(config.state.url)}: {len(checkpoints)} checkpoint(s) for {config.pipeline}{held}"


def _sink_probe(config: LoaderConfig, name: str) -> Callable[[], tuple[str, str]]:
    return lambda: check_sink(config, name)


def run_checks(config: LoaderConfig) -> list[DoctorCheck]:
    checks = [
        _timed("ray", lambda: check_ray(config)),
        _timed("gpu", lambda: check_gpu(config)),
        _timed("landing zone", lambda: check_landing_zone(config)),
        _timed("dimension cache", lambda: check_dimension_cache(config)),
    ]
    from loader.sinks import enabled_names

    checks += [_timed(f"sink {name}", _sink_probe(config, name)) for name in enabled_names(config)]
    checks.append(_timed("state store", lambda: check_state(config)))
    return checks


__all__ = ["DoctorCheck", "run_checks"]
