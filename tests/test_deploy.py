"""Deployment files: compose.yaml is valid against the compose-spec schema and deploys what the
README promises; the Kubernetes example is well-formed; every `icow` command line in them is
accepted by the real CLI. No Docker engine or cluster needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from icow import keys
from icow.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
K8S = ROOT / "docs" / "deploy" / "kubernetes" / "icow.yaml"


def check_jsonschema() -> str:
    exe = Path(sys.executable).parent / "check-jsonschema"
    found = str(exe) if exe.is_file() else shutil.which("check-jsonschema")
    assert found, "check-jsonschema is a dev dependency (pip install -e .[dev])"
    return found


def validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def accepted_by_cli(argv: list[str]) -> None:
    """The arguments after `icow` parse with the real CLI (no unknown flags, no typos)."""
    build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    proc = validate_compose(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_catches_mistakes(tmp_path: Path, compose: dict[str, Any]) -> None:
    broken = dict(compose)
    broken["services"] = {**compose["services"], "redis": {**compose["services"]["redis"], "ports": 6379}}
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert validate_compose(tmp_path / "compose.yaml").returncode != 0


def test_compose_redis_is_persistent_password_protected_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    cmd = " ".join(redis["command"])
    assert "--appendonly yes" in cmd and "--maxmemory-policy noeviction" in cmd
    assert '--requirepass "$$REDIS_PASSWORD"' in cmd  # from the environment, not the file
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_workers_reserve_gpus_check_health_and_mount_the_repository(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "worker-gpu1"):
        w = services[name]
        (device,) = w["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
        assert "./models:/models:ro" in w["volumes"]
        assert w["healthcheck"]["test"] == ["CMD", "icow", "health", "--quiet"]
        assert w["depends_on"]["redis"]["condition"] == "service_healthy"
        assert w["stop_signal"] == "SIGTERM"
        accepted_by_cli(w["command"])
        accepted_by_cli(w["healthcheck"]["test"][2:])
        assert "--metrics-port" in w["command"]
        assert "@redis:6379/0" in w["environment"]["ICOW_REDIS_URL"]
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert "deploy" not in services["worker-cpu"]
    exporter = services["exporter"]
    assert exporter["command"][0] == "exporter"
    accepted_by_cli(exporter["command"])


def test_dockerfile_builds_the_cli_image_with_a_healthcheck() -> None:
    text = (ROOT / "workers" / "Dockerfile").read_text()
    assert text.startswith("#") and "\nFROM nvidia/cuda:" in text
    assert "HEALTHCHECK" in text and '"icow", "health"' in text
    assert 'ENTRYPOINT ["icow"]' in text and "USER icow" in text
    for src in ("pyproject.toml", "client", "workers", "icow"):
        assert (ROOT / src).exists() and f" {src}" in text
    assert "ARG ICOW_EXTRA=worker\n" in text  # `pip install .` alone is the client, without workers
    assert 'pip install ".[${ICOW_EXTRA}]"' in text  # --build-arg ICOW_EXTRA=worker-cpu: the CPU build


def test_kubernetes_example_is_well_formed_and_scales_on_the_model_queue() -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        assert d["metadata"]["name"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    worker = deployments["icow-worker-a100"]
    spec = worker["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    accepted_by_cli(container["args"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = container[probe]["exec"]["command"]
        assert cmd[:2] == ["icow", "health"]
        accepted_by_cli(cmd[1:])
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    exporter = deployments["icow-exporter"]
    assert exporter["spec"]["replicas"] == 1
    accepted_by_cli(exporter["spec"]["template"]["spec"]["containers"][0]["args"])

    (scaled,) = by_kind["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    redis_trigger = next(t for t in scaled["spec"]["triggers"] if t["type"] == "redis")
    assert redis_trigger["metadata"]["listName"] == keys.queue("mlp")
    assert int(redis_trigger["metadata"]["listLength"]) > 0
    auth = redis_trigger["authenticationRef"]["name"]
    assert auth in {d["metadata"]["name"] for d in by_kind["TriggerAuthentication"]}
    prom = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    assert "icow_queue_oldest_age_seconds" in prom["metadata"]["query"]


def uncommented_sentinel_option(text: str) -> dict[str, Any]:
    """compose.yaml with its commented Sentinel option switched on, as a user would."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # redis-replica:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("  # --- end of the Sentinel option"))
    for i in range(start, end):
        assert lines[i].startswith("  # "), lines[i]
        lines[i] = "  " + lines[i][4:]
    lines = [line.replace("  # redis-replica-data:   # Sentinel option", "  redis-replica-data:") for line in lines]
    return yaml.safe_load("\n".join(lines))  # type: ignore[no-any-return]


def test_compose_sentinel_option_is_valid_and_matches_its_url(tmp_path: Path) -> None:
    from icow import connection

    text = COMPOSE.read_text()
    url = next(
        line.split("ICOW_REDIS_URL: ", 1)[1].strip('"') for line in text.splitlines() if "redis+sentinel://" in line
    )
    on = uncommented_sentinel_option(text)
    services = on["services"]
    for name in ("worker", "worker-gpu1", "worker-cpu", "exporter"):
        services[name]["environment"]["ICOW_REDIS_URL"] = url
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(on))
    proc = validate_compose(tmp_path / "compose.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    target = connection.parse_sentinel(url.replace("${REDIS_PASSWORD}", "pw"))
    assert target.password == "pw" and target.db == 0
    assert {h for h, _ in target.sentinels} == {"sentinel1", "sentinel2", "sentinel3"} <= set(services)
    sentinel_cmd = " ".join(services["sentinel1"]["command"])
    assert f"sentinel monitor {target.service} redis 6379 2" in sentinel_cmd  # quorum 2 of 3
    assert all(p == 26379 for _, p in target.sentinels) and "port 26379" in sentinel_cmd
    assert services["sentinel2"] == services["sentinel1"] == services["sentinel3"]
    replica = " ".join(services["redis-replica"]["command"])
    assert "--replicaof redis 6379" in replica and "--masterauth" in replica and "--appendonly yes" in replica
    assert "--masterauth" in " ".join(services["redis"]["command"])  # the old primary returns as a replica


def test_kubernetes_sentinel_option_names_the_same_master() -> None:
    from icow import connection

    text = K8S.read_text()
    url = next(line.split("url='", 1)[1].rstrip("'") for line in text.splitlines() if "redis+sentinel://" in line)
    target = connection.parse_sentinel(url.replace("PASSWORD", "pw"))
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "# - type: redis-sentinel" in line)
    block = []
    for line in lines[start:]:
        if not line.lstrip().startswith("#"):
            break
        block.append(line.replace("# ", "", 1))
    (trigger,) = yaml.safe_load("\n".join(block))
    meta = trigger["metadata"]
    assert meta["sentinelMaster"] == target.service
    assert [a.strip() for a in meta["addresses"].split(",")] == [f"{h}:{p}" for h, p in target.sentinels]
    assert meta["listName"] == keys.queue("mlp")
