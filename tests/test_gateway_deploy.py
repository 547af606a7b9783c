"""The gateway in the deployment files: compose.yaml and the Kubernetes example run `icow
gateway` with arguments the real CLI accepts, probe the KServe health endpoints and give it
more time to stop than its own grace period."""

from __future__ import annotations

from typing import Any

import yaml

from icow.cli import build_parser

from .test_deploy import COMPOSE, K8S


def _grace(argv: list[str]) -> float:
    args = build_parser().parse_args(argv)  # no unknown flags, no typos
    assert args.command == "gateway"
    return float(args.grace)


def test_compose_runs_the_gateway_on_tritons_ports() -> None:
    gw = yaml.safe_load(COMPOSE.read_text())["services"]["gateway"]
    grace = _grace(gw["command"])
    assert gw["build"]["args"]["ICOW_EXTRA"] == "gateway"
    assert {p.rsplit(":", 1)[-1] for p in gw["ports"]} == {"8000", "8001"}
    assert "/v2/health/ready" in " ".join(gw["healthcheck"]["test"])
    assert gw["stop_signal"] == "SIGTERM" and int(gw["stop_grace_period"].rstrip("s")) > grace
    assert gw["environment"]["ICOW_REDIS_URL"].startswith("redis://")


def test_kubernetes_runs_the_gateway_behind_a_service() -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    deployment: dict[str, Any] = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "icow-gateway"
    )
    service: dict[str, Any] = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "icow-gateway"
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] > _grace(container["args"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
