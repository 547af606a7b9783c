"""End to end: client -> real Redis -> a real worker process -> result by job id."""

from __future__ import annotations

import base64
import json
import time
import uuid

import numpy as np
import pytest
import redis

from icow import keys
from icow.client import AsyncClient, Client
from icow.codec import packb
from icow.errors import InvalidJob, JobNotFound, JobTimeout, ModelNotFound
from icow.workers import samples

from .conftest import WorkerProcess, run_python


def test_infer_returns_named_outputs_equal_to_the_model(client: Client) -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = client.infer("mlp", {"x": x}, timeout_s=30)
    assert list(out) == ["y"]
    assert out["y"].dtype == np.float32 and out["y"].shape == (5, 3)
    np.testing.assert_allclose(out["y"], samples.mlp_reference(x), atol=1e-5)


def test_several_inputs_and_outputs_of_different_datatypes(client: Client) -> None:
    out = client.infer(
        "multi",
        {
            "x": np.array([[1, 2, 3], [4, 5, 6]], np.float32),
            "ids": np.array([[1, 2], [3, 4]], np.int64),
            "mask": np.array([True, False]),
        },
        timeout_s=30,
    )
    np.testing.assert_array_equal(out["total"], np.array([6, 15], np.float32))
    np.testing.assert_array_equal(out["doubled"], np.array([[2, 4], [6, 8]], np.int64))
    np.testing.assert_array_equal(out["flipped"], [False, True])
    assert out["half"].dtype == np.float16
    np.testing.assert_array_equal(out["half"], np.array([[0.5, 1, 1.5], [2, 2.5, 3]], np.float16))


def test_select_outputs(client: Client) -> None:
    out = client.infer(
        "multi",
        {
            "x": np.ones((1, 3), np.float32),
            "ids": np.ones((1, 2), np.int64),
            "mask": np.array([True]),
        },
        outputs=["doubled"],
        timeout_s=30,
    )
    assert list(out) == ["doubled"]


def test_latest_version_by_default_and_pinned_versions(client: Client) -> None:
    x = np.ones((1, 2), np.float32)
    assert client.infer("scale", {"x": x}, timeout_s=30)["y"][0, 0] == 3.0
    assert client.infer("scale", {"x": x}, version=1, timeout_s=30)["y"][0, 0] == 2.0
    assert client.infer("scale", {"x": x}, version=2, timeout_s=30)["y"][0, 0] == 3.0


