"""A config in a temp folder (landing zone, state and warehouse beside it) and the real `loader` CLI
run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = ROOT / "configs" / "local.yaml"
# "Fails fast", as the fault tests check it: no retry loop of ours (each retry logs "attempt N of M",
# which they check is absent) and no driver retrying for minutes (ray.init's connect, an SDK's backoff).
# The bound sits far above what process start-up costs on a busy 2-core machine and below those minutes.
FAIL_FAST_S = 60


def write_config(folder: Path, **overrides: Any) -> Path:
    """configs/local.yaml with its paths inside `folder`; `overrides` replace top-level keys."""
    raw = yaml.safe_load(LOCAL_CONFIG.read_text())
    raw["landing_zone"] = "landing"
    raw["warehouse"] = "warehouse"
    raw["state"]["url"] = "sqlite:///state/loader.db"
    for key, value in overrides.items():
        raw[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "loader.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def local_raw() -> dict[str, Any]:
    """configs/local.yaml as parsed YAML, to change before `write_raw`."""
    return dict(yaml.safe_load(LOCAL_CONFIG.read_text()))


def write_raw(tmp_path: Path, raw: dict[str, Any]) -> Path:
    """`raw` as `<tmp_path>/cfg/loader.yaml`."""
    path = tmp_path / "cfg" / "loader.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(config: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The real command line in a child process."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "loader.cli", "--config", str(config), *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"loader {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_json(config: Path, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    result = run_cli(config, *args, "--json", env=env, cwd=cwd)
    return json.loads(result.stdout)
