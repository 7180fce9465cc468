"""Benchmark: the loader against the hand-written floor (bench/floor.py), side by side in one run.

    .venv/bin/python bench/run_bench.py [--scales 1,3] [--repeat 3] [--skip-full] [--executor auto]
        [--engine auto] [--out bench/out]

For each scale (TPC-H scale factor of the landing zone, --days ingest days of history):
  full SF<s>       first load of the whole landing zone into empty warehouses (measured --repeat times at
                   the first scale, once at larger ones; --skip-full: loaded once, not reported)
  increment SF<s>  one `demo-data append` batch (--orders/--updates/--late) loaded on top of the
                   post-full-load state; each repeat restores a copy of that state first
  empty SF<s>      a run with nothing new (after the increment)
Each run is a fresh subprocess: the loader as `.venv/bin/loader --config C run --incremental --json
--executor X --engine E`, the floor as `python bench/floor.py ...`. Wall time is measured around the
subprocess; peak memory is the largest sum of RSS over the process and all its descendants (Ray's GCS, raylet
and workers included), polled every 50 ms. Repeats alternate which side goes first. After each scenario the
two warehouses are compared (Delta rows and sum(amount_local) per table, Parquet version rows), so the
times are of equal work.

Landing zones are cached in <out>/landing/ keyed by scale and days (the appended one by the batch too);
warehouses live in <out>/work/sf<s>/. Results: a markdown table on stdout and in <out>/results.md,
everything in <out>/results.json (rewritten after every scenario, so a stopped run keeps what it had).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
LOADER = VENV_BIN / "loader"
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)
FLOOR = ROOT / "bench" / "floor.py"
DLT_LOAD = ROOT / "bench" / "dlt_load.py"
DLT_ENV = ROOT / "bench" / "dlt_env.py"
BASE_CONFIG = ROOT / "configs" / "local.yaml"
TABLES = ("orders", "lineitem")
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class Measured:
    wall_s: float
    peak_tree_mib: float  # max over samples of the summed RSS of the process and its descendants
    peak_main_mib: float  # max RSS of the top process alone
    peak_tree_pss_mib: float  # same tree, proportional set size (shared pages split), sampled every 0.5 s
    cpu_s: float  # user + sys of the process and every reaped descendant
    max_procs: int  # most processes seen at once in the tree
    returncode: int
    timed_out: bool = False
    leftovers: int = 0  # descendants still alive after the top process exited (then killed)
    output: dict[str, Any] | None = None
    log: str = ""

    def brief(self) -> str:
        return (f"{self.wall_s:.2f}s, peak RSS {self.peak_tree_mib:.0f} MiB "
                f"/ PSS {self.peak_tree_pss_mib:.0f} MiB "
                f"({self.max_procs} procs), cpu {self.cpu_s:.1f}s")


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float, log: Path,
            poll: float = 0.05) -> Measured:
    """Run `cmd` to the end (or `timeout`), sampling the RSS of its process tree every `poll` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = os.times()
    seen: dict[int, psutil.Process] = {}
    peak_tree = peak_main = peak_pss = 0
    max_procs = 0
    stop = threading.Event()
    with open(log.with_suffix(".stdout"), "w") as out, open(log.with_suffix(".stderr"), "w") as err:
        started = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        top = psutil.Process(child.pid)

        def sample() -> None:
            nonlocal peak_tree, peak_main, peak_pss, max_procs
            tick = 0
            while not stop.is_set():
                procs = _tree(top)
                total = pss = 0
                with_pss = tick % 10 == 0  # smaps is dearer to read than statm: every 10th sample
                tick += 1
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                        if with_pss:
                            pss += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    seen.setdefault(p.pid, p)
                    total += rss
                    if p.pid == child.pid:
                        peak_main = max(peak_main, rss)
                peak_tree = max(peak_tree, total)
                peak_pss = max(peak_pss, pss)
                max_procs = max(max_procs, len(procs))
                stop.wait(poll)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False
        try:
            returncode = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill([*_tree(top), *seen.values()])
            returncode = child.wait()
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
    leftovers = [p for pid, p in seen.items() if pid != child.pid and _alive(p)]
    if leftovers:  # e.g. Ray processes that outlived their driver: ours, so end them by id
        _kill(leftovers)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    stdout = log.with_suffix(".stdout").read_text()
    output = None
    try:
        output = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        output = None
    return Measured(wall_s=wall, peak_tree_mib=peak_tree / MIB, peak_main_mib=peak_main / MIB,
                    peak_tree_pss_mib=peak_pss / MIB, cpu_s=cpu,
                    max_procs=max_procs, returncode=returncode, timed_out=timed_out, leftovers=len(leftovers),
                    output=output, log=str(log))


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


