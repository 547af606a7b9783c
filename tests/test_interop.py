"""Stock Celery and other-language interop: a plain Celery app that knows only the task name,
Celery's own remote control and events, and the JSON form of a job (docs/PROTOCOL.md)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from celery import Celery

from icow import keys, tensor
from icow.celery_message import TASK_NAME
from icow.client import Client
from icow.errors import InvalidJob, JobExpired, ModelNotFound
from icow.workers import samples

from .conftest import WorkerProcess

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.fixture
def celery_app(redis_url: str, worker: WorkerProcess) -> Iterator[Celery]:
    """A stock Celery client: no ICOW code, only the task name and the msgpack serializer."""
    app = Celery("plain", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack", "json"],
        result_accept_content=["msgpack"],
        broker_connection_retry_on_startup=True,
    )
    yield app
    app.close()


def _job(job_id: str, model: str, x: np.ndarray, **extra: Any) -> dict[str, Any]:
    """An ICOW job map built by hand, as another program would."""
    t = tensor.encode("x", x)
    return {
        "v": 1,
        "id": job_id,
        "model": model,
        "created": time.time(),
        "inputs": [{"name": "x", "datatype": t["datatype"], "shape": t["shape"], "data": bytes(t["data"])}],
        **extra,
    }


# -- a stock Celery client


def test_send_task_and_async_result_get(celery_app: Celery) -> None:
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    job_id = str(uuid.uuid4())
    res = celery_app.send_task("icow.infer", args=[_job(job_id, "mlp", x)], queue=keys.queue("mlp"), task_id=job_id)
    out = res.get(timeout=30)
    assert res.status == "SUCCESS" and out["id"] == job_id and out["model"] == "mlp" and out["version"] == 1
    (y,) = out["outputs"]
    np.testing.assert_allclose(tensor.decode(y), samples.mlp_reference(x), atol=1e-5)


def test_send_task_failure_raises_through_async_result(celery_app: Celery) -> None:
    job_id = str(uuid.uuid4())
    bad = _job(job_id, "mlp", np.ones((1, 5), np.float32))
    res = celery_app.send_task("icow.infer", args=[bad], queue=keys.queue("mlp"), task_id=job_id)
    # icow.errors is importable here, so Celery rebuilds the ICOW class from exc_module/exc_type.
    with pytest.raises(InvalidJob, match="expects"):
        res.get(timeout=30)
    assert res.status == "FAILURE"
    missing = str(uuid.uuid4())
    res = celery_app.send_task(
        "icow.infer",
        args=[_job(missing, "scale", np.ones((1, 2), np.float32), version=9)],
        queue=keys.queue("scale"),
        task_id=missing,
    )
    with pytest.raises(ModelNotFound, match="no version 9"):
        res.get(timeout=30)


def test_send_task_with_a_json_body(celery_app: Celery) -> None:
    x = np.array([[1.0, 2.0]], np.float32)
    job_id = str(uuid.uuid4())
    job = _job(job_id, "scale", x)
    job["inputs"][0]["data"] = base64.b64encode(x.tobytes()).decode()  # the JSON form
    res = celery_app.send_task("icow.infer", args=[job], queue=keys.queue("scale"), task_id=job_id, serializer="json")
    out = res.get(timeout=30)
    np.testing.assert_array_equal(tensor.decode(out["outputs"][0]), x * 3)


# -- Celery's own headers (docs/PROTOCOL.md section 13)


def _scale_job(job_id: str, serializer: str) -> dict[str, Any]:
    x = np.array([[1.0, 2.0]], np.float32)
    job = _job(job_id, "scale", x)
    if serializer == "json":
        job["inputs"][0]["data"] = base64.b64encode(x.tobytes()).decode()  # the JSON form
    return job


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_celery_expires_is_a_deadline(celery_app: Celery, serializer: str) -> None:
    late, soon = str(uuid.uuid4()), str(uuid.uuid4())
    past = datetime.now(UTC) - timedelta(seconds=5)
    res = celery_app.send_task(
        "icow.infer",
        args=[_scale_job(late, serializer)],
        queue=keys.queue("scale"),
        task_id=late,
        serializer=serializer,
        expires=past,
    )
    with pytest.raises(JobExpired):
        res.get(timeout=30)
    assert res.status == "FAILURE"
    with Client(celery_app.conf.broker_url) as c, pytest.raises(JobExpired):
        c.job(late).result(timeout_s=5)
    # An expiry still ahead is no obstacle: the job runs.
    res = celery_app.send_task(
        "icow.infer",
        args=[_scale_job(soon, serializer)],
        queue=keys.queue("scale"),
        task_id=soon,
        serializer=serializer,
        expires=60,
    )
    out = res.get(timeout=30)
    np.testing.assert_array_equal(tensor.decode(out["outputs"][0]), [[3.0, 6.0]])


@pytest.mark.parametrize(
    "when", [{"countdown": 3}, {"eta": datetime.now(UTC) + timedelta(days=365)}], ids=["countdown", "eta"]
)
def test_celery_eta_and_countdown_are_refused_with_a_clear_message(celery_app: Celery, when: dict[str, Any]) -> None:
    job_id = str(uuid.uuid4())
    res = celery_app.send_task(
        "icow.infer", args=[_scale_job(job_id, "msgpack")], queue=keys.queue("scale"), task_id=job_id, **when
    )
    with pytest.raises(InvalidJob, match=r"eta/countdown is not supported.*as soon as a worker is free"):
        res.get(timeout=30)  # answered at once, not after the countdown (nor a year later)


def test_celery_remote_control_sees_icow_workers(celery_app: Celery, worker: WorkerProcess) -> None:
    inspect = celery_app.control.inspect(destination=[worker.name], timeout=5)
    assert TASK_NAME in inspect.registered()[worker.name]
    assert celery_app.control.ping(destination=[worker.name], timeout=5) == [{worker.name: {"ok": "pong"}}]
    # Celery's consumer listens on its control queue only: ICOW's queues are taken by the intake.
    queues = {q["name"] for q in inspect.active_queues()[worker.name]}
    assert queues == {keys.PREFIX + "celery"}


def test_the_celery_command_line_sees_icow_workers(redis_url: str, worker: WorkerProcess) -> None:
    def celery(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "celery", "-b", redis_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert f"{worker.name}: OK" in celery("status", "--timeout", "5")
    assert TASK_NAME in celery("inspect", "registered", "--timeout", "5", "-d", worker.name)


def test_worker_events_for_flower(redis_url: str, tmp_path: Path) -> None:
    samples.scale(tmp_path / "evscale" / "1" / "model.onnx", 4.0)
    app = Celery("watcher", broker=redis_url, set_as_current=False)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    receivers: list[Any] = []

    def watch() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            receiver.on_consume_ready = lambda *a, **k: ready.set()
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10)
    events_worker = WorkerProcess(tmp_path, redis_url, f"events-{uuid.uuid4().hex[:6]}@local", extra=["--events"])
    try:
        with Client(redis_url) as c:
            job = c.submit("evscale", {"x": np.ones((1, 2), np.float32)})
            assert job.result(timeout_s=30)["y"][0, 0] == 4.0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            mine = {e["type"] for e in seen if e.get("uuid") == job.id}
            beats = {e["type"] for e in seen if e.get("hostname") == events_worker.name}
            if {"task-received", "task-started", "task-succeeded"} <= mine and "worker-heartbeat" in beats:
                break
            time.sleep(0.1)
        assert {"task-received", "task-started", "task-succeeded"} <= mine
        assert "worker-heartbeat" in beats
        assert any(e.get("name") == TASK_NAME for e in seen if e["type"] == "task-received")
    finally:
        receivers[0].should_stop = True
        thread.join(5)
        events_worker.stop()


# -- the JSON form, hand-built as a JSON-only client in another language sends it


def _json_message(job_id: str, job: Any, queue: str) -> bytes:
    body = json.dumps([[job], {}, EMBED]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "js", "task": "icow.infer", "id": job_id, "root_id": job_id},
            "properties": {
                "correlation_id": job_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def _json_job(job_id: str, x: np.ndarray, data: Any = None, model: str = "mlp") -> dict[str, Any]:
    return {
        "v": 1,
        "id": job_id,
        "model": model,
        "version": None,
        "created": time.time(),
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": base64.b64encode(x.tobytes()).decode() if data is None else data,
            }
        ],
        "outputs": None,
        "ttl": 600,
        "reply_to": None,
        "deadline": None,
    }


def test_a_hand_built_json_body_message_runs(client: Client, r: redis.Redis) -> None:
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    job_id = str(uuid.uuid4())
    r.set(keys.state(job_id), b"queued", ex=600)
    r.lpush(keys.queue("mlp"), _json_message(job_id, _json_job(job_id, x), keys.queue("mlp")))
    out = client.job(job_id).result(timeout_s=30)  # results are msgpack, whatever the body was
    np.testing.assert_allclose(out["y"], samples.mlp_reference(x), atol=1e-5)
    assert 0 < r.ttl(keys.result(job_id)) <= 600


def test_kombus_typed_bytes_wrapper_works_too(client: Client, r: redis.Redis) -> None:
    x = np.ones((1, 2), np.float32)
    job_id = str(uuid.uuid4())
    wrapped = {"__type__": "base64", "__value__": base64.b64encode(x.tobytes()).decode()}
    job = _json_job(job_id, x, data=wrapped, model="scale")
    r.set(keys.state(job_id), b"queued", ex=600)
    r.lpush(keys.queue("scale"), _json_message(job_id, job, keys.queue("scale")))
    np.testing.assert_array_equal(client.job(job_id).result(timeout_s=30)["y"], x * 3)


_X = np.ones((1, 4), np.float32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "unsupported protocol version 2"),
        ({"v": None}, "unsupported protocol version"),
        ({"model": None}, "invalid model name"),
        ({"model": "../../etc"}, "invalid model name"),
        ({"inputs": None}, "inputs must be a non-empty list"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "data": ""}]}, "unknown datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "1x4", "data": ""}]}, "shape must be a list"),
        ({"created": None}, "created must be a unix time"),
        ({"ttl": "long"}, "ttl must be an integer"),
        ({"version": -1}, "version must be a positive integer"),
        ({"outputs": "y"}, "outputs must be a non-empty list"),
        ({"deadline": "soon"}, "deadline must be a unix time"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": "not*base64"}]}, "not valid base64"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": "AACAPw=="}]}, "4 bytes of data"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": 7}]}, "raw bytes"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": "AQAAAA=="}]}, "runs past the end"),
    ],
)
def test_malformed_json_jobs_get_a_failure_naming_the_problem(
    client: Client, r: redis.Redis, change: dict[str, Any], message: str
) -> None:
    job_id = str(uuid.uuid4())
    job = {**_json_job(job_id, _X), **change}
    r.set(keys.state(job_id), b"queued", ex=60)
    r.lpush(keys.queue("mlp"), _json_message(job_id, job, keys.queue("mlp")))
    with pytest.raises(InvalidJob, match=message) as err:
        client.job(job_id).result(timeout_s=30)
    assert err.value.job_id == job_id
    assert client.infer("mlp", {"x": _X}, timeout_s=30)["y"].shape == (1, 3)  # the worker keeps serving


def test_a_json_body_that_is_not_json_gets_a_failure(client: Client, r: redis.Redis) -> None:
    job_id = str(uuid.uuid4())
    message = json.loads(_json_message(job_id, {}, keys.queue("mlp")))
    message["body"] = base64.b64encode(b"[[{not json").decode()
    r.set(keys.state(job_id), b"queued", ex=60)
    r.lpush(keys.queue("mlp"), json.dumps(message))
    with pytest.raises(InvalidJob, match="could not be decoded"):
        client.job(job_id).result(timeout_s=30)
    assert client.infer("mlp", {"x": _X}, timeout_s=30)["y"].shape == (1, 3)


def test_pickle_is_never_accepted(client: Client, r: redis.Redis) -> None:
    job_id = str(uuid.uuid4())
    message = json.loads(_json_message(job_id, {}, keys.queue("mlp")))
    message["content-type"] = "application/x-python-serialize"
    message["content-encoding"] = "binary"
    message["body"] = base64.b64encode(b"\x80\x04K\x01.").decode()  # pickle of 1
    r.set(keys.state(job_id), b"queued", ex=60)
    r.lpush(keys.queue("mlp"), json.dumps(message))
    with pytest.raises(InvalidJob):
        client.job(job_id).result(timeout_s=30)
    assert client.infer("mlp", {"x": _X}, timeout_s=30)["y"].shape == (1, 3)
