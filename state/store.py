"""The state store API: checkpoints, the run ledger and per-pipeline leases.

Every write is one short transaction. On SQLite, writes start with BEGIN IMMEDIATE so concurrent processes
queue on the busy timeout instead of failing half-way; on PostgreSQL the rows a commit depends on are locked
with SELECT ... FOR UPDATE. The decisions themselves (compare-and-set, cursor monotonicity) are pure
functions at the top of this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Row, create_engine, event, insert, or_, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from state.errors import (
    CheckpointConflict,
    LeaseHeld,
    StateCorrupt,
    StateError,
    StateUnavailable,
    StateUrlInvalid,
)
from state.migrations import current_version, migrate
from state.models import (
    RUN_MODES,
    RUN_STATUSES,
    Checkpoint,
    DimensionLoad,
    FactGap,
    LeaseInfo,
    LookupVersion,
    RunMode,
    RunRecord,
    Window,
    from_iso,
    to_iso,
    utc_now,
)
from state.schema import SCHEMA_VERSION
from state.schema import checkpoints as checkpoints_t
from state.schema import dimension_loads as dimension_loads_t
from state.schema import fact_gaps as fact_gaps_t
from state.schema import leases as leases_t
from state.schema import lookup_versions as lookup_versions_t
from state.schema import runs as runs_t

_READ_ONLY = "state_read_only"  # execution option: this transaction only reads (SQLite: plain BEGIN)
_INSERT_RETRIES = 5


# ---------------------------------------------------------------- pure logic


@dataclass(frozen=True)
class CasConflict:
    source: str
    expected: int | None  # run number of the checkpoint the plan was made from
    found: int | None  # run number of the checkpoint now stored


def cas_conflicts(
    base: Mapping[str, int | None], found: Mapping[str, int | None], sources: list[str]
) -> list[CasConflict]:
    """Sources whose checkpoint is no longer the one the run was planned from."""
    return [CasConflict(s, base.get(s), found.get(s)) for s in sorted(sources) if base.get(s) != found.get(s)]


def next_cursor(stored: datetime | None, new: datetime) -> datetime:
    """A checkpoint never moves backwards (a replay with a smaller upper bound must not rewind it)."""
    return new if stored is None or new > stored else stored


def _conflict_message(pipeline: str, run_number: int, conflicts: list[CasConflict]) -> str:
    def at(n: int | None) -> str:
        return "no checkpoint" if n is None else f"the checkpoint of run {n}"

    details = "; ".join(
        f"source {c.source!r}: expected {at(c.expected)}, found {at(c.found)}" for c in conflicts
    )
    return (
        f"cannot commit run {run_number} of pipeline {pipeline!r}: the checkpoint moved since it was planned "
        f"({details}). Another run committed in between; nothing was changed. Abandon this run "
        f"(`loader runs abandon {run_number}`) and run again: the next run plans from the current checkpoint."
    )


def _lease_held_message(lease: LeaseInfo) -> str:
    expires = to_iso(lease.expires_at)
    return (
        f"pipeline {lease.pipeline!r} is being run by {lease.holder} (lease taken "
        f"{to_iso(lease.acquired_at)}, expires {expires}). Wait for that run to finish. If that process is "
        f"dead, the lease expires by itself at {expires} and the next run takes over."
    )


# ---------------------------------------------------------------- rows <-> models


def _corrupt(pipeline: str, run_number: int, problem: str) -> StateCorrupt:
    return StateCorrupt(
        f"the run ledger row of pipeline {pipeline!r}, run {run_number} is unreadable: {problem}. Mark it "
        f"abandoned with `loader runs abandon {run_number}` or restore the state database from a backup."
    )


def _parse_windows(raw: str) -> dict[str, Window]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"windows must be a JSON object, found {raw!r}")
    return {str(source): Window.from_json(w) for source, w in data.items()}


def _parse_base(raw: str) -> dict[str, int | None]:
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(v is None or type(v) is int for v in data.values()):
        raise ValueError(f"base_checkpoints must map sources to run numbers or null, found {raw!r}")
    return {str(k): v for k, v in data.items()}


def _parse_metrics(raw: str) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"metrics must be a JSON object, found {raw!r}")
    return data


def _parse_choice(raw: str, choices: tuple[str, ...], what: str) -> str:
    if raw not in choices:
        raise ValueError(f"unknown {what} {raw!r} (known: {', '.join(choices)})")
    return raw


_FIELD_PARSERS: dict[str, Callable[[Any], Any]] = {
    "mode": lambda raw: _parse_choice(raw, RUN_MODES, "mode"),
    "status": lambda raw: _parse_choice(raw, RUN_STATUSES, "status"),
    "windows": _parse_windows,
    "base_checkpoints": _parse_base,
    "started_at": from_iso,
    "finished_at": lambda raw: None if raw is None else from_iso(raw),
    "metrics": _parse_metrics,
    "inputs": lambda raw: None if raw is None else _parse_metrics(raw),
}


def _broken_fields(row: Row[Any]) -> dict[str, str]:
    """Field name -> problem, for every field of a ledger row that does not parse."""
    broken = {}
    for name, parse in _FIELD_PARSERS.items():
        try:
            parse(getattr(row, name))
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            broken[name] = str(err) or type(err).__name__
    return broken


def _row_to_run(row: Row[Any]) -> RunRecord:
    broken = _broken_fields(row)
    if broken:
        problems = "; ".join(f"{name}: {problem}" for name, problem in broken.items())
        raise _corrupt(row.pipeline, row.run_number, problems)
    values = {name: parse(getattr(row, name)) for name, parse in _FIELD_PARSERS.items()}
    return RunRecord(
        pipeline=row.pipeline, run_number=row.run_number, error=row.error, attempts=row.attempts, **values
    )


def _run_to_row(run: RunRecord) -> dict[str, Any]:
    return {
        "pipeline": run.pipeline,
        "run_number": run.run_number,
        "mode": run.mode,
        "status": run.status,
        "windows": json.dumps({s: w.to_json() for s, w in run.windows.items()}, sort_keys=True),
        "base_checkpoints": json.dumps(run.base_checkpoints, sort_keys=True),
        "started_at": to_iso(run.started_at),
        "finished_at": None if run.finished_at is None else to_iso(run.finished_at),
        "metrics": _metrics_json(run.metrics),
        "error": run.error,
        "attempts": run.attempts,
        "inputs": None if run.inputs is None else json.dumps(run.inputs, sort_keys=True),
    }


def _metrics_json(metrics: Mapping[str, Any]) -> str:
    """Metrics are informational: values JSON cannot hold (Decimal, datetime) are stored as text."""
    return json.dumps(dict(metrics), sort_keys=True, default=str)


def _row_to_checkpoint(pipeline: str, row: Row[Any]) -> Checkpoint:
    try:
        return Checkpoint(row.source, from_iso(row.cursor), row.run_number, from_iso(row.updated_at))
    except (ValueError, TypeError) as err:
        raise StateCorrupt(
            f"the checkpoint of source {row.source!r} of pipeline {pipeline!r} is unreadable ({err}). "
            "Restore the state database from a backup, or delete that checkpoint row to reload the source "
            "from the beginning."
        ) from err


def _row_to_lease(row: Row[Any]) -> LeaseInfo:
    try:
        return LeaseInfo(row.pipeline, row.holder, from_iso(row.acquired_at), from_iso(row.expires_at))
    except (ValueError, TypeError) as err:
        raise StateCorrupt(
            f"the lease row of pipeline {row.pipeline!r} is unreadable ({err}). Delete that row from the "
            "`leases` table once no run of the pipeline is active."
        ) from err


# ---------------------------------------------------------------- engine


def _normalize_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # The URL is quoted whole (a typo is easier to see): the loader masks its password in every
        # output (loader/redaction.py), and SQLAlchemy's own message, which may quote it too, is dropped.
        raise StateUrlInvalid(
            f"state store URL {url!r} is not a database URL; use sqlite:///path/to/state.db or "
            "postgresql+psycopg://user@host:port/db (special characters in the user or password "
            "percent-encoded, e.g. @ as %40)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    return parsed


def _hint(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return (
            "Check that the folder exists and is writable, that the file is on a local disk (not a network "
            "share) and that no process holds a write transaction open for long; then retry."
        )
    return (
        "Check that the server is running and reachable from here, and that the user, password and "
        "database in the URL are right; then retry."
    )


def _configure_sqlite(engine: Engine) -> None:
    """WAL lets readers run beside the writer; the busy timeout and BEGIN IMMEDIATE make writers queue."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def create_state_engine(url: str) -> Engine:
    """An engine for the state store; for SQLite it creates the parent folder."""
    parsed = _normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StateUnavailable(
                    f"cannot create the folder of the state database {database}: {err}. {_hint(parsed)}"
                ) from err
        engine = create_engine(parsed, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def _read_only_engine(url: str) -> Engine | None:
    """An engine that cannot write, and makes nothing by connecting: None for a SQLite file that does
    not exist (no folder or file is created). SQLite opens the file read-only; while no `-wal` file lies
    beside it (no process has it open: every change is in the file) as immutable, since a read-only
    connection to a WAL database would leave `-wal` and `-shm` files behind. A writer starting meanwhile
    only appends to a new `-wal` until it checkpoints, so a quick read still sees a consistent file."""
    import sqlite3
    from urllib.parse import quote

    parsed = _normalize_url(url)
    if parsed.get_backend_name() != "sqlite":  # a server: connecting makes nothing; its sessions read only
        return create_engine(parsed, pool_pre_ping=True, execution_options={"postgresql_readonly": True})
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None  # nothing outlives the process that made it: there is nothing to read
    path = Path(database)
    if not path.is_file():
        return None
    immutable = "" if Path(f"{database}-wal").exists() else "&immutable=1"
    uri = f"file:{quote(str(path.resolve()))}?mode=ro{immutable}"
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=30))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # BEGIN below (a plain one: this engine only reads)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


