"""Backpressure: a model's backlog is bounded, and a full queue refuses jobs with QueueFull.

The limit is ``max_queue`` in the model's config.toml (or the fleet default ``ICOW_MAX_QUEUE``);
workers publish it to ``icow:limits`` and ``FCALL icow_submit`` checks it atomically with the
LPUSH. These tests run a real Redis of their own and real worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from icow import functions, keys
from icow.cli.fleet import LocalRedis
from icow.client import AsyncClient, Client
from icow.errors import InvalidInput, QueueFull
from icow.workers import samples
from icow.workers.repository import ModelConfig

from .conftest import WorkerProcess

LIMIT = 3


@pytest.fixture(scope="module")
def bp_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bp-repo")
    samples.scale(root / "bounded" / "1" / "model.onnx", 2.0)
    (root / "bounded" / "config.toml").write_text(f"max_queue = {LIMIT}\n")
    samples.identity(root / "free" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def bp_redis(bp_repo: Path) -> Iterator[LocalRedis]:
    """A Redis whose models and limits were published by a worker that then stopped, so
    nothing drains the queues while a test fills them (clients queue with
    ``require_published=False``: no worker is live)."""
    server = LocalRedis()
    w = WorkerProcess(bp_repo, server.url, f"bp-publisher-{os.getpid()}@local", env={"ICOW_MAX_QUEUE": "50"})
    w.stop()
    yield server
    server.stop()


@pytest.fixture
def r(bp_redis: LocalRedis) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(bp_redis.url)
    for q in (*keys.queue_lists(keys.queue("bounded")), *keys.queue_lists(keys.queue("free"))):
        conn.delete(q)
    yield conn
    conn.close()


def backlog(r: redis.Redis, model: str) -> int:
    return sum(int(r.llen(q)) for q in keys.queue_lists(keys.queue(model)))


def connect(server: LocalRedis) -> Client:
    return Client(server.url, require_published=False)


def test_workers_publish_each_models_limit_and_the_fleet_default(r: redis.Redis) -> None:
    assert r.hgetall(keys.LIMITS) == {b"bounded": str(LIMIT).encode(), b"free": b"50"}


def test_a_full_queue_refuses_the_job_and_queues_nothing(bp_redis: LocalRedis, r: redis.Redis) -> None:
    x = np.ones((1, 2), np.float32)
    with connect(bp_redis) as c:
        accepted = [c.submit("bounded", {"x": x}) for _ in range(LIMIT)]
        assert [j.status() for j in accepted] == ["queued"] * LIMIT
        big = np.ones((1, 100_000), np.float32)  # 400 KB: travels under an input key
        with pytest.raises(QueueFull, match="limit is 3") as err:
            c.submit("bounded", {"x": big}, job_id="refused-job")
    assert (err.value.model, err.value.depth, err.value.limit) == ("bounded", LIMIT, LIMIT)
    assert backlog(r, "bounded") == LIMIT
    assert r.keys("icow:in:*") == []  # the refused job's input key was deleted with it


def test_every_priority_list_counts_towards_the_limit(bp_redis: LocalRedis, r: redis.Redis) -> None:
    with connect(bp_redis) as c:
        for priority in (0, 5, 9):
            c.submit("bounded", {"x": np.ones((1, 2), np.float32)}, priority=priority)
        with pytest.raises(QueueFull):
            c.submit("bounded", {"x": np.ones((1, 2), np.float32)}, priority=3)
    assert [r.llen(q) for q in keys.queue_lists(keys.queue("bounded"))] == [1, 1, 0, 1]


def test_submit_many_queues_up_to_the_limit_and_reports_what_was_queued(bp_redis: LocalRedis, r: redis.Redis) -> None:
    batch = [{"x": np.full((1, 2), i, np.float32)} for i in range(7)]
    with connect(bp_redis) as c:
        c.submit("bounded", batch[0])
        with pytest.raises(QueueFull) as err:
            c.submit_many("bounded", batch, chunk=2)
        queued = err.value.queued
        assert len(queued) == LIMIT - 1  # the first two of the batch, in order
        assert all(j.status() == "queued" for j in queued)
    assert backlog(r, "bounded") == LIMIT


def test_models_under_their_limit_are_not_slowed_or_refused(bp_redis: LocalRedis, r: redis.Redis) -> None:
    with connect(bp_redis) as c:
        jobs = c.submit_many("free", [{"x": np.ones(3, np.float32)} for _ in range(50)], chunk=16)
        with pytest.raises(QueueFull, match="'free' already has 50 jobs waiting"):
            c.submit("free", {"x": np.ones(3, np.float32)})
    assert len(jobs) == 50 and backlog(r, "free") == 50


def test_a_draining_queue_accepts_jobs_again_and_queued_jobs_are_served(
    bp_repo: Path, bp_redis: LocalRedis, r: redis.Redis
) -> None:
    with connect(bp_redis) as c:
        jobs = [c.submit("bounded", {"x": np.full((1, 2), i, np.float32)}) for i in range(LIMIT)]
        with pytest.raises(QueueFull):
            c.submit("bounded", {"x": np.ones((1, 2), np.float32)})
        w = WorkerProcess(bp_repo, bp_redis.url, f"bp-drain-{os.getpid()}@local")
        try:
            assert [float(j.result(timeout_s=30)["y"][0, 0]) for j in jobs] == [0.0, 2.0, 4.0]
            assert float(c.infer("bounded", {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0]) == 2.0
        finally:
            w.stop()


async def test_async_client_refuses_the_same_way(bp_redis: LocalRedis, r: redis.Redis) -> None:
    async with AsyncClient(bp_redis.url, require_published=False) as c:
        for _ in range(LIMIT - 1):
            await c.submit("bounded", {"x": np.ones((1, 2), np.float32)})
        with pytest.raises(QueueFull) as err:
            await c.submit_many("bounded", [{"x": np.ones((1, 2), np.float32)}] * 4)
        assert len(err.value.queued) == 1
        with pytest.raises(QueueFull):
            await c.submit("bounded", {"x": np.ones((1, 2), np.float32)})
    assert backlog(r, "bounded") == LIMIT


def test_the_functions_are_reloaded_after_redis_forgets_them(bp_redis: LocalRedis, r: redis.Redis) -> None:
    with connect(bp_redis) as c:
        c.submit("free", {"x": np.ones(3, np.float32)})
        r.function_delete(functions.LIBRARY_NAME)  # a Redis that lost its data
        c.submit("free", {"x": np.ones(3, np.float32)})  # this user may load them: it does
    assert backlog(r, "free") == 2


def test_max_queue_in_config_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("max_queue = 100\n")
    assert ModelConfig.load(path).max_queue == 100
    assert ModelConfig.load(tmp_path / "absent.toml").max_queue == 0
    path.write_text("max_queue = -1\n")
    with pytest.raises(InvalidInput, match="max_queue"):
        ModelConfig.load(path)