# ------------------------------------------------------------------------------------------ set-up


def write_config(path: Path, *, landing: Path, warehouse: Path, state: Path, safety_lag: float | None = None,
                 tables: tuple[str, ...] = TABLES, sinks: tuple[str, ...] = ("parquet", "delta")) -> Path:
    raw = yaml.safe_load(BASE_CONFIG.read_text())
    raw["sources"] = {name: spec for name, spec in raw["sources"].items() if name in tables}
    from loader.sinks.registry import REGISTRY

    for name in REGISTRY:  # every sink the loader has: only those asked for are on
        raw["sinks"].setdefault(name, {})["enabled"] = name in sinks
    if safety_lag is not None:  # caps the window's upper at now - safety_lag: loads history in parts
        for source in raw["sources"].values():
            source["safety_lag"] = f"{safety_lag:.0f}s"
    raw["landing_zone"] = str(landing)
    raw["warehouse"] = str(warehouse)
    raw["state"]["url"] = f"sqlite:///{state / 'loader.db'}"
    # Facts only, like the floor and dlt: the dimension tables' load is measured on its own
    # (bench/dimension_bench.py); the dimensions are still read for the region lookup.
    raw["dimensions"] = {name: {**(spec if isinstance(spec, dict) else {"path": spec}), "load": False}
                         for name, spec in raw["dimensions"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def scale_tag(scale: float) -> str:
    return f"{scale:g}"


def run_plain(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float, what: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return time.perf_counter() - started


def landing_zones(args: argparse.Namespace, scale: float, env: dict[str, str], timeout: float,
                  log: list[str]) -> tuple[Path, Path, dict[str, float]]:
    """(history, history + one batch), generated once and cached under <out>/landing/."""
    root = args.out / "landing"
    tag = f"sf{scale_tag(scale)}-d{args.days}"
    base = root / tag
    inc = root / f"{tag}-o{args.orders}-u{args.updates}-l{args.late}-{args.update_from}{args.recent}"
    made: dict[str, float] = {}
    if not (base / "_demo_state.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        config = write_config(root / f"{tag}.yaml", landing=base, warehouse=root / "_unused",
                              state=root / "_unused")
        say(log, f"SF{scale_tag(scale)}: generating the landing zone ({args.days} days) ...")
        made["init_s"] = run_plain([str(LOADER), "--config", str(config), "demo-data", "init",
                                    "--scale", str(scale), "--days", str(args.days)],
                                   env=env, cwd=args.out, timeout=timeout, what="demo-data init")
        say(log, f"  init took {made['init_s']:.1f}s")
    if not (inc / "_bench_ready").exists():
        shutil.rmtree(inc, ignore_errors=True)
        # Hard links: landing files are written under a temporary name and renamed, never changed in place.
        shutil.copytree(base, inc, copy_function=os.link)
        (inc / "_demo_state.json").unlink()
        shutil.copy2(base / "_demo_state.json", inc / "_demo_state.json")
        config = write_config(root / f"{inc.name}.yaml", landing=inc, warehouse=root / "_unused",
                              state=root / "_unused")
        made["append_s"] = run_plain([str(LOADER), "--config", str(config), "demo-data", "append",
                                      "--orders", str(args.orders), "--updates", str(args.updates),
                                      "--late", str(args.late),
                                      "--update-from", args.update_from, "--recent", str(args.recent)],
                                     env=env, cwd=args.out, timeout=timeout, what="demo-data append")
        (inc / "_bench_ready").write_text("complete\n")
        say(log, f"  append took {made['append_s']:.1f}s")
    shutil.rmtree(root / "_unused", ignore_errors=True)
    return base, inc, made


def reset(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def restore(snapshot: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(snapshot, target)


# ------------------------------------------------------------------------------------------ checking


def warehouse_stats(warehouse: Path, tables: tuple[str, ...] = TABLES,
                    sinks: tuple[str, ...] = ("parquet", "delta")) -> dict[str, Any]:
    """Delta rows and sum(amount_local), Parquet version rows, per table: equal work means equal stats."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    stats: dict[str, Any] = {}
    for table in tables:
        stats[table] = {}
        if "delta" in sinks:
            delta = DeltaTable(str(warehouse / "delta" / table)).to_pyarrow_dataset()
            amount = pc.sum(delta.to_table(columns=["amount_local"])["amount_local"]).as_py()
            stats[table].update(delta_rows=delta.count_rows(), delta_sum_amount_local=str(amount))
        if "parquet" in sinks:
            versions = ds.dataset(str(warehouse / "parquet" / table), format="parquet", partitioning="hive")
            stats[table]["parquet_version_rows"] = versions.count_rows()
    return stats


def dlt_rows(warehouse: Path, tables: tuple[str, ...]) -> dict[str, int]:
    """Rows of the Delta tables dlt wrote (raw rows, one per key: compared by count only)."""
    from deltalake import DeltaTable

    return {
        t: DeltaTable(str(warehouse / "dlt" / "tpch" / t)).to_pyarrow_dataset().count_rows() for t in tables
    }


def compare(loader_wh: Path, floor_wh: Path, tables: tuple[str, ...] = TABLES,
            sinks: tuple[str, ...] = ("parquet", "delta"), dlt_wh: Path | None = None) -> dict[str, Any]:
    a, b = warehouse_stats(loader_wh, tables, sinks), warehouse_stats(floor_wh, tables, sinks)
    check: dict[str, Any] = {"match": a == b, "loader": a, "floor": b}
    if dlt_wh is not None and "delta" in sinks:
        check["dlt"] = dlt_rows(dlt_wh, tables)
        check["dlt_match"] = check["dlt"] == {t: v["delta_rows"] for t, v in a.items()}
    return check


# ------------------------------------------------------------------------------------------ scenarios


@dataclass
class Scenario:
    name: str
    scale: float
    kind: str  # full | increment | empty
    loader: list[Measured] = field(default_factory=list)
    floor: list[Measured] = field(default_factory=list)
    dlt: list[Measured] = field(default_factory=list)
    check: dict[str, Any] | None = None
    note: str = ""

    def ok(self, side: str) -> list[Measured]:
        return [m for m in getattr(self, side) if m.returncode == 0 and not m.timed_out]

    def median(self, side: str, attr: str = "wall_s") -> float | None:
        runs = self.ok(side)
        return statistics.median(getattr(m, attr) for m in runs) if runs else None

    def peak(self, side: str) -> float | None:
        runs = self.ok(side)
        return max(m.peak_tree_mib for m in runs) if runs else None

    def rows(self, side: str) -> int | None:
        for m in self.ok(side):
            if m.output and "tables" in m.output:
                return sum(int(t.get("rows", 0)) for t in m.output["tables"].values())
            if m.output and isinstance(m.output.get("rows"), dict):  # dlt's summary
                return sum(int(v) for v in m.output["rows"].values())
        return 0 if self.ok(side) else None

    def executor(self) -> str:
        engines = {m.output.get("executor") for m in self.ok("loader") if m.output}
        return ",".join(sorted(e or "-" for e in engines))

    def loader_timings(self) -> dict[str, float]:
        keys: dict[str, list[float]] = {}
        for m in self.ok("loader"):
            for k, v in ((m.output or {}).get("timings_s") or {}).items():
                keys.setdefault(k, []).append(float(v))
        return {k: statistics.median(v) for k, v in keys.items()}

    def floor_timings(self) -> dict[str, float]:
        keys: dict[str, list[float]] = {}
        for m in self.ok("floor"):
            totals: dict[str, float] = {}
            for t in ((m.output or {}).get("tables") or {}).values():
                for k, v in t.get("timings_s", {}).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
            for k, v in totals.items():
                keys.setdefault(k, []).append(v)
        return {k: statistics.median(v) for k, v in keys.items()}

    def to_json(self) -> dict[str, Any]:
        def runs(side: str) -> list[dict[str, Any]]:
            return [{**asdict(m), "output": _trim(m.output)} for m in getattr(self, side)]

        return {
            "name": self.name, "scale": self.scale, "kind": self.kind, "note": self.note,
            "loader_median_s": self.median("loader"), "floor_median_s": self.median("floor"),
            "ratio": _ratio(self.median("loader"), self.median("floor")),
            "dlt_median_s": self.median("dlt"),
            "ratio_dlt": _ratio(self.median("loader"), self.median("dlt")),
            "dlt_peak_mib": self.peak("dlt"), "dlt_runs": runs("dlt"),
            "loader_peak_mib": self.peak("loader"), "floor_peak_mib": self.peak("floor"),
            "rows": self.rows("loader"), "floor_rows": self.rows("floor"), "executor": self.executor(),
            "loader_timings_median_s": self.loader_timings(), "floor_timings_median_s": self.floor_timings(),
            "check": self.check, "loader_runs": runs("loader"), "floor_runs": runs("floor"),
        }


def _trim(output: dict[str, Any] | None) -> dict[str, Any] | None:
    """The loader's --json without the per-sink locations (long paths), for results.json."""
    if not output:
        return output
    out = json.loads(json.dumps(output, default=str))
    for table in (out.get("tables") or {}).values():
        for sink in (table.get("sinks") or {}).values():
            sink.pop("location", None)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None



def results_header(started: datetime, options: dict[str, Any]) -> dict[str, Any]:
    """What every results.json starts with: when, the command, the machine, the options."""
    return {
        "started": started.isoformat(), "finished": datetime.now(UTC).isoformat(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": sys.version.split()[0]},
        "options": options,
    }

def say(log: list[str], line: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {line}", flush=True)
    log.append(f"{stamp} {line}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scenarios: list[Scenario] = []
        self.events: list[str] = []
        self.extra: dict[str, Any] = {"landing": {}, "gave_up": {}}
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env["RAY_TMPDIR"] = str(self.ray_tmp)  # Ray's session files: a temp folder removed at the end
        self.started = datetime.now(UTC)
        self.tables = tuple(t for t in args.tables.split(",") if t)
        self.sinks = tuple(t for t in args.sinks.split(",") if t)
        self.dlt_python: Path | None = None
        if args.dlt:  # its own venv, as a user would install it (bench/dlt_env.py)
            done = subprocess.run([sys.executable, str(DLT_ENV)], capture_output=True, text=True, check=True)
            self.dlt_python = Path(done.stdout.strip().splitlines()[-1])
        self.sides = ("loader", "floor", *(("dlt",) if args.dlt else ()))

    def order(self, i: int, sides: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The sides in the order of repeat `i`: rotated each repeat, so each goes first as often."""
        sides = sides or self.sides
        k = i % len(sides)
        return (*sides[k:], *sides[:k])

    def config(self, path: Path, **kwargs: Any) -> Path:
        return write_config(path, tables=self.tables, sinks=self.sinks, **kwargs)

    def check(self, lw: Path, lf: Path, ld: Path | None) -> dict[str, Any]:
        return compare(lw / "warehouse", lf / "warehouse", self.tables, self.sinks,
                       ld / "warehouse" if ld is not None and self.args.dlt else None)

    def close(self) -> None:
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    # one measured subprocess -----------------------------------------------------------------------

    def loader_cmd(self, config: Path) -> list[str]:
        return [str(LOADER), "--config", str(config), "--log-level", "WARNING", "run", "--incremental",
                "--json", "--executor", self.args.executor, "--engine", self.args.engine]

    def floor_cmd(self, landing: Path, warehouse: Path, until: datetime | None = None) -> list[str]:
        return [str(PYTHON), str(FLOOR), "--landing", str(landing), "--warehouse", str(warehouse),
                "--config", str(BASE_CONFIG), "--json", "--tables", ",".join(self.tables),
                "--sinks", ",".join(self.sinks),
                *(["--until", until.isoformat()] if until else [])]

    def dlt_cmd(self, landing: Path, warehouse: Path) -> list[str]:
        return [str(self.dlt_python), str(DLT_LOAD), "--landing", str(landing), "--warehouse", str(warehouse),
                "--tables", ",".join(self.tables), "--json",
                *(["--full-scan"] if self.args.dlt_full_scan else [])]

    def run_side(self, scenario: Scenario, side: str, cmd: list[str], *, cwd: Path, timeout: float,
                 index: int) -> Measured:
        log = self.args.out / "logs" / f"{scenario.name.replace(' ', '_')}-{side}-{index}"
        m = measure(cmd, cwd=cwd, env=self.env, timeout=timeout, log=log)
        getattr(scenario, side).append(m)
        status = "TIMED OUT" if m.timed_out else (f"exit {m.returncode}" if m.returncode else "ok")
        extra = (f", executor {m.output.get('executor')}, transforms on {m.output.get('engine')}"
                 if side == "loader" and m.output else "")
        say(self.events, f"  {scenario.name} {side} #{index + 1}: {m.brief()}{extra} [{status}]")
        if m.returncode and not m.timed_out:
            say(self.events,
                "    " + Path(log.with_suffix(".stderr")).read_text()[-1500:].replace("\n", "\n    "))
        if m.leftovers:
            say(self.events, f"    {m.leftovers} descendant process(es) outlived {side} and were killed")
        return m

    def save(self) -> None:
        results = {
            **results_header(self.started,
                             {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()}),
            "scenarios": [s.to_json() for s in self.scenarios], "growth": self.growth(), **self.extra,
            "events": self.events,
        }
        (self.args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (self.args.out / "results.md").write_text(self.markdown())

    # the scenarios of one scale ---------------------------------------------------------------------

    def run_scale(self, scale: float, first: bool) -> None:
        args = self.args
        tag = f"SF{scale_tag(scale)}"
        limit = args.timeout if first else min(args.timeout, args.give_up)
        try:
            base, inc, made = landing_zones(args, scale, self.env, limit, self.events)
        except subprocess.TimeoutExpired:
            self.extra["gave_up"][tag] = f"landing-zone generation exceeded {limit:.0f}s"
            say(self.events, f"{tag}: giving up, {self.extra['gave_up'][tag]}")
            return
        self.extra["landing"][tag] = {"history": str(base), "with_batch": str(inc), **made}
        work = args.out / "work" / f"sf{scale_tag(scale)}"
        reset(work)
        # Not `state/`: Ray workers put the driver's cwd first on sys.path, and a folder named state there
        # shadows the loader's `state` package (ImportError in every worker).
        lw, lf, ld = work / "loader", work / "floor", work / "dlt"
        for folder in (lw, lf, ld):
            folder.mkdir(parents=True)
        full_cfg = self.config(lw / "full.yaml", landing=base, warehouse=lw / "warehouse",
                               state=lw / "sqlite-state")
        inc_cfg = self.config(lw / "increment.yaml", landing=inc, warehouse=lw / "warehouse",
                              state=lw / "sqlite-state")
        floor_wh = lf / "warehouse"

        # (a) full initial load ----------------------------------------------------------------------
        chunks = max(1, -(-scale // args.max_full_scale)) if args.max_full_scale else 1
        if chunks > 1:
            if not self.chunked_initial_load(scale, tag, int(chunks), base, lw, lf, full_cfg, floor_wh,
                                             limit):
                return
        else:
            if not self.full_load(scale, tag, first, base, lw, lf, ld, full_cfg, limit):
                return
        self._after_full(scale, tag, work, lw, lf, ld, inc, inc_cfg)

    def chunked_initial_load(self, scale: float, tag: str, chunks: int, base: Path, lw: Path, lf: Path,
                             full_cfg: Path, floor_wh: Path, limit: float) -> bool:
        """History in `chunks` runs per side (upper capped by day): one full load of it needs more memory
        than the machine has. Reported as one row: wall and cpu summed over the runs, peak the largest."""
        from datetime import timedelta

        demo = json.loads((base / "_demo_state.json").read_text())
        # the first ingest day, midnight UTC (a zone cached before `--now` existed kept it as `start`)
        first = demo.get("first_ingest_date") or demo["start"][:10]
        start = datetime.fromisoformat(first).replace(tzinfo=UTC)
        days = (datetime.fromisoformat(demo["last_ingest_date"]).date() - start.date()).days + 1
        cuts = [start + timedelta(days=round(k * days / chunks)) for k in range(1, chunks)]
        full = Scenario(f"full {tag}", scale, "full",
                        note=f"initial load in {chunks} runs per side "
                             f"(upper capped at {', '.join(c.date().isoformat() for c in cuts)}, "
                             "then all): wall and cpu summed, peak the largest; "
                             "one full run does not fit in memory")
        self.scenarios.append(full)
        reset(lw / "warehouse", lw / "sqlite-state", floor_wh)
        parts: dict[str, list[Measured]] = {"loader": [], "floor": []}
        for k, cut in enumerate([*cuts, None]):
            for side in ("loader", "floor"):
                if side == "loader":
                    cfg = full_cfg if cut is None else self.config(
                        lw / f"chunk{k}.yaml", landing=base, warehouse=lw / "warehouse",
                        state=lw / "sqlite-state", safety_lag=(datetime.now(UTC) - cut).total_seconds())
                    m = self.run_side(full, "loader", self.loader_cmd(cfg), cwd=lw, timeout=limit, index=k)
                else:
                    m = self.run_side(full, "floor", self.floor_cmd(base, floor_wh, cut), cwd=lf,
                                      timeout=limit, index=k)
                parts[side].append(m)
                if m.timed_out or m.returncode:
                    why = (f"{side} initial load, part {k + 1}/{chunks}, "
                           f"{'timed out' if m.timed_out else 'failed'}")
                    self.extra["gave_up"][tag] = why
                    say(self.events, f"{tag}: giving up, {why}")
                    self.save()
                    return False
        for side, runs in parts.items():
            tables: dict[str, dict[str, int]] = {}
            for m in runs:
                for t, v in ((m.output or {}).get("tables") or {}).items():
                    tables.setdefault(t, {"rows": 0})["rows"] += int(v.get("rows", 0))
            engines = sorted({(m.output or {}).get("executor") or "" for m in runs} - {""})
            setattr(full, side, [Measured(
                wall_s=sum(m.wall_s for m in runs), peak_tree_mib=max(m.peak_tree_mib for m in runs),
                peak_main_mib=max(m.peak_main_mib for m in runs),
                peak_tree_pss_mib=max(m.peak_tree_pss_mib for m in runs),
                cpu_s=sum(m.cpu_s for m in runs), max_procs=max(m.max_procs for m in runs), returncode=0,
                output={"tables": tables, "executor": ",".join(engines) or None,
                        "parts": [_trim(m.output) for m in runs],
                        "part_wall_s": [round(m.wall_s, 3) for m in runs]},
            )])
        if self.args.dlt:  # dlt bounds its own memory: its whole first load in one run
            reset(lw.parent / "dlt" / "warehouse")
            self.run_side(full, "dlt", self.dlt_cmd(base, lw.parent / "dlt" / "warehouse"),
                          cwd=lw.parent / "dlt", timeout=limit, index=0)
            full.note += "; dlt: one run"
        full.check = self.check(lw, lf, lw.parent / "dlt")
        self._report_check(full)
        self.save()
        return True

    def full_load(self, scale: float, tag: str, first: bool, base: Path, lw: Path, lf: Path, ld: Path,
                  full_cfg: Path, limit: float) -> bool:
        args = self.args
        full = Scenario(f"full {tag}", scale, "full")
        repeats = 1 if args.skip_full else (args.repeat if first or args.repeat_full else 1)
        if args.skip_full:
            full.note = "not measured (--skip-full): loaded once to set up the increment"
        elif repeats == 1 and args.repeat > 1:
            full.note = "measured once (only the first scale's full load is repeated)"
        self.scenarios.append(full)
        for i in range(repeats):
            for side in self.order(i):
                if side == "loader":
                    reset(lw / "warehouse", lw / "sqlite-state")
                    m = self.run_side(full, "loader", self.loader_cmd(full_cfg), cwd=lw, timeout=limit,
                                      index=i)
                elif side == "floor":
                    reset(lf / "warehouse")
                    m = self.run_side(full, "floor", self.floor_cmd(base, lf / "warehouse"), cwd=lf,
                                      timeout=limit, index=i)
                else:
                    reset(ld / "warehouse")
                    m = self.run_side(full, "dlt", self.dlt_cmd(base, ld / "warehouse"), cwd=ld,
                                      timeout=limit, index=i)
                if m.timed_out or m.returncode:
                    why = (f"{side} full load "
                           f"{'exceeded ' + str(round(limit)) + 's' if m.timed_out else 'failed'}")
                    self.extra["gave_up"][tag] = why
                    say(self.events, f"{tag}: giving up, {why}")
                    self.save()
                    return False
        full.check = self.check(lw, lf, ld)
        self._report_check(full)
        self.save()
        return True

    def _after_full(self, scale: float, tag: str, work: Path, lw: Path, lf: Path, ld: Path, inc: Path,
                    inc_cfg: Path) -> None:
        args = self.args

        # snapshots of the post-initial-load state
        snap = work / "snapshots"
        restore(lw / "warehouse", snap / "loader-warehouse")
        restore(lw / "sqlite-state", snap / "loader-state")
        restore(lf / "warehouse", snap / "floor-warehouse")
        if args.dlt:
            restore(ld / "warehouse", snap / "dlt-warehouse")

        def run(scenario: Scenario, side: str, i: int, *, fresh: bool) -> None:
            """One run of `side` on the increment's landing zone; `fresh`: from the post-full-load state."""
            if side == "loader":
                if fresh:
                    restore(snap / "loader-warehouse", lw / "warehouse")
                    restore(snap / "loader-state", lw / "sqlite-state")
                self.run_side(scenario, "loader", self.loader_cmd(inc_cfg), cwd=lw, timeout=args.timeout,
                              index=i)
            elif side == "floor":
                if fresh:
                    restore(snap / "floor-warehouse", lf / "warehouse")
                self.run_side(scenario, "floor", self.floor_cmd(inc, lf / "warehouse"), cwd=lf,
                              timeout=args.timeout, index=i)
            else:
                if fresh:
                    restore(snap / "dlt-warehouse", ld / "warehouse")
                self.run_side(scenario, "dlt", self.dlt_cmd(inc, ld / "warehouse"), cwd=ld,
                              timeout=args.timeout, index=i)

        # (b)/(c) incremental run over the history ----------------------------------------------------
        increment = Scenario(f"increment {tag}", scale, "increment",
                             note=f"append --orders {args.orders} --updates {args.updates} "
                                  f"--late {args.late} "
                                  f"--update-from {args.update_from} --recent {args.recent}")
        self.scenarios.append(increment)
        for i in range(args.repeat):
            for side in self.order(i):
                run(increment, side, i, fresh=True)
        increment.check = self.check(lw, lf, ld)
        self._report_check(increment)
        self.save()
        reset(snap)

        # (d) a run with nothing new ---------------------------------------------------------------------
        empty = Scenario(f"empty {tag}", scale, "empty")
        self.scenarios.append(empty)
        for i in range(args.repeat):
            for side in self.order(i):
                run(empty, side, i, fresh=False)
        empty.check = self.check(lw, lf, ld)
        self._report_check(empty)
        self.save()

    def _report_check(self, scenario: Scenario) -> None:
        check = scenario.check or {}
        if "dlt" in check:
            say(self.events,
                f"  {scenario.name}: dlt's Delta rows {check['dlt']} "
                f"{'equal the loader' if check.get('dlt_match') else 'DIFFER from the loader'}'s")
        if check.get("match"):
            rows = {t: v.get("delta_rows", v.get("parquet_version_rows")) for t, v in check["loader"].items()}
            say(self.events,
                f"  {scenario.name}: warehouses match (rows {rows}, sums and Parquet versions equal)")
        else:
            say(self.events, f"  {scenario.name}: WAREHOUSES DIFFER: "
                             f"loader {check.get('loader')} floor {check.get('floor')}")

    # reporting -------------------------------------------------------------------------------------------

    def growth(self) -> dict[str, Any]:
        incs = [s for s in self.scenarios if s.kind == "increment" and s.median("loader") is not None]
        if len(incs) < 2:
            return {}
        small, large = incs[0], incs[-1]
        history = {s.name: (s.check or {}).get("loader", {}) for s in (small, large)}
        return {
            "from": small.name, "to": large.name, "scale_ratio": large.scale / small.scale,
            "loader": _ratio(large.median("loader"), small.median("loader")),
            "floor": _ratio(large.median("floor"), small.median("floor")),
            "dlt": _ratio(large.median("dlt"), small.median("dlt")),
            "delta_rows": {k: {t: v.get("delta_rows") for t, v in h.items()} for k, h in history.items()},
        }

    def markdown(self) -> str:
        def f(v: float | None, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        lines = [
            "| scenario | n | loader median s | floor median s | ratio | loader peak MiB | floor peak MiB "
            "| rows | loader rows/s | floor rows/s | executor | equal |"
            + (" dlt median s | loader/dlt | dlt peak MiB |" if self.args.dlt else ""),
            "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if self.args.dlt else ""),
        ]
        for s in self.scenarios:
            if s.note.startswith("not measured"):
                continue
            lm, fm, rows = s.median("loader"), s.median("floor"), s.rows("loader")
            def rate(t: float | None, rows: int | None = rows) -> str:
                return f(rows / t, "{:,.0f}") if rows and t else "-"

            equal = "-" if s.check is None else ("yes" if s.check.get("match") else "NO")
            lines.append(
                f"| {s.name} | {len(s.ok('loader'))}/{len(s.ok('floor'))} | {f(lm)} | {f(fm)} | "
                f"{f(_ratio(lm, fm))} | "
                f"{f(s.peak('loader'), '{:,.0f}')} | {f(s.peak('floor'), '{:,.0f}')} | "
                f"{f(rows, '{:,}')} | "
                f"{rate(lm)} | {rate(fm)} | {s.executor() or '-'} | {equal} |"
                + (f" {f(s.median('dlt'))} | {f(_ratio(lm, s.median('dlt')))} | "
                   f"{f(s.peak('dlt'), '{:,.0f}')} |"
                   if self.args.dlt else "")
            )
        growth = self.growth()
        if growth:
            lines += ["", f"Growth of the increment from {growth['from']} to {growth['to']} "
                          f"(history x{growth['scale_ratio']:g}): loader x{f(growth['loader'])}, "
                          f"floor x{f(growth['floor'])}"
                          + (f", dlt x{f(growth['dlt'])}" if self.args.dlt else "") + "."]
        lines += ["",
                  "Loader stages (median of its --json timings_s) against process wall time; "
                  "floor stages summed over both tables:", "",
                  "| scenario | loader plan | execute | sinks | commit | in-run total | process wall "
                  "| outside run (start-up, imports, exit) | floor scan | transform | parquet | delta |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in self.scenarios:
            if s.note.startswith("not measured"):
                continue
            t, ft, wall = s.loader_timings(), s.floor_timings(), s.median("loader")
            inside = sum(t.values()) if t else None
            lines.append(
                f"| {s.name} | {f(t.get('plan'))} | {f(t.get('execute'))} | {f(t.get('sinks'))} | "
                f"{f(t.get('commit'))} | "
                f"{f(inside)} | {f(wall)} | "
                f"{f(wall - inside if wall is not None and inside is not None else None)} | "
                f"{f(ft.get('scan'))} | {f(ft.get('transform'))} | {f(ft.get('parquet'))} | "
                f"{f(ft.get('delta'))} |"
            )
        for tag, why in self.extra["gave_up"].items():
            lines.append(f"\nGave up on {tag}: {why}.")
        notes = [f"- {s.name}: {s.note}" for s in self.scenarios if s.note]
        if notes:
            lines += ["", *notes]
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,3", help="TPC-H scale factors, smallest first (default 1,3)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measured scenario; the median is reported")
    parser.add_argument("--skip-full", action="store_true",
                        help="do not report the full load (it still runs once)")
    parser.add_argument("--repeat-full", action="store_true",
                        help="repeat every scale's full load --repeat times "
                             "(default: the first scale's only)")
    parser.add_argument("--executor", choices=["auto", "local", "ray"], default="auto",
                        help="the loader's --executor")
    parser.add_argument("--engine", choices=["auto", "cpu", "gpu"], default="auto",
                        help="the loader's --engine")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="landing zones, warehouses, logs, results")
    parser.add_argument("--days", type=int, default=30, help="ingest days of history (demo-data init --days)")
    parser.add_argument("--orders", type=int, default=12000, help="new orders in the increment")
    parser.add_argument("--updates", type=int, default=3000, help="updated orders in the increment")
    parser.add_argument("--late", type=int, default=100,
                        help="late orders in the increment (dlt drops late rows: use 0 with --dlt)")
    parser.add_argument("--update-from", choices=["newest", "oldest", "any"], default="newest",
                        help="which orders the increment's updates hit (demo-data append --update-from)")
    parser.add_argument("--recent", type=int, default=100_000,
                        help="updates pick among this many newest/oldest orders")
    parser.add_argument("--tables", default=",".join(TABLES),
                        help="fact tables to load, comma-separated (default both)")
    parser.add_argument("--sinks", default="parquet,delta",
                        help="sinks, comma-separated: parquet, delta (default both)")
    parser.add_argument("--dlt", action="store_true",
                        help="also run dlt (bench/dlt_load.py) from its own venv, made by bench/dlt_env.py")
    parser.add_argument("--dlt-full-scan", action="store_true",
                        help="dlt without the cursor pushdown a careful user adds: its incremental filters "
                             "after reading every landing file (dlt_load.py --full-scan)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one run is killed")
    parser.add_argument("--max-full-scale", type=float, default=1.0,
                        help="a larger scale loads its history in ceil(scale / this) runs per side "
                             "(0: always one run)")
    parser.add_argument("--give-up", type=float, default=1500,
                        help="beyond the first scale: give the scale up when its generation or full load "
                             "exceeds this")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    scales = [float(s) for s in args.scales.split(",") if s.strip()]

    bench = Bench(args)
    try:
        say(bench.events, f"loader vs floor: scales {scales}, repeat {args.repeat}, "
                          f"executor {args.executor}, engine {args.engine}, out {args.out}")
        for i, scale in enumerate(scales):
            bench.run_scale(scale, first=i == 0)
            bench.save()
    finally:
        bench.save()
        bench.close()
    print()
    print(bench.markdown())
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
