"""Benchmark: what a run on the Ray executor costs the driver, against another revision side by side.

    .venv/bin/python bench/ray_driver_bench.py [--scale 0.2] [--days 4] [--repeat 3] [--reference REV]
                                               [--out bench/out]

Each run is a fresh subprocess (`python -m loader.cli run --incremental --executor ray --json`) loading the
whole landing zone into empty warehouses (Parquet + Delta). Measured: wall time around the subprocess
and the driver's peak RSS (the loader's own process, polled every 50 ms with psutil; Ray's workers, which
hold the rows, are other processes and not counted, that is the point). `--reference REV` runs the same
load with another revision of this repository (a temporary git worktree), e.g. the executor that gathered
each table on the driver: `--reference 57d8672`. Repeats alternate which side goes first; medians are
reported, and the Delta tables of both sides are compared (rows per table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from worktree import reference_worktree

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"


def _config(folder: Path, landing: Path, code: Path = ROOT) -> Path:
    """`code`'s own configs/local.yaml (an older revision may not know a newer key), paths into `folder`."""
    raw = yaml.safe_load((code / "configs" / "local.yaml").read_text())
    raw.update(landing_zone=str(landing), warehouse=str(folder / "warehouse"))
    raw["state"]["url"] = f"sqlite:///{folder}/loader.db"
    path = folder / "loader.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _landing(out: Path, scale: float, days: int) -> Path:
    landing = out / "landing" / f"sf{scale:g}-d{days}"
    if not (landing / "_demo_state.json").exists():
        with tempfile.TemporaryDirectory(prefix="ray-driver-bench-") as tmp:
            print(f"generating the SF{scale:g} landing zone ({days} days) in {landing} ...", flush=True)
            subprocess.run([str(PYTHON), "-m", "loader.cli", "--config", str(_config(Path(tmp), landing)),
                            "demo-data", "init", "--scale", str(scale), "--days", str(days)],
                           check=True, cwd=ROOT)
    return landing


def _measure(code: Path, landing: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ray-driver-bench-") as tmp:
        config = _config(Path(tmp), landing, code)
        env = {**os.environ, "PYTHONPATH": str(code)}
        started = time.perf_counter()
        process = subprocess.Popen([str(PYTHON), "-m", "loader.cli", "--config", str(config), "run",
                                    "--incremental", "--executor", "ray", "--json"], cwd=code, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = [0]

        def poll() -> None:
            watched = psutil.Process(process.pid)
            while process.poll() is None:
                try:
                    peak[0] = max(peak[0], watched.memory_info().rss)
                except psutil.NoSuchProcess:
                    return
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        stdout, stderr = process.communicate()
        seconds = time.perf_counter() - started
        poller.join()
        if process.returncode != 0:
            raise RuntimeError(f"{code}: exit {process.returncode}\n{stderr[-3000:]}")
        summary = json.loads(stdout)
        from deltalake import DeltaTable

        rows = {t: DeltaTable(f"{tmp}/warehouse/delta/{t}").to_pyarrow_dataset().count_rows()
                for t in summary["tables"]}
    return {"seconds": seconds, "driver_peak_mb": peak[0] / 2**20, "delta_rows": rows,
            "timings_s": summary["timings_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", help="also run this git revision's loader")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    landing = _landing(args.out, args.scale, args.days)
    sides = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="ray-driver-bench-") as tmp, \
            reference_worktree(args.reference, Path(tmp)) as worktree:
        if worktree is not None:
            sides[f"reference {args.reference}"] = worktree
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        for repeat in range(args.repeat):
            order = list(sides.items()) if repeat % 2 == 0 else list(reversed(sides.items()))
            for name, code in order:
                result = _measure(code, landing)
                runs[name].append(result)
                print(f"repeat {repeat + 1}: {name}: {result['seconds']:.1f}s, driver peak "
                      f"{result['driver_peak_mb']:.0f} MB, {result['timings_s']}", flush=True)
    base = next(iter(sides))
    print(f"\nfull load on --executor ray, SF{args.scale:g} ({args.days} days), median of {args.repeat}:\n")
    print("| code | wall s | driver peak MB | Delta rows | same rows as this tree |\n|---|---|---|---|---|")
    for name, results in runs.items():
        rows = results[0]["delta_rows"]
        print(f"| {name} | {statistics.median(r['seconds'] for r in results):.1f} | "
              f"{statistics.median(r['driver_peak_mb'] for r in results):.0f} | "
              f"{', '.join(f'{t} {n:,}' for t, n in rows.items())} | "
              f"{'yes' if rows == runs[base][0]['delta_rows'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
