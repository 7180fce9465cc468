"""The `loader` command line. Heavy modules (pyarrow, deltalake, ray) are imported inside commands so
`loader --help` and `loader status` stay fast."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from loader import scratch
from loader.errors import EXIT_FAILED, EXIT_LEASE_HELD, EXIT_OK, EXIT_USAGE, EXPECTED_ERRORS, exit_code_of
from loader.memory import cap_malloc_arenas
from loader.redaction import redact, redact_data

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}  success (also: nothing new to load)
  {EXIT_FAILED}  the run failed; checkpoints did not move, the next run replays it
  {EXIT_USAGE}  usage or configuration error; nothing ran
  {EXIT_LEASE_HELD}  another live run of this pipeline holds the lease; nothing ran
"""

log = logging.getLogger("loader")


class _Context:
    def __init__(self, config_path: str | None, log_level: str, log_format: str) -> None:
        self.config_path = config_path
        self.log_level = log_level
        self.log_format = log_format

    def config(self, *, executor: str | None = None, engine: str | None = None,
               max_batch_rows: int | None = None) -> Any:
        """The config file's settings with this command's overrides folded in: settled here, once."""
        from loader.config import load_config
        from loader.observe import logs

        config = load_config(self.config_path).overridden(executor=executor, engine=engine,
                                                          max_batch_rows=max_batch_rows)
        logs.set_pipeline(config.pipeline)
        logs.add_secrets(config.secrets())
        return config


def _emit(payload: Any) -> None:
    """--json output: secrets masked in every string before the JSON is made (a secret JSON-escaped in
    the text would no longer match)."""
    click.echo(json.dumps(redact_data(payload), indent=2, default=lambda value: redact(str(value))))


@contextmanager
def _stdout_kept_for_json(as_json: bool) -> Iterator[None]:
    """With --json, stdout carries the one JSON object alone: whatever else writes to it while the
    command works (Ray's driver prints raylet warnings such as "N worker processes have been started"
    there, whatever log_to_driver says) goes to stderr instead."""
    if not as_json:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


@contextmanager
def _start_up() -> Iterator[None]:
    """The config and the imports of a command without the cyclic garbage collector. They make some
    10^5 objects that live as long as the process (modules, classes, the config) and next to no
    garbage, yet the collector's passes over them took about a tenth of a run with nothing new. Then
    they are frozen (gc.freeze: left out of every later pass); what the command allocates afterwards
    is collected as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@click.group(epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", envvar="LOADER_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default: $LOADER_CONFIG, else configs/local.yaml).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", envvar="LOADER_LOG_FORMAT", default="auto", show_default=True,
              type=click.Choice(["auto", "text", "json"], case_sensitive=False),
              help="Log lines on stderr: text for people, json (one object per line, with pipeline and run) "
                   "for log shippers; auto = text on a terminal, json otherwise (cron, containers). "
                   "Env: LOADER_LOG_FORMAT.")
@click.version_option(package_name="loader")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str, log_format: str) -> None:
    """Incremental, exactly-once loader: landing zone -> Parquet, Delta Lake (and Snowflake).

    \b
    Typical use:
      loader demo-data init          make a small TPC-H-style landing zone
      loader plan                    what the next run would read
      loader run                     load what is new, then advance checkpoints
      loader status                  checkpoints, lag and the last run
      loader backfill --start -3d --end -2d
                                     reload a window in chunks; checkpoints stay
      loader doctor                  what this machine and config can reach
    --config, --log-level and --log-format go before or after the command.
    Logs go to stderr (--log-format); --json output goes to stdout.
    """
    from loader.observe import logs
    logs.configure(log_level, log_format)
    ctx.obj = _Context(config_path, log_level, log_format)


def _global_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """`loader status --config F`: a global option given after the command overrides the one before."""
    if value is None:
        return
    obj = ctx.find_object(_Context)
    assert obj is not None and param.name is not None
    setattr(obj, param.name, value)
    if param.name in ("log_level", "log_format"):
        from loader.observe import logs
        logs.configure(obj.log_level, obj.log_format)


def _add_global_options(group: click.Group) -> None:
    """Give every command the group's --config, --log-level and --log-format, so they work after the
    command too (as the README writes them); without a value there, the group's value holds."""
    for command in group.commands.values():
        for option in cli.params:
            if isinstance(option, click.Option) and option.name in ("config_path", "log_level", "log_format"):
                command.params.append(click.Option(
                    [*option.opts, option.name], type=option.type, default=None, expose_value=False,
                    callback=_global_option, help=option.help, metavar=option.metavar))
        if isinstance(command, click.Group):
            _add_global_options(command)


