"""Version routing in a mixed-version fleet and during a rolling update.

Worker A serves ``scale`` v1; worker B serves v1 and v2; then v3 appears on B only. A job
pinned to a version runs on that version; a job without one runs on the fleet's highest live
version (``icow:live:<m>``, renewed by every heartbeat); the result names the version that ran.
Nothing here sleeps for a fixed time: liveness is read from Redis, heartbeats from their keys.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import keys
from icow.client import Client, Job
from icow.codec import unpackb
from icow.errors import ModelNotFound
from icow.result import parse_meta
from icow.workers import samples

from .conftest import WorkerProcess

FACTOR = {1: 2.0, 2: 3.0, 3: 4.0}  # version -> what it multiplies by


def wait_until(pred: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll a condition on Redis until it holds (an event to await, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def live_versions(r: redis.Redis, model: str) -> set[int]:
    """Versions some live worker serves: members ``<version>:<worker>[:latest]`` of
    ``icow:live:<m>`` whose expiry (ms, server clock) has not passed."""
    sec, usec = r.time()
    now_ms = sec * 1000 + usec // 1000
    return {int(v.split(b":")[0]) for v in r.zrange(keys.live(model), now_ms, "+inf", byscore=True)}


def beat_time(r: redis.Redis, worker: str) -> float:
    raw = r.get(keys.worker(worker))
    return float(unpackb(raw)["time"]) if raw else 0.0


def ran_on(r: redis.Redis, job: Job) -> tuple[int, str]:
    """(version, worker) from the job's result meta, ``celery-task-meta-<id>``."""
    meta = parse_meta(r.get(keys.result(job.id)))
    assert meta["status"] == "SUCCESS", meta
    return int(meta["result"]["version"]), str(meta["result"]["worker"])


def check(r: redis.Redis, job: Job, i: int, version: int | None = None) -> tuple[int, str]:
    """The job succeeded (no ModelNotFound), on ``version`` if given, with that version's output."""
    y = job.result(timeout_s=60)["y"]
    ran, worker = ran_on(r, job)
    if version is not None:
        assert ran == version, f"job pinned to v{version} ran on v{ran}"
    np.testing.assert_array_equal(y, np.full((1, 2), i * FACTOR[ran], np.float32))
    return ran, worker


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Callable[[Path, str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def _start(repo: Path, tag: str) -> WorkerProcess:
        w = WorkerProcess(repo, redis_url, f"test-ver-{tag}-{os.getpid()}@local", ["--rescan", "0.2"])
        started.append(w)
        return w

    yield _start
    for w in started:
        w.stop()


def test_mixed_version_fleet_and_a_rolling_update(
    fleet: Callable[[Path, str], WorkerProcess], r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    m = f"scale{uuid.uuid4().hex[:6]}"  # the shared Redis also holds the main worker's `scale`
    repo_a, repo_b = tmp_path / "a", tmp_path / "b"
    samples.scale(repo_a / m / "1" / "model.onnx", FACTOR[1])
    samples.scale(repo_b / m / "1" / "model.onnx", FACTOR[1])
    samples.scale(repo_b / m / "2" / "model.onnx", FACTOR[2])
    x = [{"x": np.full((1, 2), i, np.float32)} for i in range(30)]

    with Client(redis_url) as c:
        a = fleet(repo_a, "a")
        wait_until(lambda: live_versions(r, m) == {1})
        assert {check(r, c.submit(m, x[i]), i)[0] for i in range(5)} == {1}  # v1 is the fleet's latest

        b = fleet(repo_b, "b")
        wait_until(lambda: live_versions(r, m) == {1, 2})
        seen_live = time.time()
        wait_until(lambda: beat_time(r, a.name) > seen_live)  # A's upkeep has seen v2 live since

        pinned1 = [c.submit(m, x[i], version=1) for i in range(30)]
        pinned2 = [c.submit(m, x[i], version=2) for i in range(30)]
        latest = [c.submit(m, x[i]) for i in range(30)]
        assert {check(r, j, i, 1)[1] for i, j in enumerate(pinned1)} <= {a.name, b.name}
        assert {check(r, j, i, 2)[1] for i, j in enumerate(pinned2)} == {b.name}
        assert {check(r, j, i) for i, j in enumerate(latest)} == {(2, b.name)}  # A stopped taking them

        # Rolling update: v3 reaches B only. Jobs keep flowing while it loads; none fails.
        samples.scale(tmp_path / "v3.onnx", FACTOR[3])
        (repo_b / m / "3").mkdir()
        os.replace(tmp_path / "v3.onnx", repo_b / m / "3" / "model.onnx")  # atomic, as `icow models push`
        during: list[Job] = []
        while 3 not in live_versions(r, m):
            during.append(c.submit(m, x[len(during) % 30]))
            during[-1].result(timeout_s=60)
            assert len(during) < 10_000, "v3 never went live"
        assert {check(r, j, i % 30)[0] for i, j in enumerate(during)} <= {2, 3}

        pinned = {v: [c.submit(m, x[i], version=v) for i in range(10)] for v in (1, 2, 3)}
        latest = [c.submit(m, x[i]) for i in range(30)]
        for v, jobs in pinned.items():
            for i, j in enumerate(jobs):
                check(r, j, i, v)
        assert {check(r, j, i) for i, j in enumerate(latest)} == {(3, b.name)}
        assert a.proc.poll() is None and b.proc.poll() is None

        # A version that no live worker serves is refused at submit: nothing is queued.
        with pytest.raises(ModelNotFound, match="version 9"):
            c.submit(m, x[0], version=9)


def test_latest_in_config_keeps_a_candidate_for_pinned_jobs_only(redis_url: str, tmp_path: Path) -> None:
    """`latest = 1` serves v2 to jobs that name it while unpinned jobs stay on v1; the setting
    takes effect at a rescan, without a restart."""

    model = f"cand{uuid.uuid4().hex[:6]}"
    samples.scale(tmp_path / model / "1" / "model.onnx", 2.0)
    samples.scale(tmp_path / model / "2" / "model.onnx", 3.0)
    w = WorkerProcess(tmp_path, redis_url, f"{model}@local", extra=["--rescan", "0.2"])
    try:
        x = np.ones((1, 2), np.float32)
        with Client(redis_url) as c:
            assert float(c.infer(model, {"x": x}, timeout_s=30)["y"][0, 0]) == 3.0  # v2 is latest
            (tmp_path / model / "config.toml").write_text("latest = 1\n")
            deadline = time.monotonic() + 30
            while float(c.infer(model, {"x": x}, timeout_s=30)["y"][0, 0]) != 2.0:  # each a real job
                assert time.monotonic() < deadline, "latest = 1 never took effect"
            assert float(c.infer(model, {"x": x}, version=2, timeout_s=30)["y"][0, 0]) == 3.0
            assert float(c.infer(model, {"x": x}, timeout_s=30)["y"][0, 0]) == 2.0
    finally:
        w.stop()