def test_model_loaded_on_first_use_when_not_preloaded(client: Client) -> None:
    assert client.infer("lazy", {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0] == 5.0


def test_fire_and_forget_then_reattach_by_id_from_another_process(client: Client, redis_url: str) -> None:
    job = client.submit("scale", {"x": np.full((1, 2), 7, np.float32)})
    code = (
        "from icow.client import Client\n"
        f"c = Client({redis_url!r})\n"
        f"print(float(c.job({job.id!r}).result(timeout_s=30)['y'][0, 0]), c.job({job.id!r}).status())\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["21.0", "succeeded"]


def test_status_and_result_read_by_a_second_client(client: Client, redis_url: str) -> None:
    job = client.submit("mlp", {"x": np.zeros((1, 4), np.float32)})
    assert job.status() in ("queued", "running", "succeeded")
    job.result(timeout_s=30)
    assert job.status() == "succeeded" and job.done()
    with Client(redis_url) as other:
        again = other.job(job.id)
        assert again.status() == "succeeded"
        np.testing.assert_array_equal(again.result(timeout_s=1)["y"], job.result()["y"])


def test_result_published_before_the_waiter_subscribed_is_not_missed(client: Client, redis_url: str) -> None:
    job = client.submit("mlp", {"x": np.zeros((1, 4), np.float32)})
    job.result(timeout_s=30)
    with Client(redis_url) as late:
        assert late.job(job.id).result(timeout_s=5)["y"].shape == (1, 3)


def test_results_expire_after_their_ttl(client: Client, r: redis.Redis) -> None:
    job = client.submit("mlp", {"x": np.zeros((1, 4), np.float32)}, result_ttl_s=1)
    job.result(timeout_s=30)
    assert r.pttl(keys.result(job.id)) <= 1000  # the caller's TTL (or already expired: -2)
    deadline = time.monotonic() + 30
    while r.exists(keys.result(job.id)):  # Redis expires it
        assert time.monotonic() < deadline, "the result outlived its TTL"
        time.sleep(0.05)
    with pytest.raises(JobNotFound):
        client.job(job.id).status()
    with pytest.raises(JobNotFound):
        client.job(job.id).result(timeout_s=1)


def test_default_result_ttl_is_one_day(client: Client, r: redis.Redis) -> None:
    job = client.submit("mlp", {"x": np.zeros((1, 4), np.float32)})
    job.result(timeout_s=30)
    assert 86000 < r.ttl(keys.result(job.id)) <= 86400


def test_an_unknown_job_id_reads_queued_and_its_wait_times_out(client: Client) -> None:
    unknown = client.job(str(uuid.uuid4()))  # no record: a client cannot tell it from a queued job
    assert unknown.status() == "queued"
    with pytest.raises(JobTimeout):
        unknown.result(timeout_s=1)


def test_bulk_submission_and_results_as_they_complete(client: Client) -> None:
    batch = [{"x": np.full((1, 2), i, np.float32)} for i in range(200)]
    jobs = client.submit_many("scale", batch, chunk=64)
    assert len({j.id for j in jobs}) == 200
    seen = {}
    for job in client.as_completed(jobs, timeout_s=60):
        seen[job.id] = float(job.result()["y"][0, 0])
    assert sorted(seen.values()) == [3.0 * i for i in range(200)]


def test_large_tensors_round_trip(client: Client, r: redis.Redis) -> None:
    x = np.random.default_rng(1).standard_normal(2_000_000).astype(np.float32)  # 8 MB
    job = client.submit("ident", {"x": x})
    y = job.result(timeout_s=60)["y"]
    np.testing.assert_array_equal(x, y)
    assert r.exists(keys.output_blob(job.id, 0)) == 1  # outputs live as long as the result


def test_metadata_without_running_a_job(client: Client) -> None:
    models = client.models()
    assert models["scale"] == [1, 2] and models["mlp"] == [1]
    info = client.model("multi")
    assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [
        ("x", "FP32", (-1, 3)),
        ("ids", "INT64", (-1, 2)),
        ("mask", "BOOL", (-1,)),
    ]
    assert [t.datatype for t in info.outputs] == ["FP32", "INT64", "BOOL", "FP16"]
    assert client.model("scale", 1).version == 1 and client.model("scale").version == 2


# -- failures: every one is a typed error for the caller, and the worker keeps serving


def test_unknown_model_is_refused_at_submit(client: Client) -> None:
    with pytest.raises(ModelNotFound, match="no live worker serves model 'nope'"):
        client.submit("nope", {"x": np.zeros(1, np.float32)})


def test_an_unserved_version_is_refused_at_submit(client: Client) -> None:
    with pytest.raises(ModelNotFound, match="no live worker serves model 'scale' version 7"):
        client.infer("scale", {"x": np.ones((1, 2), np.float32)}, version=7, timeout_s=30)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"wrong": np.ones((1, 4), np.float32)}, "missing \\['x'\\]"),
        ({"x": np.ones((1, 4), np.float32), "extra": np.ones(1, np.float32)}, "unexpected \\['extra'\\]"),
        ({"x": np.ones((1, 4), np.float64)}, "must be FP32, got FP64"),
        ({"x": np.ones((1, 5), np.float32)}, "expects \\[-1, 4\\]"),
        ({"x": np.ones(4, np.float32)}, "expects"),
    ],
)
def test_inputs_that_do_not_fit_the_model_fail_the_job(client: Client, inputs: dict, message: str) -> None:
    with pytest.raises(InvalidJob, match=message) as err:
        client.infer("mlp", inputs, timeout_s=30)
    assert err.value.job_id
    assert client.job(err.value.job_id).status() == "failed"
    assert client.infer("mlp", {"x": np.ones((1, 4), np.float32)}, timeout_s=30)["y"].shape == (1, 3)


