"""Benchmark: `loader verify` against the floor of reading, once, the columns it must read (issue #26).

    .venv/bin/python bench/verify_bench.py [--scale 1] [--repeat 3] [--profile] [--out bench/out/verify]

Target (issue #26): the default `loader verify` over the demo zone (orders + lineitem, Parquet + Delta)
within 2.5 GB and within 1.5x the time of reading both tables once; `verify --deep` within 1.5x a full
load's time.

Set-up, cached by its recipe in <out>/sf<S>/ (the folder is a project: loader.yaml, copied from
configs/local.yaml with landing_zone, warehouse and the SQLite state relative to it; default sinks
Parquet + Delta, orders + lineitem, the dimension tables loaded): `demo-data init --scale S`, a first
`run --incremental`, then one `demo-data append` batch with updates, deletes (tombstones) and customer
changes (customers moving between nations, so regions move) and a second run. A recipe that differs
(scale, days, the batch) builds the folder again.

Measured, --repeat times, the order of the sides reversed every other round, each a fresh subprocess
after one unmeasured warm-up of each (the page cache then holds both sides' files alike):
  verify  `loader --config C verify --json` (must exit 0 with "ok": true)
  deep    `loader --config C verify --deep --json` (the same, every column recomputed)
  load    a full load of the same landing zone from nothing (`run --incremental` in a project beside,
          its warehouse and state emptied first): what --deep's target (1.5x) is measured against
  floor   `python bench/read_once.py`: in one process, pyarrow with threads, the landing files' key,
          cursor, lookup key and op, and both sinks' key, cursor, region and delete mark (no dedupe,
          no lookup, no checksum, no dimension tables: the I/O verify cannot avoid)
Wall time around the subprocess, peak RSS of its process tree polled every 50 ms (bench/run_bench.py's
`measure`). Reported: medians, verify / floor, peak RSS (the largest of the runs).

--profile: one more verify run under cProfile (the CLI leaves through os._exit, which would lose
`python -m cProfile`'s output, so a wrapper dumps the stats just before it); the top entries under
loader/ by cumulative time go to the report and <out>/verify-sf<S>.prof stays for pstats/snakeviz.

Results: a markdown table on stdout and in <out>/verify_results.md, everything in
<out>/verify_results.json, child logs in <out>/logs/. Exit 1 if verify failed or did not say ok.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import statistics
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import (  # noqa: E402  (bench/ is not a package)
    BASE_CONFIG,
    LOADER,
    PYTHON,
    ROOT,
    Measured,
    measure,
    results_header,
    say,
    scale_tag,
)

READ_ONCE = ROOT / "bench" / "read_once.py"
SIDES = ("verify", "floor", "deep", "load")

_PROFILED = """
import cProfile, sys
import loader.cli as cli
out, config = sys.argv[1], sys.argv[2]
profile = cProfile.Profile()
leave = cli._leave
def _leave(code):
    profile.disable()
    profile.dump_stats(out)
    leave(code)
