"""Choosing where the transforms run, through the real CLI: `auto` falls back to the CPU and says why,
`gpu` fails at start (exit 2, nothing written) without a usable GPU, `cpu` never imports cuDF, and the
old `--engine local|ray` points at `--executor`.

The GPU is simulated as absent in three ways: cuDF not installed (this machine), and stand-in `cudf` /
`cupy` packages on PYTHONPATH for "installed but no device" and "device but cuDF fails to import". A
stand-in records every import in a marker file, which is how "never touches cudf" is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loader.transform.frames import GpuStatus, choose_transform_engine, gpu_status
from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args

GPU = gpu_status()
no_gpu = pytest.mark.skipif(GPU.usable,
                            reason="this machine has a usable GPU: the fallback cannot be observed")


def _fake_gpu_stack(root: Path, *, devices: int | None, cudf_imports: bool) -> dict[str, str]:
    """Stand-in `cudf` (and `cupy` when `devices` is not None) packages; PYTHONPATH to put them first."""
    marker = root / "imported.txt"
    (root / "cudf").mkdir(parents=True)
    body = f"with open({str(marker)!r}, 'a') as f:\n    f.write('cudf\\n')\n"
    body += ("__version__ = '0.0-standin'\n" if cudf_imports
             else "raise ImportError('libcudf.so: cannot open shared object file')\n")
    (root / "cudf" / "__init__.py").write_text(body)
    if devices is not None:
        (root / "cupy" / "cuda").mkdir(parents=True)
        (root / "cupy" / "__init__.py").write_text("from cupy import cuda\n")
        (root / "cupy" / "cuda" / "__init__.py").write_text(
            f"class runtime:\n    @staticmethod\n    def getDeviceCount():\n        return {devices}\n")
    return {"PYTHONPATH": str(root)}


def _project(tmp_path: Path, **overrides: object) -> Path:
    config = write_config(tmp_path / "project", **overrides)
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
    return config


@no_gpu
@pytest.mark.may_skip  # a machine with a GPU
def test_auto_falls_back_to_cpu_and_says_why(tmp_path: Path) -> None:
    config = _project(tmp_path)
    result = run_cli(config, "run", "--incremental", "--json")
    summary = json.loads(result.stdout)
    assert summary["status"] == "committed" and summary["engine"] == "cpu"
    assert "cuDF is not installed" in summary["engine_reason"] and "pip install" in summary["engine_reason"]
    assert "transforms on the CPU" in result.stderr  # the log line says which, and why
    assert summary["tables"]["orders"]["rows"] > 0
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "20", "--updates", "2",
            "--late", "0")
    table = run_cli(config, "run", "--incremental").stdout  # the people's summary keeps the command intact
    assert "transforms: cpu (auto: cuDF is not installed (pip install -e '.[gpu]'" in " ".join(table.split())


@no_gpu
@pytest.mark.may_skip  # a machine with a GPU
@pytest.mark.parametrize("where", ["cli", "config"])
def test_gpu_requested_without_one_fails_at_start_and_writes_nothing(tmp_path: Path, where: str) -> None:
    config = _project(tmp_path, transform={"engine": "gpu" if where == "config" else "auto"})
    args = ["run", "--incremental"] + (["--engine", "gpu"] if where == "cli" else [])
    failed = run_cli(config, *args, check=False)
    assert failed.returncode == 2, failed.stderr
    assert "gpu needs cuDF and a CUDA device" in failed.stderr and "--engine auto or cpu" in failed.stderr
    assert not (config.parent / "warehouse").exists()
    assert run_json(config, "status")["last_run"] is None  # no run recorded: the check came first
    backfill = run_cli(config, "backfill", "--start", "2020-01-01", "--end", "2030-01-01", "--engine", "gpu",
                       check=False)
    assert backfill.returncode == 2 and "gpu needs cuDF" in backfill.stderr


def test_stand_in_gpu_stacks_fall_back_with_the_reason(tmp_path: Path) -> None:
    config = _project(tmp_path)
    cases = {
        "no cupy": (None, True, "no CUDA device is usable"),
        "zero devices": (0, True, "no CUDA device is visible"),
        "cudf broken": (1, False, "cuDF does not import"),
    }
    for name, (devices, cudf_imports, reason) in cases.items():
        env = _fake_gpu_stack(tmp_path / name.replace(" ", "-"), devices=devices, cudf_imports=cudf_imports)
        failed = run_cli(config, "run", "--incremental", "--engine", "gpu", check=False, env=env)
        assert failed.returncode == 2 and reason in failed.stderr, (name, failed.stderr)
        summary = json.loads(run_cli(config, "run", "--incremental", "--json", env=env).stdout)
        assert summary["engine"] == "cpu" and reason in summary["engine_reason"], (name, summary)
        run_cli(config, "demo-data", "append", *append_args(config), "--orders", "50", "--updates", "5",
                "--late", "0")


def test_cpu_never_imports_cudf(tmp_path: Path) -> None:
    config = _project(tmp_path)
    root = tmp_path / "standin"
    env = _fake_gpu_stack(root, devices=1, cudf_imports=True)
    summary = json.loads(run_cli(config, "run", "--incremental", "--engine", "cpu", "--json", env=env).stdout)
    assert summary["status"] == "committed" and summary["engine"] == "cpu"
    assert summary["engine_reason"] == "transform engine 'cpu' requested"
    assert not (root / "imported.txt").exists(), "--engine cpu imported cudf"
    # the same stand-in is imported by `auto` (so the marker would have caught it)
    run_cli(config, "doctor", "--json", check=False, env=env)
    assert (root / "imported.txt").read_text().startswith("cudf")


def test_old_engine_values_point_to_executor(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project")
    for value in ("local", "ray"):
        failed = run_cli(config, "run", "--incremental", "--engine", value, check=False)
        assert failed.returncode == 2 and f"--executor {value}" in failed.stderr
    failed = run_cli(config, "run", "--incremental", "--engine", "tpu", check=False)
    assert failed.returncode == 2 and "auto, cpu, gpu" in failed.stderr


def test_choose_transform_engine_rules() -> None:
    usable, missing = (GpuStatus(True, "cuDF 25.10, 2 CUDA device(s)", 2),
                       GpuStatus(False, "no CUDA device is visible"))
    assert choose_transform_engine("auto", usable).engine == "gpu"
    assert choose_transform_engine("gpu", usable).engine == "gpu"
    fallback = choose_transform_engine("auto", missing)
    assert fallback.engine == "cpu" and "no CUDA device is visible" in fallback.reason
    assert choose_transform_engine("cpu", usable).engine == "cpu"  # cpu is never overridden
    from loader.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        choose_transform_engine("gpu", missing)