# ---------------------------------------------------------------- the store


class StateStore:
    """Checkpoints, run ledger and leases of every pipeline, in one SQL database."""

    def __init__(self, engine: Engine, *, now: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._now = now
        self._url = engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, url: str, *, now: Callable[[], datetime] = utc_now) -> StateStore:
        """Connect and bring the schema up to date. A database already at SCHEMA_VERSION (every run but
        the first after an upgrade) is only read: no write transaction, no migration lock."""
        engine = create_state_engine(url)
        store = cls(engine, now=now)
        try:
            with store._translate_errors():
                if store._schema_version() != SCHEMA_VERSION:  # older: migrate; newer: migrate refuses it
                    migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return store

    @classmethod
    def open_read_only(cls, url: str) -> StateStore | None:
        """Connect to read, writing nothing anywhere (`loader doctor`): no folder, file or table made,
        no migration (see `schema_version`). None where there is no state yet: a SQLite file not made.
        Any write through this store fails (SQLite: opened read-only; PostgreSQL: read-only sessions)."""
        engine = _read_only_engine(url)
        if engine is None:
            return None
        store = cls(engine)
        store._url = _normalize_url(url).render_as_string(hide_password=True)  # not the engine's sqlite://
        return store

    @classmethod
    def open_to_read(cls, url: str) -> StateStore:
        """For the commands that only read (status, history, plan, verify, report): where there is no
        state yet, an empty store in memory, so that asking about a pipeline never run creates its
        database file; a database at this loader's schema opened read-only; an older one migrated by
        `open`, as any command would."""
        store = cls.open_read_only(url)
        if store is None:
            return cls.open("sqlite:///:memory:")
        if store.schema_version() == SCHEMA_VERSION:
            return store
        store.close()
        return cls.open(url)

    def schema_version(self) -> int:
        """The schema version of the database: 0 when it holds none of the store's tables yet, below
        SCHEMA_VERSION when the next `open` migrates it, above when a newer loader has used it."""
        return self._schema_version()

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    # ------------------------------------------------------------ transactions

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as err:
            raise StateUnavailable(
                f"the state database {self._url} could not be used: {err.orig}. {_hint(self._engine.url)}"
            ) from err

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._translate_errors(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._translate_errors(), self._engine.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            with conn.begin():
                yield conn

    def _schema_version(self) -> int:
        with self._read() as conn:
            return current_version(conn)

    # ------------------------------------------------------------ checkpoints and ledger reads

    def checkpoints(self, pipeline: str) -> dict[str, Checkpoint]:
        with self._read() as conn:
            rows = conn.execute(select(checkpoints_t).where(checkpoints_t.c.pipeline == pipeline)).all()
        return {row.source: _row_to_checkpoint(pipeline, row) for row in rows}

    def run(self, pipeline: str, run_number: int) -> RunRecord | None:
        with self._read() as conn:
            row = conn.execute(select(runs_t).where(*_run_key(pipeline, run_number))).first()
        return None if row is None else _row_to_run(row)

    def runs(self, pipeline: str, *, limit: int | None = 20, mode: RunMode | None = None) -> list[RunRecord]:
        """Newest first (`limit=None`: all of them)."""
        query = select(runs_t).where(runs_t.c.pipeline == pipeline).order_by(runs_t.c.run_number.desc())
        if mode is not None:
            query = query.where(runs_t.c.mode == mode)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [_row_to_run(row) for row in rows]

    def unfinished_run(self, pipeline: str, *, mode: RunMode = "incremental") -> RunRecord | None:
        """The latest run of `mode` still 'planned': it did not finish and is to be replayed."""
        return self._latest(pipeline, status="planned", mode=mode)

    def last_committed_run(self, pipeline: str, *, mode: RunMode | None = None) -> RunRecord | None:
        return self._latest(pipeline, status="committed", mode=mode)

    def _latest(self, pipeline: str, *, status: str, mode: str | None) -> RunRecord | None:
        query = select(runs_t).where(runs_t.c.pipeline == pipeline, runs_t.c.status == status)
        if mode is not None:
            query = query.where(runs_t.c.mode == mode)
        with self._read() as conn:
            row = conn.execute(query.order_by(runs_t.c.run_number.desc()).limit(1)).first()
        return None if row is None else _row_to_run(row)

    # ------------------------------------------------------------ ledger writes

    def begin_run(
        self,
        pipeline: str,
        *,
        mode: RunMode,
        windows: Mapping[str, Window],
        base_checkpoints: Mapping[str, int | None],
        metrics: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Record a planned run under the next run number, before anything is written anywhere.
        `metrics` may say what the run is part of (a backfill's request and chunk); the commit replaces it.
        `inputs` is the run's exact input (files, sizes, row groups), read again as it is by a replay."""
        if mode not in RUN_MODES:
            raise ValueError(f"mode must be one of {RUN_MODES}, not {mode!r}")
        for _ in range(_INSERT_RETRIES):
            try:
                with self._write() as conn:
                    number = _max_run_number(conn, pipeline) + 1
                    run = RunRecord(
                        pipeline=pipeline,
                        run_number=number,
                        mode=mode,
                        status="planned",
                        windows=dict(windows),
                        base_checkpoints=dict(base_checkpoints),
                        started_at=self._now(),
                        metrics=dict(metrics or {}),
                        inputs=None if inputs is None else dict(inputs),
                    )
                    conn.execute(insert(runs_t).values(**_run_to_row(run)))
                return run
            except IntegrityError:
                continue  # another process took this number first: take the next one
        raise StateUnavailable(
            f"could not assign a run number to pipeline {pipeline!r} after {_INSERT_RETRIES} tries: other "
            "processes keep starting runs of it. Retry; if it persists, check who runs this pipeline."
        )

    def record_attempt(self, pipeline: str, run_number: int) -> RunRecord:
        """Count one more attempt of a planned run that is being replayed."""
        with self._write() as conn:
            run = _locked_run(conn, pipeline, run_number)
            _require_planned(run)
            conn.execute(
                update(runs_t).where(*_run_key(pipeline, run_number)).values(attempts=runs_t.c.attempts + 1)
            )
        return replace(run, attempts=run.attempts + 1)

    def mark_run_writing(self, pipeline: str, run_number: int) -> None:
        """Remember (in the run's metrics, `writing`) that a planned run began writing to its sinks: a
        replay whose recorded input is gone since must not mix its rows with what was written."""
        with self._write() as conn:
            run = _locked_run(conn, pipeline, run_number)
            _require_planned(run)
            if not run.metrics.get("writing"):
                conn.execute(update(runs_t).where(*_run_key(pipeline, run_number)).values(
                    metrics=_metrics_json({**run.metrics, "writing": True})))

    def commit_run(
        self,
        pipeline: str,
        run_number: int,
        *,
        checkpoints: Mapping[str, datetime],
        metrics: Mapping[str, Any],
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """In one transaction: compare-and-set every source's checkpoint against the run's plan, advance
        them, and mark the run committed. On any conflict nothing changes. `before_commit` runs inside
        the transaction just before it commits (the tests' failpoint there)."""
        now = self._now()
        try:
            with self._write() as conn:
                run = _locked_run(conn, pipeline, run_number)
                if run.mode != "incremental":
                    raise ValueError(f"run {run_number} is a {run.mode} run; use commit_backfill_run")
                if run.status == "committed":
                    current = {c.source: c.run_number
                               for c in _locked_checkpoints(conn, pipeline, list(checkpoints))}
                    if all(current.get(source) == run_number for source in checkpoints):
                        return  # an earlier try of this commit landed and its acknowledgement was lost
                _require_planned(run)
                unplanned = sorted(set(checkpoints) - set(run.base_checkpoints))
                if unplanned:
                    raise ValueError(f"run {run_number} has no base checkpoint for sources {unplanned}")
                stored = {c.source: c for c in _locked_checkpoints(conn, pipeline, list(checkpoints))}
                found = {source: c.run_number for source, c in stored.items()}
                conflicts = cas_conflicts(run.base_checkpoints, found, list(checkpoints))
                if conflicts:
                    raise CheckpointConflict(_conflict_message(pipeline, run_number, conflicts))
                for source in sorted(checkpoints):
                    old = stored.get(source)
                    cursor = next_cursor(old.cursor if old else None, checkpoints[source])
                    values = {"cursor": to_iso(cursor), "run_number": run_number, "updated_at": to_iso(now)}
                    if old is None:
                        conn.execute(insert(checkpoints_t).values(pipeline=pipeline, source=source, **values))
                        continue
                    result = conn.execute(
                        update(checkpoints_t)
                        .where(
                            checkpoints_t.c.pipeline == pipeline,
                            checkpoints_t.c.source == source,
                            checkpoints_t.c.run_number == old.run_number,
                        )
                        .values(**values)
                    )
                    if result.rowcount != 1:  # cannot happen under the row lock; refuse rather than guess
                        raise CheckpointConflict(
                            _conflict_message(
                                pipeline, run_number, [CasConflict(source, old.run_number, None)]
                            )
                        )
                self._finish(conn, pipeline, run_number, status="committed", metrics=metrics, at=now)
                if before_commit is not None:
                    before_commit()
        except IntegrityError as err:  # a checkpoint row appeared under us (PostgreSQL, no row to lock)
            current = {s: c.run_number for s, c in self.checkpoints(pipeline).items()}
            planned = self.run(pipeline, run_number)
            base = planned.base_checkpoints if planned else {}
            conflicts = cas_conflicts(base, current, list(checkpoints)) or [
                CasConflict(s, base.get(s), current.get(s)) for s in sorted(checkpoints)
            ]
            raise CheckpointConflict(_conflict_message(pipeline, run_number, conflicts)) from err

    def commit_backfill_run(self, pipeline: str, run_number: int, *, metrics: Mapping[str, Any]) -> None:
        """Backfills merge on the primary key and never move the incremental checkpoint."""
        now = self._now()
        with self._write() as conn:
            run = _locked_run(conn, pipeline, run_number)
            if run.mode != "backfill":
                raise ValueError(f"run {run_number} is an {run.mode} run; use commit_run")
            if run.status == "committed":
                return  # an earlier try landed and its acknowledgement was lost
            _require_planned(run)
            self._finish(conn, pipeline, run_number, status="committed", metrics=metrics, at=now)

    def fail_run(self, pipeline: str, run_number: int, *, error: str) -> None:
        """Keep the run 'planned' so the next run replays it; remember why it stopped. Does nothing to a
        run that is no longer planned, because it is called from error handlers that must not mask the
        original error."""
        with self._write() as conn:
            conn.execute(
                update(runs_t)
                .where(*_run_key(pipeline, run_number), runs_t.c.status == "planned")
                .values(error=error, finished_at=None)
            )

    def abandon_run(self, pipeline: str, run_number: int, *, reason: str = "abandoned by the user") -> None:
        """Mark a run 'failed' so it is never replayed. Also repairs an unreadable ledger row (its broken
        fields are reset and their original text kept in `error`), so that listing works again."""
        now = self._now()
        with self._write() as conn:
            row = conn.execute(
                select(runs_t).where(*_run_key(pipeline, run_number)).with_for_update()
            ).first()
            if row is None:
                raise StateError(f"pipeline {pipeline!r} has no run {run_number}; see `loader runs list`.")
            if row.status == "committed":
                raise StateError(
                    f"run {run_number} of pipeline {pipeline!r} is committed; "
                    "only unfinished runs can be abandoned."
                )
            values: dict[str, Any] = {"status": "failed", "finished_at": to_iso(now), "error": reason}
            broken = _broken_fields(row)
            broken.pop("status", None)
            if broken:
                repairs = {"mode": "backfill", "windows": "{}", "base_checkpoints": "{}", "metrics": "{}",
                           "inputs": None}
                repairs |= {"started_at": to_iso(now), "finished_at": to_iso(now)}
                values |= {name: repairs[name] for name in broken}
                original = "; ".join(f"{name}={getattr(row, name)!r}" for name in broken)
                values["error"] = f"{reason}; the ledger row was unreadable, original values: {original}"
            conn.execute(update(runs_t).where(*_run_key(pipeline, run_number)).values(**values))

    def _finish(
        self,
        conn: Connection,
        pipeline: str,
        run_number: int,
        *,
        status: str,
        metrics: Mapping[str, Any],
        at: datetime,
    ) -> None:
        conn.execute(
            update(runs_t)
            .where(*_run_key(pipeline, run_number))
            .values(status=status, finished_at=to_iso(at), metrics=_metrics_json(metrics), error=None)
        )

    # ------------------------------------------------------------ leases

    def acquire_lease(self, pipeline: str, *, holder: str, ttl_seconds: float) -> LeaseInfo:
        """Take the pipeline's lease if it is free, expired, or already ours; else raise LeaseHeld.
        Race-free: a conditional UPDATE takes an existing row, the primary key arbitrates a first INSERT."""
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        for _ in range(_INSERT_RETRIES):
            now = self._now()
            lease = LeaseInfo(pipeline, holder, now, now + timedelta(seconds=ttl_seconds))
            values = {"holder": holder, "acquired_at": to_iso(now), "expires_at": to_iso(lease.expires_at)}
            try:
                with self._write() as conn:
                    taken = conn.execute(
                        update(leases_t)
                        .where(
                            leases_t.c.pipeline == pipeline,
                            or_(leases_t.c.expires_at < to_iso(now), leases_t.c.holder == holder),
                        )
                        .values(**values)
                    )
                    if taken.rowcount == 1:
                        return lease
                    row = conn.execute(select(leases_t).where(leases_t.c.pipeline == pipeline)).first()
                    if row is not None:
                        raise LeaseHeld(_lease_held_message(_row_to_lease(row)))
                    conn.execute(insert(leases_t).values(pipeline=pipeline, **values))
                return lease
            except IntegrityError:
                continue  # another process inserted first: look again, it will be reported as held
        raise StateUnavailable(
            f"could not settle the lease of pipeline {pipeline!r} after {_INSERT_RETRIES} tries; retry."
        )

    def renew_lease(self, pipeline: str, *, holder: str, ttl_seconds: float) -> bool:
        """Extend our lease; False when another holder has taken it (stop working: we lost it)."""
        expires = to_iso(self._now() + timedelta(seconds=ttl_seconds))
        with self._write() as conn:
            result = conn.execute(
                update(leases_t)
                .where(leases_t.c.pipeline == pipeline, leases_t.c.holder == holder)
                .values(expires_at=expires)
            )
        return result.rowcount == 1

    def release_lease(self, pipeline: str, *, holder: str) -> bool:
        """Give the lease back; False when it was not ours (any more)."""
        with self._write() as conn:
            result = conn.execute(
                leases_t.delete().where(leases_t.c.pipeline == pipeline, leases_t.c.holder == holder)
            )
        return result.rowcount == 1

    def lease(self, pipeline: str) -> LeaseInfo | None:
        """The lease row, expired or not (see `LeaseInfo.expired`)."""
        with self._read() as conn:
            row = conn.execute(select(leases_t).where(leases_t.c.pipeline == pipeline)).first()
        return None if row is None else _row_to_lease(row)

    # ------------------------------------------------------------ dimension loads

    def dimension_loads(self, pipeline: str) -> dict[str, DimensionLoad]:
        """The newest load of each dimension table to any sink, by name (per sink: `dimension_sink_loads`)."""
        newest: dict[str, DimensionLoad] = {}
        for name, per_sink in self.dimension_sink_loads(pipeline).items():
            newest[name] = max(per_sink.values(), key=lambda load: load.loaded_at)
        return newest

    def dimension_sink_loads(self, pipeline: str) -> dict[str, dict[str, DimensionLoad]]:
        """The last load of each dimension table to each sink: dimension -> sink -> load (sink ALL_SINKS:
        a load recorded before loads were kept per sink)."""
        table = dimension_loads_t
        with self._read() as conn:
            rows = conn.execute(select(table).where(table.c.pipeline == pipeline)
                                .order_by(table.c.dimension, table.c.sink)).all()
        loads: dict[str, dict[str, DimensionLoad]] = {}
        for row in rows:
            loads.setdefault(row.dimension, {})[row.sink] = DimensionLoad(
                dimension=row.dimension, fingerprint=row.fingerprint,
                cursor=from_iso(row.cursor) if row.cursor else None, loaded_at=from_iso(row.loaded_at),
                changes=_parse_metrics(row.changes), sink=row.sink)
        return loads

    def record_dimension_load(self, pipeline: str, dimension: str, *, sink: str, fingerprint: str,
                              cursor: datetime | None, changes: Mapping[str, Any]) -> None:
        """Remember a dimension load that `sink` applied (or found applied): its next run with the same
        files skips it. Written after the sink: a crash before it only makes the next run compare
        again (and find nothing to do)."""
        table = dimension_loads_t
        values = {"fingerprint": fingerprint, "cursor": to_iso(cursor) if cursor else None,
                  "loaded_at": to_iso(self._now()), "changes": _metrics_json(changes)}
        key = (table.c.pipeline == pipeline, table.c.dimension == dimension, table.c.sink == sink)
        with self._write() as conn:
            done = conn.execute(update(table).where(*key).values(**values))
            if done.rowcount == 0:
                conn.execute(insert(table).values(pipeline=pipeline, dimension=dimension, sink=sink,
                                                  **values))

    # ------------------------------------------------------------ facts a sink enabled later lacks

    def fact_gaps(self, pipeline: str) -> list[FactGap]:
        """The recorded gaps in the facts of sinks enabled after runs had committed (see FactGap)."""
        table = fact_gaps_t
        with self._read() as conn:
            rows = conn.execute(select(table).where(table.c.pipeline == pipeline)
                                .order_by(table.c.sink, table.c.source)).all()
        return [FactGap(sink=row.sink, source=row.source, start=from_iso(row.window_start),
                        end=from_iso(row.window_end), first_run=row.first_run, last_run=row.last_run,
                        detected_at=from_iso(row.detected_at)) for row in rows]

    def record_fact_gap(self, pipeline: str, *, sink: str, source: str, start: datetime, end: datetime,
                        first_run: int, last_run: int) -> None:
        """Remember (or replace) what `sink` lacks of `source`: the window (start, end] of runs
        first_run..last_run."""
        table = fact_gaps_t
        values = {"window_start": to_iso(start), "window_end": to_iso(end), "first_run": first_run,
                  "last_run": last_run, "detected_at": to_iso(self._now())}
        key = (table.c.pipeline == pipeline, table.c.sink == sink, table.c.source == source)
        with self._write() as conn:
            done = conn.execute(update(table).where(*key).values(**values))
            if done.rowcount == 0:
                conn.execute(insert(table).values(pipeline=pipeline, sink=sink, source=source, **values))

    def forget_fact_gap(self, pipeline: str, *, sink: str, source: str) -> None:
        """A gap filled (a backfill covered it): no longer reported."""
        table = fact_gaps_t
        with self._write() as conn:
            conn.execute(table.delete().where(table.c.pipeline == pipeline, table.c.sink == sink,
                                              table.c.source == source))

    # ------------------------------------------------------------ lookup versions

    def has_lookup_version(self, pipeline: str, fingerprint: str, *, prepared: bool = False) -> bool:
        """Whether the version's regions are kept (with `prepared`: its prepared lookups too)."""
        table = lookup_versions_t
        where = [table.c.pipeline == pipeline, table.c.fingerprint == fingerprint]
        if prepared:
            where.append(table.c.prepared.is_not(None))
        with self._read() as conn:
            return conn.execute(select(table.c.fingerprint).where(*where)).first() is not None

    def lookup_version(self, pipeline: str, fingerprint: str) -> bytes | None:
        """The region lookups recorded for a version of the dimension files (opaque bytes), or None."""
        return self._lookup_blob(pipeline, fingerprint, "regions")

    def prepared_lookups(self, pipeline: str, fingerprint: str) -> bytes | None:
        """The prepared lookups kept for a version (opaque bytes), or None when not (or no longer) kept."""
        return self._lookup_blob(pipeline, fingerprint, "prepared")

    def _lookup_blob(self, pipeline: str, fingerprint: str, column: str) -> bytes | None:
        table = lookup_versions_t
        with self._read() as conn:
            value = conn.execute(select(table.c[column]).where(
                table.c.pipeline == pipeline, table.c.fingerprint == fingerprint)).scalar()
        return None if value is None else bytes(value)

    def record_lookup_version(self, pipeline: str, fingerprint: str, regions: bytes,
                              prepared: bytes | None = None, *, base: str | None = None,
                              delta: bytes | None = None) -> None:
        """Keep the region lookups of a version of the dimension files, its prepared lookups when given,
        and the changes (`delta`) that make them from those of version `base` (a second call adds what
        the first lacked, changes nothing else)."""
        table = lookup_versions_t
        key = [table.c.pipeline == pipeline, table.c.fingerprint == fingerprint]
        with self._write() as conn:
            found = conn.execute(
                select(table.c.fingerprint, table.c.prepared, table.c.delta).where(*key)).first()
            if found is None:
                conn.execute(insert(table).values(pipeline=pipeline, fingerprint=fingerprint,
                                                  created_at=to_iso(self._now()), regions=regions,
                                                  prepared=prepared,
                                                  base=base if delta is not None else None, delta=delta))
                return
            values: dict[str, Any] = {}
            if prepared is not None and found.prepared is None:
                values["prepared"] = prepared
            if delta is not None and found.delta is None and found.prepared is None:
                values.update(base=base, delta=delta)
            if values:
                conn.execute(update(table).where(*key).values(**values))

    def lookup_chain(self, pipeline: str) -> list[LookupVersion]:
        """Every kept dimension version of the pipeline, oldest first: whether its prepared lookups are
        kept whole, and the version its changes (`lookup_delta`) start from."""
        table = lookup_versions_t
        with self._read() as conn:
            rows = conn.execute(select(
                table.c.fingerprint, table.c.created_at, table.c.base,
                table.c.prepared.is_not(None).label("whole"),
                table.c.delta.is_not(None).label("has_delta"),
            ).where(table.c.pipeline == pipeline).order_by(table.c.created_at, table.c.fingerprint)).all()
        return [LookupVersion(r.fingerprint, from_iso(r.created_at), bool(r.whole),
                              r.base if r.has_delta else None) for r in rows]

    def lookup_delta(self, pipeline: str, fingerprint: str) -> bytes | None:
        """The changes that make a version's prepared lookups from its base's (opaque bytes), or None."""
        return self._lookup_blob(pipeline, fingerprint, "delta")

    def drop_prepared_lookups(self, pipeline: str, *, keep: Collection[str]) -> int:
        """Forget the whole prepared lookups of every version but those in `keep` and those without a
        delta (a base no other version's changes can rebuild); their regions and deltas stay. How many
        were dropped."""
        table = lookup_versions_t
        with self._write() as conn:
            done = conn.execute(update(table).where(
                table.c.pipeline == pipeline, table.c.prepared.is_not(None), table.c.delta.is_not(None),
                table.c.fingerprint.not_in(list(keep))).values(prepared=None))
        return int(done.rowcount or 0)


# ---------------------------------------------------------------- helpers


def _run_key(pipeline: str, run_number: int) -> tuple[Any, Any]:
    return (runs_t.c.pipeline == pipeline, runs_t.c.run_number == run_number)


def _max_run_number(conn: Connection, pipeline: str) -> int:
    query = (
        select(runs_t.c.run_number).where(runs_t.c.pipeline == pipeline).order_by(runs_t.c.run_number.desc())
    )
    return cast(int, conn.execute(query.limit(1)).scalar() or 0)


def _locked_run(conn: Connection, pipeline: str, run_number: int) -> RunRecord:
    row = conn.execute(select(runs_t).where(*_run_key(pipeline, run_number)).with_for_update()).first()
    if row is None:
        raise StateCorrupt(
            f"pipeline {pipeline!r} has no run {run_number} in the run ledger, yet a run is finishing it. "
            "Was the state database replaced during the run? Restore the right one, or start a new run."
        )
    return _row_to_run(row)


def _locked_checkpoints(conn: Connection, pipeline: str, sources: list[str]) -> list[Checkpoint]:
    query = select(checkpoints_t).where(
        checkpoints_t.c.pipeline == pipeline, checkpoints_t.c.source.in_(sources)
    )
    return [_row_to_checkpoint(pipeline, row) for row in conn.execute(query.with_for_update()).all()]


def _require_planned(run: RunRecord) -> None:
    if run.status == "committed":
        raise CheckpointConflict(
            f"run {run.run_number} of pipeline {run.pipeline!r} is already committed (by another process, or "
            "by an earlier attempt of this one); nothing was changed. Start a new run."
        )
    if run.status != "planned":
        raise StateError(
            f"run {run.run_number} of pipeline {run.pipeline!r} was abandoned (status {run.status!r}); "
            "it can no longer be finished. Start a new run."
        )