cli._leave = _leave
sys.argv = ["loader", "--config", config, "verify", "--json"]
profile.enable()
cli.main()
"""


def write_project(work: Path) -> Path:
    """configs/local.yaml with its paths relative to the copy: landing/, warehouse/, state/loader.db."""
    raw = yaml.safe_load(BASE_CONFIG.read_text())
    raw["landing_zone"] = "landing"
    raw["warehouse"] = "warehouse"
    raw["state"]["url"] = "sqlite:///state/loader.db"
    work.mkdir(parents=True, exist_ok=True)
    (work / "state").mkdir(exist_ok=True)
    path = work / "loader.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _loader(config: Path, *args: str, env: dict[str, str], timeout: float, log: Path) -> Measured:
    done = measure(
        [str(LOADER), "--config", str(config), *args], cwd=config.parent, env=env, timeout=timeout, log=log
    )
    if done.returncode != 0 or done.timed_out:
        tail = Path(done.log).with_suffix(".stderr").read_text()[-3000:]
        raise RuntimeError(
            f"loader {' '.join(args)} failed ({done.returncode}, timed out {done.timed_out}):\n{tail}"
        )
    return done


def prepare(args: argparse.Namespace, env: dict[str, str], events: list[str]) -> tuple[Path, dict[str, Any]]:
    """The loaded project for the recipe, made unless <out>/sf<S>/ already holds it."""
    recipe = {
        "format": 2,  # 2: state schema 6 (every dimension version's lookups kept as changes)
        "scale": args.scale,
        "days": args.days,
        "orders": args.orders,
        "updates": args.updates,
        "deletes": args.deletes,
        "customer_changes": args.customer_changes,
        "late": args.late,
    }
    work = args.out / f"sf{scale_tag(args.scale)}"
    ready = work / "_bench_ready.json"
    if ready.exists() and json.loads(ready.read_text()).get("recipe") == recipe:
        say(events, f"reusing {work}")
        return work / "loader.yaml", json.loads(ready.read_text())
    shutil.rmtree(work, ignore_errors=True)
    config = write_project(work)
    logs = args.out / "logs"
    steps: dict[str, Any] = {}
    say(events, f"SF{scale_tag(args.scale)}: demo-data init ({args.days} days) ...")
    steps["init_s"] = _loader(
        config,
        "demo-data",
        "init",
        "--scale",
        str(args.scale),
        "--days",
        str(args.days),
        env=env,
        timeout=args.timeout,
        log=logs / "setup-init",
    ).wall_s
    for step, extra in (
        ("first_run", None),
        (
            "append",
            [
                "--orders",
                str(args.orders),
                "--updates",
                str(args.updates),
                "--late",
                str(args.late),
                "--deletes",
                str(args.deletes),
                "--customer-changes",
                str(args.customer_changes),
            ],
        ),
        ("second_run", None),
    ):
        say(events, f"  {step} ...")
        cmd = ["demo-data", "append", *extra] if extra else ["run", "--incremental", "--json"]
        done = _loader(config, *cmd, env=env, timeout=args.timeout, log=logs / f"setup-{step}")
        steps[f"{step}_s"] = done.wall_s
        steps[f"{step}_peak_mib"] = done.peak_tree_mib
        if done.output and "tables" in done.output:
            steps[f"{step}_rows"] = {t: v.get("rows") for t, v in done.output["tables"].items()}
        say(events, f"  {step} took {done.wall_s:.1f}s")
    state = {"recipe": recipe, "setup": steps, "made": datetime.now(UTC).isoformat()}
    ready.write_text(json.dumps(state, indent=1))
    return config, state


def load_project(config: Path) -> Path:
    """A project beside the bench's that loads the same landing zone from nothing: `load` empties its
    warehouse and state before each run."""
    raw = yaml.safe_load(config.read_text())
    raw["landing_zone"] = str(config.parent / "landing")
    work = config.parent.with_name(config.parent.name + "-load")
    work.mkdir(exist_ok=True)
    path = work / "loader.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


_FULL_LOAD = """
import shutil, subprocess, sys
from pathlib import Path
loader, config = sys.argv[1], Path(sys.argv[2])
for folder in ("warehouse", "state", "cache"):
    shutil.rmtree(config.parent / folder, ignore_errors=True)
