"""The KServe v2 gateway end to end: stock tritonclient (HTTP and gRPC) against a real
``icow gateway`` process, a real Redis and a real worker process serving ONNX models.

One gateway per module (plus a guarded one with a bearer token and a small body limit)."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import keys
from icow.workers import samples

from .conftest import WorkerProcess
from .gateway_fixtures import GatewayProcess
from .simfleet import SimWorker

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "s3cret-gateway-token"
BINARY_HEADER = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":12}}]}'


@pytest.fixture(scope="module")
def gateway(redis_url: str, worker: WorkerProcess) -> Iterator[GatewayProcess]:
    g = GatewayProcess(redis_url)
    yield g
    assert g.stop() == 0


@pytest.fixture(scope="module")
def guarded(
    redis_url: str, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    token_file = tmp_path_factory.mktemp("gw") / "token"
    token_file.write_text(TOKEN + "\n")
    g = GatewayProcess(redis_url, "--token-file", str(token_file), "--max-body-bytes", str(1 << 20))
    yield g
    assert g.stop() == 0


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[Any]:
    c = httpclient.InferenceServerClient(gateway.http, concurrency=16)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(gateway: GatewayProcess) -> Iterator[Any]:
    c = grpcclient.InferenceServerClient(gateway.grpc)
    yield c
    c.close()


def post(base: str, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> Any:
    """(status, headers, body) of one raw HTTP request, as curl would send it."""
    req = urllib.request.Request(f"http://{base}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get(base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    return post(base, path, None, headers, method)  # type: ignore[arg-type]


def http_inputs(x: np.ndarray, datatype: str = "FP32", binary: bool = True) -> list[Any]:
    i = httpclient.InferInput("x", list(x.shape), datatype)
    i.set_data_from_numpy(x, binary_data=binary)
    return [i]


def grpc_inputs(x: np.ndarray, datatype: str = "FP32") -> list[Any]:
    i = grpcclient.InferInput("x", list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return [i]


# -- health and metadata


def test_health_and_server_metadata(http: Any, grpc: Any) -> None:
    for c in (http, grpc):
        assert c.is_server_live() and c.is_server_ready()
    assert http.get_server_metadata()["name"] == "icow"
    assert "binary_tensor_data" in grpc.get_server_metadata().extensions


def test_model_metadata_and_readiness(http: Any, grpc: Any) -> None:
    meta = http.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    g = grpc.get_model_metadata("scale", "2")
    assert g.name == "scale" and list(g.versions) == ["1", "2"] and g.inputs[0].datatype == "FP32"
    assert http.is_model_ready("mlp") and grpc.is_model_ready("scale", "1")
    assert not http.is_model_ready("nobody-serves-this")
    assert not grpc.is_model_ready("nobody-serves-this")


def test_model_config_for_perf_analyzer(http: Any, grpc: Any) -> None:
    config = http.get_model_config("mlp")
    assert config["max_batch_size"] == 0 and config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}
    ]
    g = grpc.get_model_config("text").config
    assert g.max_batch_size == 0 and g.input[0].name == "x" and g.input[0].data_type == 13  # TYPE_STRING
    assert list(g.output[0].dims) == [-1]


# -- inference


def test_fifty_infers_per_protocol_match_the_model(http: Any, grpc: Any) -> None:
    rng = np.random.default_rng(1)
    for i in range(50):
        x = rng.standard_normal((1 + i % 4, 4)).astype(np.float32)
        want = samples.mlp_reference(x)
        out = http.infer("mlp", http_inputs(x, binary=i % 2 == 0))
        np.testing.assert_allclose(out.as_numpy("y"), want, rtol=1e-5, atol=1e-6)
        res = grpc.infer("mlp", grpc_inputs(x))
        np.testing.assert_allclose(res.as_numpy("y"), want, rtol=1e-5, atol=1e-6)
        assert res.get_response().model_version == "1"


def test_a_pinned_version_runs_that_version(http: Any, grpc: Any) -> None:
    x = np.arange(2, dtype=np.float32).reshape(1, 2)
    for version, factor in (("1", 2.0), ("2", 3.0)):
        out = http.infer("scale", http_inputs(x), model_version=version)
        np.testing.assert_array_equal(out.as_numpy("y"), x * factor)
        assert out.get_response()["model_version"] == version
        np.testing.assert_array_equal(
            grpc.infer("scale", grpc_inputs(x), model_version=version).as_numpy("y"), x * factor
        )
    np.testing.assert_array_equal(http.infer("scale", http_inputs(x)).as_numpy("y"), x * 3.0)  # the latest


def test_a_wrong_datatype_is_400_and_invalid_argument(http: Any, grpc: Any) -> None:
    x = np.ones((1, 4), np.float64)
    with pytest.raises(InferenceServerException) as err:
        http.infer("mlp", http_inputs(x, "FP64"))
    assert err.value.status() == "400" and "FP64" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("mlp", grpc_inputs(x, "FP64"))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "FP64" in err.value.message()


def test_an_unknown_model_is_404_and_not_found(http: Any, grpc: Any) -> None:
    x = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException) as err:
        http.infer("nobody-serves-this", http_inputs(x))
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("nobody-serves-this", grpc_inputs(x))
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        http.get_model_metadata("mlp", "7")
    assert err.value.status() == "404"


def test_bytes_tensors_both_protocols_json_and_binary(http: Any, grpc: Any) -> None:
    words = np.array([b"hello", b"", "héllo wörld".encode(), "日本語".encode()], dtype=object)
    for binary in (True, False):
        i = httpclient.InferInput("x", [4], "BYTES")
        i.set_data_from_numpy(words, binary_data=binary)
        out = http.infer("text", [i], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
        want = list(words) if binary else [w.decode() for w in words]  # JSON BYTES: tritonclient gives str
        assert list(out.as_numpy("y")) == want
    i = grpcclient.InferInput("x", [4], "BYTES")
    i.set_data_from_numpy(words)
    assert list(grpc.infer("text", [i]).as_numpy("y")) == list(words)


def test_a_big_tensor_both_protocols(http: Any, grpc: Any) -> None:
    x = np.random.default_rng(2).standard_normal(4 << 20).astype(np.float32)  # 16 MiB
    np.testing.assert_array_equal(http.infer("ident", http_inputs(x)).as_numpy("y"), x)
    np.testing.assert_array_equal(grpc.infer("ident", grpc_inputs(x)).as_numpy("y"), x)


def test_many_concurrent_requests(http: Any, gateway: GatewayProcess) -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(64)]
    pending = [http.async_infer("mlp", http_inputs(x)) for x in xs]
    for x, p in zip(xs, pending):
        np.testing.assert_allclose(p.get_result().as_numpy("y"), samples.mlp_reference(x), rtol=1e-5, atol=1e-6)

    def one(x: np.ndarray) -> np.ndarray:
        c = grpcclient.InferenceServerClient(gateway.grpc)
        try:
            return c.infer("mlp", grpc_inputs(x)).as_numpy("y")  # type: ignore[no-any-return]
        finally:
            c.close()

    with ThreadPoolExecutor(16) as pool:
        for x, y in zip(xs, pool.map(one, xs)):
            np.testing.assert_allclose(y, samples.mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_a_timeout_is_504_and_deadline_exceeded(http: Any, grpc: Any) -> None:
    x = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException) as err:
        http.infer("mlp", http_inputs(x), timeout=1)  # Triton's timeout parameter: 1 microsecond
    assert err.value.status() == "504"
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("mlp", grpc_inputs(x), timeout=1)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"


# -- raw HTTP: JSON as curl sends it, and malformed requests


def test_json_infer_as_curl_sends_it(gateway: GatewayProcess) -> None:
    body = {"id": "r1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}]}
    status, headers, raw = post(gateway.http, "/v2/models/mlp/infer", json.dumps(body).encode())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    doc = json.loads(raw)
    assert doc["id"] == "r1" and doc["model_name"] == "mlp" and doc["model_version"] == "1"
    [y] = doc["outputs"]
    assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [1, 3]
    want = samples.mlp_reference(np.array([[1, 2, 3, 4]], np.float32))
    np.testing.assert_allclose(np.array(y["data"], np.float32).reshape(1, 3), want, rtol=1e-5, atol=1e-6)
    assert doc["parameters"]["icow_job_id"]


def test_binary_output_of_bytes_is_length_prefixed(gateway: GatewayProcess) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    status, headers, raw = post(gateway.http, "/v2/models/text/infer", json.dumps(body).encode())
    assert status == 200
    n = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(raw[:n])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(raw) - n
    assert raw[n:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b"[1, 2]", {}, "JSON object"),
        (json.dumps({"inputs": []}).encode(), {}, "non-empty 'inputs'"),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}).encode(),
            {},
            "3 elements given",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP9", "shape": [1], "data": [1]}]}).encode(),
            {},
            "unknown datatype",
        ),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ["a"] * 4}]}).encode(),
            {},
            "must be numbers",
        ),
        (  # binary data: 12 bytes where [1, 4] FP32 needs 16
            BINARY_HEADER + bytes(12),
            {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
            "needs 16",
        ),
        (b'{"inputs":[]}' + bytes(8), {"Inference-Header-Content-Length": "999"}, "does not fit"),
        (b'{"inputs":[]}', {"Inference-Header-Content-Length": "x"}, "must be an integer"),
        (
            json.dumps(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
                    "parameters": {"priority": 42},
                }
            ).encode(),
            {},
            "priority",
        ),
    ],
)
def test_malformed_requests_are_a_clear_400(
    gateway: GatewayProcess, body: bytes, headers: dict[str, str], says: str
) -> None:
    status, _, raw = post(gateway.http, "/v2/models/mlp/infer", body, headers)
    assert status == 400, raw
    assert says in json.loads(raw)["error"]
    assert get(gateway.http, "/v2/health/live")[0] == 200  # the gateway is still up


def test_a_bad_version_in_the_url_is_400(gateway: GatewayProcess) -> None:
    status, _, raw = get(gateway.http, "/v2/models/mlp/versions/latest")
    assert status == 400 and "positive integer" in json.loads(raw)["error"]


# -- asynchronous jobs


def test_an_async_job_answers_202_then_its_result_from_any_gateway(
    gateway: GatewayProcess, guarded: GatewayProcess
) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    status, _, raw = post(gateway.http, "/v2/models/mlp/jobs", json.dumps(body).encode())
    assert status == 202
    job = json.loads(raw)
    assert job["status"] == "queued" and job["cancel_token"] and job["model_name"] == "mlp"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    while True:  # re-attached from the other gateway process: poll the job's status until it finished
        status, headers, raw = get(guarded.http, f"/v2/jobs/{job['id']}", auth)
        if status != 202:
            break
        assert json.loads(raw)["status"] in ("queued", "running")
    assert status == 200
    doc = json.loads(raw)
    assert doc["model_name"] == "mlp" and doc["parameters"] == {"icow_job_id": job["id"], "status": "succeeded"}
    want = samples.mlp_reference(np.array([[1, 2, 3, 4]], np.float32))
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"], np.float32).reshape(1, 3), want, rtol=1e-5)
    # the binary form of the same result
    status, headers, raw = get(gateway.http, f"/v2/jobs/{job['id']}?binary_data_output=true")
    n = int(headers["Inference-Header-Content-Length"])
    np.testing.assert_allclose(np.frombuffer(raw[n:], np.float32).reshape(1, 3), want, rtol=1e-5)
    # a finished job cannot be cancelled
    status, _, raw = get(gateway.http, f"/v2/jobs/{job['id']}", {"ICOW-Cancel-Token": job["cancel_token"]}, "DELETE")
    assert status == 409 and json.loads(raw)["cancelled"] is False


@pytest.fixture
def idle(redis_url: str) -> Iterator[SimWorker]:
    """A live worker that answers cancel requests but leaves its jobs queued."""
    w = SimWorker(redis_url, f"sim-{uuid.uuid4().hex[:10]}").start(run_jobs=False)
    yield w
    w.stop()


def test_cancel_a_queued_job(gateway: GatewayProcess, idle: SimWorker) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    status, _, raw = post(gateway.http, f"/v2/models/{idle.model}/jobs", json.dumps(body).encode())
    assert status == 202
    job = json.loads(raw)
    status, _, raw = get(gateway.http, f"/v2/jobs/{job['id']}")
    assert status == 202 and json.loads(raw)["status"] == "queued"
    status, _, raw = get(gateway.http, f"/v2/jobs/{job['id']}", method="DELETE")
    assert status == 400 and "cancel token" in json.loads(raw)["error"]
    status, _, raw = get(gateway.http, f"/v2/jobs/{job['id']}?cancel_token={job['cancel_token']}", method="DELETE")
    assert status == 200 and json.loads(raw) == {"id": job["id"], "cancelled": True}
    status, _, raw = get(gateway.http, f"/v2/jobs/{job['id']}")
    assert status == 409 and json.loads(raw)["status"] == "failed" and "JobCancelled" in json.loads(raw)["error"]


def test_a_full_queue_is_503_and_unavailable(gateway: GatewayProcess, idle: SimWorker, r: redis.Redis) -> None:
    r.hset(keys.LIMITS, idle.model, 1)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).encode()
    try:
        assert post(gateway.http, f"/v2/models/{idle.model}/jobs", body)[0] == 202
        status, _, raw = post(gateway.http, f"/v2/models/{idle.model}/infer", body)
        assert status == 503 and "queue" in json.loads(raw)["error"]
        c = grpcclient.InferenceServerClient(gateway.grpc)
        with pytest.raises(InferenceServerException) as err:
            c.infer(idle.model, grpc_inputs(np.ones((1, 2), np.float32)))
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        c.close()
    finally:
        r.hdel(keys.LIMITS, idle.model)


def test_a_malformed_job_id_is_400(gateway: GatewayProcess) -> None:
    status, _, raw = get(gateway.http, "/v2/jobs/not%20a%20job%20id")
    assert status == 400 and json.loads(raw)["error"]


# -- operations: bearer token, body limit, metrics


def test_the_bearer_token_guards_both_ports(guarded: GatewayProcess) -> None:
    x = np.ones((1, 4), np.float32)
    assert get(guarded.http, "/v2/health/ready")[0] == 200  # probes need no token
    assert get(guarded.http, "/v2/models/mlp")[0] == 401
    assert get(guarded.http, "/v2/models/mlp", {"Authorization": "Bearer wrong"})[0] == 401
    h = httpclient.InferenceServerClient(guarded.http)
    with pytest.raises(InferenceServerException) as err:
        h.infer("mlp", http_inputs(x))
    assert err.value.status() == "401"
    out = h.infer("mlp", http_inputs(x), headers={"Authorization": f"Bearer {TOKEN}"})
    np.testing.assert_allclose(out.as_numpy("y"), samples.mlp_reference(x), rtol=1e-5, atol=1e-6)
    h.close()
    g = grpcclient.InferenceServerClient(guarded.grpc)
    assert g.is_server_live()
    with pytest.raises(InferenceServerException) as err:
        g.infer("mlp", grpc_inputs(x))
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    out = g.infer("mlp", grpc_inputs(x), headers={"authorization": f"Bearer {TOKEN}"})
    np.testing.assert_allclose(out.as_numpy("y"), samples.mlp_reference(x), rtol=1e-5, atol=1e-6)
    g.close()


def test_an_oversized_body_is_refused_with_the_limit(guarded: GatewayProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Inference-Header-Content-Length": "10"}
    status, _, raw = post(guarded.http, "/v2/models/ident/infer", bytes(2 << 20), auth)
    assert status == 413 and "1048576 bytes" in json.loads(raw)["error"]
    g = grpcclient.InferenceServerClient(guarded.grpc)
    with pytest.raises(InferenceServerException) as err:
        g.infer("ident", grpc_inputs(np.ones(1 << 19, np.float32)), headers={"authorization": f"Bearer {TOKEN}"})
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    g.close()
    assert get(guarded.http, "/v2/health/live")[0] == 200


def test_prometheus_metrics_count_requests_by_model_and_code(gateway: GatewayProcess, http: Any) -> None:
    x = np.ones((1, 4), np.float32)
    http.infer("mlp", http_inputs(x))
    with pytest.raises(InferenceServerException):
        http.infer("nobody-serves-this", http_inputs(x))
    status, _, raw = get(gateway.http, "/metrics")
    text = raw.decode()
    assert status == 200
    assert 'icow_gateway_requests_total{code="200",endpoint="infer",model="mlp",protocol="http"}' in text
    assert 'icow_gateway_requests_total{code="404",endpoint="infer",model="nobody-serves-this",protocol="http"}' in text
    assert 'icow_gateway_request_seconds_count{endpoint="infer",model="mlp",protocol="grpc"}' in text
    assert 'icow_gateway_in_flight{protocol="http"}' in text


def test_the_generated_grpc_code_is_reproducible() -> None:
    from icow.gateway import regen

    proto = Path(regen.PROTO_DIR)
    for name, text in regen.generate().items():
        assert (proto / name).read_text() == text, f"{name} is stale: python -m icow.gateway.regen"
