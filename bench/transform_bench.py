"""Benchmark: the transform stage (enrich -> region lookup -> region rules) on each engine, side by side.

    .venv/bin/python bench/transform_bench.py [--scale 1] [--repeat 5] [--reference REV] [--out bench/out]

Times `transform_fact` over whole TPC-H tables (SF1: orders 1.5M rows, lineitem 6.0M rows) of the demo
landing zone (cached under <out>/landing/ like run_bench.py's), after the rows are in memory: reading,
dedupe and the sinks are not in it. Engines: `cpu` always, `gpu` when `loader doctor` would call the GPU
usable (cuDF and a CUDA device). `--reference REV` also times the transforms of another revision of this
repository (a temporary git worktree), e.g. the pyarrow-compute implementation before the DataFrame
rewrite: `--reference 8b2ee75`.

Each measurement is a fresh child process (imports and the first cuDF/CUDA context creation are not
timed: one untimed warm-up call comes first); repeats alternate which side goes first. Every engine's
output is compared with the first one's (`Table.equals`, types included), so the times are of equal
work. Medians on stdout (markdown) and in <out>/transforms.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from worktree import reference_worktree

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
LOADER = ROOT / ".venv" / "bin" / "loader"
TABLES = ("orders", "lineitem")


# --------------------------------------------------------------------------------------------------
# child: one engine, one revision


def _read(folder: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f, partitioning=None) for f in files],
                            promote_options="permissive")


def child(landing: Path, engine: str, digest_to: Path | None) -> dict[str, Any]:
    """Time transform_fact per table on `engine` with whatever `loader` is first on sys.path."""
    try:  # this revision (the transform/ subpackage)
        from loader.transform.facts import transform_fact
        from loader.transform.frames import frames_for
        from loader.transform.lookups import Lookups
        from loader.transform.region_rules import DEFAULT_REGION_RULES

        options: dict[str, Any] = {"frames": frames_for(engine)}  # type: ignore[arg-type]
    except ImportError:  # a revision before the subpackages (#16) or before the DataFrame rewrite
        import importlib

        old_transforms = importlib.import_module("loader.transforms")
        transform_fact = old_transforms.transform_fact
        try:
            Lookups = importlib.import_module("loader.dimensions").Lookups
            DEFAULT_REGION_RULES = importlib.import_module("loader.region_rules").DEFAULT_REGION_RULES
            options = {"frames": importlib.import_module("loader.frames").frames_for(engine)}
        except ImportError:  # pyarrow compute, CPU only
            Lookups, DEFAULT_REGION_RULES = old_transforms.Dimensions, old_transforms.DEFAULT_REGION_RULES
            options = {}

    dims = Lookups.from_tables(*(_read(landing / name)
                                 for name in ("customer", "supplier", "nation", "region")))
    result: dict[str, Any] = {}
    for kind in TABLES:
        table = _read(landing / kind)
        # warm-up
        transform_fact(table.slice(0, 1000), kind=kind, dims=dims, rules=DEFAULT_REGION_RULES, **options)
        started = time.perf_counter()
        out = transform_fact(table, kind=kind, dims=dims, rules=DEFAULT_REGION_RULES, **options)
        result[kind] = {"rows": out.num_rows, "seconds": time.perf_counter() - started}
        if digest_to is not None:
            import pyarrow.parquet as pq

            pq.write_table(out, digest_to / f"{kind}.parquet")
        del table, out
    return result


# --------------------------------------------------------------------------------------------------
# parent


def _landing(out: Path, scale: float, days: int) -> Path:
    landing = out / "landing" / f"sf{scale:g}-d{days}"
    if not (landing / "_demo_state.json").exists():
        shutil.rmtree(landing, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="transform-bench-") as tmp:
            config = Path(tmp) / "loader.yaml"
            raw = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
            raw.update(landing_zone=str(landing), warehouse=str(Path(tmp) / "warehouse"))
            raw["state"]["url"] = f"sqlite:///{tmp}/loader.db"
            config.write_text(yaml.safe_dump(raw, sort_keys=False))
            print(f"generating the SF{scale:g} landing zone ({days} days) in {landing} ...", flush=True)
            subprocess.run([str(LOADER), "--config", str(config), "demo-data", "init", "--scale", str(scale),
                            "--days", str(days)], check=True, cwd=tmp)
    return landing


def _measure(side: dict[str, Any], landing: Path, digest: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(side["path"])}
    cmd = [str(PYTHON), str(Path(__file__).resolve()), "--child", "--landing", str(landing),
           "--engine", side["engine"], "--digest", str(digest)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=side["path"])
    if done.returncode != 0:
        raise RuntimeError(f"{side['name']} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _same_output(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    return all(pq.read_table(a / f"{t}.parquet").equals(pq.read_table(b / f"{t}.parquet")) for t in TABLES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reference", help="also time this git revision's transforms (CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--landing", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--digest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.landing, args.engine, args.digest)))
        return 0

    sys.path.insert(0, str(ROOT))
    from loader.transform.frames import gpu_status

    args.out.mkdir(parents=True, exist_ok=True)
    landing = _landing(args.out, args.scale, args.days)
    status = gpu_status()
    sides = [{"name": "cpu", "engine": "cpu", "path": ROOT}]
    if status.usable:
        sides.append({"name": "gpu", "engine": "gpu", "path": ROOT})
    else:
        print(f"gpu: not measured: {status.detail}", flush=True)
    with tempfile.TemporaryDirectory(prefix="transform-bench-") as tmp, \
            reference_worktree(args.reference, Path(tmp)) as worktree:
        if worktree is not None:
            sides.append({"name": f"reference {args.reference}", "engine": "cpu", "path": worktree})
        runs: dict[str, list[dict[str, Any]]] = {s["name"]: [] for s in sides}
        digests = {s["name"]: Path(tmp) / f"digest-{i}" for i, s in enumerate(sides)}
        for path in digests.values():
            path.mkdir()
        for repeat in range(args.repeat):
            order = sides if repeat % 2 == 0 else list(reversed(sides))
            for side in order:
                result = _measure(side, landing, digests[side["name"]])
                runs[side["name"]].append(result)
                print(f"repeat {repeat + 1}: {side['name']}: " + ", ".join(
                    f"{t} {result[t]['seconds']:.2f}s" for t in TABLES), flush=True)
        first = digests[sides[0]["name"]]
        equal = {name: _same_output(first, path) for name, path in digests.items()}
    summary = {name: {t: {"rows": r[0][t]["rows"], "median_s": statistics.median(x[t]["seconds"] for x in r)}
                      for t in TABLES} for name, r in runs.items()}
    base = summary[sides[0]["name"]]
    lines = [f"transform stage, SF{args.scale:g}, median of {args.repeat} (fresh process each):", "",
             "| engine | " + " | ".join(f"{t} s | {t} rows/s" for t in TABLES)
             + " | ratio to cpu | same output |",
             "|---|" + "---|---|" * len(TABLES) + "---|---|"]
    for name, tables in summary.items():
        total, base_total = (sum(v["median_s"] for v in tables.values()),
                             sum(v["median_s"] for v in base.values()))
        cells = " | ".join(f"{v['median_s']:.2f} | {v['rows'] / v['median_s']:,.0f}" for v in tables.values())
        lines.append(f"| {name} | {cells} | {total / base_total:.2f} | {'yes' if equal[name] else 'NO'} |")
    if not status.usable:
        lines.append(f"\ngpu: not measured here ({status.detail})")
    print("\n".join(lines))
    (args.out / "transforms.json").write_text(json.dumps({"scale": args.scale, "repeat": args.repeat,
                                                          "runs": runs, "summary": summary,
                                                          "same_output": equal}, indent=2))
    return 0 if all(equal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
