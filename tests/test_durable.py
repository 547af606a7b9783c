"""Durable submits: ``durable=True`` (per client or per call) returns from submit only once a
replica holds the job (Redis WAIT in the same round trip), else BrokerUnavailable. Real
servers: a primary and a replica under three sentinels (tests/sentinel.py); no worker needed
(``require_published=False``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from icow import functions, keys
from icow.client import AsyncClient, Client
from icow.errors import BrokerUnavailable
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
