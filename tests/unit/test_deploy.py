"""deploy/ is written here, never run (no Docker engine, no cluster): each file is linted with the tool
made for it (hadolint, the Compose specification's schema, the Kubernetes API schemas), checked for the
properties the README promises, and every config it carries is parsed by the loader itself."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from loader import errors
from loader.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# -------------------------------------------------------------------------------------------- image


def _instructions() -> list[tuple[str, str]]:
    lines, joined = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        joined += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if joined.strip():
                word, _, rest = joined.strip().partition(" ")
                lines.append((word.upper(), rest))
            joined = ""
    return lines


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_is_multi_stage_slim_non_root_with_loader_entrypoint() -> None:
    steps = _instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2 and all("slim" in f for f in froms)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    user = [rest for word, rest in final if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["loader"]') in final
    assert any(word == "COPY" and "--from=build" in rest for word, rest in final)  # only the built venv
    for word, rest in steps:  # every COPY source exists, so the build context has what the image needs
        if word == "COPY" and "--from" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            assert all((ROOT / s).exists() for s in sources), rest
    installs = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    # the pinned installer, then the locked set with it (tests/unit/test_lock.py), then ours
    assert installs == ["/opt/loader/bin/pip install --require-hashes -r installer.lock "
                        "&& /opt/loader/bin/pip install --require-hashes -r image.lock",
                        "/opt/loader/bin/pip install --no-deps ."]


def test_the_image_build_context_builds_the_package(tmp_path: Path) -> None:
    """The files the Dockerfile copies before `pip install` are enough for a wheel with the CLI."""
    context = tmp_path / "src"
    for word, rest in _instructions():
        if word == "COPY" and "--from" not in rest and "configs" not in rest:
            for source in rest.split()[:-1]:
                target = context / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(context)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("loader-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "loader/cli.py" in names and "loader/transform/facts.py" in names and "state/__init__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "loader = loader.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# -------------------------------------------------------------------------------------------- config


def test_deployed_config_parses_with_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "secret")
    monkeypatch.setenv("PGHOST", "db.internal")
    monkeypatch.delenv("LOADER_BUCKET", raising=False)
    config = load_config(DEPLOY / "loader.yaml")
    assert config.landing_zone == "s3://lake/landing" and config.warehouse == "s3://lake/warehouse"
    assert config.state.url == "postgresql+psycopg://loader:secret@db.internal:5432/loader"


# -------------------------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification() -> None:
    done = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           str(DEPLOY / "docker-compose.yaml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_postgres_minio_and_a_one_shot_loader() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]
    assert {"postgres", "minio", "loader"} <= set(services)
    loader = services["loader"]
    assert loader["restart"] == "no" and loader["command"] == ["run", "--incremental"]
    assert loader["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert loader["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert ("postgres" in services and "healthcheck" in services["postgres"]
            and "healthcheck" in services["minio"])
    mounted = [v.split(":")[0] for v in loader["volumes"]]
    assert all((DEPLOY / m).is_file() for m in mounted)
    assert loader["build"]["dockerfile"] == "deploy/Dockerfile"


# -------------------------------------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("name", ["k8s/cronjob.yaml", "k8s/secret.example.yaml"])
def test_kubernetes_manifests_match_the_api_schema(name: str) -> None:
    for doc in _docs(DEPLOY / name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_cronjob_forbids_overlap_retries_failures_and_reads_secrets_from_a_secret() -> None:
    (cron,) = _docs(DEPLOY / "k8s" / "cronjob.yaml")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1
    no_retry = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert set(no_retry[0]["onExitCodes"]["values"]) == {errors.EXIT_USAGE, errors.EXIT_LEASE_HELD}
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "loader-secrets"} in [e["secretRef"] for e in container["envFrom"]]
    assert not any("PASSWORD" in e["name"] or "SECRET" in e["name"] for e in container["env"])
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["volumes"][0]["configMap"]["name"] == "loader-config"


def test_kustomization_generates_the_config_map_from_the_shared_config() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert all((DEPLOY / r).is_file() for r in kustomization["resources"])
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "loader-config" and generator["files"] == ["loader.yaml"]


RAYJOB_SCHEMA: dict[str, Any] = {  # the fields of KubeRay's RayJob (ray.io/v1) this manifest relies on
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec", "shutdownAfterJobFinishes"],
            "properties": {
                "entrypoint": {"type": "string",
                               "pattern": "^loader (run --incremental|backfill) .*--executor ray"},
                "shutdownAfterJobFinishes": {"const": True},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec", "workerGroupSpecs"],
                    "properties": {
                        "headGroupSpec": {"type": "object", "required": ["rayStartParams", "template"]},
                        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": {
                            "type": "object",
                            "required": ["groupName", "replicas", "minReplicas", "maxReplicas",
                                         "rayStartParams", "template"]}},
                    },
                },
            },
        },
    },
}


def test_rayjob_manifest_has_the_fields_kuberay_needs_and_valid_pod_templates() -> None:
    (job,) = _docs(DEPLOY / "kuberay" / "rayjob.yaml")
    jsonschema.validate(job, RAYJOB_SCHEMA)
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:  # each group's pod template is a real PodTemplateSpec
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": template}, K8S_VERSION, strict=True)
        assert all(c["image"] == templates[0]["spec"]["containers"][0]["image"]
                   for c in template["spec"]["containers"])
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == "loader-config"


# -------------------------------------------------------------------------------------------- airflow


def _dag_module() -> Any:
    spec = importlib.util.spec_from_file_location("loader_dag", DEPLOY / "airflow" / "loader_dag.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_airflow_dag_maps_the_loaders_exit_codes() -> None:
    dag = _dag_module()
    assert dag.outcome(errors.EXIT_OK) == "success"
    assert dag.outcome(errors.EXIT_LEASE_HELD) == "skip"
    assert dag.outcome(errors.EXIT_FAILED) == "retry"
    assert dag.outcome(errors.EXIT_USAGE) == "fail"
    assert dag.outcome(-9) == "retry"  # killed: the next try replays the run


def test_airflow_dag_retries_and_never_overlaps() -> None:
    tree = ast.parse((DEPLOY / "airflow" / "loader_dag.py").read_text())
    calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    options = {k.arg: k.value for k in calls["DAG"].keywords}
    assert ast.literal_eval(options["max_active_runs"]) == 1 and ast.literal_eval(options["catchup"]) is False
    default_args = options["default_args"]
    assert isinstance(default_args, ast.Dict)
    defaults = {ast.literal_eval(k): v  # type: ignore[arg-type]
                for k, v in zip(default_args.keys, default_args.values, strict=True)}
    assert ast.literal_eval(defaults["retries"]) >= 1
    operator = {k.arg: k.value for k in calls["PythonOperator"].keywords}
    assert json.loads(json.dumps(ast.literal_eval(operator["op_args"]))) == ["run", "--incremental"]
