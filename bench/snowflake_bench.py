"""Benchmark: throughput of the Snowflake sink into the emulator (fakesnow) for the standard increment.

    .venv/bin/python bench/snowflake_bench.py [--scale 1] [--repeat 3] [--out bench/out]

1. fakesnow's server is started in THIS process (a thread, as tests/support/snowflake_emulator.py does); the
   loader runs as a subprocess and talks to it over HTTP on loopback with the real
   snowflake-connector-python. Every request the emulator serves is timed (an ASGI wrapper), by route and by
   statement kind.
2. The landing zone SF<scale> (`demo-data init --days 30`) and its copy with one `demo-data append
   --orders 12000 --updates 3000 --late 100` batch come from bench/run_bench.py's cache in <out>/landing/.
3. Seed: the full history is loaded with parquet + delta + snowflake into the database SF_BASE
   (`--seed full`). `--seed small` (or `auto` when the probe says a full seed would take longer than
   --max-seed-s) loads the history with parquet + delta only and seeds the Snowflake tables from the
   history of a smaller scale (--seed-scale) through the loader, Snowflake only: then the increment's
   updated keys are mostly absent from Snowflake and insert instead of replace (said in the output).
4. Each repeat restores the post-seed loader state and warehouse (file copies) and a copy of SF_BASE
   under a new database name (DuckDB-level copy inside the emulator, the loader's DDL with its primary
   key kept), then runs `loader run --incremental --json` with parquet + delta + snowflake. Reported:
   rows the Snowflake sink loaded (its `rows` in the --json), the sink's wall time (the --json's per-sink
   seconds if it has them, else the loader's own INFO line `run N: <table> -> snowflake: ... in X s`,
   summed over the tables) and rows/s; the emulator's server-side time by statement; and, unless
   --no-control, the same increment with parquet + delta only, so the run's wall time with and without
   Snowflake can be compared. Medians over --repeat.

Output: a markdown table on stdout and in <out>/snowflake.md, everything in <out>/snowflake.json. Child
stdout/stderr in <out>/logs/snowflake-*.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench  # noqa: E402  (bench/ is not a package)
from run_bench import LOADER, Measured, landing_zones, measure, reset, restore, say, scale_tag  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("orders", "lineitem")
SCHEMA = "S"
PASSWORD_ENV = "SNOWFLAKE_PASSWORD"
SINK_LINE = re.compile(r"run (\d+): (\w+) -> (\w+): (.+?) in ([0-9.]+)s")
RETRY_WORDS = ("retry", "retrying", "attempt")


# ------------------------------------------------------------------------------------------ emulator


class RequestTimer:
    """ASGI wrapper around fakesnow's app: wall time of every request, by route and, for queries, by the
    statement's first keyword (PUT, COPY, DELETE, INSERT, MERGE, CREATE, ...). Requests are served one
    at a time per connection, so the sums are server-side time the client waited for."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, float]] = []  # (kind, detail, seconds)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        body = bytearray()
        gzipped = any(k == b"content-encoding" and v == b"gzip" for k, v in scope.get("headers", []))

        async def tapped_receive() -> dict[str, Any]:
            message = await receive()
            if message.get("type") == "http.request" and path.startswith("/queries/v1/query-request"):
                body.extend(message.get("body", b""))
            return message

        started = time.perf_counter()
        try:
            await self.app(scope, tapped_receive, send)
        finally:
            elapsed = time.perf_counter() - started
            kind, detail = self._classify(path, bytes(body), gzipped)
            with self.lock:
                self.events.append((kind, detail, elapsed))

    @staticmethod
    def _classify(path: str, body: bytes, gzipped: bool) -> tuple[str, str]:
        if path.startswith("/queries/v1/query-request"):
            try:
                raw = gzip.decompress(body) if gzipped else body
                sql = json.loads(raw)["sqlText"].strip()
            except Exception:  # noqa: BLE001 - a timing label, never fatal
                return "query ?", ""
            words = sql.split()
            head = words[0].upper() if words else "?"
            if head == "CREATE":
                what = next((w.upper() for w in words[1:5] if w.upper() in {"STAGE", "TABLE"}), "?")
                if "LIKE" in (w.upper() for w in words):
                    what = "TABLE LIKE (staging)"
                head = f"CREATE {what}"
            elif head == "SELECT" and "LOADER_LEDGER" in sql.upper():
                head = "SELECT ledger"
            return head, sql[:120]
        if path.startswith("/fs_bucket/"):
            return "PUT upload (file body)", path[-80:]
        if path.startswith("/session/v1/login-request"):
            return "login", ""
        if path.startswith("/session"):
            return "session close/heartbeat", ""
        return f"other {path[:40]}", ""

    def mark(self) -> int:
        with self.lock:
            return len(self.events)

    def since(self, mark: int) -> dict[str, dict[str, float]]:
        with self.lock:
            events = self.events[mark:]
        out: dict[str, dict[str, float]] = {}
        for kind, _detail, seconds in events:
            slot = out.setdefault(kind, {"n": 0, "s": 0.0})
            slot["n"] += 1
            slot["s"] += seconds
        return {k: {"n": int(v["n"]), "s": round(v["s"], 3)}
                for k, v in sorted(out.items(), key=lambda kv: -kv[1]["s"])}