def _executor_option(help_text: str) -> Callable[[F], F]:
    return click.option("--executor", type=click.Choice(["auto", "local", "ray"]), default=None,
                        help=help_text)


def _engine_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value in ("local", "ray"):
        raise click.BadParameter(f"{value!r}: --engine now says where the transforms run (auto, cpu, gpu); "
                                 f"in-process or Ray moved to --executor {value}")
    if value not in (None, "auto", "cpu", "gpu"):
        raise click.BadParameter(f"{value!r} is not one of auto, cpu, gpu")
    return value


_max_batch_rows_option = click.option(
    "--max-batch-rows", type=click.IntRange(min=1), default=None, metavar="N",
    help="Override run.max_batch_rows: about this many rows (all sources) per committed batch.")


def _engine_option(help_text: str) -> Callable[[F], F]:
    return click.option("--engine", metavar="[auto|cpu|gpu]", default=None, callback=_engine_value,
                        help=help_text)


@cli.command("run", epilog=EXIT_CODES_HELP)
@click.option("--incremental", is_flag=True,
              help="Load only what is new since the last committed run: what `run` always does (the flag is "
                   "accepted for cron lines that name it; to reload a window, see `backfill`).")
@_executor_option("Override ray.mode: local runs in this process, ray uses Ray Data, auto runs in-process "
                  "unless a Ray cluster address is set (ray.address, RAY_ADDRESS).")
@_engine_option("Override transform.engine: where the transforms run. auto: the GPU (cuDF) when one is "
                "usable, else the CPU; gpu: fail at start without one; cpu: never import cuDF.")
@_max_batch_rows_option
@click.option("--json", "as_json", is_flag=True,
              help="Print one summary object on stdout (totals and a `batches` list).")
@click.pass_obj
def run_command(obj: _Context, incremental: bool, executor: str | None, engine: str | None,
                max_batch_rows: int | None, as_json: bool) -> None:
    """Run one incremental load: plan the window since the checkpoints, cut it into batches, and for
    each batch read, transform, write every sink and commit the checkpoints.

    
    A batch holds about run.max_batch_rows rows (--max-batch-rows), so memory follows the batch, not
    the window: a first load of years of history runs like a long series of increments. Killed, the
    next run replays the batch in flight (its recorded input, nothing else) and goes on from there.
    In a terminal a bar shows rows done of the planned total, the batch and the time left; otherwise
    one log line per batch. `loader status` shows a run in progress or interrupted (batch i of n).
    """
    with _start_up():
        config = obj.config(executor=executor, engine=engine, max_batch_rows=max_batch_rows)
        from loader.observe.progress import bar_in_terminal
        from loader.protocol.incremental import run_incremental

    with bar_in_terminal(quiet=as_json), _stdout_kept_for_json(as_json):
        summary = run_incremental(config)
    if as_json:
        _emit(summary.to_json())
    else:
        from loader.audit.report import print_run_summary

        print_run_summary(summary)