def test_unknown_output_name_fails_the_job(client: Client) -> None:
    with pytest.raises(InvalidJob, match="no outputs"):
        client.infer("mlp", {"x": np.ones((1, 4), np.float32)}, outputs=["nope"], timeout_s=30)


def _push(r: redis.Redis, queue: str, envelope: dict) -> None:
    r.lpush(queue, json.dumps(envelope))


def _envelope(job_id: str, body: bytes, task: str = "icow.infer") -> dict:
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-msgpack",
        "headers": {"lang": "py", "task": task, "id": job_id, "root_id": job_id},
        "properties": {
            "correlation_id": job_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "icow:q:mlp"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


@pytest.mark.parametrize(
    ("body", "task", "message"),
    [
        (b"\xc1\xc1 not msgpack", "icow.infer", "could not be decoded"),
        (packb([[{"v": 1, "model": "mlp"}], {}, {}]), "icow.infer", "job id|inputs|created"),
        (packb([["just a string"], {}, {}]), "icow.infer", "job must be a map"),
        (packb([[{"v": 99}], {}, {}]), "icow.infer", "protocol version"),
        (packb([[], {}, {}]), "icow.other", "unknown task"),
    ],
)
def test_corrupt_messages_get_a_failure_result(
    client: Client, r: redis.Redis, body: bytes, task: str, message: str
) -> None:
    job_id = str(uuid.uuid4())
    _push(r, "icow:q:mlp", _envelope(job_id, body, task))
    with pytest.raises(InvalidJob, match=message):
        client.job(job_id).result(timeout_s=30)
    assert client.infer("mlp", {"x": np.ones((1, 4), np.float32)}, timeout_s=30)["y"].shape == (1, 3)


def test_waiting_past_the_timeout_raises_job_timeout(redis_url: str, model_repo, worker: WorkerProcess) -> None:
    with Client(redis_url, require_published=False) as c:
        job = c.submit("nobody-serves-this", {"x": np.ones(1, np.float32)})
        with pytest.raises(JobTimeout):
            job.result(timeout_s=0.5)
        assert job.status() == "queued"


# -- asyncio client: same surface


async def test_async_client_round_trip(redis_url: str, worker: WorkerProcess) -> None:
    async with AsyncClient(redis_url) as c:
        x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
        out = await c.infer("mlp", {"x": x}, timeout_s=30)
        np.testing.assert_allclose(out["y"], samples.mlp_reference(x), atol=1e-5)
        jobs = await c.submit_many("scale", [{"x": np.full((1, 2), i, np.float32)} for i in range(20)])
        got = sorted([float((await j.result())["y"][0, 0]) async for j in c.as_completed(jobs, timeout_s=60)])
        assert got == [3.0 * i for i in range(20)]
        job = await c.submit("mlp", {"x": x})
        again = c.job(job.id)
        assert (await again.result(timeout_s=30))["y"].shape == (3, 4 - 1)
        assert await again.status() == "succeeded"
        assert (await c.models())["scale"] == [1, 2]
        assert (await c.model("mlp")).inputs[0].shape == (-1, 4)
        with pytest.raises(InvalidJob):
            await c.infer("mlp", {"x": np.ones((1, 5), np.float32)}, timeout_s=30)
        with pytest.raises(ModelNotFound):
            await c.submit("nope", {"x": x})


async def test_async_bulk_and_reattach(redis_url: str, worker: WorkerProcess) -> None:
    xs = np.arange(20, dtype=np.float32).reshape(10, 2)
    async with AsyncClient(redis_url) as c:
        bulk = await c.submit_bulk("scale", {"x": xs}, samples_per_job=3)
        np.testing.assert_array_equal((await bulk.result(timeout_s=60))["y"], xs * 3)
        again = await c.bulk(bulk.id)
        assert await again.progress() == (4, 4)
        np.testing.assert_array_equal((await again.result(timeout_s=10))["y"], xs * 3)
