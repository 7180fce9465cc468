"""Benchmark: one sink against another on the same loads (issue #31: Iceberg against Delta), side by side.

    .venv/bin/python bench/sink_bench.py [--scales 1,10] [--sinks delta,iceberg] [--repeat 3]
        [--orders 50000 --updates 5000 --update-from any] [--out bench/out/sinks]

Per scale (TPC-H scale factor, 30 days of history, orders only, as issue #31 states its targets):
  full SF<s>       the first load of the whole landing zone into an empty warehouse, each sink alone
                   (repeated at the first scale only, once at larger ones)
  increment SF<s>  one appended batch (--orders new, --updates re-sent orders spread over --update-from
                   history) on top of that sink's post-full-load warehouse, restored before each repeat
Each load is `loader run` as a fresh subprocess with only that sink enabled (dimension tables not
loaded, as in bench/run_bench.py); the sides alternate which goes first. Wall time, peak RSS of the
process tree and CPU come from bench/run_bench.py's `measure`. After each scenario the sinks' row counts
are compared, so the times are of equal work. Results: <out>/results.md and results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_bench import LOADER, ROOT, Measured, landing_zones, measure, restore, write_config  # noqa: E402


def _rows(sink: str, warehouse: Path, table: str) -> int:
    """Rows the sink holds of `table`, read through the sink's own read-back (what verify compares)."""
    from loader.config import load_config
    from loader.sinks import enabled_sinks

    config = load_config(warehouse.parent / f"{sink}.yaml")
    (built,) = enabled_sinks(config, only=(sink,))
    data = built.read_back(table, ["o_orderkey"])
    return 0 if data is None else data.num_rows


def _median(runs: list[Measured], attr: str) -> float:
    return statistics.median(getattr(m, attr) for m in runs)


def _load(args: argparse.Namespace, env: dict[str, str], work: Path, sink: str, landing: Path, phase: str,
          index: int) -> Measured:
    """One `loader run` of `landing` into `sink` alone: from nothing (full) or its post-full state."""
    side = work / sink
    if phase == "full":
        shutil.rmtree(side, ignore_errors=True)
    else:
        restore(work / f"{sink}-after-full", side)
    config = write_config(side / f"{sink}.yaml", landing=landing, warehouse=side / "warehouse",
                          state=side / "state", tables=("orders",), sinks=(sink,))
    command = [str(LOADER), "--config", str(config), "--log-level", "WARNING", "run", "--json"]
    m = measure(command, cwd=side, env=env, timeout=args.timeout,
                log=args.out / "logs" / f"{work.name}-{phase}-{sink}-{index}")
    if m.returncode:
        raise SystemExit(f"{phase} {work.name} {sink} failed: see {m.log}.stderr")
    print(f"{phase} {work.name} {sink} #{index + 1}: {m.brief()}", flush=True)
    return m


def _scenario(name: str, sinks: tuple[str, ...], runs: dict[str, list[Measured]],
              work: Path) -> dict[str, Any]:
    counts = {s: _rows(s, work / s / "warehouse", "orders") for s in sinks}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"{name}: the sinks hold different row counts: {counts}")
    medians = {s: _median(runs[s], "wall_s") for s in sinks}
    return {"name": name, "rows": counts, "median_s": medians,
            "peak_mib": {s: max(m.peak_tree_mib for m in runs[s]) for s in sinks},
            "ratio": medians[sinks[-1]] / medians[sinks[0]],
            "runs": {s: [vars(m) for m in runs[s]] for s in sinks}}


def _line(scenario: dict[str, Any], sinks: tuple[str, ...]) -> str:
    cells = " | ".join(f"{scenario['median_s'][s]:.2f} | {scenario['peak_mib'][s]:.0f}" for s in sinks)
    rows = scenario["rows"][sinks[0]]
    return f"| {scenario['name']} ({rows:,} rows) | {cells} | {scenario['ratio']:.2f}x |"


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
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sinks")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    sinks = tuple(args.sinks.split(","))
    results: dict[str, Any] = {"options": {k: str(v) for k, v in vars(args).items()}, "scenarios": []}
    lines = ["| scenario | " + " | ".join(f"{s} median s | {s} peak MiB" for s in sinks) + " | ratio |",
             "|---|" + "---|---|" * len(sinks) + "---|"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for number, scale in enumerate(float(s) for s in args.scales.split(",")):
        base, inc, _ = landing_zones(args, scale, env, args.timeout, [])
        work = args.out / "work" / f"sf{scale:g}"
        shutil.rmtree(work, ignore_errors=True)
        for phase, landing, repeats in (("full", base, args.repeat if number == 0 else 1),
                                        ("increment", inc, args.repeat)):
            runs: dict[str, list[Measured]] = {s: [] for s in sinks}
            for i in range(repeats):
                for sink in (sinks if i % 2 == 0 else tuple(reversed(sinks))):
                    runs[sink].append(_load(args, env, work, sink, landing, phase, i))
                    if phase == "full" and i == repeats - 1:
                        shutil.rmtree(work / f"{sink}-after-full", ignore_errors=True)
                        shutil.copytree(work / sink, work / f"{sink}-after-full")
            scenario = _scenario(f"{phase} SF{scale:g}", sinks, runs, work)
            results["scenarios"].append(scenario)
            lines.append(_line(scenario, sinks))
            (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
            (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
