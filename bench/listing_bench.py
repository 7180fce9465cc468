"""Benchmark: the empty run's cost against the landing zone's history (partition listing).

    .venv/bin/python bench/listing_bench.py [--runs 5] [--folders 1000] [--files-per-folder 10] [--skip-s3]
                                            [--reference REV] [--out bench/out/listing]

Target: an empty run over a landing zone of 10,000 files in 1,000 partition folders, local and on S3,
takes within 1.2x the empty run over 30 folders. An empty run is `loader --config C run --incremental
--json` whose checkpoint is already at the newest data: status `nothing_new`, nothing read or written.
Its planning lists only the `ingest_date=` folders at or after (checkpoint - lookback); before, it listed
the whole source folder recursively and dropped the old partitions afterwards.

Zones (both fact tables, orders and lineitem, alike; the dimensions as generated):
  30     the demo zone, `demo-data init --scale 0.01 --days 30` with a pinned clock (one file per day)
  1000   the same files, plus (--folders - 30) older `ingest_date=` folders per fact table (the days
         before the oldest one), each of --files-per-folder small Parquet files: 5 rows of a real file of
         the table, the same schema, the cursor moved into that old day. They lie long before the
         checkpoint, so a correct run never reads them (generated once, cached in <out>/old-*/).
Each (side, where, zone) has its own config, warehouse and SQLite state (Parquet sink only). It is
loaded once (`run --incremental`) before the old folders are added, so that first load reads the same
30 days everywhere; then the old folders are added, one untimed empty run checks `nothing_new`, and
--runs empty runs are timed: wall time of the whole process (time.perf_counter around subprocess.run),
median. Runs alternate zone 30 and zone 1000 (and sides, and local/S3), so machine noise hits all alike;
every timed run must say `nothing_new`. The `plan` column is the run's own `timings_s.plan` (median).

Where: `local` (a folder) and `s3` (unless --skip-s3): moto's server in this process on 127.0.0.1
(ThreadedMotoServer, no authentication), both zones uploaded to s3://listing/zone<N>/, the loader
pointed at it by AWS_ENDPOINT_URL as in tests/integration/test_s3_end_to_end.py; warehouse and state
stay local.

Sides: the working tree, and with --reference REV also that git revision (a temporary worktree,
bench/worktree.py), e.g. `--reference HEAD` for the code before an uncommitted change. Both run as
`.venv/bin/python -m loader.cli ...` with PYTHONPATH and the working directory at the side's checkout.

Results: a markdown table per side on stdout and in <out>/results.md, everything (each run's seconds,
the zones' counts) in <out>/results.json. Work folders: <out>/work/ (rebuilt every time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from worktree import reference_worktree

ROOT = Path(__file__).resolve().parent.parent

VENV_BIN = ROOT / ".venv" / "bin"
LOADER = VENV_BIN / "loader"
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)
DEMO_DAYS = 30
DEMO_SCALE = 0.01
DEMO_NOW = "2024-01-31T00:00:00Z"  # pinned: the same zone every time (days 2024-01-01 .. 2024-01-30)
PARTITION = "ingest_date"
OLD_ROWS = 5
BUCKET = "listing"
TARGET = 1.2


def facts(config: Path) -> dict[str, str]:
    """The fact tables of a config: {source path: cursor column}."""
    raw = yaml.safe_load(config.read_text())
    return {spec["path"]: spec["cursor"] for spec in raw["sources"].values()}


def write_config(path: Path, *, base: Path, landing: str, work: Path) -> Path:
    """`base` (a configs/local.yaml) with its landing zone at `landing`, warehouse, state and cache
    under `work`, and only the Parquet sink."""
    raw = yaml.safe_load(base.read_text())
    raw["landing_zone"] = landing
    raw["warehouse"] = str(work / "warehouse")
    raw["state"]["url"] = f"sqlite:///{work / 'state' / 'loader.db'}"
    raw.setdefault("run", {})["cache_dir"] = str(work / "cache")
    raw["sinks"] = {name: {**spec, "enabled": name == "parquet"} for name, spec in raw["sinks"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ zones


def demo_zone(out: Path) -> Path:
    """The 30-day demo zone, generated once into <out>/demo/landing."""
    landing = out / "demo" / "landing"
    if (landing / "_demo_state.json").exists():
        return landing
    shutil.rmtree(out / "demo", ignore_errors=True)
    config = write_config(out / "demo" / "loader.yaml", base=ROOT / "configs" / "local.yaml",
                          landing=str(landing), work=out / "demo")
    print(f"generating the demo zone (SF{DEMO_SCALE:g}, {DEMO_DAYS} days) in {landing} ...", flush=True)
    subprocess.run([str(LOADER), "--config", str(config), "demo-data", "init", "--scale", str(DEMO_SCALE),
                    "--days", str(DEMO_DAYS), "--now", DEMO_NOW], check=True, cwd=out / "demo",
                   capture_output=True)
    return landing


def day_folders(table_dir: Path) -> list[Path]:
    return sorted(p for p in table_dir.iterdir() if p.is_dir() and p.name.startswith(f"{PARTITION}="))


def old_tree(out: Path, demo: Path, cursors: dict[str, str], folders: int, per_folder: int) -> Path:
    """<out>/old-<folders>x<per_folder>/<table>/ingest_date=<day>/part-NNNNN.parquet: for each fact
    table the (folders - existing) days before its oldest folder, `per_folder` files each (cached)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tree = out / f"old-{folders}x{per_folder}"
    if (tree / "_done").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    started = time.perf_counter()
    for table, cursor in cursors.items():
        existing = day_folders(demo / table)
        extra = folders - len(existing)
        if extra < 0:
            raise SystemExit(f"--folders {folders}: the demo zone already has {len(existing)} folders of "
                             f"{table}")
        oldest = date.fromisoformat(existing[0].name.split("=", 1)[1])
        sample = pq.read_table(sorted(existing[0].glob("*.parquet"))[0])
        index = sample.schema.get_field_index(cursor)
        for back in range(1, extra + 1):
            day = oldest - timedelta(days=back)
            shift = timedelta(days=back)
            folder = tree / table / f"{PARTITION}={day.isoformat()}"
            folder.mkdir(parents=True)
            for k in range(per_folder):
                rows = sample.slice((k * OLD_ROWS) % max(1, sample.num_rows - OLD_ROWS), OLD_ROWS)
                moved = pa.array([v - shift for v in rows.column(index).to_pylist()],
                                 type=rows.schema.field(index).type)
                pq.write_table(rows.set_column(index, rows.schema.field(index), moved),
                               folder / f"part-{k:05d}.parquet")
    (tree / "_done").write_text("")
    print(f"generated the old folders in {tree} ({time.perf_counter() - started:.0f}s)", flush=True)
    return tree


