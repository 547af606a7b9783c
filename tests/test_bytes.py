"""BYTES tensors end to end: strings and bytes in, bytes out, through a real worker running an
ONNX string model (``text``: Identity on a string tensor)."""

from __future__ import annotations

import struct
import uuid

import numpy as np
import pytest
import redis

from icow import keys
from icow.celery_message import celery_message
from icow.client import AsyncClient, Client
from icow.envelope import job_envelope
from icow.errors import InvalidInput, InvalidJob

from .conftest import WorkerProcess


def test_strings_in_bytes_out(client: Client) -> None:
    words = np.array(["hello", "", "héllo wörld", "日本語"], dtype=object)
    out = client.infer("text", {"x": words}, timeout_s=30)
    y = out["y"]
    assert y.dtype == object and y.shape == (4,)
    assert [b.decode("utf-8") for b in y] == list(words)
    assert client.model("text").inputs[0].datatype == "BYTES"


def test_numpy_string_and_bytes_arrays_are_bytes_tensors(client: Client) -> None:
    assert list(client.infer("text", {"x": np.array(["a", "bc"])}, timeout_s=30)["y"]) == [b"a", b"bc"]
    assert list(client.infer("text", {"x": np.array([b"raw", b"\xc3\xa9"])}, timeout_s=30)["y"]) == [
        b"raw",
        "é".encode(),
    ]


def test_an_empty_bytes_tensor(client: Client) -> None:
    y = client.infer("text", {"x": np.array([], dtype=object)}, timeout_s=30)["y"]
    assert y.shape == (0,)


def test_large_bytes_tensors_use_the_claim_check(client: Client, r: redis.Redis) -> None:
    words = np.array([f"word-{i:07d}" for i in range(40_000)], dtype=object)  # about 600 KB on the wire
    job = client.submit("text", {"x": words})
    y = job.result(timeout_s=60)["y"]
    assert y[0] == b"word-0000000" and y[-1] == b"word-0039999" and len(y) == 40_000
    assert r.exists(keys.output_blob(job.id, 0)) == 1  # the output travelled under its own key


def test_invalid_utf8_fails_the_job_and_the_worker_keeps_serving(client: Client) -> None:
    with pytest.raises(InvalidJob, match="not valid UTF-8") as err:
        client.infer("text", {"x": np.array([b"ok", b"\xff\xfe"], dtype=object)}, timeout_s=30)
    assert client.job(err.value.job_id).status() == "failed"
    assert list(client.infer("text", {"x": np.array(["still serving"])}, timeout_s=30)["y"]) == [b"still serving"]


def test_mixed_element_types_are_refused_before_submit(client: Client) -> None:
    with pytest.raises(InvalidInput, match="str or bytes"):
        client.submit("text", {"x": np.array(["a", 1], dtype=object)})


@pytest.mark.parametrize(
    ("count", "data", "message"),
    [
        (1, struct.pack("<I", 10) + b"short", "runs past the end"),
        (2, struct.pack("<I", 1) + b"a" + b"\x00\x00", "ends inside a length prefix"),
        (2, struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + b"extra", "trailing bytes"),
    ],
)
def test_badly_framed_bytes_data_gets_a_failure_naming_the_problem(
    client: Client, r: redis.Redis, count: int, data: bytes, message: str
) -> None:
    job_id = str(uuid.uuid4())
    job = job_envelope(
        job_id=job_id,
        model="text",
        version=None,
        inputs=[{"name": "x", "datatype": "BYTES", "shape": [count], "data": data}],
    )
    r.set(keys.state(job_id), b"queued", ex=60)
    r.lpush(keys.queue("text"), celery_message(job, queue=keys.queue("text")))
    with pytest.raises(InvalidJob, match=message):
        client.job(job_id).result(timeout_s=30)
    assert list(client.infer("text", {"x": np.array(["fine"])}, timeout_s=30)["y"]) == [b"fine"]


async def test_bytes_from_the_async_client(redis_url: str, worker: WorkerProcess) -> None:
    async with AsyncClient(redis_url) as c:
        out = await c.infer("text", {"x": np.array(["async", "ünïcode"], dtype=object)}, timeout_s=30)
        assert [b.decode() for b in out["y"]] == ["async", "ünïcode"]
        with pytest.raises(InvalidJob, match="UTF-8"):
            await c.infer("text", {"x": np.array([b"\x80"], dtype=object)}, timeout_s=30)
