"""Redis outages: callers get BrokerUnavailable within their timeout, never a hang; workers
reconnect when Redis returns; with persistence on, queued jobs survive a Redis restart.

Every test here runs its own redis-server (and kills it), never the session's.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from icow.cli.fleet import LocalRedis
from icow.client import AsyncClient, Client
from icow.errors import BrokerUnavailable

from .conftest import WorkerProcess

X = np.ones((1, 2), np.float32)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalRedis]:
    s = LocalRedis(persist=True, data_dir=tmp_path / "redis-data")
    yield s
    s.stop()


def restart(old: LocalRedis, *, crash: bool) -> LocalRedis:
    """The same Redis again: same port, same data folder (its append-only file)."""
    old.kill() if crash else old.stop()
    return LocalRedis(port=old.port, persist=True, data_dir=old.dir)


def test_submit_while_redis_is_down_raises_broker_unavailable_quickly() -> None:
    down = LocalRedis()
    down.stop()
    with Client(down.url, require_published=False, connect_timeout_s=1.0) as c:
        with pytest.raises(BrokerUnavailable, match="Redis is unavailable while submitting a job"):
            c.submit("scale", {"x": X})
        with pytest.raises(BrokerUnavailable):
            c.infer("scale", {"x": X}, timeout_s=30)
        with pytest.raises(BrokerUnavailable):
            c.models()


def test_a_result_wait_ends_with_broker_unavailable_when_redis_dies(server: LocalRedis) -> None:
    with Client(server.url, require_published=False) as c:
        job = c.submit("nobody-serves-this", {"x": X})
        threading.Timer(0.5, server.kill).start()
        with pytest.raises(BrokerUnavailable, match="waiting for a result"):
            job.result(timeout_s=30)  # not JobTimeout: the outage is reported, not waited out
        with pytest.raises(BrokerUnavailable):
            job.status()


def test_a_reattached_wait_and_as_completed_end_the_same_way(server: LocalRedis) -> None:
    with Client(server.url, require_published=False) as c:
        jobs = c.submit_many("nobody-serves-this", [{"x": X}] * 3)
        again = c.job(jobs[0].id)  # waits on pub/sub instead of the reply list
        threading.Timer(0.5, server.kill).start()
        with pytest.raises(BrokerUnavailable):
            again.result(timeout_s=30)
        with pytest.raises(BrokerUnavailable):
            list(c.as_completed(jobs[1:], timeout_s=30))


async def test_async_client_result_wait_ends_with_broker_unavailable(server: LocalRedis) -> None:
    async with AsyncClient(server.url, require_published=False) as c:
        job = await c.submit("nobody-serves-this", {"x": X})
        asyncio.get_running_loop().call_later(0.5, server.kill)
        with pytest.raises(BrokerUnavailable):
            await job.result(timeout_s=30)  # not JobTimeout: the outage is reported, not waited out


def test_worker_reconnects_and_serves_after_redis_restarts_empty(model_repo: Path, tmp_path: Path) -> None:
    server = LocalRedis()  # no persistence: it comes back empty
    w = WorkerProcess(model_repo, server.url, f"outage-{os.getpid()}@local")
    try:
        with Client(server.url, require_published=False) as c:
            assert float(c.infer("scale", {"x": X}, timeout_s=30)["y"][0, 0]) == 3.0
            server.kill()
            time.sleep(3)  # the outage under test: Redis stays away while the worker keeps retrying
            server = LocalRedis(port=server.port)
            t0 = time.monotonic()
            # The same client object: its connections reconnect on their own.
            job = c.submit("scale", {"x": X})
            assert float(job.result(timeout_s=60)["y"][0, 0]) == 3.0
            print(f"served again {time.monotonic() - t0:.1f} s after Redis came back")
            assert w.proc.poll() is None
    finally:
        w.stop()
        server.stop()


@pytest.mark.parametrize("crash", [False, True], ids=["shutdown", "sigkill"])
def test_jobs_queued_before_a_redis_restart_are_served_after_it(
    model_repo: Path, server: LocalRedis, crash: bool
) -> None:
    publisher = WorkerProcess(model_repo, server.url, f"outage-pub-{os.getpid()}@local")
    publisher.stop()  # models published; nobody consumes while jobs wait
    with Client(server.url, require_published=False) as c:  # no live worker: queue all the same
        jobs = c.submit_many("scale", [{"x": np.full((1, 2), i, np.float32)} for i in range(20)])
    if crash:
        time.sleep(1.5)  # under test: appendfsync everysec, a crash loses at most the last second of writes
    server = restart(server, crash=crash)
    w = WorkerProcess(model_repo, server.url, f"outage-after-{os.getpid()}@local")
    try:
        with Client(server.url) as c:
            got = [float(c.job(j.id).result(timeout_s=30)["y"][0, 0]) for j in jobs]
        assert got == [3.0 * i for i in range(20)]
    finally:
        w.stop()
        server.stop()
