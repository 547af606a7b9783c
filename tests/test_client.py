"""The client against a real Redis, every behaviour run by both clients (``Client`` and
``AsyncClient``, see tests/clients.py). The worker side is tests/simfleet.py: it answers through
the same Redis Functions as the real workers, so these tests pin the client to the contract
(docs/PROTOCOL.md) without depending on a worker; tests/test_e2e.py runs real workers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from icow import keys
from icow.client import AsyncClient, Client
from icow.errors import (
    InvalidInput,
    InvalidJob,
    JobCancelled,
    JobNotFound,
    JobTimeout,
    ModelNotFound,
    QueueFull,
)

from .clients import KINDS, is_bulk, is_job, make_client
from .simfleet import SimWorker

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(kind: str, redis_url: str) -> Iterator[Any]:
    made: list[Any] = []

    def connect(url: str = redis_url, **options: Any) -> Any:
        made.append(make_client(kind, url, **options))
        return made[-1]

    yield connect
    for c in made:
        c.close()


@pytest.fixture
def client(connect: Any) -> Any:
    return connect()


def _model() -> str:
    return f"sim-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sim(redis_url: str) -> Iterator[SimWorker]:
    """A worker that runs every job (y = 2 x) and answers cancel requests."""
    w = SimWorker(redis_url, _model()).start()
    yield w
    w.stop()


@pytest.fixture
def idle(redis_url: str) -> Iterator[SimWorker]:
    """A live worker that answers cancel requests but leaves jobs queued for the test to take."""
    w = SimWorker(redis_url, _model()).start(run_jobs=False)
    yield w
    w.stop()


# -- submit and wait


def test_infer_returns_the_outputs_by_name(client: Any, sim: SimWorker) -> None:
    out = client.infer(sim.model, {"x": X}, timeout_s=10)
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], X * 2)


def test_submit_returns_a_handle_at_once_and_result_blocks_until_the_answer(client: Any, sim: SimWorker) -> None:
    job = client.submit(sim.model, {"x": X})
    assert is_job(job) and job.model == sim.model and job.cancel_token
    assert job.status() in ("queued", "running", "succeeded")
    np.testing.assert_array_equal(job.result(timeout_s=10)["y"], X * 2)
    assert job.status() == "succeeded" and job.done()


def test_every_job_names_the_clients_reply_list_fire_and_forget_included(client: Any, idle: SimWorker) -> None:
    job = client.submit(idle.model, {"x": X}, deadline_s=30, result_ttl_s=60)
    taken = idle.take()
    assert taken is not None and taken["id"] == job.id
    assert taken["reply_to"] == client.reply_key == keys.reply(client.client_id) and keys.is_reply(taken["reply_to"])
    assert taken["ttl"] == 60 and taken["deadline"] is not None and taken["version"] is None


def test_a_version_and_a_priority_choose_the_queue_list(client: Any, redis_url: str, r: redis.Redis) -> None:
    w = SimWorker(redis_url, _model(), version=2)
    w.publish()
    try:
        client.submit(w.model, {"x": X}, version=2, priority=9)
        client.submit(w.model, {"x": X}, priority=4)
        assert r.llen(f"icow:q:{w.model}@2\x06\x169") == 1  # pinned to version 2, priority step 9
        assert r.llen(f"icow:q:{w.model}\x06\x163") == 1  # any live version, priority step 3
        with pytest.raises(ModelNotFound, match="version 1"):
            client.submit(w.model, {"x": X}, version=1)
    finally:
        w.withdraw()
        w.r.close()


def test_large_tensors_travel_under_their_own_keys_both_ways(client: Any, idle: SimWorker, r: redis.Redis) -> None:
    big = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)  # 1.2 MB
    job = client.submit(idle.model, {"x": big}, result_ttl_s=120)
    taken = idle.take()
    assert taken is not None
    [ref] = [t["ref"] for t in taken["inputs"]]
    assert keys.is_input_blob(ref) and 0 < r.ttl(ref) <= 120
    assert idle.claim(taken)
    idle.success(taken, idle.handler(idle.inputs_of(taken)))
    assert r.exists(ref) == 0 and r.exists(keys.output_blob(job.id, 0)) == 1
    np.testing.assert_array_equal(job.result(timeout_s=10)["y"], big * 2)


def test_bulk_chunks_always_travel_under_input_keys_and_come_back_in_sample_order(client: Any, sim: SimWorker) -> None:
    xs = np.arange(40, dtype=np.float32).reshape(10, 4)
    bulk = client.submit_bulk(sim.model, {"x": xs}, samples_per_job=3)
    assert is_bulk(bulk) and len(bulk.jobs) == 4 and bulk.samples == 10
    np.testing.assert_array_equal(bulk.result(timeout_s=10)["y"], xs * 2)
    assert bulk.progress() == (4, 4)
    assert all("ref" in t and "data" not in t for job in sim.taken for t in job["inputs"])
    assert all(job["_priority"] == 6 for job in sim.taken)  # batch priority
    again = client.bulk(bulk.id)
    np.testing.assert_array_equal(again.result(timeout_s=10)["y"], xs * 2)


def test_submit_many_queues_in_chunks_and_as_completed_yields_each_job_once(client: Any, sim: SimWorker) -> None:
    jobs = client.submit_many(sim.model, [{"x": np.full((1, 4), i, np.float32)} for i in range(30)], chunk=7)
    seen = {job.id: float(job.result()["y"][0, 0]) for job in client.as_completed(jobs, timeout_s=10)}
    assert sorted(seen.values()) == [2.0 * i for i in range(30)]


def test_as_completed_mixes_own_and_reattached_jobs_and_stops_at_its_timeout(
    client: Any, connect: Any, sim: SimWorker, idle: SimWorker
) -> None:
    done = client.submit_many(sim.model, [{"x": X}] * 3)
    for job in done:
        job.result(timeout_s=10)
    other = connect()
    reattached = [other.job(job.id) for job in done]
    fresh = other.submit(sim.model, {"x": X})
    assert {j.id for j in other.as_completed([*reattached, fresh], timeout_s=10)} == {*(j.id for j in done), fresh.id}
    stuck = other.submit(idle.model, {"x": X})
    with pytest.raises(JobTimeout, match="1 jobs not finished"):
        list(other.as_completed([stuck], timeout_s=0.3))


# -- refusals at submit


def test_a_model_no_live_worker_serves_is_refused_and_nothing_is_queued(client: Any, r: redis.Redis) -> None:
    name = _model()
    before = set(r.keys("icow:in:*"))
    with pytest.raises(ModelNotFound, match=f"no live worker serves model '{name}'"):
        client.submit(name, {"x": np.zeros(100_000, np.float32)})  # with an input key
    assert r.llen(keys.queue(name)) == 0 and set(r.keys("icow:in:*")) == before


def test_require_published_false_queues_for_a_fleet_not_up_yet(connect: Any, r: redis.Redis) -> None:
    name = _model()
    client = connect(require_published=False)
    job = client.submit(name, {"x": X})
    assert r.llen(keys.queue(name)) == 1 and job.status() == "queued"
    r.delete(keys.queue(name))


def test_a_full_queue_refuses_with_queue_full(client: Any, idle: SimWorker, r: redis.Redis) -> None:
    r.hset(keys.LIMITS, idle.model, 3)
    try:
        client.submit(idle.model, {"x": X})
        with pytest.raises(QueueFull) as info:
            client.submit_many(idle.model, [{"x": X}] * 4)
        assert len(info.value.queued) == 2 and info.value.limit == 3 and info.value.depth == 3
        assert all(is_job(j) for j in info.value.queued)
        with pytest.raises(QueueFull):
            client.submit(idle.model, {"x": X})
        assert r.llen(keys.queue(idle.model)) == 3
    finally:
        r.hdel(keys.LIMITS, idle.model)
        r.delete(keys.queue(idle.model))


# -- status, re-attach, expiry


def test_status_walks_from_queued_to_running_to_succeeded(client: Any, idle: SimWorker) -> None:
    job = client.submit(idle.model, {"x": X})
    assert job.status() == "queued"
    taken = idle.take()
    assert taken is not None and idle.claim(taken)
    assert client.job(job.id).status() == "running"
    idle.success(taken, {"y": X})
    assert client.job(job.id).status() == "succeeded"
    np.testing.assert_array_equal(job.result(timeout_s=10)["y"], X)


def test_reattach_by_id_from_another_client_waits_for_the_published_result(
    client: Any, connect: Any, idle: SimWorker
) -> None:
    job = client.submit(idle.model, {"x": X})
    other = connect()
    again = other.job(job.id)
    assert again.cancel_token is None and again.status() == "queued"
    answer = threading.Timer(0.3, lambda: idle.run(idle.take()))  # answered while `again` waits
    answer.start()
    try:
        np.testing.assert_array_equal(again.result(timeout_s=10)["y"], X * 2)
    finally:
        answer.join()
    assert connect().job(job.id).result(timeout_s=1)["y"].shape == (2, 4)  # answered before this wait


def test_failures_are_typed_remote_errors_carrying_the_job_id(client: Any, idle: SimWorker) -> None:
    job = client.submit(idle.model, {"x": X})
    taken = idle.take()
    assert taken is not None
    idle.failure(taken, "InvalidJob", "input 'x' must be FP64, got FP32")
    with pytest.raises(InvalidJob, match="must be FP64") as info:
        job.result(timeout_s=10)
    assert info.value.job_id == job.id and job.status() == "failed"


def test_an_expired_result_is_job_not_found(client: Any, idle: SimWorker, r: redis.Redis) -> None:
    job = client.submit(idle.model, {"x": X})
    idle.run(idle.take())
    r.delete(keys.result(job.id))  # as its TTL would; the 'done' record outlives it
    with pytest.raises(JobNotFound, match="expired"):
        client.job(job.id).status()
    with pytest.raises(JobNotFound, match="expired"):
        client.job(job.id).result(timeout_s=5)


def test_an_id_nobody_submitted_reads_queued_and_its_wait_ends_in_job_timeout(client: Any) -> None:
    unknown = client.job(str(uuid.uuid4()))
    assert unknown.status() == "queued"  # no record: a client cannot tell it from a queued job
    with pytest.raises(JobTimeout):
        unknown.result(timeout_s=0.3)


# -- cancel


def test_cancel_a_queued_job_and_every_waiter_learns_it(client: Any, connect: Any, idle: SimWorker) -> None:
    job = client.submit(idle.model, {"x": X})
    assert job.cancel(timeout_s=10) is True
    with pytest.raises(JobCancelled):
        job.result(timeout_s=5)
    with pytest.raises(JobCancelled):
        connect().job(job.id).result(timeout_s=5)
    assert job.status() == "failed"
    taken = idle.take()  # a worker that takes it later skips it
    assert taken is not None and not idle.claim(taken)
    assert job.cancel(timeout_s=10) is False  # already answered


def test_cancel_a_running_job_is_false_and_its_result_stands(client: Any, idle: SimWorker) -> None:
    job = client.submit(idle.model, {"x": X})
    taken = idle.take()
    assert taken is not None and idle.claim(taken)
    assert job.cancel(timeout_s=10) is False
    idle.success(taken, idle.handler(idle.inputs_of(taken)))
    np.testing.assert_array_equal(job.result(timeout_s=10)["y"], X * 2)


def test_a_cancel_from_another_process_wakes_the_waiter_by_its_bell(
    kind: str, client: Any, redis_url: str, idle: SimWorker, r: redis.Redis
) -> None:
    job = client.submit(idle.model, {"x": X})

    def cancel_elsewhere() -> None:
        with Client(redis_url) as other:  # another client, as another process would be
            assert other.job(job.id, cancel_token=job.cancel_token).cancel(timeout_s=10) is True

    canceller = threading.Timer(0.3, cancel_elsewhere)
    canceller.start()
    try:
        with pytest.raises(JobCancelled):
            job.result(timeout_s=30)
    finally:
        canceller.join()
    assert r.exists(keys.bell(job.id)) == 0  # the waiter woke by popping the bell, not at a slice's end


def test_only_the_token_holder_may_cancel(client: Any, connect: Any, idle: SimWorker) -> None:
    job = client.submit(idle.model, {"x": X})
    with pytest.raises(InvalidInput, match="no cancel token"):
        connect().job(job.id).cancel()
    with pytest.raises(InvalidInput, match="does not belong"):
        connect().job(job.id, cancel_token="0" * 32)
    mine = client.submit(idle.model, {"x": X}, job_id=f"custom-{uuid.uuid4()}")
    assert mine.cancel_token is None
    with pytest.raises(InvalidInput, match=r"job_id=\.\.\. cannot be cancelled"):
        mine.cancel()


# -- models, close


def test_models_and_a_models_signature(client: Any, sim: SimWorker) -> None:
    assert client.models()[sim.model] == [1]
    info = client.model(sim.model)
    assert info.version == 1 and [(t.name, t.datatype, t.shape) for t in info.inputs] == [("x", "FP32", (-1, 4))]


def test_close_deletes_the_clients_reply_list(connect: Any, sim: SimWorker, r: redis.Redis) -> None:
    client = connect()
    client.submit(sim.model, {"x": X})  # fire-and-forget: nobody takes its reply from the list
    for _ in range(200):
        if r.exists(client.reply_key):
            break
        time.sleep(0.05)
    assert r.exists(client.reply_key) == 1
    client.close()
    assert r.exists(client.reply_key) == 0


# -- many callers on one client


def test_sixteen_threads_share_one_sync_client(redis_url: str, sim: SimWorker) -> None:
    with Client(redis_url) as client:
        errors: list[BaseException] = []

        def caller(i: int) -> None:
            try:
                for n in range(10):
                    x = np.full((1, 4), i * 100 + n, np.float32)
                    np.testing.assert_array_equal(client.infer(sim.model, {"x": x}, timeout_s=30)["y"], x * 2)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)


async def test_many_coroutines_share_one_async_client(redis_url: str, sim: SimWorker) -> None:
    async with AsyncClient(redis_url) as client:

        async def caller(i: int) -> None:
            x = np.full((1, 4), i, np.float32)
            np.testing.assert_array_equal((await client.infer(sim.model, {"x": x}, timeout_s=30))["y"], x * 2)

        await asyncio.gather(*(caller(i) for i in range(64)))