@contextlib.contextmanager
def emulator() -> Any:
    """fakesnow's server in this process, its app wrapped by a RequestTimer; (settings, timer)."""
    import importlib

    import fakesnow

    start = fakesnow.server  # the function: importing the submodule fakesnow.server shadows the name
    module = importlib.import_module("fakesnow.server")
    timer = RequestTimer(getattr(module, "app"))  # noqa: B009
    setattr(module, "app", timer)  # noqa: B010  (fakesnow.server() hands `fakesnow.server.app` to uvicorn)
    try:
        with start() as settings:
            yield settings, timer
    finally:
        setattr(module, "app", timer.app)  # noqa: B010


def duck() -> Any:
    """A cursor on the emulator's shared in-memory DuckDB (the server runs in this process)."""
    import importlib

    return importlib.import_module("fakesnow.server").shared_fs.duck_conn.cursor()


def create_database(server: dict[str, Any], database: str) -> None:
    """The database and schema, through the emulator (so its information-schema views exist)."""
    import snowflake.connector

    options = {k: v for k, v in server.items() if k != "network_timeout"}
    conn = snowflake.connector.connect(**options, database=database, schema=SCHEMA)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {database}.{SCHEMA}")
    finally:
        conn.close()


def clone_database(server: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    """`target` = a copy of `source`.S: each table recreated from DuckDB's own DDL of it (primary key
    kept, as the loader created it), then filled. The emulator's CLONE is a CTAS and drops the key."""
    started = time.perf_counter()
    create_database(server, target)
    cur = duck()
    try:
        tables = cur.execute(
            "SELECT table_name, sql FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?",
            [source, SCHEMA],
        ).fetchall()
        cur.execute(f"USE {target}")
        copied = {}
        for name, ddl in tables:
            if name.endswith("_LOADER_STAGING"):
                continue
            cur.execute(ddl)
            cur.execute(f'INSERT INTO {target}.{SCHEMA}."{name}" SELECT * FROM {source}.{SCHEMA}."{name}"')
            copied[name] = cur.execute(f'SELECT COUNT(*) FROM {target}.{SCHEMA}."{name}"').fetchone()[0]
        # the stage (metadata only: its files are purged by each COPY)
        with contextlib.suppress(Exception):
            cur.execute(
                "INSERT INTO _fs_global._fs_information_schema._fs_stages "
                "SELECT * REPLACE (? AS database_name) "
                "FROM _fs_global._fs_information_schema._fs_stages "
                "WHERE database_name = ? AND schema_name = ?",
                [target, source, SCHEMA],
            )
    finally:
        cur.close()
    return {"tables": copied, "seconds": round(time.perf_counter() - started, 2)}


def drop_database(database: str) -> None:
    cur = duck()
    try:
        cur.execute("USE memory")
        cur.execute(f"DETACH DATABASE IF EXISTS {database}")
    except Exception as error:  # noqa: BLE001 - memory only; keep going
        print(f"  (could not detach {database}: {error})", flush=True)
    finally:
        cur.close()


def snowflake_stats(database: str) -> dict[str, Any]:
    cur = duck()
    try:
        out = {}
        for table in TABLES:
            rows, amount = cur.execute(
                f'SELECT COUNT(*), SUM("AMOUNT_LOCAL") FROM {database}.{SCHEMA}."{table.upper()}"'
            ).fetchone()
            out[table] = {"rows": int(rows), "sum_amount_local": str(amount)}
        return out
    finally:
        cur.close()


def delta_stats(warehouse: Path) -> dict[str, Any]:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    out = {}
    for table in TABLES:
        data = DeltaTable(str(warehouse / "delta" / table)).to_pyarrow_dataset().to_table(
            columns=["amount_local"])
        out[table] = {"rows": data.num_rows, "sum_amount_local": str(pc.sum(data["amount_local"]).as_py())}
    return out


def same_numbers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Rows equal and sums equal as decimals (DuckDB and Arrow print trailing zeros differently)."""
    from decimal import Decimal

    for table in TABLES:
        x, y = a.get(table) or {}, b.get(table) or {}
        if x.get("rows") != y.get("rows"):
            return False
        try:
            if Decimal(str(x.get("sum_amount_local"))) != Decimal(str(y.get("sum_amount_local"))):
                return False
        except ArithmeticError:
            return False
    return True


# ------------------------------------------------------------------------------------------ the loader


def write_config(path: Path, *, landing: Path, warehouse: Path, state: Path, parquet: bool, delta: bool,
                 snowflake: dict[str, Any] | None) -> Path:
    run_bench.write_config(path, landing=landing, warehouse=warehouse, state=state)
    raw = yaml.safe_load(path.read_text())
    raw["sinks"]["parquet"]["enabled"] = parquet
    raw["sinks"]["delta"]["enabled"] = delta
    if snowflake is not None:
        raw["sinks"]["snowflake"] = snowflake
    else:
        raw["sinks"].pop("snowflake", None)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def sink_block(server: dict[str, Any], database: str, args: argparse.Namespace) -> dict[str, Any]:
    """`sinks.snowflake` for the emulator, as tests/support/snowflake_emulator.py's sink_settings() builds it,
    but with a network timeout long enough for a full load's COPY (fakesnow answers a query only when
    done)."""
    return {
        "enabled": True, "account": server["account"], "user": server["user"],
        "password": "${SNOWFLAKE_PASSWORD}",
        "database": database, "schema": SCHEMA, "host": server["host"], "port": server["port"],
        "protocol": server["protocol"], "login_timeout": "30s",
        "network_timeout": f"{args.network_timeout:.0f}s",
        "retry": {"attempts": 3, "initial_wait": "0.5s",
                  "total": f"{max(args.network_timeout * 3, 60):.0f}s"},
    }


def sink_seconds(output: dict[str, Any] | None, stderr: str) -> dict[str, dict[str, float]]:
    """Per sink, per table: seconds of its write. From the --json if it carries them (a numeric `seconds`
    / `*_s` key in tables.<t>.sinks.<sink>), else from the loader's INFO line
    `run N: <table> -> <sink>: ... in X.XXs` (written after the sink's retries, so they are included)."""
    found: dict[str, dict[str, float]] = {}
    for table, info in ((output or {}).get("tables") or {}).items():
        for sink, detail in (info.get("sinks") or {}).items():
            for key in ("seconds", "wall_s", "elapsed_s", "duration_s", "time_s", "total_s"):
                if isinstance(detail.get(key), int | float):
                    found.setdefault(sink, {})[table] = float(detail[key])
                    break
            else:
                timings = detail.get("timings_s")
                if isinstance(timings, dict) and timings:
                    total = timings.get("total")
                    value = float(total) if isinstance(total, int | float) else sum(
                        float(v) for v in timings.values() if isinstance(v, int | float))
                    found.setdefault(sink, {})[table] = value
    if found:
        return {sink: {**tables, "_source": "json"} for sink, tables in found.items()}  # type: ignore[dict-item]
    for match in SINK_LINE.finditer(stderr):
        _run, table, sink, _what, seconds = match.groups()
        found.setdefault(sink, {})[table] = found.get(sink, {}).get(table, 0.0) + float(seconds)
    return {sink: {**tables, "_source": "log"} for sink, tables in found.items()}  # type: ignore[dict-item]


def total_of(per_table: dict[str, Any] | None) -> float | None:
    if not per_table:
        return None
    return sum(v for k, v in per_table.items() if k != "_source")


def sink_rows(output: dict[str, Any] | None, sink: str) -> int | None:
    tables = (output or {}).get("tables") or {}
    rows = [int(((t.get("sinks") or {}).get(sink) or {}).get("rows", 0)) for t in tables.values()
            if sink in (t.get("sinks") or {})]
    return sum(rows) if rows else None


def loader_cmd(config: Path, args: argparse.Namespace) -> list[str]:
    # INFO (the loader's default level) for the per-sink timing lines; stderr goes to a log file.
    return [str(LOADER), "--config", str(config), "--log-level", "INFO", "run", "--incremental", "--json",
            "--executor", args.executor, "--engine", args.engine]


class Bench:
    def __init__(self, args: argparse.Namespace, server: dict[str, Any], timer: RequestTimer) -> None:
        self.args, self.server, self.timer = args, server, timer
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env[PASSWORD_ENV] = server["password"]
        self.events: list[str] = []
        self.started = datetime.now(UTC)
        self.result: dict[str, Any] = {"seed": {}, "repeats": [], "notes": [],
                                       "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
        self.me = psutil.Process()

    def say(self, line: str) -> None:
        say(self.events, line)

    def run(self, name: str, config: Path, cwd: Path, timeout: float) -> dict[str, Any]:
        """One loader subprocess; its measurement, the emulator's view of it and the sinks' seconds."""
        mark = self.timer.mark()
        cpu_before = self.me.cpu_times()
        log = self.args.out / "logs" / f"snowflake-{name.replace('.', '_')}"  # no dot: with_suffix
        m: Measured = measure(loader_cmd(config, self.args), cwd=cwd, env=self.env, timeout=timeout, log=log)
        cpu_after = self.me.cpu_times()
        stderr = Path(m.log).with_suffix(".stderr").read_text()
        sinks = sink_seconds(m.output, stderr)
        retries = [line for line in stderr.splitlines()
                   if " WARNING " in line and any(w in line.lower() for w in RETRY_WORDS)]
        record = {
            "name": name, "wall_s": round(m.wall_s, 3), "cpu_s": round(m.cpu_s, 2),
            "peak_rss_mib": round(m.peak_tree_mib), "returncode": m.returncode, "timed_out": m.timed_out,
            "emulator_cpu_s": round((cpu_after.user + cpu_after.system)
                                    - (cpu_before.user + cpu_before.system), 2),
            "rows": sum(int(t.get("rows", 0)) for t in ((m.output or {}).get("tables") or {}).values()),
            "snowflake_rows": sink_rows(m.output, "snowflake"),
            "sink_seconds": sinks,
            "snowflake_s": total_of(sinks.get("snowflake")),
            "timings_s": (m.output or {}).get("timings_s"),
            "executor": (m.output or {}).get("executor"),
            "emulator_requests": self.timer.since(mark),
            "retry_lines": retries[:20],
            "log": str(log),
        }
        status = "TIMED OUT" if m.timed_out else (f"exit {m.returncode}" if m.returncode else "ok")
        sf = record["snowflake_s"]
        self.say(f"  {name}: {m.wall_s:.2f}s wall, {record['rows']:,} rows"
                 + (f", snowflake {record['snowflake_rows']:,} rows in {sf:.2f}s"
                    if sf is not None and record["snowflake_rows"] else "")
                 + (f", {len(retries)} retry line(s)" if retries else "") + f" [{status}]")
        if m.returncode or m.timed_out:
            self.say("    " + stderr[-2500:].replace("\n", "\n    "))
        return record

    def ok(self, record: dict[str, Any]) -> bool:
        return record["returncode"] == 0 and not record["timed_out"]

    def save(self) -> None:
        load = os.getloadavg()
        self.result.update({
            "started": self.started.isoformat(), "finished": datetime.now(UTC).isoformat(),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                        "python": sys.version.split()[0], "loadavg_at_save": [round(x, 2) for x in load]},
            "versions": versions(),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "summary": self.summary(), "events": self.events,
        })
        out = self.args.out
        (out / "snowflake.json").write_text(json.dumps(self.result, indent=2, default=str))
        (out / "snowflake.md").write_text(self.markdown())

    # -------------------------------------------------------------------------------------------- set-up

    def seed(self, base: Path, lw: Path) -> tuple[str, str]:
        """Load the history; the Snowflake database holding it and how it was seeded."""
        args = self.args
        database = f"SF_BASE_{uuid.uuid4().hex[:6].upper()}"
        mode = args.seed
        if mode == "auto":
            mode = self.probe()
        seed: dict[str, Any] = {"mode": mode, "database": database}
        self.result["seed"] = seed
        if mode == "full":
            cfg = write_config(lw / "full.yaml", landing=base, warehouse=lw / "warehouse",
                               state=lw / "sqlite-state",
                               parquet=True, delta=True, snowflake=sink_block(self.server, database, args))
            self.say(f"seed: full history SF{scale_tag(args.scale)} with parquet + delta + snowflake "
                     f"into {database}")
            record = self.run(f"seed-full-sf{scale_tag(args.scale)}", cfg, lw, args.timeout)
            seed["run"] = record
            self.check_ok(record, "the full load with Snowflake")
            how = f"full SF{scale_tag(args.scale)} history loaded through the loader with all three sinks"
        else:
            cfg = write_config(lw / "full.yaml", landing=base, warehouse=lw / "warehouse",
                               state=lw / "sqlite-state",
                               parquet=True, delta=True, snowflake=None)
            self.say(f"seed: full history SF{scale_tag(args.scale)} with parquet + delta "
                     "(Snowflake seeded separately)")
            record = self.run(f"seed-full-sf{scale_tag(args.scale)}", cfg, lw, args.timeout)
            seed["run"] = record
            self.check_ok(record, "the full load")
            small = args.seed_scale
            sbase, _sinc, _made = landing_zones(self.landing_args(), small, self.env, args.timeout,
                                                self.events)
            sw = lw.parent / "seed-small"
            reset(sw)
            scfg = write_config(sw / "seed.yaml", landing=sbase, warehouse=sw / "warehouse",
                                state=sw / "sqlite-state",
                                parquet=False, delta=False, snowflake=sink_block(self.server, database, args))
            self.say(f"seed: Snowflake tables from the SF{scale_tag(small)} history (Snowflake only) "
                     f"into {database}")
            srecord = self.run(f"seed-snowflake-sf{scale_tag(small)}", scfg, sw, args.timeout)
            seed["snowflake_run"] = srecord
            self.check_ok(srecord, "the Snowflake seed")
            reset(sw)
            how = (f"SF{scale_tag(args.scale)} history in parquet + delta; Snowflake tables seeded from the "
                   f"SF{scale_tag(small)} history ("
                   + (f"a full SF{scale_tag(args.scale)} load into the emulator was estimated too slow"
                      if args.seed == "auto" else "--seed small")
                   + "), so most updated keys of the increment are inserts there, not replacements")
        seed["how"] = how
        seed["snowflake_tables"] = snowflake_stats(database)
        self.save()
        return database, how

    def probe(self) -> str:
        """Time a full load with Snowflake at --probe-scale and extrapolate linearly to --scale."""
        args = self.args
        if args.scale <= args.probe_scale:
            return "full"
        pbase, _pinc, _made = landing_zones(self.landing_args(), args.probe_scale, self.env, args.timeout,
                                            self.events)
        pw = args.out / "work" / "snowflake-probe"
        reset(pw)
        database = f"SF_PROBE_{uuid.uuid4().hex[:6].upper()}"
        cfg = write_config(pw / "probe.yaml", landing=pbase, warehouse=pw / "warehouse",
                           state=pw / "sqlite-state",
                           parquet=True, delta=True, snowflake=sink_block(self.server, database, args))
        self.say(f"probe: full SF{scale_tag(args.probe_scale)} load with Snowflake, "
                 f"to extrapolate to SF{scale_tag(args.scale)}")
        record = self.run(f"probe-full-sf{scale_tag(args.probe_scale)}", cfg, pw, args.timeout)
        drop_database(database)
        reset(pw)
        factor = args.scale / args.probe_scale
        estimate = record["wall_s"] * factor if self.ok(record) else float("inf")
        self.result["probe"] = {**record, "scale": args.probe_scale, "estimate_full_s": round(estimate, 1),
                                "max_seed_s": args.max_seed_s}
        self.say(f"  probe: {record['wall_s']:.1f}s at SF{scale_tag(args.probe_scale)} "
                 f"-> about {estimate:.0f}s at "
                 f"SF{scale_tag(args.scale)} (limit {args.max_seed_s:.0f}s)")
        return "full" if estimate <= args.max_seed_s else "small"

    def landing_args(self) -> argparse.Namespace:
        a = self.args
        return argparse.Namespace(out=a.out, days=a.days, orders=a.orders, updates=a.updates, late=a.late)

    def check_ok(self, record: dict[str, Any], what: str) -> None:
        if not self.ok(record):
            self.save()
            raise SystemExit(f"{what} failed: see {record['log']}.stderr")

    # -------------------------------------------------------------------------------------------- main

    def main(self) -> None:
        args = self.args
        tag = f"SF{scale_tag(args.scale)}"
        self.say(f"snowflake sink bench: {tag}, repeat {args.repeat}, executor {args.executor}, "
                 f"engine {args.engine}, out {args.out}; "
                 f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
        base, inc, made = landing_zones(self.landing_args(), args.scale, self.env, args.timeout, self.events)
        self.result["landing"] = {"history": str(base), "with_batch": str(inc), **made}
        work = args.out / "work" / f"snowflake-sf{scale_tag(args.scale)}"
        reset(work)
        lw = work / "loader"
        lw.mkdir(parents=True)
        base_db, how = self.seed(base, lw)
        self.result["notes"].append(f"seed: {how}")

        snap = work / "snapshots"
        restore(lw / "warehouse", snap / "warehouse")
        restore(lw / "sqlite-state", snap / "sqlite-state")

        for i in range(args.repeat):
            rep: dict[str, Any] = {"index": i + 1}
            self.result["repeats"].append(rep)
            db = f"SF_R{i + 1}_{uuid.uuid4().hex[:6].upper()}"
            # control first on even repeats, second on odd ones: a noisy neighbour hurts both alike
            order = ("snowflake", "control") if i % 2 == 0 else ("control", "snowflake")
            for side in order:
                if side == "control" and not args.control:
                    continue
                restore(snap / "warehouse", lw / "warehouse")
                restore(snap / "sqlite-state", lw / "sqlite-state")
                if side == "snowflake":
                    rep["clone"] = clone_database(self.server, base_db, db)
                    self.say(f"repeat {i + 1}: {db} cloned from {base_db} in "
                             f"{rep['clone']['seconds']:.1f}s {rep['clone']['tables']}")
                    cfg = write_config(work / f"inc-{i + 1}.yaml", landing=inc, warehouse=lw / "warehouse",
                                       state=lw / "sqlite-state", parquet=True, delta=True,
                                       snowflake=sink_block(self.server, db, args))
                    rep["snowflake"] = self.run(f"increment-{tag}-{i + 1}", cfg, lw, args.timeout)
                    if self.ok(rep["snowflake"]):
                        sf, dl = snowflake_stats(db), delta_stats(lw / "warehouse")
                        full_seed = self.result["seed"].get("mode") == "full"
                        # a smaller seed differs by design
                        equal = same_numbers(sf, dl) if full_seed else None
                        rep["check"] = {"snowflake": sf, "delta": dl, "equal": equal}
                        verdict = ("equal" if equal
                                   else ("DIFFERENT" if full_seed else "not comparable (smaller seed)"))
                        self.say(f"  check: Snowflake {sf} vs Delta {dl}: {verdict}")
                    drop_database(db)
                else:
                    cfg = write_config(work / f"control-{i + 1}.yaml", landing=inc,
                                       warehouse=lw / "warehouse",
                                       state=lw / "sqlite-state", parquet=True, delta=True, snowflake=None)
                    rep["control"] = self.run(f"control-{tag}-{i + 1}", cfg, lw, args.timeout)
            self.save()
        if not args.keep:
            reset(work)
        self.save()

    # -------------------------------------------------------------------------------------------- report

    def summary(self) -> dict[str, Any]:
        runs = [r["snowflake"] for r in self.result["repeats"]
                if "snowflake" in r and self.ok(r["snowflake"])]
        controls = [r["control"] for r in self.result["repeats"] if "control" in r and self.ok(r["control"])]
        if not runs:
            return {}

        def med(values: list[Any]) -> float | None:
            present = [float(v) for v in values if v is not None]
            return round(statistics.median(present), 3) if present else None

        rows = runs[0]["snowflake_rows"]
        sf = med([r["snowflake_s"] for r in runs])
        per_table = {t: med([(r["sink_seconds"].get("snowflake") or {}).get(t) for r in runs])
                     for t in TABLES}
        others = {s: med([total_of(r["sink_seconds"].get(s)) for r in runs]) for s in ("parquet", "delta")}
        kinds = sorted({k for r in runs for k in r["emulator_requests"]})
        server = {k: {"n": med([r["emulator_requests"].get(k, {}).get("n", 0) for r in runs]),
                      "s": med([r["emulator_requests"].get(k, {}).get("s", 0.0) for r in runs])}
                  for k in kinds}
        server = dict(sorted(server.items(), key=lambda kv: -(kv[1]["s"] or 0)))
        server_total = med([sum(v["s"] for v in r["emulator_requests"].values()) for r in runs])
        checks = [r["check"]["equal"] for r in self.result["repeats"]
                  if "check" in r and r["check"].get("equal") is not None]
        return {
            "scale": self.args.scale, "repeats_ok": len(runs), "repeats": self.args.repeat,
            "snowflake_rows": rows, "rows_all_equal": len({r["snowflake_rows"] for r in runs}) == 1,
            "snowflake_sink_s_median": sf, "snowflake_sink_s_runs": [r["snowflake_s"] for r in runs],
            "snowflake_rows_per_s": round(rows / sf) if rows and sf else None,
            "snowflake_sink_s_per_table_median": per_table,
            "sink_seconds_source": sorted({(r["sink_seconds"].get("snowflake") or {}).get("_source", "-")
                                           for r in runs}),
            "other_sinks_s_median": others,
            "run_wall_s_median": med([r["wall_s"] for r in runs]),
            "run_sinks_stage_s_median": med([(r["timings_s"] or {}).get("sinks") for r in runs]),
            "control_wall_s_median": med([c["wall_s"] for c in controls]) if controls else None,
            "control_sinks_stage_s_median": (med([(c["timings_s"] or {}).get("sinks") for c in controls])
                                             if controls else None),
            "control_other_sinks_s_median": {s: med([total_of(c["sink_seconds"].get(s)) for c in controls])
                                             for s in ("parquet", "delta")} if controls else {},
            "emulator_server_s_median": server_total,
            "emulator_cpu_s_median": med([r["emulator_cpu_s"] for r in runs]),
            "emulator_requests_median": server,
            "retry_lines": sum(len(r["retry_lines"]) for r in runs),
            "snowflake_equals_delta": all(c is True for c in checks) if checks else None,
            "clone_s_median": med([r["clone"]["seconds"] for r in self.result["repeats"] if "clone" in r]),
        }

    def markdown(self) -> str:
        s = self.summary()
        seed = self.result.get("seed") or {}
        if not s:
            return "No successful increment run.\n"

        def f(v: float | None, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        tag = f"SF{scale_tag(s['scale'])}"
        a = self.args
        per = s["snowflake_sink_s_per_table_median"]
        kinds = s["emulator_requests_median"]
        upsert = ("MERGE (staging deduplicated per key) in a transaction with the ledger row, COMMIT"
                  if "MERGE" in kinds
                  else "DELETE ... USING + INSERT ... WHERE NOT EXISTS and the ledger row in "
                  "one transaction, COMMIT")
        seed_rows = []
        run = seed.get("run") or {}
        if seed.get("mode") == "full" and run.get("snowflake_s"):
            rate = run["snowflake_rows"] / run["snowflake_s"] if run.get("snowflake_rows") else None
            sp = run["sink_seconds"].get("snowflake") or {}
            seed_rows.append(
                f"| full load {tag} (seed, once) | {f(run['snowflake_rows'], '{:,}')} | "
                f"{f(run['snowflake_s'])} | "
                f"{f(rate, '{:,.0f}')} | {f(sp.get('orders'))} | {f(sp.get('lineitem'))} | "
                f"{f(run['wall_s'])} | - | "
                f"{f(total_of(run['sink_seconds'].get('parquet')))} | "
                f"{f(total_of(run['sink_seconds'].get('delta')))} | "
                f"{f(sum(v['s'] for v in run['emulator_requests'].values()))} | - |")
        lines = [
            f"Snowflake sink into fakesnow (in-process emulator, DuckDB in memory), increment {tag} "
            f"(`demo-data append --orders {a.orders} --updates {a.updates} --late {a.late}`), "
            f"median of {s['repeats_ok']}/{s['repeats']}:",
            "",
            "| scenario | rows into Snowflake | Snowflake sink s | rows/s | orders s | lineitem s "
            "| run wall s (P+D+S) | run wall s (P+D only) | parquet s | delta s | emulator server s "
            "| Snowflake = Delta |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| increment {tag} | {f(s['snowflake_rows'], '{:,}')} | {f(s['snowflake_sink_s_median'])} | "
            f"{f(s['snowflake_rows_per_s'], '{:,}')} | {f(per.get('orders'))} | {f(per.get('lineitem'))} | "
            f"{f(s['run_wall_s_median'])} | {f(s['control_wall_s_median'])} | "
            f"{f(s['other_sinks_s_median'].get('parquet'))} | "
            f"{f(s['other_sinks_s_median'].get('delta'))} | {f(s['emulator_server_s_median'])} | "
            f"""{'-' if s['snowflake_equals_delta'] is None
                 else ('yes' if s['snowflake_equals_delta'] else 'NO')} |""",
            *seed_rows,
            "",
            "Emulator server time by request (median per run, both tables):",
            "",
            "| request | n | s |",
            "|---|---|---|",
            *[f"| {k} | {f(v['n'], '{:g}')} | {f(v['s'])} |"
              for k, v in s["emulator_requests_median"].items()],
            "",
            f"- Snowflake sink s: the sink's write per table as the loader logs it "
            f"({', '.join(s['sink_seconds_source'])}), "
            f"summed over orders and lineitem: connect + login, CREATE STAGE/TABLE IF NOT EXISTS, "
            f"the ledger check, "
            f"one Parquet file per region written and PUT (uploaded over HTTP), CREATE staging LIKE, "
            f"COPY INTO staging "
            f"and its row count, the upsert: {upsert}; DROP staging; any retries. "
            f"It runs in a thread beside the "
            f"parquet and delta sinks (sharing 2 cores with them and with the emulator). Per run: "
            f"{', '.join(f(v) for v in s['snowflake_sink_s_runs'])} s. "
            f"The emulator's server side is {f(s['emulator_server_s_median'])} s of it; "
            f"the rest is the client: Parquet encoding, the connector, HTTP on loopback.",
            f"- run wall s: the `loader run` subprocess (start-up included) "
            f"with parquet + delta + snowflake, and "
            f"the same increment with parquet + delta only (P+D only: parquet "
            f"{f(s['control_other_sinks_s_median'].get('parquet'))} s, delta "
            f"{f(s['control_other_sinks_s_median'].get('delta'))} s; the sinks write at once, in threads, so "
            f"Snowflake also slows the other two down on 2 cores). "
            f"The sinks stage lasts as long as its slowest sink "
            f"({f(s['run_sinks_stage_s_median'])} s with Snowflake, "
            f"{f(s['control_sinks_stage_s_median'])} s without).",
            f"- seed: {seed.get('how', '-')}.",
            f"- runs per repeat start from a restored copy of the post-seed state, warehouse and "
            f"Snowflake database "
            f"(clone {f(s['clone_s_median'])} s, not measured); retry log lines: {s['retry_lines']}.",
            f"- machine: {os.cpu_count()} cores shared with another engineer's test runs (load average "
            f"{', '.join(f'{x:.2f}' for x in self.result.get('loadavg_at_start') or [])} at the start, "
            f"""{', '.join(f'{x:.2f}' for x in (self.result.get('machine') or {}).get('loadavg_at_save')
                           or os.getloadavg())} """
            f"at the end); the emulator runs in the bench process "
            f"(its CPU per run, median {f(s['emulator_cpu_s_median'])} s, competes with the loader's).",
        ]
        return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fakesnow", "snowflake-connector-python", "duckdb", "deltalake", "pyarrow"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="TPC-H scale factor of the history (default 1)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="increment runs; medians are reported (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="landing zones, work, logs, results")
    parser.add_argument("--days", type=int, default=30, help="ingest days of history (demo-data init --days)")
    parser.add_argument("--orders", type=int, default=12000)
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--late", type=int, default=100)
    parser.add_argument("--executor", choices=["auto", "local", "ray"], default="auto",
                        help="the loader's --executor")
    parser.add_argument("--engine", choices=["auto", "cpu", "gpu"], default="auto",
                        help="the loader's --engine")
    parser.add_argument("--seed", choices=["auto", "full", "small"], default="auto",
                        help="full: load the whole history with Snowflake on; small: Snowflake seeded from "
                             "--seed-scale; auto: full unless the probe estimates more than --max-seed-s")
    parser.add_argument("--probe-scale", type=float, default=0.1, help="scale of the probe full load (auto)")
    parser.add_argument("--max-seed-s", type=float, default=600,
                        help="auto: largest estimated full load with Snowflake")
    parser.add_argument("--seed-scale", type=float, default=0.1,
                        help="small: history scale seeding Snowflake")
    parser.add_argument("--network-timeout", type=float, default=900,
                        help="sinks.snowflake.network_timeout, seconds")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the parquet + delta only run of each repeat")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before one loader run is killed")
    parser.add_argument("--keep", action="store_true", help="keep <out>/work/snowflake-sf<s> afterwards")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="fakesnow")
    with emulator() as (server, timer):
        # uvicorn configures its loggers when it starts: quiet them (and fakesnow's) afterwards
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fakesnow", "fakesnow.server"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # "Unsupported property clusterproperty" per CREATE
        logging.getLogger("sqlglot").setLevel(logging.ERROR)
        bench = Bench(args, server, timer)
        try:
            bench.main()
        finally:
            bench.save()
    print()
    print(bench.markdown())
    print(f"results: {args.out / 'snowflake.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
