"""Benchmark: one sink against another on the same loads (issue #31: Iceberg against Delta), side by side.

    .venv/bin/python bench/sink_bench.py [--scales 1,10] [--sinks delta,iceberg] [--repeat 3]
        [--orders 50000 --updates 5000 --update-from any] [--out bench/out/sinks] [--dlt]

Per scale (TPC-H scale factor, 30 days of history, orders only, as issue #31 states its targets):
  full SF<s>       the first load of the whole landing zone into an empty warehouse, each sink alone
                   (repeated at the first scale only, once at larger ones)
  increment SF<s>  one appended batch (--orders new, --updates re-sent orders spread over --update-from
                   history) on top of that sink's post-full-load warehouse, restored before each repeat
Each load is `loader run` as a fresh subprocess with only that sink enabled (dimension tables not
loaded, as in bench/run_bench.py); the sides alternate which goes first. Wall time, peak RSS of the
process tree and CPU come from bench/run_bench.py's `measure`. After each scenario the sinks' row counts
are compared, so the times are of equal work. Results: <out>/results.md and results.json.

--dlt adds a side "dlt" after the sinks: the same loads through `bench/dlt_load.py --table-format iceberg`
(dlt's filesystem destination writing Iceberg, merge/upsert on o_orderkey, raw rows, from dlt's own venv
made by bench/dlt_env.py) into its own folder, rotated with the sinks, restored from its post-full copy
like them; its Iceberg row count (`dlt_load.py --count`, pyiceberg in that venv) must equal theirs. A dlt
load that fails or runs past --dlt-timeout drops dlt from the rest of the run (said in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_bench import (  # noqa: E402
    DLT_ENV,
    DLT_LOAD,
    LOADER,
    ROOT,
    Measured,
    landing_zones,
    measure,
    restore,
    write_config,
)

DLT = "dlt"  # the side that runs bench/dlt_load.py --table-format iceberg


def _rows(sink: str, warehouse: Path, table: str, dlt_python: Path | None = None) -> int:
    """Rows the sink holds of `table`, read through the sink's own read-back (what verify compares).

    dlt's side: its Iceberg table counted by `dlt_load.py --count` with pyiceberg in dlt's venv.
    """
    if sink == DLT:
        command = [str(dlt_python), str(DLT_LOAD), "--warehouse", str(warehouse), "--tables", table,
                   "--table-format", "iceberg", "--count", "--json"]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["rows"][table]
    from loader.config import load_config
    from loader.sinks import enabled_sinks

    config = load_config(warehouse.parent / f"{sink}.yaml")
    (built,) = enabled_sinks(config, only=(sink,))
    data = built.read_back(table, ["o_orderkey"])
    return 0 if data is None else data.num_rows


def _median(runs: list[Measured], attr: str) -> float:
    return statistics.median(getattr(m, attr) for m in runs)


def _order(sides: tuple[str, ...], i: int) -> tuple[str, ...]:
    """The sides in the order of repeat `i`, rotated each repeat (two sides: reversed every other one)."""
    k = i % len(sides)
    return (*sides[k:], *sides[:k])


def _load(args: argparse.Namespace, env: dict[str, str], work: Path, sink: str, landing: Path, phase: str,
          index: int) -> Measured:
    """One `loader run` of `landing` into `sink` alone (or dlt's load): from nothing or its post-full state.

    Restored to the same path it was copied from: Iceberg metadata holds absolute paths.
    """
    side = work / sink
    if phase == "full":
        shutil.rmtree(side, ignore_errors=True)
    else:
        restore(work / f"{sink}-after-full", side)
    if sink == DLT:
        side.mkdir(parents=True, exist_ok=True)
        command = [str(args.dlt_python), str(DLT_LOAD), "--landing", str(landing),
                   "--warehouse", str(side / "warehouse"), "--tables", "orders",
                   "--table-format", "iceberg", "--json"]
        # dlt reads PYICEBERG_* (and a .pyiceberg.yaml in its run folder) as a catalog to use: none here
        env = {k: v for k, v in env.items() if not k.startswith("PYICEBERG_")}
        timeout = args.dlt_timeout
    else:
        config = write_config(side / f"{sink}.yaml", landing=landing, warehouse=side / "warehouse",
                              state=side / "state", tables=("orders",), sinks=(sink,))
        command = [str(LOADER), "--config", str(config), "--log-level", "WARNING", "run", "--json"]
        timeout = args.timeout
    m = measure(command, cwd=side, env=env, timeout=timeout,
                log=args.out / "logs" / f"{work.name}-{phase}-{sink}-{index}")
    if m.returncode and sink != DLT:
        raise SystemExit(f"{phase} {work.name} {sink} failed: see {m.log}.stderr")
    status = (f"TIMED OUT after {timeout:.0f}s" if m.timed_out
              else f"FAILED (exit {m.returncode}, see {m.log}.stderr)" if m.returncode else m.brief())
    print(f"{phase} {work.name} {sink} #{index + 1}: {status}", flush=True)
    return m


def _scenario(name: str, sinks: tuple[str, ...], runs: dict[str, list[Measured]],
              work: Path, dlt_python: Path | None) -> dict[str, Any]:
    """Medians, peaks and row counts of the sides in `runs` (the sinks, and dlt unless it gave up)."""
    sides = tuple(s for s in runs if runs[s])
    counts = {s: _rows(s, work / s / "warehouse", "orders", dlt_python) for s in sides}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"{name}: the sides hold different row counts: {counts}")
    medians = {s: _median(runs[s], "wall_s") for s in sides}
    scenario = {"name": name, "rows": counts, "median_s": medians,
                "peak_mib": {s: max(m.peak_tree_mib for m in runs[s]) for s in sides},
                "ratio": medians[sinks[-1]] / medians[sinks[0]],
                "runs": {s: [vars(m) for m in runs[s]] for s in sides}}
    if DLT in sides:
        scenario["ratio_dlt"] = medians[DLT] / medians[sinks[0]]
    return scenario


def _line(scenario: dict[str, Any], sinks: tuple[str, ...], dlt: bool) -> str:
    sides = (*sinks, *((DLT,) if dlt else ()))
    cells = " | ".join(f"{scenario['median_s'][s]:.2f} | {scenario['peak_mib'][s]:.0f}"
                       if s in scenario["median_s"] else "- | -" for s in sides)
    rows = scenario["rows"][sinks[0]]
    dlt_ratio = (f" {scenario['ratio_dlt']:.2f}x |" if "ratio_dlt" in scenario else " - |") if dlt else ""
    return f"| {scenario['name']} ({rows:,} rows) | {cells} | {scenario['ratio']:.2f}x |{dlt_ratio}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,10")
    parser.add_argument("--sinks", default="delta,iceberg",
                        help="the sinks compared; the first is the baseline")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--orders", type=int, default=50000)
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--late", type=int, default=0)
    parser.add_argument("--update-from", choices=["newest", "oldest", "any"], default="any")
    parser.add_argument("--recent", type=int, default=100_000,
                        help="with --update-from newest|oldest: how many orders the updates pick from")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--dlt", action="store_true",
                        help="also load through dlt's Iceberg destination (bench/dlt_load.py --table-format "
                             "iceberg, its own venv from bench/dlt_env.py), a side after the sinks")
    parser.add_argument("--dlt-timeout", type=float, default=3600,
                        help="one dlt load's limit; past it (or on a failure) dlt sits out the rest")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sinks")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    sinks = tuple(args.sinks.split(","))
    if DLT in sinks:
        parser.error(f"no sink may be called {DLT!r}")
    if args.dlt and args.late:
        parser.error("dlt's incremental drops late rows, so its count would differ: use --late 0 with --dlt")
    args.dlt_python = None
    if args.dlt:  # its own venv, as a user would install it (made or updated by bench/dlt_env.py)
        done = subprocess.run([sys.executable, str(DLT_ENV)], capture_output=True, text=True, check=True)
        args.dlt_python = Path(done.stdout.strip().splitlines()[-1])
    sides = (*sinks, *((DLT,) if args.dlt else ()))
    results: dict[str, Any] = {"options": {k: str(v) for k, v in vars(args).items()}, "scenarios": [],
                               "dlt_gave_up": None}
    lines = ["| scenario | " + " | ".join(f"{s} median s | {s} peak MiB" for s in sides) + " | ratio |"
             + (f" {DLT} / {sinks[0]} |" if args.dlt else ""),
             "|---|" + "---|---|" * len(sides) + "---|" + ("---|" if args.dlt else "")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for number, scale in enumerate(float(s) for s in args.scales.split(",")):
        base, inc, _ = landing_zones(args, scale, env, args.timeout, [])
        work = args.out / "work" / f"sf{scale:g}"
        shutil.rmtree(work, ignore_errors=True)
        for phase, landing, repeats in (("full", base, args.repeat if number == 0 else 1),
                                        ("increment", inc, args.repeat)):
            runs: dict[str, list[Measured]] = {s: [] for s in sides}
            for i in range(repeats):
                for sink in _order(sides, i):
                    if sink == DLT and results["dlt_gave_up"]:
                        continue
                    m = _load(args, env, work, sink, landing, phase, i)
                    if m.returncode:  # only dlt's side gets here: give it up, keep measuring the sinks
                        why = "timed out" if m.timed_out else f"failed (exit {m.returncode})"
                        results["dlt_gave_up"] = f"{phase} SF{scale:g} #{i + 1}: {why}, see {m.log}.stderr"
                        runs[DLT] = []
                        continue
                    runs[sink].append(m)
                    if phase == "full" and i == repeats - 1:
                        shutil.rmtree(work / f"{sink}-after-full", ignore_errors=True)
                        shutil.copytree(work / sink, work / f"{sink}-after-full")
            scenario = _scenario(f"{phase} SF{scale:g}", sinks, runs, work, args.dlt_python)
            results["scenarios"].append(scenario)
            lines.append(_line(scenario, sinks, args.dlt))
            (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
            (args.out / "results.md").write_text("\n".join(lines) + "\n")
    if results["dlt_gave_up"]:
        lines.append(f"\ndlt was dropped after {results['dlt_gave_up']}.")
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