def _instant(value: str, option: str, *, grain: timedelta | None = None,
             now: datetime | None = None) -> datetime:
    """ISO 8601 date or date-time (without a zone it is UTC, as the cursors are), or a time back from
    now: `now`, `-7d`, `-36h`, `-90m`. A time back from now is rounded down to a whole `grain` (the
    backfill's chunk), so the same command names the same window, and resumes it, all that chunk long."""
    relative = _back_from_now(value, now or datetime.now(UTC))
    if relative is not None:
        return relative - (relative - _EPOCH) % grain if grain else relative
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an ISO 8601 date or time (2024-01-05, "
                                 f"2024-01-05T06:00:00Z) nor a time back from now (now, -7d, -36h, -90m)",
                                 param_hint=option) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _back_from_now(value: str, now: datetime) -> datetime | None:
    """`now` or `-<duration>` (loader.config.parse_duration's units) as an instant; None: neither."""
    text = value.strip().lower()
    if text == "now":
        return now
    if not text.startswith("-"):
        return None
    from loader.config import parse_duration

    try:
        return now - parse_duration(text[1:])
    except ValueError:
        return None


@cli.command("backfill", epilog=EXIT_CODES_HELP)
@click.option("--start", metavar="TIME",
              help="Window start, exclusive: ISO date or time (UTC if no zone), or back from now: -7d, -36h.")
@click.option("--end", metavar="TIME", help="Window end, inclusive: as --start, or now.")
@click.option("--source", "sources", multiple=True, metavar="NAME",
              help="Only this source; repeat the flag for more (--source orders --source lineitem). "
                   "Default: all.")
@click.option("--sinks", "sinks", multiple=True, metavar="NAME",
              help="Only this sink; repeat the flag for more (--sinks delta --sinks parquet). "
                   "Default: all enabled.")
@click.option("--chunk", default="1d", show_default=True, help="Chunk length: 90s, 30m, 6h, 1d, 1w.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Chunks loaded at once (threads of this process; memory grows with it).")
@click.option("--resume", "resume_id",
              help="Resume backfill ID (shown by `loader status`) with its recorded options.")
@_executor_option("As for `run`.")
@_engine_option("As for `run`.")
@_max_batch_rows_option
@click.option("--dry-run", is_flag=True,
              help="Print the chunks, files, estimated rows and batches; write nothing.")
@click.option("--force", is_flag=True,
              help="Load every chunk again, also those an earlier backfill of the same window loaded (after "
                   "fixing landing files): a new backfill with an id of its own.")
@click.option("--json", "as_json", is_flag=True, help="Print one summary object on stdout.")
@click.pass_obj
def backfill_command(obj: _Context, start: str | None, end: str | None, sources: tuple[str, ...],
                     sinks: tuple[str, ...], chunk: str, parallel: int, resume_id: str | None,
                     executor: str | None, engine: str | None, max_batch_rows: int | None, dry_run: bool,
                     force: bool, as_json: bool) -> None:
    """Reload the cursor window (START, END] in chunks without moving the incremental checkpoint.

    \b
    Each chunk is cut into batches of about run.max_batch_rows rows, each a run of its own in the
    ledger (the same protocol as `loader run`); every sink merges on the primary key, so overlapping
    what incremental runs loaded duplicates nothing and keeps the newest version. Run the same command
    again after a crash: committed chunks are skipped, the cut one is loaded again. A backfill and
    `loader run` share the pipeline's lease: whichever comes second exits 3.

    Times back from now (-3d, now) are rounded down to a whole chunk, so the same command names the
    same window, and resumes it, for a whole chunk's length; --resume ID (printed by every backfill and
    `loader status`) resumes one any time. A window loaded already is skipped: --force loads it again.

    \b
      loader backfill --start -3d --end -1d --chunk 1d
      loader backfill --start -2d --end -1d --source orders --sinks delta --dry-run
      loader backfill --start -3d --end -1d --force
    """
    from loader.config import parse_duration

    if resume_id is None and (start is None or end is None):
        raise click.UsageError("give --start and --end (or --resume ID to continue an earlier backfill)")
    if resume_id is not None and (start or end or sources or sinks or force):
        raise click.UsageError("--resume takes the recorded window, sources and sinks: "
                               "drop --start/--end/--source/--sinks/--force")
    try:
        chunk_size: timedelta = parse_duration(chunk)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--chunk") from None
    config = obj.config(executor=executor, engine=engine, max_batch_rows=max_batch_rows)
    from loader.protocol import backfill
    if resume_id is not None:
        request = backfill.find_request(config, resume_id)
    else:
        assert start is not None and end is not None
        now = datetime.now(UTC)
        request = backfill.build_request(
            config, start=_instant(start, "--start", grain=chunk_size, now=now),
            end=_instant(end, "--end", grain=chunk_size, now=now), chunk=chunk_size, sources=sources,
            sinks=sinks, forced_at=now if force else None)
    if dry_run:
        summary = backfill.dry_run(config, request)
    else:
        from loader.audit.report import backfill_progress

        with backfill_progress(quiet=as_json) as on_chunk, _stdout_kept_for_json(as_json):
            summary = backfill.run_backfill(config, request, parallel=parallel, on_chunk=on_chunk)
    if as_json:
        _emit(summary.to_json())
    else:
        from loader.audit.report import print_backfill

        print_backfill(redact_data(summary.to_json()))


