"""Kept inputs and `icow replay`: a worker keeps the last N jobs' inputs of a model with
``keep_inputs = N``; `icow replay` runs them on two versions through the fleet and exits 0 when
they agree, 1 when they differ past the threshold. Real Redis, a real worker, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from icow import keys
from icow.client import Client
from icow.records import parse_kept
from icow.workers import samples

from .conftest import WorkerProcess

MODEL = f"kept-{uuid.uuid4().hex[:6]}"  # v1 = x * 2, v2 = x * 2 (the same), v3 = x * 3
KEEP = 5
ICOW = [sys.executable, "-m", "icow.cli"]


def icow_replay(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ICOW, "replay", MODEL, "--redis", redis_url, "--timeout", "60", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def kept_worker(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[WorkerProcess]:
    repo = tmp_path_factory.mktemp("kept-repo")
    for v, factor in ((1, 2.0), (2, 2.0), (3, 3.0)):
        samples.scale(repo / MODEL / str(v) / "model.onnx", factor)
    (repo / MODEL / "config.toml").write_text(f"providers = ['cpu']\nkeep_inputs = {KEEP}\n")
    w = WorkerProcess(repo, redis_url, f"kept-{uuid.uuid4().hex[:6]}@local")
    yield w
    w.stop()


def settle(redis_url: str) -> None:
    """Return once the worker has kept every job answered so far. It keeps a take's inputs
    right after writing that take's answers (workers/kept.py), and takes one batch at a time
    (workers/runner.py), so a caller sees an answer before its input is kept; a later job
    answered means the earlier takes' inputs are kept. The job is a replay job (never kept)."""
    with Client(redis_url) as c:
        job_id = f"{keys.REPLAY_ID_PREFIX}{uuid.uuid4()}"
        c.submit(MODEL, {"x": np.zeros((1, 2), np.float32)}, version=1, job_id=job_id).result(timeout_s=30)


@pytest.fixture(scope="module")
def kept(kept_worker: WorkerProcess, redis_url: str) -> list[bytes]:
    """Seven jobs answered (the last one's input claim-checked): the last five are kept."""
    with Client(redis_url) as c:
        for k in range(1, 7):
            c.infer(MODEL, {"x": np.full((1, 2), k, np.float32)}, version=1, timeout_s=30)
        big = np.arange(80_000, dtype=np.float32).reshape(40_000, 2) / 1000  # 320 KB: over the inline limit
        c.infer(MODEL, {"x": big}, timeout_s=30)
    settle(redis_url)  # the last job's input is kept after its answer
    conn = redis.Redis.from_url(redis_url)
    try:
        return list(conn.lrange(keys.kept(MODEL), 0, -1))
    finally:
        conn.close()


def test_the_last_n_answered_jobs_inputs_are_kept_with_their_ttl(kept: list[bytes], r: redis.Redis) -> None:
    assert len(kept) == KEEP
    records = [parse_kept(raw) for raw in kept]  # newest first
    newest = records[0]
    assert newest["model"] == MODEL and newest["version"] == 3 and newest["ttl"] == keys.DEFAULT_RESULT_TTL_S
    assert newest["inputs"][0]["shape"] == [40_000, 2] and len(newest["inputs"][0]["data"]) == 320_000  # claim-checked
    assert [np.frombuffer(rec["inputs"][0]["data"], np.float32)[0] for rec in records[1:]] == [6, 5, 4, 3]
    assert 0 < r.ttl(keys.kept(MODEL)) <= keys.DEFAULT_RESULT_TTL_S