def link_tree(source: Path, target: Path) -> int:
    """Hard links (else copies) of every file under `source` at the same place under `target`."""
    count = 0
    for path in source.rglob("*"):
        if not path.is_file() or path.name == "_done":
            continue
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
        count += 1
    return count


def local_counts(zone: Path, tables: list[str]) -> dict[str, dict[str, int]]:
    """{table: {folders, files}}: the partition folders and Parquet files of each fact table."""
    return {t: {"folders": len(day_folders(zone / t)), "files": sum(1 for _ in (zone / t).rglob("*.parquet"))}
            for t in tables}


# ------------------------------------------------------------------------------------------ S3


@contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """moto's S3 in this process on 127.0.0.1 and a free port; yields the loader's environment."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
        s3_client(env).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()


def s3_client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def upload(env: dict[str, str], source: Path, prefix: str) -> int:
    """Every file under `source` to s3://BUCKET/<prefix>/<relative path>, 8 at a time."""
    client = s3_client(env)
    files = [p for p in source.rglob("*") if p.is_file() and p.name != "_done"]

    def put(path: Path) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(source).as_posix()}",
                          Body=path.read_bytes())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, files))
    return len(files)


def s3_counts(env: dict[str, str], prefix: str, tables: list[str]) -> dict[str, dict[str, int]]:
    """As local_counts, from a listing of the bucket (so the upload is known complete)."""
    pages = s3_client(env).get_paginator("list_objects_v2")
    counts = {}
    for table in tables:
        keys = [o["Key"] for page in pages.paginate(Bucket=BUCKET, Prefix=f"{prefix}/{table}/")
                for o in page.get("Contents", [])]
        parquet = [k for k in keys if k.endswith(".parquet")]
        folders = {k.split("/")[2] for k in parquet if k.split("/")[2].startswith(f"{PARTITION}=")}
        counts[table] = {"folders": len(folders), "files": len(parquet)}
    return counts


