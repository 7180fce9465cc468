"""Configuration: YAML parsed once at the CLI edge into frozen, typed objects.

- `${ENV_VAR}` (or `${ENV_VAR:-default}`) is replaced from the environment before parsing, so secrets
  never have to sit in the file. What a secret-named variable gives, the secret-named keys and the
  passwords of URLs are registered with loader/redaction.py before anything is checked: no message
  shows them, and a YAML syntax error names the line and column, never the line's text.
- Relative paths resolve against the config file's folder: a config copied into an empty folder keeps
  its landing zone, state and warehouse beside it.
- Every problem is reported at once, each with its key path (`sources.orders.cursor: ...`).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from loader import redaction
from loader.config_parts import Frozen, RetryConfig, SinkSettings, is_remote, join_path, parse_duration
from loader.errors import ConfigError
from loader.kinds import fact_kind
from loader.sinks.registry import settings_classes

CONFIG_ENV = "LOADER_CONFIG"
DEFAULT_CONFIG = Path("configs/local.yaml")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_Frozen = Frozen


class DeletesConfig(_Frozen):
    """Upstream deletes of a source: a landing row whose `column` holds one of `values` is a tombstone
    (a CDC tool's delete, e.g. `op = 'D'`). Per key the newest version by cursor decides, tombstones
    included: a key whose newest version is a tombstone leaves Delta and Snowflake (`hard`) or is
    marked deleted there (`soft`); the Parquet log keeps the tombstone as a version. The column itself
    is landing-zone bookkeeping: no sink stores it."""

    column: str = Field(min_length=1)
    values: tuple[StrictStr | StrictBool | StrictInt, ...]
    mode: Literal["hard", "soft"] = "hard"

    @field_validator("values", mode="before")
    @classmethod
    def _value_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str | int | bool) else value

    @field_validator("values")
    @classmethod
    def _values_not_empty(cls, value: tuple[str | int | bool, ...]) -> tuple[str | int | bool, ...]:
        if not value:
            raise ValueError("name at least one value of the column that marks a delete (e.g. [D])")
        return value


class SourceConfig(_Frozen):
    """One incremental fact source of the landing zone."""

    kind: str  # a name in loader.kinds.FACT_KINDS
    path: str
    format: Literal["parquet"] = "parquet"
    cursor: str
    primary_key: tuple[str, ...]
    lookback: timedelta = timedelta(hours=1)
    safety_lag: timedelta = timedelta(0)
    partition_column: str = "ingest_date"
    # Upstream deletes (tombstones) in this source's files; None: every row is a live version.
    deletes: DeletesConfig | None = None

    _durations = field_validator("lookback", "safety_lag", mode="before")(parse_duration)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return fact_kind(value).name

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("primary_key")
    @classmethod
    def _key_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one primary key column")
        return value

    @model_validator(mode="after")
    def _deletes_column_apart(self) -> SourceConfig:
        if self.deletes is not None:
            column = self.deletes.column
            if column == self.cursor:
                raise ValueError(f"deletes.column {column!r} is the cursor: name the column that marks a "
                                 "delete (e.g. op)")
            if column in self.primary_key:
                raise ValueError(f"deletes.column {column!r} is a primary key column: name the column that "
                                 "marks a delete (e.g. op)")
        return self


#: Each dimension's primary key (TPC-H); the keys are the dimension tables, in the order they load.
DIMENSION_KEYS: dict[str, tuple[str, ...]] = {
    "customer": ("c_custkey",), "supplier": ("s_suppkey",), "nation": ("n_nationkey",),
    "region": ("r_regionkey",),
}
#: Each dimension's default mode: history for the entities, the snapshot for the small lookup tables.
DEFAULT_MODES = {"customer": "scd2", "supplier": "scd2", "nation": "replace", "region": "replace"}


class DimensionConfig(_Frozen):
    """One dimension table: read for the region lookup, and loaded to every enabled sink as a table of
    its own (`load`), with history (`mode: scd2`), upserted (`merge`) or overwritten (`replace`)."""

    path: str
    load: bool = True  # false: only read for the region lookup, never written to the sinks
    mode: Literal["scd2", "merge", "replace"] = "scd2"
    key: tuple[str, ...] = ()  # () -> the TPC-H key of the table (DIMENSION_KEYS)
    #: None: the folder holds full snapshots (the change time is the snapshot's newest file time);
    #: a column: the files carry changes with their own update cursor (the change time, per row).
    cursor: str | None = None
    #: The columns whose change opens a new version (scd2) or updates the row (merge). None: all of
    #: them but the key and the cursor.
    track: tuple[str, ...] | None = None
    #: scd2 and merge from snapshots: a key absent from a newer snapshot is `close`d (scd2: its current
    #: version gets valid_to; merge: the row is deleted) or `keep`t as it is.
    missing: Literal["close", "keep"] = "close"

    @field_validator("key", "track", mode="before")
    @classmethod
    def _column_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cursor_apart(self) -> DimensionConfig:
        if self.cursor is not None and self.mode == "replace":
            raise ValueError("mode replace loads whole snapshots: remove cursor, or use scd2 or merge for "
                             "change files")
        if self.cursor is not None and self.cursor in self.key:
            raise ValueError(f"cursor {self.cursor!r} is a key column: name the update time column")
        return self


def _dimension(name: str) -> DimensionConfig:
    return DimensionConfig(path=name, mode=DEFAULT_MODES[name])  # type: ignore[arg-type]


class DimensionsConfig(_Frozen):
    """The four TPC-H dimensions. A plain string is the folder (relative to landing_zone), with the
    defaults: customer and supplier keep their history (scd2), nation and region are replaced."""

    customer: DimensionConfig = _dimension("customer")
    supplier: DimensionConfig = _dimension("supplier")
    nation: DimensionConfig = _dimension("nation")
    region: DimensionConfig = _dimension("region")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            if isinstance(value, str):
                out[name] = {"path": value, "mode": DEFAULT_MODES.get(name, "scd2")}
            elif isinstance(value, dict) and name in DEFAULT_MODES:
                out[name] = {"mode": DEFAULT_MODES[name], "path": name, **value}
        return out

    def named(self, table: str) -> DimensionConfig:
        dimension: DimensionConfig = getattr(self, table)
        return dimension

    def key_of(self, table: str) -> tuple[str, ...]:
        return self.named(table).key or DIMENSION_KEYS[table]


class RegionRuleConfig(_Frozen):
    currency: str
    fx_rate: Decimal = Field(gt=0)
    vat_rate: Decimal = Field(ge=0, lt=1)
    mask: tuple[str, ...] = ()


class _SinksBlock(_Frozen):
    """A block per sink of the registry (loader/sinks/registry.py), each defined in the sink's folder
    (loader/sinks/<name>/config.py)."""

    @model_validator(mode="after")
    def _one_enabled(self) -> _SinksBlock:
        if not any(self.block(name).enabled for name in type(self).model_fields):
            raise ValueError("enable at least one sink")
        return self

    def block(self, name: str) -> SinkSettings:
        """The config block of the sink called `name`."""
        settings: SinkSettings = getattr(self, name)
        return settings

    if TYPE_CHECKING:  # the blocks are fields made from the registry below: typed by their own classes

        def __getattr__(self, name: str) -> Any: ...


if TYPE_CHECKING:
    SinksConfig = _SinksBlock
else:
    SinksConfig = create_model(
        "SinksConfig", __base__=_SinksBlock, __module__=__name__, __doc__=_SinksBlock.__doc__,
        **{name: (cls, cls()) for name, cls in settings_classes().items()})


class RunConfig(_Frozen):
    """How a run is cut: in cursor order into batches of about `max_batch_rows` rows (all sources
    together, estimated from row-group statistics), each read, written and committed before the next.
    A batch is the unit of memory (in-process, about 1 KB a row at peak), of commit and of resume.
    `read_ahead`: while one source's rows are written, the next source (of the batch, or of the next
    batch) is read and transformed (loader/execute/read_ahead.py), as long as both together stay within
    `max_batch_rows`: the budget covers everything in flight."""

    max_batch_rows: StrictInt = Field(default=1_000_000, gt=0)
    read_ahead: StrictBool = True
    # Prepared dimension lookups kept between runs, keyed by the dimension files' fingerprints (a run
    # whose dimensions did not change does not read them). A local folder; None: $LOADER_CACHE_DIR, else
    # beside a SQLite state file, else `loader-cache` in the system temp folder. `dimension_cache: false`
    # reads them every run.
    cache_dir: str | None = None
    dimension_cache: bool = True


class RayConfig(_Frozen):
    """How a batch executes. `auto`: in-process unless a cluster address is configured or a batch is
    over `local_max_rows` estimated rows (only when run.max_batch_rows is set above it)."""

    mode: Literal["auto", "local", "ray"] = "auto"
    address: str | None = None
    local_max_rows: int = Field(default=20_000_000, ge=0)
    num_cpus: int | None = Field(default=None, gt=0)
    num_gpus: int | None = Field(default=None, ge=0)  # local instance only; 0 keeps Ray off the GPUs
    # A local instance's session files (and spill, unless spill_dir) go to <temp_dir>/<pid>, removed when
    # the run ends. None: `loader-<uid>/ray` in the system temp folder. At most 35 bytes: Ray's socket
    # paths live under it. spill_dir: a roomier disk for spilled objects (<spill_dir>/<pid>, also removed).
    temp_dir: str | None = None
    spill_dir: str | None = None
    # The Ray executor cuts each source's window into key-range parts, each deduplicated, transformed
    # and written on a worker: at least one per CPU of the cluster, at most this many rows each.
    rows_per_part: int = Field(default=1_000_000, gt=0)


class TransformConfig(_Frozen):
    """Where the transforms run. `auto`: the GPU (cuDF) when it imports and a CUDA device is visible,
    else the CPU; `gpu` fails at start without one; `cpu` never imports cuDF."""

    engine: Literal["auto", "cpu", "gpu"] = "auto"
    # Most rows a GPU task transforms at once on the Ray executor (the parts are cut no larger; ~200
    # bytes a lineitem row: 1M rows is about 200 MB of device memory, in and out).
    gpu_batch_rows: int = Field(default=1_000_000, gt=0)


class StateConfig(_Frozen):
    url: str = "sqlite:///state/loader.db"
    lease_ttl: timedelta = timedelta(seconds=60)
    retry: RetryConfig = RetryConfig()

    _durations = field_validator("lease_ttl", mode="before")(parse_duration)

    @property
    def sqlite_folder(self) -> Path | None:
        """The folder of a SQLite state file, where the loader keeps what it makes beside its state (the
        lookup cache, the report); None for a database in memory or on a server."""
        prefix = "sqlite:///"
        database = self.url[len(prefix):].split("?", 1)[0] if self.url.startswith(prefix) else ""
        return None if database in ("", ":memory:") else Path(database).parent


class QuarantineConfig(_Frozen):
    """Rows failing a check (null key, null cursor, cursor beyond now + future_tolerance, no region
    found) go to `<warehouse>/quarantine/<source>/` with the reason and run number, and the run goes on,
    unless a source's quarantined rows in one run exceed `max_rows` or `max_fraction` of the rows it
    read: then the run fails (the rows are in the quarantine table to look at) and the checkpoint stays."""

    max_rows: int | None = Field(default=None, ge=0)
    max_fraction: float = Field(default=0.01, ge=0, le=1)
    future_tolerance: timedelta = timedelta(hours=1)

    _durations = field_validator("future_tolerance", mode="before")(parse_duration)


class MetricsConfig(_Frozen):
    """Prometheus metrics written after every run (committed or failed); both off by default.
    `textfile`: a .prom file for node_exporter's textfile collector (written whole, then renamed into
    place). `pushgateway`: a Pushgateway URL; the run's metrics replace the group job=loader,
    pipeline=<name>. A failure to publish is logged, never fails the run."""

    textfile: str | None = None
    pushgateway: str | None = None
    push_timeout: timedelta = timedelta(seconds=5)

    _durations = field_validator("push_timeout", mode="before")(parse_duration)


class LoaderConfig(_Frozen):
    pipeline: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    landing_zone: str
    warehouse: str
    state: StateConfig = StateConfig()
    sources: dict[str, SourceConfig]
    dimensions: DimensionsConfig = DimensionsConfig()
    regions: dict[str, RegionRuleConfig] = Field(default_factory=dict)
    sinks: SinksConfig = SinksConfig()
    # Retries of transient landing-zone faults while planning and reading (object-store hiccups).
    # Fewer than the sinks': an unreachable landing zone should fail a scheduled run within seconds.
    source_retry: RetryConfig = RetryConfig(attempts=3, total=timedelta(seconds=30))
    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    transform: TransformConfig = TransformConfig()
    metrics: MetricsConfig = MetricsConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    config_path: str | None = None

    @field_validator("sources")
    @classmethod
    def _sources_not_empty(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        if not value:
            raise ValueError("configure at least one source")
        return value

    def source_path(self, name: str) -> str:
        return join_path(self.landing_zone, self.sources[name].path)

    def dimension_path(self, table: str) -> str:
        return join_path(self.landing_zone, self.dimensions.named(table).path)

    def paths_outside_landing(self) -> list[tuple[str, str]]:
        """(config key, where it leads) of every source and dimension folder outside `landing_zone`
        (an absolute path, `..`, a symbolic link, another bucket): allowed, but `validate-config` names
        them, since the loader reads what lies there."""
        found = [(f"sources.{name}.path", self.source_path(name)) for name in self.sources]
        found += [(f"dimensions.{table}.path", self.dimension_path(table)) for table in DIMENSION_KEYS]
        return [(key, where) for key, where in found if not _inside(self.landing_zone, where)]

    def secrets(self) -> list[str]:
        """Values no output may show: the secret fields (the Snowflake password, private key and
        passphrase) and the passwords in every URL (the state URL's user info or query, the
        Pushgateway's, the Ray address's)."""
        return redaction.config_secrets(self.model_dump(by_alias=True))

    def sink_path(self, relative: str) -> str:
        return join_path(self.warehouse, relative)

    def overridden(self, *, executor: str | None = None, engine: str | None = None,
                   max_batch_rows: int | None = None) -> LoaderConfig:
        """This config with the command line's overrides folded in (`--executor` is `ray.mode`,
        `--engine` `transform.engine`, `--max-batch-rows` `run.max_batch_rows`), each part validated as
        the file's is: below the command line, code reads the config only."""
        changes: dict[str, Any] = {}
        try:
            if executor is not None:
                changes["ray"] = type(self.ray).model_validate({**self.ray.model_dump(), "mode": executor})
            if engine is not None:
                changes["transform"] = type(self.transform).model_validate({**self.transform.model_dump(),
                                                                            "engine": engine})
            if max_batch_rows is not None:
                changes["run"] = type(self.run).model_validate({**self.run.model_dump(),
                                                                "max_batch_rows": max_batch_rows})
        except ValidationError as error:
            raise ConfigError(_format_errors("the command line's options", error)) from None
        return self.model_copy(update=changes) if changes else self