(config.parent / "state").mkdir()
sys.exit(subprocess.run([loader, "--config", str(config), "run", "--incremental", "--json"]).returncode)
"""


def commands(config: Path) -> dict[str, list[str]]:
    work = config.parent
    return {
        "verify": [str(LOADER), "--config", str(config), "verify", "--json"],
        "deep": [str(LOADER), "--config", str(config), "verify", "--deep", "--json"],
        # a full load of the same zone from nothing (the emptying is inside the measured process: a
        # few milliseconds against the load's seconds)
        "load": [str(PYTHON), "-c", _FULL_LOAD, str(LOADER), str(load_project(config))],
        "floor": [
            str(PYTHON),
            str(READ_ONCE),
            "--landing",
            str(work / "landing"),
            "--warehouse",
            str(work / "warehouse"),
        ],
    }


def good(side: str, m: Measured) -> bool:
    if side == "load":
        return (m.returncode == 0 and not m.timed_out and bool(m.output)
                and m.output.get("status") == "committed")
    return m.returncode == 0 and not m.timed_out and bool(m.output) and m.output.get("ok") is True


def profile(args: argparse.Namespace, config: Path, env: dict[str, str], top: int) -> dict[str, Any]:
    """One verify run under cProfile: the `top` entries under loader/ by cumulative time."""
    out = args.out / f"verify-sf{scale_tag(args.scale)}.prof"
    out.unlink(missing_ok=True)
    done = measure(
        [str(PYTHON), "-c", _PROFILED, str(out), str(config)],
        cwd=ROOT,
        env=env,
        timeout=args.timeout,
        log=args.out / "logs" / "verify-profiled",
    )
    if not out.exists():
        return {"error": f"no profile written (exit {done.returncode})", "wall_s": done.wall_s}
    stats = pstats.Stats(str(out))
    package = str(ROOT / "loader") + os.sep
    entries = []
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        if filename.startswith(package):
            entries.append(
                {
                    "where": f"{Path(filename).relative_to(ROOT).as_posix()}:{line}({function})",
                    "cumulative_s": cumtime,
                    "own_s": tottime,
                    "calls": calls,
                }
            )
    entries.sort(key=lambda e: -e["cumulative_s"])
    return {
        "wall_s": done.wall_s,
        "exit": done.returncode,
        "ok": bool(done.output and done.output.get("ok")),
        "total_s": stats.total_tt,
        "file": str(out),
        "top": entries[:top],
    }  # type: ignore[attr-defined]


def markdown(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [
        f"SF{scale_tag(results['options']['scale'])} ({s['rows']}), median of {s['runs']}, alternating:",
        "",
        "| side | median s | min s | max s | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for side in results["options"]["sides"]:
        m = s[side]
        lines.append(
            f"| {side} | {m['median_s']:.2f} | {m['min_s']:.2f} | {m['max_s']:.2f} | {m['peak_mib']:,.0f} |"
        )
    lines += [
        "",
        f"verify / floor: {s['ratio']:.2f} (target <= 1.5); verify peak {s['verify']['peak_mib']:,.0f} MiB "
        f"(target <= 2.5 GB = {2.5e9 / 2**20:,.0f} MiB)"
        + (f"; verify --deep / full load: {s['deep_ratio']:.2f} (target <= 1.5)" if "deep_ratio" in s else "")
        + (f", deep peak {s['deep']['peak_mib']:,.0f} MiB" if "deep" in s else ""),
    ]
    prof = results.get("profile")
    if prof and prof.get("top"):
        lines += [
            "",
            f"cProfile of one verify run ({prof['wall_s']:.2f}s wall under the profiler, main thread), "
            "top entries under loader/ by cumulative time:",
            "",
            "| cumulative s | own s | calls | where |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {e['cumulative_s']:.2f} | {e['own_s']:.2f} | {e['calls']} | `{e['where']}` |"
            for e in prof["top"]
        ]
    return "\n".join(lines)


def summarise(
    runs: dict[str, list[Measured]], floor_rows: int | None, setup: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs["verify"])}
    for side in runs:
        walls = [m.wall_s for m in runs[side]]
        out[side] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "peak_mib": max(m.peak_tree_mib for m in runs[side]),
            "median_peak_mib": statistics.median(m.peak_tree_mib for m in runs[side]),
            "cpu_s_median": statistics.median(m.cpu_s for m in runs[side]),
        }
    out["ratio"] = out["verify"]["median_s"] / out["floor"]["median_s"]
    if "deep" in out and "load" in out:
        out["deep_ratio"] = out["deep"]["median_s"] / out["load"]["median_s"]
    loaded = setup.get("first_run_rows") or {}
    out["rows"] = ", ".join(f"{t} {r:,} rows loaded first" for t, r in loaded.items() if r is not None) + (
        f"; the floor reads {floor_rows:,} rows" if floor_rows else ""
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="TPC-H scale factor of the demo zone (default 1)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="measured runs per side; the median is reported"
    )
    parser.add_argument("--days", type=int, default=30, help="ingest days of history (demo-data init --days)")
    parser.add_argument("--orders", type=int, default=20000, help="new orders in the appended batch")
    parser.add_argument("--updates", type=int, default=5000, help="updated orders in the appended batch")
    parser.add_argument(
        "--deletes", type=int, default=500, help="deleted orders (tombstones) in the appended batch"
    )
    parser.add_argument(
        "--customer-changes", type=int, default=1000, help="customers changed in the appended batch"
    )
    parser.add_argument("--late", type=int, default=20, help="late orders in the appended batch")
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the unmeasured warm-up run of each side"
    )
    parser.add_argument("--profile", action="store_true", help="also one verify run under cProfile")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the loaded project, measure nothing")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="the sides to measure, comma-separated (verify and floor always; "
                             f"default {','.join(SIDES)})")
    parser.add_argument("--top", type=int, default=10, help="profile entries under loader/ to report")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one subprocess is killed")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out" / "verify", help="project, logs, results"
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    events: list[str] = []
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LOADER_CONFIG")}
    env["LOADER_LOG_FORMAT"] = "text"

    args.sides = [side for side in SIDES if side in {"verify", "floor", *args.sides.split(",")}]
    config, state = prepare(args, env, events)
    if args.prepare_only:
        return 0
    cmds = commands(config)
    logs = args.out / "logs"
    if not args.no_warmup:
        for side in args.sides:
            m = measure(cmds[side], cwd=ROOT, env=env, timeout=args.timeout, log=logs / f"{side}-warmup")
            say(events, f"warm-up {side}: {m.brief()}")
            if not good(side, m):
                say(events, f"{side} failed (exit {m.returncode}): see {m.log}.stderr")
                return 1
    runs: dict[str, list[Measured]] = {side: [] for side in args.sides}
    for i in range(args.repeat):
        for side in args.sides if i % 2 == 0 else args.sides[::-1]:
            m = measure(cmds[side], cwd=ROOT, env=env, timeout=args.timeout, log=logs / f"{side}-{i}")
            runs[side].append(m)
            say(
                events,
                f"#{i} {side}: {m.brief()}" + ("" if good(side, m) else f"  FAILED, see {m.log}.stderr"),
            )
            if not good(side, m):
                return 1
    floor_out = runs["floor"][0].output or {}
    results: dict[str, Any] = {
        **results_header(started, vars(args) | {"out": str(args.out)}),
        "setup": state,
        "commands": cmds,
        "floor_parts": floor_out.get("parts"),
        "verify_checks": len((runs["verify"][0].output or {}).get("checks", [])),
        "summary": summarise(runs, floor_out.get("rows"), state.get("setup", {})),
        "runs": {side: [{**asdict(m), "output": None} for m in ms] for side, ms in runs.items()},
        "events": events,
    }
    if args.profile:
        say(events, "profiling one verify run ...")
        results["profile"] = profile(args, config, env, args.top)
    results["finished"] = datetime.now(UTC).isoformat()
    (args.out / "verify_results.json").write_text(json.dumps(results, indent=1, default=str))
    table = markdown(results)
    (args.out / "verify_results.md").write_text(table + "\n")
    print()
    print(table)
    print(f"\nresults: {args.out / 'verify_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
