"""The gateway's operations: graceful shutdown finishes requests in flight, a restarted gateway
(or any other) re-attaches to jobs, TLS on both ports. Real gateway processes and Redis; the
jobs held in flight wait on a simulated worker (tests/simfleet.py) that answers when told."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from icow.workers import samples

from .conftest import WorkerProcess
from .gateway_fixtures import GatewayProcess
from .simfleet import SimWorker
from .test_gateway import get, post

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture
def idle(redis_url: str) -> Iterator[SimWorker]:
    w = SimWorker(redis_url, f"sim-{uuid.uuid4().hex[:10]}").start(run_jobs=False)
    yield w
    w.stop()


def in_flight(gw: GatewayProcess, protocol: str) -> float:
    text = get(gw.http, "/metrics")[2].decode()
    for line in text.splitlines():
        if line.startswith(f'icow_gateway_in_flight{{protocol="{protocol}"}}'):
            return float(line.split()[-1])
    return 0.0


def take_one(w: SimWorker) -> dict[str, Any]:
    while True:  # the job is queued: take it as a worker would (BLMOVE with a short timeout)
        taken = w.take(timeout_s=1.0)
        if taken is not None:
            return taken


def test_sigterm_finishes_requests_in_flight(redis_url: str, idle: SimWorker) -> None:
    gw = GatewayProcess(redis_url)
    x = np.arange(2, dtype=np.float32).reshape(1, 2)
    got: dict[str, Any] = {}

    def call() -> None:
        c = grpcclient.InferenceServerClient(gw.grpc)
        i = grpcclient.InferInput("x", [1, 2], "FP32")
        i.set_data_from_numpy(x)
        try:
            got["y"] = c.infer(idle.model, [i]).as_numpy("y")
        except Exception as exc:
            got["error"] = exc
        finally:
            c.close()

    t = threading.Thread(target=call)
    t.start()
    taken = take_one(idle)  # the request is in the gateway, its job with the worker
    assert idle.claim(taken)
    while in_flight(gw, "grpc") < 1:
        pass
    gw.terminate()  # SIGTERM while the request waits for its result
    idle.success(taken, idle.handler(idle.inputs_of(taken)))
    t.join(60)
    assert "error" not in got, got.get("error")
    np.testing.assert_array_equal(got["y"], x * 2)
    assert gw.stop() == 0


def test_a_job_submitted_before_a_restart_is_read_after_it(redis_url: str, worker: WorkerProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    gw = GatewayProcess(redis_url)
    status, _, raw = post(gw.http, "/v2/models/mlp/jobs", json.dumps(body).encode())
    assert status == 202
    job_id = json.loads(raw)["id"]
    assert gw.stop() == 0
    again = GatewayProcess(redis_url)
    try:
        while (answer := get(again.http, f"/v2/jobs/{job_id}"))[0] == 202:
            pass
        assert answer[0] == 200
        y = np.array(json.loads(answer[2])["outputs"][0]["data"], np.float32).reshape(1, 3)
        want = samples.mlp_reference(np.array([[1, 2, 3, 4]], np.float32))
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    finally:
        assert again.stop() == 0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)),
            *("-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_on_both_ports(redis_url: str, worker: WorkerProcess, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    gw = GatewayProcess(redis_url, "--tls-cert", str(cert), "--tls-key", str(key))
    x = np.ones((1, 4), np.float32)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://localhost:{gw.http_port}/v2/health/ready", context=ctx) as resp:
            assert resp.status == 200
        with pytest.raises(OSError):  # plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}/v2/health/ready", timeout=10)
        c = grpcclient.InferenceServerClient(f"localhost:{gw.grpc_port}", ssl=True, root_certificates=str(cert))
        i = grpcclient.InferInput("x", [1, 4], "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_allclose(c.infer("mlp", [i]).as_numpy("y"), samples.mlp_reference(x), rtol=1e-5, atol=1e-6)
        c.close()
    finally:
        assert gw.stop() == 0
