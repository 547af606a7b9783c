"""Durable submits: ``durable=True`` (per client or per call) returns from submit only once a
replica holds the job (Redis WAIT in the same round trip), else NotDurable (a
BrokerUnavailable) naming the jobs, which ARE queued and run. Real servers: a primary and a
replica under three sentinels (tests/sentinel.py), no worker needed there
(``require_published=False``); a primary with no replica and a real worker for the jobs a
refused durable submit queued."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from icow import functions, keys
from icow.client import AsyncClient, Client
from icow.errors import BrokerUnavailable, NotDurable
from tests.conftest import WorkerProcess
from tests.sentinel import SentinelSet

X = {"x": np.ones((1, 2), np.float32)}


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    s = SentinelSet()
    with s.primary.conn() as r:
        functions.install(r)  # what the first worker does at start
    yield s
    s.stop()


def _queued_on_replica(s: SentinelSet, model: str) -> int:
    with s.replica.conn() as replica:
        return int(replica.llen(keys.queue(model)))


def test_a_durable_submit_returns_once_the_replica_holds_the_job(sentinel_set: SentinelSet) -> None:
    with Client(sentinel_set.url, durable=True, require_published=False) as client:
        client.submit("m", X)
        client.submit_many("m", [X, X])
        # No replication wait here: WAIT already saw the replica acknowledge the writes.
        assert _queued_on_replica(sentinel_set, "m") == 3


def test_without_a_replica_a_durable_submit_raises_broker_unavailable(sentinel_set: SentinelSet) -> None:
    sentinel_set.replica.kill()
    with Client(sentinel_set.url, require_published=False, timeout_s=3) as client:
        client.submit("m", X)  # not durable: the primary alone is enough
        with pytest.raises(BrokerUnavailable, match="replica"):
            client.submit("m", X, durable=True)
    with Client(sentinel_set.url, durable=True, require_published=False, timeout_s=3) as client:
        with pytest.raises(BrokerUnavailable, match="replica"):
            client.submit_many("m", [X])
        client.submit("m", X, durable=False)  # the call's choice wins over the client's


async def test_the_async_client_submits_durably_too(sentinel_set: SentinelSet) -> None:
    client = AsyncClient(sentinel_set.url, durable=True, require_published=False)
    try:
        await client.submit("a", X)
        await client.submit_many("a", [X, X])
        assert _queued_on_replica(sentinel_set, "a") == 3
        sentinel_set.replica.kill()
        with pytest.raises(BrokerUnavailable, match="replica"):
            await client.submit("a", X)
    finally:
        await client.close()


def test_not_durable_names_the_queued_jobs_under_sentinel(sentinel_set: SentinelSet) -> None:
    sentinel_set.replica.kill()
    with Client(sentinel_set.url, durable=True, require_published=False, timeout_s=3) as client:
        with pytest.raises(NotDurable, match="ARE queued") as info:
            client.submit("m", X, job_id="durable-one")
        assert info.value.job_ids == ["durable-one"] and [j.id for j in info.value.jobs] == ["durable-one"]
        assert info.value.acknowledged == 0 and info.value.replicas == 1
        with pytest.raises(NotDurable) as many:
            client.submit_many("m", [X, X, X], chunk=2)
        # The first chunk was queued and not acknowledged: the call stops there (the third job
        # was never sent), and the error names the two it queued.
        assert len(many.value.jobs) == 2 and many.value.job_ids == [j.id for j in many.value.jobs]
        # All three are queued on the primary (a worker would run them): re-attach, never resubmit.
        with sentinel_set.primary.conn() as primary:
            assert int(primary.llen(keys.queue("m"))) == 3
        assert [client.job(i).status() for i in ["durable-one", *many.value.job_ids]] == ["queued"] * 3


def test_a_refused_durable_submit_still_runs_and_its_result_can_be_awaited(
    redis_url: str, worker: WorkerProcess
) -> None:
    """A primary with no replica at all (the session's Redis): every durable submit is refused
    with NotDurable, and every job it names is answered; waiting on the handles is how a caller
    re-attaches."""
    x = np.full((1, 2), 4, np.float32)
    with Client(redis_url, durable=True, timeout_s=3) as client:
        with pytest.raises(NotDurable) as one:
            client.submit("scale", {"x": x}, version=1)
        [job] = one.value.jobs
        assert float(job.result(timeout_s=30)["y"][0, 0]) == 8.0
        with pytest.raises(NotDurable) as many:
            client.submit_many("scale", [{"x": x * i} for i in range(3)], version=1)
        got = [float(j.result(timeout_s=30)["y"][0, 0]) for j in many.value.jobs]
        assert got == [0.0, 8.0, 16.0]
    with Client(redis_url) as other:  # by id, from anywhere
        assert other.job(one.value.job_ids[0]).status() == "succeeded"


async def test_the_async_client_names_the_queued_jobs_too(redis_url: str, worker: WorkerProcess) -> None:
    x = np.full((1, 2), 2, np.float32)
    client = AsyncClient(redis_url, durable=True, timeout_s=3)
    try:
        with pytest.raises(NotDurable) as one:
            await client.submit("scale", {"x": x}, version=1)
        assert float((await one.value.jobs[0].result(timeout_s=30))["y"][0, 0]) == 4.0
        with pytest.raises(NotDurable) as many:
            await client.submit_many("scale", [{"x": x}, {"x": x}], version=1)
        assert [float((await j.result(timeout_s=30))["y"][0, 0]) for j in many.value.jobs] == [4.0, 4.0]
    finally:
        await client.close()
