"""Prometheus metrics: every worker's own (/metrics with --metrics-port) and the fleet's queue
metrics from the one `icow exporter`, against real Redis and real worker processes."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from icow import keys, tensor
from icow.celery_message import celery_message
from icow.cli.fleet import free_port, stop_process
from icow.client import Client
from icow.envelope import job_envelope, new_job_id
from icow.errors import InvalidJob
from icow.workers.metrics import OTHER, WorkerMetrics
from icow.workers.models import ModelManager
from icow.workers.observer import JobOutcome
from icow.workers.queues import PREFIX_BYTES, created_from_message, queue_states
from icow.workers.repository import Repository

from .conftest import WorkerProcess

ICOW = [sys.executable, "-m", "icow.cli"]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def message(model: str, created: float, x: np.ndarray) -> bytes:
    job = job_envelope(job_id=new_job_id(), model=model, version=None, inputs=[tensor.encode("x", x)], created=created)
    return celery_message(job, queue=keys.queue(model))


# -- reading queues without consuming them


def test_created_time_is_read_from_a_prefix_of_a_large_message() -> None:
    big = message("mlp", 1234.5, np.zeros((200_000,), np.float32))  # 800 KB inline
    assert len(big) > 1_000_000
    assert created_from_message(big[:PREFIX_BYTES]) == 1234.5
    assert created_from_message(big) == 1234.5
    assert created_from_message(b'{"body":"bm90IG1zZ3BhY2s="}') is None
    assert created_from_message(b"garbage") is None


def test_queue_backlog_and_oldest_age_across_priority_lists(r: redis.Redis) -> None:
    model = f"nobody-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    now = time.time()
    x = np.ones((1, 4), np.float32)
    q0 = keys.queue(model)
    r.lpush(keys.queue_list(q0, 0), message(model, now - 30, x))  # oldest of the default list
    r.lpush(keys.queue_list(q0, 0), message(model, now - 5, x))
    r.lpush(keys.queue_list(q0, 9), message(model, now - 90, x))  # older, in a priority list
    (q,) = queue_states(r, [model], now=now)
    assert q.backlog == 3
    assert q.oldest_age_s == pytest.approx(90, abs=0.01)
    (empty,) = queue_states(r, [f"{model}-empty"], now=now)
    assert empty.backlog == 0 and empty.oldest_age_s is None
    r.delete(*keys.queue_lists(q0))


# -- the worker's metrics, in process


def test_jobs_counted_by_outcome_and_jobs_sharing_a_session_call_form_one_batch(model_repo: Path) -> None:
    manager = ModelManager(Repository(model_repo), only={"scale"})
    m = WorkerMetrics(manager)
    m.jobs_done(
        [
            JobOutcome("a", "scale", 2, "succeeded", 0.01, 0.002, 0.02, batch=2, batch_samples=5),
            JobOutcome("b", "scale", 2, "succeeded", 0.01, 0.002, 0.02, batch=2, batch_samples=5),  # same call
            JobOutcome("c", "scale", 2, "succeeded", 0.01, 0.003, 0.02),
            JobOutcome("d", "scale", None, "InvalidJob", 0.01, None, 0.01),
            JobOutcome("e", "not-served-here", None, "ModelNotFound", None, None, None),
        ]
    )
    s = {(x.name, tuple(sorted(x.labels.items()))): x.value for fam in m.registry.collect() for x in fam.samples}
    assert value(s, "icow_jobs_total", model="scale", version="2", outcome="succeeded") == 3
    assert value(s, "icow_jobs_total", model="scale", version="", outcome="InvalidJob") == 1
    assert value(s, "icow_jobs_total", model=OTHER, version="", outcome="ModelNotFound") == 1
    assert value(s, "icow_batch_size_count", model="scale", version="2") == 2  # two session calls
    assert value(s, "icow_batch_size_sum", model="scale", version="2") == 3
    assert value(s, "icow_compute_seconds_count", model="scale", version="2") == 2
    assert value(s, "icow_batch_samples_sum", model="scale", version="2") == 5  # as the runner reported
    assert value(s, "icow_queue_wait_seconds_count", model="scale") == 4
    assert value(s, "icow_worker_ready") == 1


# -- end to end: a real worker with --metrics-port, and `icow exporter`


@pytest.fixture(scope="module")
def metrics_worker(model_repo: Path, redis_url: str):  # type: ignore[no-untyped-def]
    port = free_port()
    w = WorkerProcess(model_repo, redis_url, f"metrics-{uuid.uuid4().hex[:6]}@local", ["--metrics-port", str(port)])
    w.port = port  # type: ignore[attr-defined]
    yield w
    w.stop()


def test_worker_exports_jobs_latencies_and_the_provider_of_each_session(
    metrics_worker: WorkerProcess, redis_url: str
) -> None:
    port = metrics_worker.port  # type: ignore[attr-defined]
    before = value(scrape(port), "icow_jobs_total", model="mlp", version="1", outcome="succeeded") or 0
    with Client(redis_url) as c:
        # Both workers serve mlp; send enough jobs that this one surely takes some.
        jobs = c.submit_many("mlp", [{"x": np.ones((1, 4), np.float32)} for _ in range(40)])
        for j in jobs:
            j.result(timeout_s=30)
        with pytest.raises(InvalidJob):
            c.infer("mlp", {"x": np.ones((1, 5), np.float32)}, timeout_s=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = scrape(port)
        done = value(s, "icow_jobs_total", model="mlp", version="1", outcome="succeeded") or 0
        if done > before:
            break
        time.sleep(0.2)
    assert done > before
    assert (value(s, "icow_latency_seconds_count", model="mlp") or 0) >= done - before
    assert (value(s, "icow_compute_seconds_count", model="mlp", version="1") or 0) > 0
    assert value(s, "icow_worker_ready") == 1
    assert (value(s, "icow_model_load_seconds", model="mlp", version="1") or -1) >= 0
    infos = [labels for (name, labels), v in s.items() if name == "icow_session_info" and ("model", "mlp") in labels]
    assert len(infos) == 1
    labels = dict(infos[0])
    fallback = value(s, "icow_session_cpu_fallback", model="mlp", version="1")
    # No GPU on a CI machine: CUDA is requested, the CPU runs, and the metric says so.
    assert fallback == (1 if labels["provider"] == "CPUExecutionProvider" != labels["requested"] else 0)


def test_exporter_reports_backlog_and_oldest_job_age(redis_url: str, r: redis.Redis) -> None:
    model = f"waiting-{uuid.uuid4().hex[:8]}"
    r.sadd(keys.MODELS, model)
    now = time.time()
    for age in (40, 20, 10):
        r.lpush(keys.queue(model), message(model, now - age, np.ones((1, 4), np.float32)))
    port = free_port()
    proc = subprocess.Popen(
        [*ICOW, "exporter", "--redis", redis_url, "--port", str(port), "--addr", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                s = scrape(port)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert value(s, "icow_redis_up") == 1
        assert value(s, "icow_queue_backlog", model=model) == 3
        assert value(s, "icow_queue_oldest_age_seconds", model=model) == pytest.approx(40, abs=5)
        assert (value(s, "icow_workers", state="alive") or 0) >= 0
    finally:
        assert stop_process(proc) == 0
        r.delete(keys.queue(model))
        r.srem(keys.MODELS, model)