@cli.command("doctor", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
@click.pass_obj
def doctor_command(obj: _Context, as_json: bool) -> None:
    """Check what this machine and config can use: Ray (local or the cluster address), GPU and cuDF,
    the landing zone, the dimension cache, every enabled sink, the state store (read-only) and whether
    the landing zone still holds the files the checkpoints were set from. Writes nothing, not even a
    state file; exit 1 if a check failed (an optional part that is absent, like the GPU, is
    'unavailable', not a failure)."""
    config = obj.config()
    from loader.audit.doctor import run_checks

    checks = run_checks(config)  # each detail already redacted
    failed = [c for c in checks if c.status == "failed"]
    if as_json:
        _emit({"pipeline": config.pipeline, "ok": not failed, "checks": [c.to_json() for c in checks]})
    else:
        from loader.audit.report import print_doctor

        print_doctor(config.pipeline, checks)
    if failed:
        sys.exit(EXIT_FAILED)


@cli.command("plan")
@_max_batch_rows_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
@click.pass_obj
def plan_command(obj: _Context, max_batch_rows: int | None, as_json: bool) -> None:
    """Show what the next incremental run would read (windows, files, row groups, rows) and the batches
    it would cut that into. An unfinished run is shown as the replay of its windows. Starts no Ray."""
    config = obj.config(max_batch_rows=max_batch_rows)
    from loader.audit.report import plan_payload, print_plan
    from loader.protocol.incremental import preview_next_run

    next_run = preview_next_run(config)
    payload = redact_data(plan_payload(next_run.plan, replay_of=next_run.replay_of, cutting=next_run.cutting))
    _emit(payload) if as_json else print_plan(payload)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print status as JSON on stdout.")
@click.pass_obj
def status_command(obj: _Context, as_json: bool) -> None:
    """Per source: checkpoint, lag, last run and its rows; plus any unfinished run and the lease."""
    config = obj.config()
    from loader.audit.report import print_status, status_payload

    payload = status_payload(config)  # secrets masked
    _emit(payload) if as_json else print_status(payload)


@cli.command("history")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="The newest N runs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the runs as a JSON list on stdout (newest first).")
@click.pass_obj
def history_command(obj: _Context, limit: int, as_json: bool) -> None:
    """Past runs, newest first: mode, outcome, windows, rows per table (and per region and sink with
    --json), seconds per stage, the error of a failed run."""
    config = obj.config()
    from loader.observe.run_history import read_history

    entries = read_history(config.state.url, config.pipeline, limit=limit)
    if as_json:
        _emit(redact_data([entry.to_json() for entry in entries]))
    else:
        from loader.audit.report import print_history

        print_history(config.pipeline, entries)


@cli.command("report")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write (one self-contained file: open it anywhere, no network needed). "
                   "Default: report.html beside the SQLite state file (data/state/ with configs/local.yaml).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="The newest N runs.")
