"""Benchmark: first loads in bounded batches (memory and throughput against the scale) and resuming a
killed first load.

    .venv/bin/python bench/batch_bench.py [--scales 1,10] [--max-batch-rows N] [--landing 10=PATH]
                                          [--repeat 1] [--single-batch] [--kill-after 3] [--out bench/out]

Scenarios (orders + lineitem, Parquet + Delta sinks, SQLite state, `--executor local`, every run a fresh
subprocess, one after the other, never two at once):
  first load SF<a>, SF<b>   `loader run --incremental --json` into an empty warehouse and state, with the
                            same batch budget (--max-batch-rows, default the config's run.max_batch_rows):
                            wall time, peak RSS of the process tree, rows/s, batches. Targets: peak(SF b) /
                            peak(SF a) <= 1.2, rows/s(SF b) >= rows/s(SF a).
  floor SF<a>               bench/floor.py's full load of the same landing zone into a fresh warehouse, side
                            by side with the loader (order alternating between repeats): loader/floor ratios
                            of time and memory; the two warehouses are compared afterwards.
  single batch SF<a>        (--single-batch) the loader with a budget larger than the window: one batch,
                            what the batches save in memory.
  resume SF<a>              a first load killed (SIGKILL, failpoint checkpoint.after=crash+<k-1>) right after
                            its k-th batch committed, then the rerun: rows it read against the uninterrupted
                            load's, batches, `loader verify`, warehouse equal to the uninterrupted one.
                            Target: the rerun reads at most the remaining batches plus one.

Landing zones: `--landing S=PATH` uses an existing one for scale S (read only: nothing is written there);
other scales are generated once with `loader demo-data init --scale S --days D` and cached in
<out>/landing/sf<S>-d<D> (the cache bench/run_bench.py uses). Warehouses: <out>/work/batch-sf<S>/.
Results: a markdown table on stdout and in <out>/batch_results.md, everything in <out>/batch_results.json
(rewritten after every run), child logs in <out>/logs/batch-*.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import (  # noqa: E402  (bench/ is not a package)
    FLOOR,
    LOADER,
    MIB,
    PYTHON,
    ROOT,
    Measured,
    _trim,
    measure,
    reset,
    results_header,
    run_plain,
    say,
    scale_tag,
    warehouse_stats,
    write_config,
)

SINGLE_BATCH_ROWS = 10**12  # larger than any window: the whole first load in one batch
ROW_GROUP_WARNING = "smaller than a row group"
HEAVY_VALUE_WARNING = "cannot be split by cursor"


# ------------------------------------------------------------------------------------------ set-up


def landing_zone(args: argparse.Namespace, scale: float, env: dict[str, str],
                 log: list[str]) -> tuple[Path, dict[str, Any]]:
    """The landing zone of `scale`: the one given with --landing, else generated once into the cache."""
    given = args.landing.get(scale)
    if given is not None:
        return given, {"given": True}
    root = args.out / "landing"
    base = root / f"sf{scale_tag(scale)}-d{args.days}"
    made: dict[str, Any] = {"given": False}
    if not (base / "_demo_state.json").exists():  # written last by `demo-data init`: its absence = incomplete
        reset(base)
        config = write_config(root / f"{base.name}.yaml", landing=base, warehouse=root / "_unused",
                              state=root / "_unused")
        say(log, f"SF{scale_tag(scale)}: generating the landing zone ({args.days} days) ...")
        made["init_s"] = run_plain([str(LOADER), "--config", str(config), "demo-data", "init",
                                    "--scale", str(scale), "--days", str(args.days)],
                                   env=env, cwd=args.out, timeout=args.timeout, what="demo-data init")
        say(log, f"  init took {made['init_s']:.1f}s")
        reset(root / "_unused")
    return base, made


def check_landing(path: Path) -> str | None:
    """Why `path` is not a usable (complete) landing zone, or None."""
    if not path.is_dir():
        return f"{path} is not a folder"
    missing = [name for name in ("orders", "lineitem", "customer", "supplier", "nation", "region")
               if not (path / name).is_dir()]
    if missing:
        return f"{path} lacks {', '.join(missing)}/"
    if not (path / "_demo_state.json").is_file():
        return f"{path} has no _demo_state.json (written last by `demo-data init`): still being generated?"
    return None


def loader_config(path: Path, *, landing: Path, work: Path, lease_ttl: str | None = None) -> Path:
    """configs/local.yaml pointed at `landing`, with the warehouse in <work>/warehouse and the SQLite state in
    <work>/sqlite-state (not state/: see bench/README.md); optionally a short lease (for the kill test)."""
    write_config(path, landing=landing, warehouse=work / "warehouse", state=work / "sqlite-state")
    if lease_ttl is not None:
        raw = yaml.safe_load(path.read_text())
        raw["state"]["lease_ttl"] = lease_ttl
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def ttl_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


# ------------------------------------------------------------------------------------------ results


@dataclass
class Load:
    """One measured configuration of a first load (its runs repeated)."""

    name: str
    side: str  # loader | floor | single
    scale: float
    landing: str
    requested_budget: int | None  # --max-batch-rows passed (None: the config's run.max_batch_rows)
    runs: list[Measured] = field(default_factory=list)
    timelines: list[list[tuple[float, int]]] = field(default_factory=list)  # per run: (s, tree RSS MiB)
    notes: list[str] = field(default_factory=list)

    def ok(self) -> list[Measured]:
        return [m for m in self.runs if m.returncode == 0 and not m.timed_out and m.output]

    def wall(self) -> float | None:
        runs = self.ok()
        return statistics.median(m.wall_s for m in runs) if runs else None

    def peak(self) -> float | None:
        runs = self.ok()
        return max(m.peak_tree_mib for m in runs) if runs else None

    def rows(self) -> int | None:
        for m in self.ok():
            out = m.output or {}
            if self.side == "floor":
                return sum(int(t.get("rows", 0)) for t in (out.get("tables") or {}).values())
            return int(out.get("rows", 0))
        return None

    def rate(self) -> float | None:
        rows, wall = self.rows(), self.wall()
        return rows / wall if rows and wall else None

    def first_output(self) -> dict[str, Any]:
        runs = self.ok()
        return (runs[0].output or {}) if runs else {}

    def batches(self) -> list[dict[str, Any]]:
        return list(self.first_output().get("batches") or [])

    def budget(self) -> int | None:
        return self.first_output().get("max_batch_rows")

    def halves(self) -> tuple[int, int] | None:
        """Peak tree RSS in the first and the second half of the first good run (0.5 s samples): equal
        halves mean memory follows the batch; a larger second half, that it grows with what was loaded."""
        for m, timeline in zip(self.runs, self.timelines, strict=True):
            if m in self.ok() and len(timeline) >= 2:
                middle = m.wall_s / 2
                return (max((r for t, r in timeline if t <= middle), default=0),
                        max((r for t, r in timeline if t > middle), default=0))
        return None

    def timings(self) -> dict[str, float]:
        keys: dict[str, list[float]] = {}
        for m in self.ok():
            for k, v in ((m.output or {}).get("timings_s") or {}).items():
                keys.setdefault(k, []).append(float(v))
        return {k: statistics.median(v) for k, v in keys.items()}

    def to_json(self) -> dict[str, Any]:
        batches = self.batches()
        return {
            "name": self.name, "side": self.side, "scale": self.scale, "landing": self.landing,
            "requested_max_batch_rows": self.requested_budget, "max_batch_rows": self.budget(),
            "wall_median_s": self.wall(), "peak_tree_mib": self.peak(), "rows": self.rows(),
            "rows_per_s": self.rate(),
            "batches": len(batches) if self.side != "floor" else None,
            "batch_rows": [b.get("rows") for b in batches],
            "batch_seconds": [b.get("seconds") for b in batches],
            "timings_median_s": self.timings(), "notes": self.notes, "peak_halves_mib": self.halves(),
            "runs": [{**asdict(m), "output": _trim(m.output), "rss_timeline_mib": timeline}
                     for m, timeline in zip(self.runs, self.timelines, strict=True)],
        }


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


# ------------------------------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loads: list[Load] = []
        self.events: list[str] = []
        self.extra: dict[str, Any] = {"landing": {}, "gave_up": {}, "checks": {}, "resume": None}
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RAY_ADDRESS", "LOADER_FAILPOINTS", "LOADER_CONFIG")}
        self.started = datetime.now(UTC)
        self.failed = False  # a run that should have succeeded did not, or a correctness check failed

    # commands ---------------------------------------------------------------------------------------

    def loader_cmd(self, config: Path, budget: int | None) -> list[str]:
        return [str(LOADER), "--config", str(config), "--log-level", self.args.log_level, "run",
                "--incremental", "--json", "--executor", "local", "--engine", self.args.engine,
                *(["--max-batch-rows", str(budget)] if budget is not None else [])]

    def floor_cmd(self, landing: Path, warehouse: Path) -> list[str]:
        return [str(PYTHON), str(FLOOR), "--landing", str(landing), "--warehouse", str(warehouse),
                "--config", str(ROOT / "configs" / "local.yaml"), "--json"]

    def measured(self, what: str, cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None,
                 expect_kill: bool = False) -> tuple[Measured, list[tuple[float, int]]]:
        """measure() the command, and beside it a timeline of its tree's RSS every 0.5 s (this process's
        descendants: the only one while it runs is the measured command)."""
        # No dot in the name: measure() derives .stdout/.stderr with with_suffix, which would cut "SF0.05" at
        # its dot.
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in what.replace(".", "p"))
        log = self.args.out / "logs" / f"batch-{slug}"
        timeline: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            me, started = psutil.Process(), time.perf_counter()
            while not stop.wait(0.5):
                total = 0
                for p in me.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                if total:
                    timeline.append((round(time.perf_counter() - started, 2), round(total / MIB)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            m = measure(cmd, cwd=cwd, env=env or self.env, timeout=self.args.timeout, log=log)
        finally:
            stop.set()
            sampler.join()
        if m.timed_out:
            status = "TIMED OUT"
        elif m.returncode < 0:
            status = f"killed by {signal.Signals(-m.returncode).name}"
        else:
            status = f"exit {m.returncode}" if m.returncode else "ok"
        out = m.output or {}
        more = ""
        if "batches" in out:
            more = f", {out.get('rows', 0):,} rows in {len(out['batches'])} batch(es)"
        say(self.events, f"  {what}: {m.brief()}{more} [{status}]")
        if (m.returncode and not expect_kill) or m.timed_out:
            say(self.events,
                "    " + Path(log.with_suffix(".stderr")).read_text()[-1500:].replace("\n", "\n    "))
        if m.leftovers:
            say(self.events, f"    {m.leftovers} descendant process(es) outlived it and were killed")
        return m, timeline

    def cli_json(self, config: Path, *command: str, cwd: Path) -> tuple[int, Any, str]:
        """A quick loader command (history, verify) with --json: (exit code, parsed stdout, stderr)."""
        done = subprocess.run([str(LOADER), "--config", str(config), "--log-level", "WARNING", *command,
                               "--json"],
                              cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=self.args.timeout)
        try:
            payload = json.loads(done.stdout) if done.stdout.strip() else None
        except json.JSONDecodeError:
            payload = None
        return done.returncode, payload, done.stderr

    @staticmethod
    def warnings_of(m: Measured) -> list[str]:
        err = Path(m.log).with_suffix(".stderr")
        text = err.read_text() if err.exists() else ""
        notes = []
        if ROW_GROUP_WARNING in text:
            notes.append("budget raised to the largest row group (the loader's warning)")
        if HEAVY_VALUE_WARNING in text:
            notes.append("a cursor value heavier than the budget made a batch of its own")
        return notes

    def save(self) -> None:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()
                   if k != "landing"}
        results = {
            **results_header(self.started,
                             options | {"landing": {str(k): str(v) for k, v in self.args.landing.items()}}),
            "targets": self.targets(), "loads": [load.to_json() for load in self.loads], **self.extra,
            "events": self.events,
        }
        (self.args.out / "batch_results.json").write_text(json.dumps(results, indent=2, default=str))
        (self.args.out / "batch_results.md").write_text(self.markdown())

    # scenario 1: first loads -------------------------------------------------------------------------

    def first_loads(self, scale: float, landing: Path, *, first: bool) -> Load | None:
        """The loader's batched first load of `scale` (and at the first scale the floor and, with
        --single-batch, the one-batch load, alternating the order between repeats)."""
        args = self.args
        tag = f"SF{scale_tag(scale)}"
        work = args.out / "work" / f"batch-sf{scale_tag(scale)}"
        sides = ["loader", "floor", *(["single"] if args.single_batch else [])] if first else ["loader"]
        loads = {
            "loader": Load(f"loader {tag}", "loader", scale, str(landing), args.max_batch_rows),
            "floor": Load(f"floor {tag}", "floor", scale, str(landing), None),
            "single": Load(f"loader {tag}, one batch", "single", scale, str(landing), SINGLE_BATCH_ROWS),
        }
        for side in sides:
            self.loads.append(loads[side])
        repeats = args.repeat if first else 1
        for i in range(repeats):
            order = sides[i % len(sides):] + sides[: i % len(sides)]
            for side in order:
                load = loads[side]
                folder = work / side
                reset(folder)
                folder.mkdir(parents=True)
                if side == "floor":
                    cmd = self.floor_cmd(landing, folder / "warehouse")
                else:
                    config = loader_config(folder / "loader.yaml", landing=landing, work=folder)
                    cmd = self.loader_cmd(config, load.requested_budget)
                m, timeline = self.measured(f"{load.name} #{i + 1}", cmd, cwd=folder)
                load.runs.append(m)
                load.timelines.append(timeline)
                for note in self.warnings_of(m):
                    if note not in load.notes:
                        load.notes.append(note)
                if m.returncode or m.timed_out:
                    self.failed = True
                    self.extra["gave_up"][load.name] = "timed out" if m.timed_out else f"exit {m.returncode}"
                self.save()
                if side == "single":  # only its memory and time matter: free the disk at once
                    reset(folder)
        if first and loads["loader"].ok():  # the last batched load's warehouse: the resume's reference
            loader_stats = warehouse_stats(work / "loader" / "warehouse")
            self.extra["uninterrupted_stats"] = loader_stats
            if loads["floor"].ok():
                floor_stats = warehouse_stats(work / "floor" / "warehouse")
                equal = loader_stats == floor_stats
                self.extra["checks"][f"loader equals floor {tag}"] = {"ok": equal, "loader": loader_stats,
                                                                      "floor": floor_stats}
                if not equal:
                    self.failed = True
                say(self.events, f"  {tag}: loader and floor warehouses {'match' if equal else 'DIFFER'} "
                                 f"(Delta rows {({t: v['delta_rows'] for t, v in loader_stats.items()})})")
        if first:
            reset(work / "floor")
        self.save()
        return loads["loader"] if loads["loader"].ok() else None

    # scenario 2: resume -------------------------------------------------------------------------------

    def resume(self, scale: float, landing: Path, uninterrupted: Load) -> None:
        args = self.args
        k = args.kill_after
        tag = f"SF{scale_tag(scale)}"
        work = args.out / "work" / f"batch-sf{scale_tag(scale)}" / "resume"
        reset(work)
        work.mkdir(parents=True)
        config = loader_config(work / "loader.yaml", landing=landing, work=work, lease_ttl=args.lease_ttl)
        full_batches = uninterrupted.batches()
        result: dict[str, Any] = {"scale": scale, "kill_after": k, "lease_ttl": args.lease_ttl,
                                  "uninterrupted": {"rows": uninterrupted.rows(),
                                                    "batches": len(full_batches),
                                                    "batch_rows": [b["rows"] for b in full_batches]}}
        self.extra["resume"] = result
        if len(full_batches) <= k:
            result["problem"] = (f"the uninterrupted load ran {len(full_batches)} batch(es): killing after "
                                 f"batch {k} leaves nothing to resume; lower --max-batch-rows")
            say(self.events, f"  resume {tag}: skipped, {result['problem']}")
            self.failed = True
            self.save()
            return

        env = {**self.env, "LOADER_FAILPOINTS": f"checkpoint.after=crash+{k - 1}"}
        killed, killed_timeline = self.measured(f"resume {tag} killed after batch {k}",
                                                self.loader_cmd(config, args.max_batch_rows),
                                                cwd=work, env=env, expect_kill=True)
        sigkill = killed.returncode == -signal.SIGKILL
        code, history, err = self.cli_json(config, "history", "--limit", "100000", cwd=work)
        history = history if isinstance(history, list) else []
        committed = sorted((e for e in history if e.get("outcome") == "committed"),
                           key=lambda e: e["run_number"])
        others = [{"run_number": e["run_number"], "outcome": e.get("outcome")} for e in history
                  if e.get("outcome") != "committed"]
        committed_rows = sum(int(t.get("rows") or 0)
                             for e in committed for t in (e.get("tables") or {}).values())
        result["killed"] = {
            "returncode": killed.returncode, "sigkill": sigkill, "wall_s": killed.wall_s,
            "peak_tree_mib": killed.peak_tree_mib, "history_exit": code, "history_stderr": err[-1500:],
            "committed_runs": [e["run_number"] for e in committed],
            "committed_batch_rows": [sum(int(t.get("rows") or 0) for t in (e.get("tables") or {}).values())
                                     for e in committed],
            "committed_rows": committed_rows, "not_committed": others, "log": killed.log,
            "rss_timeline_mib": killed_timeline,
        }
        say(self.events, f"    history: {len(committed)} committed run(s) "
                         f"{result['killed']['committed_runs']}, "
                         f"{committed_rows:,} rows; not committed: {others or 'none'}")
        self.save()

        time.sleep(ttl_seconds(args.lease_ttl) + 0.5)  # the killed run's lease expires
        rerun, rerun_timeline = self.measured(f"resume {tag} rerun",
                                              self.loader_cmd(config, args.max_batch_rows), cwd=work)
        out = rerun.output or {}
        rerun_rows = int(out.get("rows", 0)) if rerun.returncode == 0 else None
        rerun_batches = out.get("batches") or []
        result["rerun"] = {
            "returncode": rerun.returncode, "wall_s": rerun.wall_s, "peak_tree_mib": rerun.peak_tree_mib,
            "rows": rerun_rows, "batches": len(rerun_batches), "run_numbers": out.get("run_numbers"),
            "replayed": out.get("replayed"), "batch_rows": [b.get("rows") for b in rerun_batches],
            "timings_s": out.get("timings_s"), "log": rerun.log, "rss_timeline_mib": rerun_timeline,
        }
        vcode, vout, verr = self.cli_json(config, "verify", cwd=work)
        result["verify"] = {"exit": vcode, "ok": (vout or {}).get("ok") if isinstance(vout, dict) else None,
                            "checks": (len((vout or {}).get("checks") or []) if isinstance(vout, dict)
                                       else None),
                            "stderr": verr[-1500:]}
        say(self.events, f"    verify: exit {vcode}" + (f"\n    {verr[-800:]}" if vcode else ""))

        total = uninterrupted.rows() or 0
        largest = max((int(b["rows"]) for b in full_batches), default=0)
        first_k = sum(int(b["rows"]) for b in full_batches[:k])
        bound = total - committed_rows + largest
        stats = warehouse_stats(work / "warehouse") if rerun.returncode == 0 else None
        reference = self.extra.get("uninterrupted_stats")
        result["warehouse"] = {"resumed": stats, "uninterrupted": reference}
        checks = {
            "killed by SIGKILL": sigkill,
            f"{k} batches committed before the kill": len(committed) == k,
            f"committed rows = the uninterrupted load's first {k} batches": committed_rows == first_k,
            "rerun exit 0": rerun.returncode == 0,
            "rerun rows <= total - committed + largest batch": None if rerun_rows is None else
                rerun_rows <= bound,
            "rerun batches <= uninterrupted - k + 1": None if rerun.returncode else
                len(rerun_batches) <= len(full_batches) - k + 1,
            "verify exit 0": vcode == 0,
            "warehouse equal to the uninterrupted load's": None if stats is None or reference is None else
                stats == reference,
        }
        result.update({"total_rows": total, "largest_batch_rows": largest, "first_k_rows": first_k,
                       "remaining_rows": total - committed_rows, "bound_rows": bound,
                       "extra_rows": None if rerun_rows is None else rerun_rows - (total - committed_rows),
                       "checks": checks})
        for name, ok in checks.items():
            say(self.events, f"    {name}: {'-' if ok is None else ('ok' if ok else 'FAILED')}")
        if not all(ok for ok in checks.values()):
            self.failed = True
        self.save()

    # reporting ----------------------------------------------------------------------------------------

    def by_side(self, side: str) -> list[Load]:
        return [load for load in self.loads if load.side == side and load.ok()]

    def targets(self) -> dict[str, Any]:
        batched = self.by_side("loader")
        out: dict[str, Any] = {}
        if len(batched) >= 2:
            a, b = batched[0], batched[-1]
            mem, rate = _ratio(b.peak(), a.peak()), _ratio(b.rate(), a.rate())
            out["memory"] = {"from": a.name, "to": b.name, "ratio": mem, "target": "<= 1.2",
                             "met": None if mem is None else mem <= 1.2}
            out["throughput"] = {"from": a.name, "to": b.name, "ratio": rate, "target": ">= 1.0",
                                 "met": None if rate is None else rate >= 1.0}
        floors = self.by_side("floor")
        if batched and floors:
            a, fl = batched[0], floors[0]
            out["vs_floor"] = {"scale": a.scale, "time_ratio": _ratio(a.wall(), fl.wall()),
                               "peak_ratio": _ratio(a.peak(), fl.peak())}
        singles = self.by_side("single")
        if batched and singles:
            out["single_batch"] = {"batched_peak_mib": batched[0].peak(),
                                   "single_peak_mib": singles[0].peak(),
                                   "saved_mib": (singles[0].peak() or 0) - (batched[0].peak() or 0),
                                   "time_ratio": _ratio(batched[0].wall(), singles[0].wall())}
        return out

    def markdown(self) -> str:
        lines = [
            "First loads (orders + lineitem, Parquet + Delta, SQLite state, `--executor local`); wall: "
            "median of n, peak: largest of n:",
            "",
            "| run | budget rows | n | wall s | peak MiB | peak MiB 1st / 2nd half | rows | rows/s | "
            "batches | "
            "rows per batch min / median / max | s per batch (median) | vs floor: time | vs floor: peak |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        floors = self.by_side("floor")
        floor = floors[0] if floors else None
        for load in self.loads:
            batches = load.batches()
            rows = [int(b["rows"]) for b in batches]
            secs = [float(b["seconds"]) for b in batches]
            spread = (f"{min(rows):,} / {statistics.median(rows):,.0f} / {max(rows):,}" if rows else "-")
            vs = floor if load.side != "floor" and floor is not None and floor.scale == load.scale else None
            budget = ("-" if load.side == "floor" else "one batch (10^12)" if load.side == "single"
                      else _f(load.budget() if load.ok() else load.requested_budget, "{:,}"))
            halves = load.halves()
            lines.append(
                f"| {load.name} | {budget} | {len(load.ok())}/{len(load.runs)} | {_f(load.wall())} | "
                f"{_f(load.peak(), '{:,.0f}')} | "
                f"{f'{halves[0]:,} / {halves[1]:,}' if halves else '-'} | "
                f"{_f(load.rows(), '{:,}')} | {_f(load.rate(), '{:,.0f}')} | "
                f"{len(batches) if load.side != 'floor' and load.ok() else '-'} | {spread} | "
                f"{_f(statistics.median(secs) if secs else None)} | "
                f"{_f(_ratio(load.wall(), vs.wall()) if vs else None)} | "
                f"{_f(_ratio(load.peak(), vs.peak()) if vs else None)} |"
            )
        targets = self.targets()
        lines.append("")
        if "memory" in targets:
            mem, rate = targets["memory"], targets["throughput"]
            lines += [
                f"- peak memory {mem['to']} / {mem['from']}: {_f(mem['ratio'])} "
                f"(target <= 1.2: {_verdict(mem['met'])})",
                f"- rows/s {rate['to']} / {rate['from']}: {_f(rate['ratio'])} "
                f"(target >= 1.0: {_verdict(rate['met'])})",
            ]
        if "vs_floor" in targets:
            vf = targets["vs_floor"]
            lines.append(f"- loader / floor at SF{scale_tag(vf['scale'])}: time {_f(vf['time_ratio'])}, "
                         f"peak {_f(vf['peak_ratio'])}")
        if "single_batch" in targets:
            sb = targets["single_batch"]
            lines.append(f"- one batch instead of batches: peak {_f(sb['single_peak_mib'], '{:,.0f}')} "
                         f"MiB against {_f(sb['batched_peak_mib'], '{:,.0f}')} MiB (batches save "
                         f"{_f(sb['saved_mib'], '{:,.0f}')} MiB); "
                         f"batched time / one-batch time {_f(sb['time_ratio'])}")
        for name, check in self.extra["checks"].items():
            lines.append(f"- {name}: {'yes' if check['ok'] else 'NO'} "
                         "(Delta rows and sum(amount_local), Parquet version rows)")
        for load in self.loads:
            for note in load.notes:
                lines.append(f"- {load.name}: {note}")
        for name, why in self.extra["gave_up"].items():
            lines.append(f"- {name}: {why}")

        stages = [load for load in self.loads if load.side != "floor" and load.ok()]
        if stages:
            lines += ["", "Loader stages (median of `timings_s`, summed over batches) against process wall "
                          "time:", "",
                      "| run | plan | execute | sinks | commit | in-run total | process wall |",
                      "|---|---|---|---|---|---|---|"]
            for load in stages:
                t = load.timings()
                lines.append(f"| {load.name} | {_f(t.get('plan'))} | {_f(t.get('execute'))} | "
                             f"{_f(t.get('sinks'))} | "
                             f"{_f(t.get('commit'))} | {_f(sum(t.values()) if t else None)} | "
                             f"{_f(load.wall())} |")

        r = self.extra.get("resume")
        if r:
            k = r["kill_after"]
            lines += ["", f"Resume at SF{scale_tag(r['scale'])}: a first load killed right after its batch "
                          f"{k} committed "
                          f"(`LOADER_FAILPOINTS=checkpoint.after=crash+{k - 1}`), then the rerun:", ""]
            if "problem" in r:
                lines.append(f"Not run: {r['problem']}.")
            else:
                un, kd, re_ = r["uninterrupted"], r.get("killed") or {}, r.get("rerun") or {}
                lines += ["| run | exit | wall s | peak MiB | rows | batches | run numbers | replayed |",
                          "|---|---|---|---|---|---|---|---|",
                          f"| uninterrupted (the first load above) | 0 | {_f(uninterrupted_wall(self))} | "
                          f"{_f(uninterrupted_peak(self), '{:,.0f}')} | {_f(un['rows'], '{:,}')} | "
                          f"{un['batches']} | - | - |"]
                if kd:
                    code = kd["returncode"]
                    lines.append(f"| killed after batch {k} | "
                                 f"{code}{' (SIGKILL)' if kd['sigkill'] else ''} | {_f(kd['wall_s'])} | "
                                 f"{_f(kd['peak_tree_mib'], '{:,.0f}')} | {kd['committed_rows']:,} "
                                 "committed | "
                                 f"{len(kd['committed_runs'])} committed | "
                                 f"{', '.join(map(str, kd['committed_runs'])) or '-'} | - |")
                if re_:
                    lines.append(f"| rerun | {re_['returncode']} | {_f(re_['wall_s'])} | "
                                 f"{_f(re_['peak_tree_mib'], '{:,.0f}')} | "
                                 f"{_f(re_['rows'], '{:,}')} | {re_['batches']} | "
                                 f"{', '.join(map(str, re_.get('run_numbers') or [])) or '-'} | "
                                 f"{re_.get('replayed')} |")
                if "checks" in r:
                    lines += ["", f"Rows: uninterrupted total {r['total_rows']:,}; committed before the kill "
                                  f"{kd.get('committed_rows', 0):,} (the uninterrupted load's first {k} "
                                  f"batches: {r['first_k_rows']:,}); remaining {r['remaining_rows']:,}; "
                                  f"the rerun read {_f(re_.get('rows'), '{:,}')} "
                                  f"({_f(r['extra_rows'], '{:+,}')} beyond the remaining: "
                                  "the 1 h lookback's re-read, and a replayed batch if any); "
                                  "bound = remaining + largest batch "
                                  f"({r['largest_batch_rows']:,}) = {r['bound_rows']:,}.", ""]
                    for name, ok in r["checks"].items():
                        lines.append(f"- {name}: {'-' if ok is None else ('yes' if ok else 'NO')}")
        return "\n".join(lines) + "\n"


def uninterrupted_wall(bench: Bench) -> float | None:
    loads = bench.by_side("loader")
    return loads[0].wall() if loads else None


def uninterrupted_peak(bench: Bench) -> float | None:
    loads = bench.by_side("loader")
    return loads[0].peak() if loads else None


# ------------------------------------------------------------------------------------------ main


def parse_landing(items: list[str]) -> dict[float, Path]:
    given: dict[float, Path] = {}
    for item in items:
        scale, sep, path = item.partition("=")
        if not sep or not path:
            raise SystemExit(f"--landing {item!r}: expected SCALE=PATH, e.g. 10=/tmp/demo10/p/landing")
        given[float(scale)] = Path(path).resolve()
    return given


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,10",
                        help="TPC-H scale factors a,b (smallest first; default 1,10)")
    parser.add_argument("--max-batch-rows", type=int, default=None,
                        help="the loader's --max-batch-rows for every batched run "
                             "(default: the config's run.max_batch_rows)")
    parser.add_argument("--landing", action="append", default=[], metavar="SCALE=PATH",
                        help="use this existing landing zone for SCALE instead of generating one "
                             "(repeatable; read only)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per side at the first scale, order alternating (larger scales run once)")
    parser.add_argument("--single-batch", action="store_true",
                        help="also load the first scale in one batch (a budget above the window) "
                             "to show what batches save")
    parser.add_argument("--kill-after", type=int, default=3,
                        help="resume scenario: kill the first load after this batch")
    parser.add_argument("--lease-ttl", default="2s",
                        help="resume scenario: the state's lease_ttl (waited for after the kill)")
    parser.add_argument("--no-resume", action="store_true", help="skip the resume scenario")
    parser.add_argument("--engine", choices=["auto", "cpu", "gpu"], default="auto",
                        help="the loader's --engine")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the loader's --log-level (its stderr goes to <out>/logs/)")
    parser.add_argument("--days", type=int, default=30, help="ingest days of generated landing zones")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="landing zones, warehouses, logs, results")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one run is killed")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.landing = parse_landing(args.landing)
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    if not scales:
        parser.error("--scales: give at least one scale")
    if args.kill_after < 1:
        parser.error("--kill-after: at least 1")
    for scale, path in args.landing.items():
        if scale not in scales:
            parser.error(f"--landing {scale:g}={path}: {scale:g} is not one of --scales {args.scales}")
        problem = check_landing(path)
        if problem:
            parser.error(f"--landing {scale:g}={path}: {problem}")

    bench = Bench(args)
    try:
        say(bench.events, f"batched first loads: scales {scales}, max_batch_rows "
                          f"{args.max_batch_rows or 'from the config'}, repeat {args.repeat}, out {args.out}")
        for i, scale in enumerate(scales):
            tag = f"SF{scale_tag(scale)}"
            try:
                landing, made = landing_zone(args, scale, bench.env, bench.events)
            except (subprocess.TimeoutExpired, RuntimeError) as error:
                bench.extra["gave_up"][tag] = f"landing zone: {str(error)[-500:]}"
                bench.failed = True
                say(bench.events, f"{tag}: giving up, {bench.extra['gave_up'][tag]}")
                continue
            bench.extra["landing"][tag] = {"path": str(landing), **made}
            say(bench.events, f"{tag}: landing zone {landing}")
            loaded = bench.first_loads(scale, landing, first=i == 0)
            if i == 0 and not args.no_resume:
                if loaded is None:
                    say(bench.events, f"resume {tag}: skipped, the uninterrupted first load failed")
                else:
                    bench.resume(scale, landing, loaded)
            bench.save()
    finally:
        bench.save()
    print()
    print(bench.markdown())
    print(f"results: {args.out / 'batch_results.md'}, {args.out / 'batch_results.json'}")
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
