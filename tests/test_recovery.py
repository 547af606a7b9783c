"""Recovery without people: a Redis that restarts keeps the fleet's jobs (AOF, as `icow up`
runs it), and a Redis that lost everything gets the models, limits and functions back from the
workers' heartbeats, without restarting a worker."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from icow import keys
from icow.cli.fleet import LocalRedis
from icow.client import Client
from icow.errors import IcowError
from icow.workers import samples

from .conftest import WorkerProcess


@pytest.fixture
def scale_repo(tmp_path: Path) -> Path:
    samples.scale(tmp_path / "repo" / "scale" / "1" / "model.onnx", 2.0)
    return tmp_path / "repo"


def _await(check: object, what: str, timeout_s: float = 60.0) -> None:
    """Poll a condition that depends on the workers' next heartbeats (2 s apart)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (IcowError, redis.exceptions.RedisError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def test_a_local_fleets_redis_killed_under_load_keeps_every_acknowledged_job(scale_repo: Path, tmp_path: Path) -> None:
    data = tmp_path / "redis-data"
    server = LocalRedis(persist=True, data_dir=data)
    port = server.port
    w = WorkerProcess(scale_repo, server.url, f"aof-{os.getpid()}@local", extra=["--lease", "4"])
    acknowledged: list[tuple[str, float]] = []
    refused = 0
    stop = threading.Event()

    def submit_until_stopped() -> None:
        nonlocal refused
        with Client(server.url, require_published=False) as c:
            i = 0
            while not stop.is_set():
                x = np.full((1, 2), float(i), np.float32)
                try:
                    acknowledged.append((c.submit("scale", {"x": x}).id, float(i)))
                except IcowError:
                    refused += 1  # Redis is down: not acknowledged, the caller knows
                    time.sleep(0.05)
                i += 1

    submitter = threading.Thread(target=submit_until_stopped)
    submitter.start()
    try:
        _await(lambda: len(acknowledged) >= 200, "200 jobs acknowledged")
        server.kill()  # SIGKILL under load: no shutdown, no final AOF rewrite
        server = LocalRedis(persist=True, data_dir=data, port=port)
        _await(lambda: len(acknowledged) >= 400, "jobs acknowledged after the restart")
        stop.set()
        submitter.join()
        lost = []
        with Client(server.url) as c:
            for job_id, value in acknowledged:
                try:
                    out = c.job(job_id).result(timeout_s=60)
                except IcowError as exc:
                    lost.append((job_id, exc))
                    continue
                assert float(out["y"][0, 0]) == 2 * value
        assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged jobs lost: {lost[:3]}"
    finally:
        stop.set()
        submitter.join()
        w.stop()
        server.stop()


def test_models_limits_and_functions_come_back_after_redis_lost_its_data(scale_repo: Path) -> None:
    server = LocalRedis()  # no persistence: a restart loses everything
    port = server.port
    (scale_repo / "scale" / "config.toml").write_text("max_queue = 50\n")
    w = WorkerProcess(scale_repo, server.url, f"lost-{os.getpid()}@local")
    try:
        server.kill()
        server = LocalRedis(port=port)
        r = redis.Redis.from_url(server.url)
        try:
            assert r.exists(keys.MODELS) == 0 and not r.function_list()  # Redis forgot it all
            _await(lambda: r.smembers(keys.MODELS) == {b"scale"}, "the worker republished its model")
            _await(lambda: r.hget(keys.LIMITS, "scale") == b"50", "the worker republished its limit")
            _await(lambda: bool(r.function_list(library="icow")), "the worker reinstalled ICOW's functions")
        finally:
            r.close()
        with Client(server.url) as c:  # a new client sees the models at once: no ModelNotFound
            assert c.models() == {"scale": [1]}
            assert float(c.infer("scale", {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0]) == 2.0
    finally:
        w.stop()
        server.stop()
