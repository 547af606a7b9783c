"""Delivery guarantees: a killed worker's job is redone within seconds, a long job is not run
twice, results are written once, deadlines and cancellation, poison jobs are dead-lettered."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from icow import keys
from icow.client import Client
from icow.codec import unpackb
from icow.errors import InternalError, JobCancelled, JobExpired
from icow.workers import samples

from . import rawjobs
from .conftest import WorkerProcess

LEASE_S = 4


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("slowrepo")
    samples.slow(repo / "slow" / "1" / "model.onnx")
    (repo / "slow" / "config.toml").write_text("max_batch = 1\nproviders = ['cpu']\n")
    return Path(repo)


@pytest.fixture
def start(slow_repo: Path, redis_url: str) -> Iterator[Callable[[str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def _start(tag: str) -> WorkerProcess:
        w = WorkerProcess(slow_repo, redis_url, f"test-{tag}-{os.getpid()}@local", extra=["--lease", str(LEASE_S)])
        started.append(w)
        return w

    yield _start
    for w in started:
        if w.proc.poll() is None:
            w.kill()


def rows_for(client: Client, seconds: float) -> int:
    """How many rows make a `slow` job last about ``seconds`` on this machine."""
    job = client.submit("slow", {"x": np.ones((200, 1024), np.float32)})
    job.result(timeout_s=60)
    per_row = job._meta.timing.compute_s / 200
    return max(200, int(seconds / per_row))


def wait_running(client: Client, job_id: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.job(job_id).status() != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.02)


def test_a_killed_workers_job_is_redone_within_seconds(redis_url: str, start, r: redis.Redis) -> None:
    a = start("kill-a")
    with Client(redis_url) as c:
        x = np.random.default_rng(0).standard_normal((rows_for(c, 3.0), 1024)).astype(np.float32)
        job = c.submit("slow", {"x": x})
        wait_running(c, job.id)
        b = start("kill-b")
        a.kill()
        killed_at = time.monotonic()
        y = job.result(timeout_s=60)["y"]
        recovered_s = time.monotonic() - killed_at
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4)  # identity matrices
        assert job._meta.worker == b.name
        assert recovered_s < LEASE_S + 3 + 10  # lease + reaper sweep + the re-run itself
        assert int(r.get(keys.tries(job.id))) == 2  # delivered twice: the killed run and this one
        assert r.hlen(keys.runs(b.name)) == 0  # acked: nothing left in flight
        assert r.hlen(keys.runs(a.name)) == 0  # the dead worker's take went back to the queue


def test_a_job_longer_than_the_lease_is_not_run_twice(redis_url: str, start, r: redis.Redis) -> None:
    start("long-a")
    start("long-b")
    with Client(redis_url) as c:
        x = np.ones((rows_for(c, 2.5 * LEASE_S), 1024), np.float32)
        job = c.submit("slow", {"x": x})
        job.result(timeout_s=120)
        assert int(r.get(keys.tries(job.id))) == 1  # delivered once: the lease was renewed


def test_cancel_a_queued_job_but_not_a_running_one(redis_url: str, start) -> None:
    start("cancel")
    with Client(redis_url) as c:
        busy = c.submit("slow", {"x": np.ones((rows_for(c, 2.0), 1024), np.float32)})
        wait_running(c, busy.id)
        queued = c.submit("slow", {"x": np.ones((1, 1024), np.float32)})
        # Answered by the worker's cancel listener while its intake still runs ``busy``.
        assert queued.cancel(timeout_s=30) is True
        assert busy.status() == "running"
        with pytest.raises(JobCancelled):
            queued.result(timeout_s=10)
        assert busy.cancel(timeout_s=30) is False  # already running: its result stands
        assert busy.result(timeout_s=60)["y"].shape[1] == 1024
        assert queued.cancel(timeout_s=30) is False  # already answered
        with Client(redis_url) as other:  # the cancelled job stays cancelled for everyone
            with pytest.raises(JobCancelled):
                other.job(queued.id).result(timeout_s=5)


def test_a_job_past_its_deadline_is_not_run(redis_url: str, start) -> None:
    start("deadline")
    with Client(redis_url) as c:
        busy = c.submit("slow", {"x": np.ones((rows_for(c, 2.0), 1024), np.float32)})
        wait_running(c, busy.id)
        late = c.submit("slow", {"x": np.ones((1, 1024), np.float32)}, deadline_s=0.2)
        with pytest.raises(JobExpired, match="deadline passed"):
            late.result(timeout_s=60)
        busy.result(timeout_s=60)


def test_results_are_written_once_even_if_a_job_runs_again(redis_url: str, start, r: redis.Redis) -> None:
    start("dup")
    with Client(redis_url) as c:
        job = c.submit("slow", {"x": np.ones((1, 1024), np.float32)})
        job.result(timeout_s=60)
        first = r.get(keys.result(job.id))
        # The same job id delivered again (as after a lease ran out), other inputs: not run again.
        _, again = rawjobs.job_message("slow", np.zeros((1, 1024), np.float32), job_id=job.id)
        rawjobs.push_raw(r, keys.queue("slow"), [again])
        follow = c.submit("slow", {"x": np.ones((1, 1024), np.float32)})
        follow.result(timeout_s=60)  # the worker has taken the duplicate by now
        assert r.get(keys.result(job.id)) == first
        assert int(r.get(keys.tries(job.id))) == 2  # delivered twice, run once


def test_a_poison_job_is_dead_lettered_not_retried_forever(redis_url: str, start, r: redis.Redis) -> None:
    w = start("poison-0")
    with Client(redis_url) as c:
        rows = rows_for(c, 30.0)  # longer than the test: it is killed every time
        job = c.submit("slow", {"x": np.ones((rows, 1024), np.float32)})
        for i in range(1, 4):
            wait_running(c, job.id, timeout_s=60)
            r.delete(keys.state(job.id))  # so the next run is seen
            w.kill()
            w = start(f"poison-{i}")
        with pytest.raises(InternalError, match="poison job"):
            job.result(timeout_s=60)
        record = unpackb(r.get(keys.dead(job.id)))
        assert record["deliveries"] == 4 and record["error"] == "InternalError"
        assert job.id in [i.decode() for i in r.lrange(keys.DEAD, 0, 50)]


def test_failures_cli_lists_and_shows_dead_letters(client: Client, redis_url: str) -> None:
    import subprocess
    import sys

    from icow.errors import InvalidJob

    with pytest.raises(InvalidJob) as err:
        client.infer("mlp", {"x": np.ones((1, 9), np.float32)}, timeout_s=30)
    job_id = err.value.job_id
    assert job_id
    run = [sys.executable, "-m", "icow.cli", "failures"]
    listed = subprocess.run([*run, "--redis", redis_url, "--json", "--limit", "50"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert job_id in [rec["id"] for rec in json.loads(listed.stdout)]
    shown = subprocess.run([*run, "show", job_id, "--redis", redis_url, "--json"], capture_output=True, text=True)
    record = json.loads(shown.stdout)
    assert record["error"] == "InvalidJob" and "expects" in record["message"]
    missing = subprocess.run([*run, "show", "no-such-job", "--redis", redis_url], capture_output=True, text=True)
    assert missing.returncode == 2 and "JobNotFound" in missing.stderr