# ------------------------------------------------------------------------------------------ running


def run_loader(side: dict[str, Any], config: Path, env: dict[str, str], *,
               timeout: float = 600) -> tuple[float, dict[str, Any]]:
    """`run --incremental --json` as a process of its own: (wall seconds, its JSON)."""
    cmd = [str(PYTHON), "-m", "loader.cli", "--config", str(config), "run", "--incremental", "--json"]
    full_env = {**os.environ, "PYTHONPATH": str(side["path"]), **env}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=side["path"], env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{side['name']}: {config} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    start = done.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"{side['name']}: {config}: no JSON on stdout:\n{done.stdout[-2000:]}")
    output, _ = json.JSONDecoder().raw_decode(done.stdout[start:])
    return wall, output


def empty_run(side: dict[str, Any], config: Path, env: dict[str, str]) -> tuple[float, float | None]:
    """One empty run: (wall seconds, the run's own plan seconds); anything but nothing_new fails."""
    wall, output = run_loader(side, config, env, timeout=300)
    if output.get("status") != "nothing_new":
        raise RuntimeError(f"{side['name']}: {config}: expected status nothing_new, got "
                           f"{output.get('status')!r} ({output.get('rows')} rows)")
    return wall, (output.get("timings_s") or {}).get("plan")


# ------------------------------------------------------------------------------------------ report


