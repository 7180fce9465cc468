"""Benchmark: the dimension tables' load (loader/protocol/dimension_loads.py), the first step of a run.

    .venv/bin/python bench/dimension_bench.py [--scale 1] [--changes 1000] [--repeat 3]
                                              [--sinks parquet,delta]

On the dimension files of the cached demo landing zone (<out>/landing/sf<scale>-d30, made by
run_bench.py; customer is 150,000 rows at SF1, 1.5M at SF10), copied to a temporary landing zone:
- first: every dimension loaded into empty sinks (customer and supplier scd2, nation and region replace);
- unchanged: the next run with the same files (the fingerprint skip: footers read, nothing else);
- changes: customer rewritten with `--changes` customers changed (segment), then loaded: read whole,
  hashed, compared with each sink's current versions, the changes applied.
Each scenario runs in a fresh child process (imports not timed, the step is); medians of `--repeat`,
with the child's peak RSS. The fact tables' benchmark (run_bench.py) leaves the dimensions out
(`load: false`), like the floor and dlt it is compared with.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
DIMENSIONS = ("customer", "supplier", "nation", "region")

_CHILD = """
import json, resource, sys, time
from loader.config import load_config
from loader.protocol.dimension_loads import load_dimension_tables
from state import StateStore
config = load_config(sys.argv[1])
store = StateStore.open(config.state.url)
started = time.perf_counter()
loaded = load_dimension_tables(config, store)
seconds = time.perf_counter() - started
store.close()
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loaded": {n: o.to_json() for n, o in loaded.items()}}))
"""


def _step(config: Path) -> dict:
    out = subprocess.run([str(PYTHON), "-c", _CHILD, str(config)], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _project(folder: Path, landing: Path, sinks: list[str]) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    raw["landing_zone"], raw["warehouse"] = str(landing), str(folder / "warehouse")
    raw["state"]["url"] = f"sqlite:///{folder / 'state.db'}"
    for name in ("parquet", "delta"):
        raw["sinks"][name]["enabled"] = name in sinks
    path = folder / "loader.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _change_customers(landing: Path, changes: int, seed: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = landing / "customer" / "customer.parquet"
    table = pq.read_table(path)
    picked = np.random.default_rng(seed).choice(table.num_rows, size=min(changes, table.num_rows),
                                                replace=False)
    segments = table["c_mktsegment"].to_pylist()
    for row in picked:
        segments[row] = "MACHINERY" if segments[row] != "MACHINERY" else "BUILDING"
    hidden = path.with_name(".customer.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("c_mktsegment"), "c_mktsegment",
                                    pa.array(segments, pa.string())), hidden)
    hidden.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="1", help="the cached landing zone's scale factor (default 1)")
    parser.add_argument("--changes", type=int, default=1000,
                        help="customers changed in the `changes` scenario")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sinks", default="parquet,delta")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    source = args.out / "landing" / f"sf{args.scale}-d30"
    if not (source / "customer").is_dir():
        print(f"no cached landing zone at {source}: run bench/run_bench.py --scales {args.scale} first",
              file=sys.stderr)
        return 2
    results: dict[str, list[dict]] = {"first": [], "unchanged": [], "changes": []}
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="dimension-bench-") as tmp:
            folder = Path(tmp)
            landing = folder / "landing"
            for name in DIMENSIONS:
                shutil.copytree(source / name, landing / name)
            config = _project(folder, landing, args.sinks.split(","))
            results["first"].append(_step(config))
            results["unchanged"].append(_step(config))
            _change_customers(landing, args.changes, seed=attempt)
            results["changes"].append(_step(config))
    rows = results["first"][0]["loaded"]["customer"]["rows"]
    print(f"| SF{args.scale} (customer {rows:,} rows), sinks {args.sinks} "
          f"| seconds (median of {args.repeat}) | peak RSS MB |")
    print("|---|---|---|")
    for scenario, runs in results.items():
        label = f"{scenario} ({args.changes:,} customers)" if scenario == "changes" else scenario
        print(f"| {label} | {statistics.median(r['seconds'] for r in runs):.2f} | "
              f"{statistics.median(r['rss_mb'] for r in runs):.0f} |")
    opened = {s: c["opened"] for s, c in results["changes"][0]["loaded"]["customer"]["sinks"].items()}
    print(f"\nversions opened by the changes scenario, per sink: {opened}")
    (args.out / "dimensions.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