@click.pass_obj
def report_command(obj: _Context, out: Path | None, limit: int) -> None:
    """An HTML report of the recent runs: rows per run per table, seconds per stage, lag per source over
    time, and the latest run's rows per table, region and sink."""
    config = obj.config()
    from loader.audit.html_report import write_report
    from loader.observe.run_history import read_history

    if out is None:  # beside the state it is drawn from, in the folder the loader keeps its data in
        folder = config.state.sqlite_folder
        if folder is None:
            raise click.UsageError("give --out FILE: the state store is not a local SQLite file, so there is "
                                   "no data folder to put the report in")
        out = folder / "report.html"
    entries = read_history(config.state.url, config.pipeline, limit=limit)
    write_report(out, config.pipeline, entries)
    click.echo(f"wrote {out} ({len(entries)} run(s) of pipeline {config.pipeline})")


@cli.command("validate-config")
@click.pass_obj
def validate_config_command(obj: _Context) -> None:
    """Check the config file and report every problem at once, each with its key path. Folders the
    loader reads outside landing_zone (an absolute path, `..`, a symbolic link) are named on stderr."""
    config = obj.config()
    click.echo(f"{config.config_path}: OK (pipeline {config.pipeline}, sources: {', '.join(config.sources)})")
    for key, where in config.paths_outside_landing():
        click.echo(f"note: {key} reads {where}, outside landing_zone {config.landing_zone}: "
                   "the loader loads what lies there; make sure that is meant", err=True)


@cli.group("demo-data")
def demo_data() -> None:
    """Make and grow a TPC-H-style landing zone (the one named by landing_zone in the config)."""


def _demo_now(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """--now: an ISO 8601 date or date-time, UTC when it names no zone (as backfill's times); None: the
    current time."""
    return None if value is None else _instant(value, "--now")


_demo_now_option = click.option(
    "--now", "now", callback=_demo_now, metavar="ISO-8601",
    help="Pin the clock, for reproducible zones; default: the current time. An ISO date or date-time, UTC "
         "unless it names a zone: 2024-01-31, 2024-01-31T06:00:00Z.")


@demo_data.command("init")
@click.option("--scale", type=click.FloatRange(min=0.001), default=0.1, show_default=True,
              help="TPC-H scale factor (1 = 1.5M orders).")
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed and --now, same data.")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Ingest days the history is spread over: the days x 24 hours before now.")
@click.option("--if-missing", is_flag=True, help="Do nothing (exit 0) when a landing zone is already there.")
@_demo_now_option
@click.pass_obj
def demo_init(obj: _Context, scale: float, seed: int, days: int, if_missing: bool,
              now: datetime | None) -> None:
    """Generate the landing zone: orders and lineitem by ingest day, and the dimensions. The history ends
    at now: its newest cursor is moments old."""
    config = obj.config()
    from loader.demo import landing_zone

    root = config.landing_zone
    if if_missing and landing_zone.has_landing_zone(root):
        click.echo(f"landing zone already at {root}: left as it is", err=True)
        return
    summary = landing_zone.init(root, scale=scale, seed=seed, days=days, now=now)
    rows = summary.rows
    click.echo(
        f"landing zone ready at {root}: {rows['orders']:,} orders, {rows['lineitem']:,} lineitems over "
        f"{summary.ingest_days} ingest days ({summary.first_ingest_date} to {summary.last_ingest_date}), "
        f"newest cursor {summary.max_cursor.isoformat()}"
    )
    from loader.audit.doctor import stored_checkpoints

    held = stored_checkpoints(config)  # read-only
    if held:
        click.echo(redact(
            f"warning: the state store {config.state.url} already holds {held} checkpoint(s) of pipeline "
            f"{config.pipeline}, set from an earlier landing zone: runs would take this one's rows up to "
            "them as loaded, and `loader verify` would report mismatches. Start afresh: `make clean-data` "
            "(removes data/: landing zone, state and warehouse of configs/local.yaml; with another config "
            "remove its state store and warehouse), then `loader demo-data init` again"), err=True)


@demo_data.command("append")
@click.option("--orders", type=click.IntRange(min=0), default=1000, show_default=True,
              help="New orders (with their lineitems).")
@click.option("--updates", type=click.IntRange(min=0), default=200, show_default=True,
              help="Re-sent existing orders with a new status and price.")