def markdown(results: dict[str, Any]) -> str:
    big = str(results["options"]["folders"])
    lines = [f"Empty run (`run --incremental --json`, nothing new), wall time of the whole process, "
             f"median of {results['options']['runs']}; folders and files per fact table "
             f"(orders and lineitem alike). Target: {big} folders within {TARGET}x of 30.", ""]
    for side, cases in results["sides"].items():
        lines += [f"### {side}", "",
                  "| zone | where | folders | files | empty run median s | ratio to 30 folders | "
                  "plan median s |",
                  "|---|---|---|---|---|---|---|"]
        ratios = []
        for where in results["wheres"]:
            base = cases[f"{where}/30"]["median_s"]
            for zone in ("30", big):
                case = cases[f"{where}/{zone}"]
                counts = results["zones"][f"{where}/{zone}"]["orders"]
                plan = case["plan_median_s"]
                lines.append(f"| {zone} | {where} | {counts['folders']:,} | {counts['files']:,} | "
                             f"{case['median_s']:.3f} | "
                             f"{case['median_s'] / base:.2f} | {'-' if plan is None else f'{plan:.3f}'} |")
            ratio = cases[f"{where}/{big}"]["median_s"] / base
            ratios.append(f"{where} {ratio:.2f}x ({'within' if ratio <= TARGET else 'OVER'} {TARGET}x)")
        lines += ["", f"ratio {big}/30: " + ", ".join(ratios), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed empty runs per zone, where and side")
    parser.add_argument("--folders", type=int, default=1000,
                        help="partition folders per fact table in the big zone")
    parser.add_argument("--files-per-folder", type=int, default=10,
                        help="Parquet files in each added old folder")
    parser.add_argument("--skip-s3", action="store_true", help="local zones only")
    parser.add_argument("--reference", help="also time this git revision (a temporary worktree), e.g. HEAD")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "listing")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    big = str(args.folders)
    zones = ("30", big)

    demo = demo_zone(out)
    cursors = facts(ROOT / "configs" / "local.yaml")
    tables = list(cursors)
    old = old_tree(out, demo, cursors, args.folders, args.files_per_folder)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    local = {zone: work / "zones" / f"zone{zone}" for zone in zones}
    for path in local.values():
        link_tree(demo, path)  # zone <big> gets its old folders after the first loads
    wheres = ["local"] if args.skip_s3 else ["local", "s3"]

    with tempfile.TemporaryDirectory(prefix="listing-bench-") as tmp, \
            reference_worktree(args.reference, Path(tmp)) as worktree, \
            (nullcontext({}) if args.skip_s3 else moto_server()) as s3_env:
        sides = [{"name": "working tree", "path": ROOT}]
        if worktree is not None:
            sides.append({"name": f"reference {args.reference}", "path": worktree})
        envs = {"local": {}, "s3": s3_env}
        landings = {("local", z): str(local[z]) for z in zones}
        if "s3" in wheres:
            started = time.perf_counter()
            sent = sum(upload(s3_env, demo, f"zone{z}") for z in zones)
            print(f"uploaded {sent} files of the 30-day zones to s3://{BUCKET} "
                  f"({time.perf_counter() - started:.1f}s)",
                  flush=True)
            landings |= {("s3", z): f"s3://{BUCKET}/zone{z}" for z in zones}

        configs: dict[tuple[str, str, str], Path] = {}
        for i, side in enumerate(sides):
            for where in wheres:
                for zone in zones:
                    folder = work / f"side{i}" / where / f"zone{zone}"
                    configs[(side["name"], where, zone)] = write_config(
                        folder / "loader.yaml", base=Path(side["path"]) / "configs" / "local.yaml",
                        landing=landings[(where, zone)], work=folder)
                    wall, output = run_loader(side, configs[(side["name"], where, zone)], envs[where])
                    if output.get("status") != "committed":
                        raise RuntimeError(f"first load: status {output.get('status')!r}")
                    print(f"{side['name']}: {where} zone {zone}: first load, {output.get('rows'):,} rows, "
                          f"{wall:.1f}s",
                          flush=True)

        started = time.perf_counter()
        added = link_tree(old, local[big])
        print(f"added {added:,} old files to {local[big]} ({time.perf_counter() - started:.1f}s)", flush=True)
        counts = {f"local/{z}": local_counts(local[z], tables) for z in zones}
        if "s3" in wheres:
            started = time.perf_counter()
            sent = upload(s3_env, old, f"zone{big}")
            print(f"uploaded {sent:,} old files to s3://{BUCKET}/zone{big} "
                  f"({time.perf_counter() - started:.1f}s)",
                  flush=True)
            counts |= {f"s3/{z}": s3_counts(s3_env, f"zone{z}", tables) for z in zones}
        for key, per_table in counts.items():
            print(f"zone {key}: " + ", ".join(f"{t} {c['folders']:,} folders, {c['files']:,} files"
                                              for t, c in per_table.items()), flush=True)

        for (name, where, zone), config in configs.items():  # untimed: warms up, checks nothing_new
            side = next(s for s in sides if s["name"] == name)
            wall, _ = empty_run(side, config, envs[where])
            print(f"{name}: {where} zone {zone}: warm-up empty run {wall:.2f}s", flush=True)

        times: dict[tuple[str, str, str], list[float]] = {key: [] for key in configs}
        plans: dict[tuple[str, str, str], list[float]] = {key: [] for key in configs}
        for repeat in range(args.runs):
            order = sides if repeat % 2 == 0 else list(reversed(sides))
            for where in (wheres if repeat % 2 == 0 else list(reversed(wheres))):
                for side in order:
                    for zone in zones:
                        key = (side["name"], where, zone)
                        wall, plan = empty_run(side, configs[key], envs[where])
                        times[key].append(wall)
                        if plan is not None:
                            plans[key].append(plan)
            print(f"repeat {repeat + 1}/{args.runs}: " + ", ".join(
                f"{n} {w} {z} {times[(n, w, z)][-1]:.2f}s" for (n, w, z) in configs), flush=True)

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "command": sys.argv,
        "machine": platform.node(),
        "cpus": os.cpu_count(), "options": {"runs": args.runs, "folders": args.folders,
                                            "files_per_folder": args.files_per_folder,
                                            "reference": args.reference},
        "wheres": wheres, "zones": counts,
        "sides": {s["name"]: {f"{w}/{z}": {
            "runs_s": times[(s["name"], w, z)], "median_s": statistics.median(times[(s["name"], w, z)]),
            "plan_s": plans[(s["name"], w, z)],
            "plan_median_s": (statistics.median(plans[(s["name"], w, z)]) if plans[(s["name"], w, z)]
                              else None),
        } for w in wheres for z in zones} for s in sides},
    }
    for side in results["sides"].values():
        for where in wheres:
            side[f"{where}/ratio"] = side[f"{where}/{big}"]["median_s"] / side[f"{where}/30"]["median_s"]
    text = markdown(results)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