def test_replay_of_an_identical_version_reports_zero_error_and_exits_0(
    kept: list[bytes], redis_url: str, r: redis.Redis
) -> None:
    proc = icow_replay(redis_url, "--from", "1", "--to", "2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["passed"] and doc["compared"] == KEEP and doc["failed"] == {"v1": 0, "v2": 0}
    assert doc["outputs"]["y"]["max_abs_error"] == 0 and doc["outputs"]["y"]["jobs"] == KEEP
    assert set(doc["latency"]) == {"v1", "v2"} and doc["latency"]["v1"]["jobs"] == KEEP
    settle(redis_url)  # a replay job kept would be in the list by now
    assert r.lrange(keys.kept(MODEL), 0, -1) == kept  # replay jobs (comparison, warm-up, latency) are not kept again


def test_replay_of_a_changed_version_reports_the_difference_and_exits_1(kept: list[bytes], redis_url: str) -> None:
    proc = icow_replay(redis_url, "--from", "1", "--to", "3", "--max-abs-err", "0.5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: output 'y': max abs error 79.999 > 0.5" in proc.stdout  # |3x - 2x| at x = 79.999
    assert "latency v1" in proc.stdout and "latency v3" in proc.stdout
    last_two = icow_replay(redis_url, "--from", "1", "--to", "3", "--last", "2", "--json", "--max-abs-err", "100")
    doc = json.loads(last_two.stdout)
    assert last_two.returncode == 0 and doc["compared"] == 2
    assert doc["outputs"]["y"]["max_abs_error"] == pytest.approx(79.999, abs=1e-3)
    assert doc["outputs"]["y"]["max_rel_error"] == pytest.approx(0.5)


def test_replay_without_kept_inputs_is_an_error(kept_worker: WorkerProcess, redis_url: str) -> None:
    proc = subprocess.run(
        [*ICOW, "replay", "nothing-kept", "--from", "1", "--to", "2", "--redis", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no kept inputs for model 'nothing-kept'" in proc.stderr


def test_the_client_user_cannot_read_kept_inputs_and_the_worker_user_can() -> None:
    """Kept inputs are other callers' data: `icow replay` runs with the worker user's URL."""
    from icow.cli.fleet import LocalRedis

    from .test_security import ADMIN_PW, REDIS_ACL

    if REDIS_ACL is None:
        pytest.skip("needs a redis-server >= 7.0")
    server = LocalRedis(password=ADMIN_PW, exe=REDIS_ACL)
    try:
        admin = redis.Redis.from_url(server.url)
        admin.execute_command("ACL", "SETUSER", "icow-worker", "reset", "on", ">worker-pw", *keys.WORKER_ACL_RULES)
        admin.execute_command("ACL", "SETUSER", "icow-client", "reset", "on", ">client-pw", *keys.CLIENT_ACL_RULES)
        admin.close()
        worker = redis.Redis.from_url(f"redis://icow-worker:worker-pw@127.0.0.1:{server.port}/0")
        client = redis.Redis.from_url(f"redis://icow-client:client-pw@127.0.0.1:{server.port}/0")
        worker.lpush(keys.kept("m"), b"record")
        assert worker.lrange(keys.kept("m"), 0, -1) == [b"record"]
        for command in (("LRANGE", keys.kept("m"), 0, -1), ("LPUSH", keys.kept("m"), b"x"), ("DEL", keys.kept("m"))):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        worker.close()
        client.close()
    finally:
        server.stop()


def test_replay_to_a_version_nobody_serves_is_an_error(kept: list[bytes], redis_url: str) -> None:
    proc = icow_replay(redis_url, "--from", "1", "--to", "9")
    assert proc.returncode == 2 and "ModelNotFound" in proc.stderr, proc.stdout + proc.stderr


def test_replay_latency_is_like_for_like_one_job_at_a_time_alternating(kept: list[bytes], redis_url: str) -> None:
    """The finding: the version also "latest" read ~3x slower, because the comparison jobs, all
    submitted at once, were batched differently per version. The latency figures now come from a
    warm-up job on each version, then one job at a time (never two in flight), the versions
    alternating which runs first, each job alone in its session call."""
    import argparse

    from icow.cli import replay

    events: list[tuple[str, int | str]] = []

    class Recorded:
        def __init__(self, job: Any, version: int):
            self.job, self.version, self.id = job, version, job.id

        def result(self, timeout_s: float | None = None) -> Any:
            events.append(("result", self.version))
            return self.job.result(timeout_s=timeout_s)

    class RecordingClient:
        def __init__(self, client: Client):
            self.client = client

        def submit(self, model: str, inputs: Any, *, version: int, **kw: Any) -> Recorded:
            events.append(("submit", version))
            return Recorded(self.client.submit(model, inputs, version=version, **kw), version)

    args = argparse.Namespace(
        model=MODEL, from_version=1, to_version=2, last=None, timeout=60.0, result_ttl=60, latency_jobs=4
    )
    conn = redis.Redis.from_url(redis_url)
    try:
        with Client(redis_url) as c:
            report = replay.replay(conn, RecordingClient(c), args)
    finally:
        conn.close()
    comparison, latency = events[: 4 * KEEP], events[4 * KEEP :]
    assert [e for e in comparison if e[0] == "submit"] == [("submit", 1), ("submit", 2)] * KEEP  # all at once
    warm_up, pairs = [1, 2], [1, 2, 2, 1, 1, 2, 2, 1]  # then A B, B A, A B, B A
    expected = warm_up + pairs
    assert latency == [e for v in expected for e in (("submit", v), ("result", v))]  # one at a time
    doc = report.document()
    assert doc["latency"]["v1"]["jobs"] == doc["latency"]["v2"]["jobs"] == 4 and doc["latency_skipped"] == 0
    assert doc["compared"] == KEEP and doc["outputs"]["y"]["max_abs_error"] == 0