@click.option("--late", type=click.IntRange(min=0), default=20, show_default=True,
              help="New orders whose cursor is older than the newest landed (inside the lookback).")
@click.option("--recent", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Updates pick among this many newest (or oldest) orders.")
@click.option("--update-from", type=click.Choice(["newest", "oldest", "any"]), default="newest",
              show_default=True,
              help="Which orders updates hit: the --recent newest (an order book), the --recent oldest "
                   "(corrections to old history: the warehouse's oldest files) or any order.")
@click.option("--deletes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Existing orders deleted upstream: tombstones (op = 'D', a new cursor, the order's full "
                   "row) for them and their lineitems.")
@click.option("--customer-changes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Existing customers whose segment (c_mktsegment), phone (c_phone) or nation (c_nationkey, "
                   "another key 0..24) change, one or more of the three each; drawn from the seed and the "
                   "batch number. customer/customer.parquet is rewritten as the new full snapshot (0: left "
                   "untouched). At most the number of customers in the landing zone.")
@_demo_now_option
@click.pass_obj
def demo_append(obj: _Context, orders: int, updates: int, late: int, recent: int, update_from: str,
                deletes: int, customer_changes: int, now: datetime | None) -> None:
    """Add one batch to the landing zone, arriving now: its records come after the newest cursor (at
    most 24 hours before now), in the folder of now's day."""
    config = obj.config()
    from loader.demo import generator, landing_zone

    try:
        summary = landing_zone.append(config.landing_zone, orders=orders, updates=updates, late=late,
                                      recent=recent, update_from=update_from, deletes=deletes,
                                      customer_changes=customer_changes, now=now)
    except generator.TooManyCustomerChanges as error:
        raise click.BadParameter(str(error), param_hint="'--customer-changes'") from None
    click.echo(
        f"appended batch {summary.batch} in ingest_date={summary.ingest_date}: "
        f"{summary.new_orders:,} new orders, {summary.updated_orders:,} updated, "
        f"{summary.late_orders:,} late, {summary.deleted_orders:,} deleted "
        f"(with {summary.deleted_lineitems:,} lineitems), {summary.lineitems:,} lineitems, "
        f"{summary.changed_customers:,} customers changed; "
        f"newest cursor {summary.max_cursor.isoformat()}"
    )


@cli.command("verify", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one object {ok, checks, notes} on stdout.")
@click.option("--table", "tables", multiple=True,
              metavar="NAME", help="Verify only this table, a fact source or a dimension (repeat the flag "
                                   "for more: --table orders --table customer). Default: every table.")
@click.option("--deep", is_flag=True,
              help="Also recompute every column of every row (enrichment, currency, amounts, masking) "
                   "through the stage chain, with the dimension version its batch recorded, and compare per "
                   "region and sink. Costs about a load's transform; memory stays bounded (a landing file, "
                   "a sink piece at a time).")
@click.option("--parts", type=click.IntRange(min=1), default=None,
              help="Verify each table in this many key-hash parts, one at a time: memory follows a part, "
                   "each part reads the table again. Default: one part per 6.5 million landing rows.")
@click.pass_obj
def verify_command(obj: _Context, as_json: bool, tables: tuple[str, ...], deep: bool,
                   parts: int | None) -> None:
    """Reconcile every enabled sink with the landing zone over the committed windows: per table, region
    and sink, each row's key, cursor and delete mark (checksums), no duplicate, every row under the
    region its own batch gave it (by the dimension version the batch recorded) and, for Parquet, in that
    region's folder; and each loaded dimension table's current rows with its files (region "-"). With
    --deep, every column of those rows as well ("values" checks). Exit 1 on any mismatch, each named on
    stderr.

    
    Example:
      loader verify                      # every table, a table of checks; mismatches on stderr
      loader verify --table orders --json
      loader verify --deep               # and every value, recomputed as each batch computed it"""
    config = obj.config()
    from loader.audit.verify import print_verification, verify

    result = verify(config, tables=tables, deep=deep, parts=parts)
    for note in result.notes:
        click.echo(redact(note), err=True)
    if as_json:
        _emit(result.to_json())
    elif result.checks:
        print_verification(result)
    for check in result.checks:
        if not check.ok:
            click.echo(redact(f"mismatch: {check.problem()}"), err=True)
    if not result.ok:
        sys.exit(EXIT_FAILED)


@cli.group("runs", invoke_without_command=True, epilog=EXIT_CODES_HELP)
@click.pass_context
def runs_group(ctx: click.Context) -> None:
    """Look after the run ledger: `loader runs list` shows it (also `loader runs` alone), `loader runs
    abandon N` stops replaying an unfinished run."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(runs_list)


@runs_group.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="The newest N runs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the runs as a JSON list on stdout (newest first).")
@click.pass_obj
def runs_list(obj: _Context, limit: int = 20, as_json: bool = False) -> None:
    """The run ledger, newest first: run number, mode, outcome (committed, failed or unfinished: the
    next run replays it; abandoned), when it started, which batch of its run, its windows. Rows, stage
    timings and errors in full: `loader history`."""
    config = obj.config()
    from loader.audit.report import print_runs, runs_payload
    from loader.observe.run_history import read_history

    entries = read_history(config.state.url, config.pipeline, limit=limit)
    if as_json:
        _emit(runs_payload(entries))
    else:
        print_runs(config.pipeline, entries)


@runs_group.command("abandon", epilog=EXIT_CODES_HELP)
@click.argument("run_number", type=int)
@click.option("--reason", default="abandoned by the user", show_default=True, help="Stored in the ledger.")
@click.pass_obj
def runs_abandon(obj: _Context, run_number: int, reason: str) -> None:
    """Stop replaying an unfinished run (e.g. its ledger row is corrupt). The next run plans afresh from
    the current checkpoints; what the abandoned run wrote is safe: sinks merge or skip those versions.
    Refused (exit 3) while a live process holds the pipeline's lease: it may be running that very run."""
    config = obj.config()
    from loader.protocol.incremental import abandon_run

    abandon_run(config, run_number, reason=reason)
    click.echo(f"run {run_number} of pipeline {config.pipeline} abandoned; "
               "the next run plans from the checkpoints")


_add_global_options(cli)  # after every command is defined


def main() -> None:
    code: int = EXIT_OK
    try:
        cap_malloc_arenas()  # before any thread allocates (loader/memory.py)
        scratch.claim()  # this process's temp files, its libraries' included, in a folder removed at exit
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        code = EXIT_FAILED
    except click.ClickException as error:
        shown = io.StringIO()
        error.show(file=shown)
        click.echo(redact(shown.getvalue()), err=True, nl=False)
        code = EXIT_USAGE
    except click.exceptions.Exit as done:
        code = done.exit_code
    except EXPECTED_ERRORS as error:
        # the one mapping of every command's errors: the message and its exit code
        click.echo(redact(f"error: {error}"), err=True)
        code = exit_code_of(error)
    except SystemExit as stop:  # commands that exit with a code
        code = stop.code if isinstance(stop.code, int) else (EXIT_OK if stop.code is None else EXIT_FAILED)
        if isinstance(stop.code, str):
            click.echo(redact(stop.code), err=True)
    except Exception:  # a bug: the traceback, as Python would print it, but with the secrets masked
        click.echo(redact(traceback.format_exc()).rstrip("\n"), err=True)
        code = EXIT_FAILED
    _leave(code)


def _leave(code: int) -> None:
    """Exit once the work is done and reported, without the interpreter's teardown of native thread
    pools: pyarrow's or DuckDB's can abort there ("terminate called without an active exception",
    SIGABRT; apache/arrow#34314), turning a committed run into a failed exit code. Ray, if this process
    started it, is shut down first and its folders removed, then the scratch folder; files and the state
    store are closed by then."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    folders = sys.modules.get("loader.execute.ray_folders")
    if folders is not None:  # this run's Ray session and spill folders
        folders.release_all()
    scratch.release()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