def _inside(root: str, path: str) -> bool:
    if is_remote(root) or is_remote(path):
        return path.rstrip("/").startswith(root.rstrip("/") + "/")
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _interpolate(value: Any, source: str) -> Any:
    """Replace ${VAR} in every string value of the parsed YAML (comments are never touched)."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            if redaction.is_secret_env(name):
                redaction.add_secrets([os.environ[name]])
            return os.environ[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _ENV_REF.sub(replace, node)
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    result = walk(value)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise ConfigError(f"{source}: environment variable(s) {names} not set: "
                          f"export them or give a default as ${{NAME:-value}}")
    return result


def _resolve(base: Path, path: str) -> str:
    if is_remote(path) or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def _resolve_state_url(base: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + _resolve(base, url[len(prefix):])
    return url


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config model whose keys are valid at `loc` (a mapping's key path from the top), or None
    where the path leads elsewhere (a list, a plain value)."""
    import types
    import typing

    current: Any = LoaderConfig
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next((f for name, f in current.model_fields.items() if part in (name, f.alias)), None)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
        if typing.get_origin(current) in (typing.Union, types.UnionType):  # `X | None`: the model in it
            models = [a for a in typing.get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            current = models[0] if len(models) == 1 else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """`unknown key; did you mean lookback?`, or the keys valid there when none is close."""
    import difflib

    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key: remove it (configs/local.yaml lists every key)"
    known = sorted(f.alias or name for name, f in model.model_fields.items()
                   if model is not LoaderConfig or name != "config_path")
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    return f"unknown key: the keys here are {', '.join(known)}"


#: The prefixes pydantic puts before a validator's own message ("Value error, ...").
_LIBRARY_PREFIX = re.compile(r"^(Value error|Assertion failed|Type error), ")


def _problem(item: Any) -> str:
    """One problem as one sentence, the fix included, with no library's wording in front."""
    if item["type"] == "extra_forbidden":
        return _unknown_key(tuple(item["loc"]))
    if item["type"] == "missing":
        return "required key is missing: add it (configs/local.yaml shows it)"
    message = _LIBRARY_PREFIX.sub("", str(item["msg"]))
    if item["type"].startswith(("value_error", "assertion_error")):
        return message  # our validators' own sentences: they say what to write
    message = re.sub(r"^Input should be", "should be", message)
    found = item.get("input")
    key = str(item["loc"][-1]) if item["loc"] else ""
    if isinstance(found, str | int | float | bool) and len(repr(found)) <= 40 \
            and not redaction.is_secret_name(key):  # a password of the wrong type is not echoed
        message += f" (found {found!r})"
    return message


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: {error.error_count()} problem(s) in the configuration:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  - {where}: {_problem(item)}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], *, base_dir: Path, source: str = "<config>") -> LoaderConfig:
    """Validate a config mapping, resolving relative paths against `base_dir`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, see configs/local.yaml")
    redaction.register_config(raw)  # before any check: no message may show them
    data = dict(raw)
    for key in ("landing_zone", "warehouse"):
        if isinstance(data.get(key), str):
            data[key] = _resolve(base_dir, data[key])
    state = dict(data.get("state") or {})
    state["url"] = _resolve_state_url(base_dir, state.get("url", StateConfig().url))
    data["state"] = state
    run = data.get("run")
    if isinstance(run, dict) and isinstance(run.get("cache_dir"), str):
        data["run"] = {**run, "cache_dir": _resolve(base_dir, run["cache_dir"])}
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("textfile"), str):
        data["metrics"] = {**metrics, "textfile": _resolve(base_dir, metrics["textfile"])}
    data["config_path"] = source
    ray = data.get("ray")
    if os.environ.get("RAY_ADDRESS") and not (isinstance(ray, dict) and ray.get("address")):
        # Ray's own variable, settled here: below the config nobody reads the environment.
        data["ray"] = {**(ray if isinstance(ray, dict) else {}), "address": os.environ["RAY_ADDRESS"]}
    try:
        return LoaderConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(source, error)) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where the YAML is broken and what is wrong, without the text of the line (PyYAML quotes it, and
    it may hold a password): `line 4, column 27: mapping values are not allowed here`."""
    if isinstance(error, yaml.reader.ReaderError):
        return f"character {error.position + 1}: {error.reason}"
    if not isinstance(error, yaml.MarkedYAMLError):
        return "the file cannot be parsed as YAML"
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = error.problem or "the file cannot be parsed as YAML"
    if error.context:
        began = error.context_mark
        problem += f" ({error.context}" + (f" begun at line {began.line + 1}, column {began.column + 1})"
                                           if began is not None and began is not mark else ")")
    return where + redaction.redact(problem)


def load_config(path: str | Path | None = None) -> LoaderConfig:
    """Read the config named by `path`, else $LOADER_CONFIG, else configs/local.yaml."""
    chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    if not chosen.is_file():
        raise ConfigError(
            f"config file {chosen} not found: pass --config FILE or set {CONFIG_ENV} "
            f"(configs/local.yaml is the embedded default, run from the project folder)"
        )
    try:
        raw = yaml.safe_load(chosen.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{chosen}: not valid YAML: {_yaml_problem(error)}") from None
    raw = _interpolate(raw, str(chosen))
    return parse_config(raw, base_dir=chosen.resolve().parent, source=str(chosen))
