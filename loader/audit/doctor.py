"""`loader doctor`: what this machine and config can use, each check quick and bounded in time.

Ray (local, or the configured cluster address reachable), GPU and cuDF, the landing zone, the
dimension cache, every enabled sink (from the registry, each by its own `probe`), the state store and
its checkpoints (the files their runs recorded still in the landing zone, unchanged). A check that
cannot pass here but is optional (no GPU) is reported as unavailable, not failed; a failed check says
what to fix. Nothing is written anywhere: the state store is opened read-only (a SQLite file not there
yet is not made), folders are checked for writability, never made (tests/integration/test_doctor.py
compares the whole tree before and after).
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


@dataclass
class _StateRead:
    """What the state store check read, for the checkpoints check (one connection for both)."""

    checkpoints: dict[str, Any]  # source -> state.Checkpoint
    inputs: dict[int, dict[str, Any] | None]  # run number of a checkpoint -> that run's recorded input


def check_state(config: LoaderConfig, read: list[_StateRead] | None = None) -> tuple[str, str]:
    """Opened read-only: a SQLite file or folder not there yet is not made (the first run makes it),
    an older schema is not migrated (the next run does)."""
    from state import SCHEMA_VERSION, StateStore

    where = redact(config.state.url)
    store = StateStore.open_read_only(config.state.url)
    nothing = _StateRead({}, {})
    if store is None:
        if read is not None:
            read.append(nothing)
        return "ok", f"{where}: not created yet: the first run creates it"
    try:
        version = store.schema_version()
        if version == 0:
            if read is not None:
                read.append(nothing)
            return "ok", f"{where}: holds no loader tables yet: the first run creates them"
        if version > SCHEMA_VERSION:
            return "failed", (f"{where}: schema version {version}, newer than this loader's "
                              f"{SCHEMA_VERSION}: a newer loader has used it; upgrade the loader to that "
                              "version")
        if version < SCHEMA_VERSION:
            return "ok", f"{where}: schema version {version}: the next run migrates it to {SCHEMA_VERSION}"
        checkpoints = store.checkpoints(config.pipeline)
        lease = store.lease(config.pipeline)
        runs = {cp.run_number: store.run(config.pipeline, cp.run_number) for cp in checkpoints.values()}
    finally:
        store.close()
    if read is not None:
        read.append(_StateRead(checkpoints, {n: r.inputs if r else None for n, r in runs.items()}))
    held = f"; lease held by {lease.holder}" if lease is not None else ""
    return "ok", f"{where}: {len(checkpoints)} checkpoint(s) for {config.pipeline}{held}"


#: At most this many of the files a checkpoint's run read are looked at, per source (the newest).
_FILES_CHECKED = 200


def check_checkpoints(config: LoaderConfig, read: _StateRead) -> tuple[str, str]:
    """Whether the landing zone still holds the files each checkpoint was set from (the checkpoint's run
    recorded them, with size and modification time; looked up, never read). A landing zone made again
    under old state (`demo-data init` after removing it) has other files, or the same names written
    anew: the checkpoints then stand for rows that are no longer there, so the next runs skip the new
    zone's rows below them and `loader verify` finds mismatches."""
    from pyarrow import fs as pafs

    from loader.landing.files import modified
    from loader.storage import locate, short_error

    if not read.checkpoints:
        return "ok", f"none yet for {config.pipeline}: the first run sets them"
    problems, checked = [], 0
    for source, checkpoint in sorted(read.checkpoints.items()):
        if source not in config.sources:
            continue
        inputs = read.inputs.get(checkpoint.run_number) or {}
        files = (inputs.get("sources", {}).get(source, {}).get("files") or [])[-_FILES_CHECKED:]
        if not files:
            continue
        location = locate(config.source_path(source))
        try:
            infos = location.filesystem.get_file_info([f["path"] for f in files])
        except OSError as error:
            return "failed", (f"source {source}: the files of run {checkpoint.run_number} cannot be looked "
                              f"up: {short_error(error)}: check the landing zone (its check above)")
        changed = [f["path"] for f, info in zip(files, infos, strict=True)
                   if info.type != pafs.FileType.File
                   or (f.get("size") is not None and info.size != f["size"])
                   or (f.get("mtime") is not None and modified(info) != f["mtime"])]
        checked += len(files)
        if changed:
            problems.append(f"source {source}: {len(changed)} of the {len(files)} file(s) its checkpoint "
                            f"({checkpoint.cursor.isoformat()}, run {checkpoint.run_number}) was set from "
                            f"are gone or rewritten, e.g. {changed[0]}")
    if problems:
        fix = ("The landing zone was replaced under old checkpoints (e.g. `loader demo-data init` after "
               "removing it): runs take its rows up to them as loaded and `loader verify` reports "
               "mismatches. Start afresh: remove the state store and the warehouse (`make clean-data` "
               "removes data/, where configs/local.yaml keeps them), or put the landing files back")
        return "failed", "; ".join(problems) + ". " + fix
    return "ok", (f"{len(read.checkpoints)} checkpoint(s); the {checked} landing file(s) they were set from "
                  "are there, unchanged")


def stored_checkpoints(config: LoaderConfig) -> int:
    """How many checkpoints the state store holds for the pipeline (read-only: 0, and nothing made,
    where there is no state store yet). `demo-data init` warns when a new landing zone lies under some."""
    from state import StateStore

    store = StateStore.open_read_only(config.state.url)
    if store is None:
        return 0
    try:
        return len(store.checkpoints(config.pipeline)) if store.schema_version() else 0
    finally:
        store.close()


def _sink_probe(config: LoaderConfig, name: str) -> Callable[[], tuple[str, str]]:
    return lambda: check_sink(config, name)


def _state_checks(config: LoaderConfig) -> list[DoctorCheck]:
    """The state store and, once it could be read, its checkpoints against the landing zone."""
    read: list[_StateRead] = []
    state = _timed("state store", lambda: check_state(config, read))
    if state.status == "failed":
        return [state]
    if not read:  # an older schema: not read before the next run migrates it
        return [state, DoctorCheck("checkpoints", "ok", "not checked: the state store's schema is older "
                                   "(the next run migrates it)")]
    return [state, _timed("checkpoints", lambda: check_checkpoints(config, read[0]))]


def run_checks(config: LoaderConfig) -> list[DoctorCheck]:
    checks = [
        _timed("ray", lambda: check_ray(config)),
        _timed("gpu", lambda: check_gpu(config)),
        _timed("landing zone", lambda: check_landing_zone(config)),
        _timed("dimension cache", lambda: check_dimension_cache(config)),
    ]
    from loader.sinks import enabled_names

    checks += [_timed(f"sink {name}", _sink_probe(config, name)) for name in enabled_names(config)]
    checks += _state_checks(config)
    return checks


__all__ = ["DoctorCheck", "run_checks"]
