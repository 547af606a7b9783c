"""Dynamic batching: batched runs equal unbatched ones, one bad job fails alone, shapes are
never mixed, and a batch never holds more than max_batch samples. Priority: a worker takes the
lowest priority step across all its queues (every model, every version), bulk never starves."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import functions, keys
from icow.client import Client
from icow.client import bulk as bulk_module
from icow.errors import InvalidJob
from icow.result import parse_meta
from icow.workers import batching, samples

from .conftest import WorkerProcess


def item(key: object, n: int, width: int = 4, dtype: type = np.float32) -> batching.Item:
    return batching.Item(key, {"x": np.full((n, width), float(n), dtype)}, None)


def test_plan_counts_samples_not_jobs() -> None:
    groups = batching.plan([item(i, 3) for i in range(5)], max_batch=8)
    assert [len(g) for g in groups] == [2, 2, 1]
    assert all(sum(it.samples for it in g) <= 8 for g in groups)


def test_plan_never_mixes_shapes_or_dtypes() -> None:
    items = [item("a", 1, 4), item("b", 1, 5), item("c", 1, 4), item("d", 1, 4, np.float64)]
    groups = batching.plan(items, max_batch=8)
    assert sorted([it.key for it in g] for g in groups) == [["a", "c"], ["b"], ["d"]]


def test_a_job_larger_than_max_batch_runs_alone_and_whole() -> None:
    calls: list[int] = []

    def run(inputs: dict, outputs: object) -> dict:
        calls.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2}

    groups = batching.plan([item("small", 1), item("big", 10), item("small2", 2)], max_batch=4)
    assert [[it.key for it in g] for g in groups] == [["small", "small2"], ["big"]]
    outs = [batching.run_group(run, g) for g in groups]
    assert calls == [3, 10]
    assert outs[1][0]["y"].shape == (10, 4)


def test_batched_outputs_are_split_back_per_job() -> None:
    def run(inputs: dict, outputs: object) -> dict:
        return {"y": inputs["x"].sum(axis=1)}

    group = [item("a", 1), item("b", 2), item("c", 3)]
    out = batching.run_group(run, group)
    assert [o["y"].tolist() for o in out] == [[4.0], [8.0, 8.0], [12.0, 12.0, 12.0]]


def test_one_bad_job_fails_alone_inside_a_batch() -> None:
    def run(inputs: dict, outputs: object) -> dict:
        if (inputs["x"] == 2.0).any():
            raise ValueError("poisoned sample")
        return {"y": inputs["x"] + 1}

    out = batching.run_group(run, [item("a", 1), item("b", 2), item("c", 1)])
    assert isinstance(out[1], ValueError)
    assert out[0]["y"].tolist() == [[2.0] * 4] and out[2]["y"].tolist() == [[2.0] * 4]


@pytest.fixture(scope="module")
def batch_worker(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[WorkerProcess]:
    repo = tmp_path_factory.mktemp("batchrepo")
    samples.mlp(repo / "mlpb" / "1" / "model.onnx")
    (repo / "mlpb" / "config.toml").write_text("max_batch = 4\nproviders = ['cpu']\n")
    samples.identity(repo / "identb" / "1" / "model.onnx", rank=2)
    (repo / "identb" / "config.toml").write_text("max_batch = 8\nproviders = ['cpu']\n")
    w = WorkerProcess(Path(repo), redis_url, f"test-batch-{os.getpid()}@local")
    yield w
    w.stop()


def test_batched_results_equal_unbatched_and_respect_max_batch(redis_url: str, batch_worker: WorkerProcess) -> None:
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(60)]
    with Client(redis_url) as c:
        jobs = c.submit_many("mlpb", [{"x": x} for x in xs])
        batches, batch_samples = [], []
        for job, x in zip(jobs, xs):
            out = job.result(timeout_s=60)["y"]
            np.testing.assert_allclose(out, samples.mlp_reference(x), rtol=1e-5, atol=1e-5)
            timing = job._meta.timing
            batches.append(timing.batch)
            batch_samples.append(timing.batch_samples)
        assert max(batches) > 1, "60 queued jobs should have been batched"
        assert max(batch_samples) <= 4  # samples, not jobs: never more than max_batch


def test_jobs_with_different_shapes_are_not_mixed(redis_url: str, batch_worker: WorkerProcess) -> None:
    arrays = [np.full((1, 2 + i % 3), i, np.float32) for i in range(30)]
    with Client(redis_url) as c:
        jobs = c.submit_many("identb", [{"x": a} for a in arrays])
        for job, a in zip(jobs, arrays):
            np.testing.assert_array_equal(job.result(timeout_s=60)["y"], a)


def test_a_bad_job_among_queued_good_ones_fails_alone(redis_url: str, batch_worker: WorkerProcess) -> None:
    good = [{"x": np.ones((1, 4), np.float32)}] * 10
    bad = {"x": np.ones((1, 7), np.float32)}
    with Client(redis_url) as c:
        jobs = c.submit_many("mlpb", [*good[:5], bad, *good[5:]])
        for i, job in enumerate(jobs):
            if i == 5:
                with pytest.raises(InvalidJob):
                    job.result(timeout_s=60)
            else:
                assert job.result(timeout_s=60)["y"].shape == (1, 3)


def test_bulk_submission_progress_and_reattach(redis_url: str, batch_worker: WorkerProcess) -> None:
    x = np.random.default_rng(11).standard_normal((1000, 4)).astype(np.float32)
    with Client(redis_url) as c:
        bulk = c.submit_bulk("mlpb", {"x": x}, samples_per_job=64)
        assert len(bulk.jobs) == 16 and bulk.samples == 1000
        y = bulk.result(timeout_s=120)["y"]
        np.testing.assert_allclose(y, samples.mlp_reference(x), rtol=1e-5, atol=1e-5)
        assert bulk.progress() == (16, 16)
        # a job is never split, and jobs of max_batch samples or more are never combined
        assert all(j._meta.timing.batch_samples in (64, 1000 - 15 * 64) for j in bulk.jobs)
    with Client(redis_url) as other:
        again = other.bulk(bulk.id)
        assert again.progress() == (16, 16)
        np.testing.assert_array_equal(again.result(timeout_s=30)["y"], y)


def test_bulk_inputs_must_agree_on_samples(redis_url: str, batch_worker: WorkerProcess) -> None:
    with Client(redis_url) as c, pytest.raises(ValueError, match="disagree"):
        c.submit_bulk("mlpb", {"x": np.ones((3, 4), np.float32), "z": np.ones((2, 1), np.float32)})


def test_interactive_jobs_overtake_a_bulk_backlog(redis_url: str, batch_worker: WorkerProcess) -> None:
    x = np.ones((3000, 4), np.float32)
    with Client(redis_url) as c:
        bulk = c.submit_bulk("mlpb", {"x": x}, samples_per_job=1)  # 3,000 jobs at batch priority
        t0 = time.perf_counter()
        c.infer("mlpb", {"x": np.ones((1, 4), np.float32)}, timeout_s=60)  # interactive priority
        waited = time.perf_counter() - t0
        done, total = bulk.progress()
        assert done < total / 2, f"the interactive job waited for {done} of {total} bulk jobs ({waited:.3f} s)"
        bulk.result(timeout_s=120)


# -- priority across every queue of a worker (all models, all versions)


def _done_order(r: redis.Redis, jobs: list[Any]) -> list[str]:
    """Job ids in the order one worker answered them (``date_done`` of their result metas:
    one process's clock, so this is its completion order)."""
    metas = {j.id: parse_meta(r.get(keys.result(j.id))) for j in jobs}
    return sorted(metas, key=lambda i: datetime.fromisoformat(metas[i]["date_done"]))


@pytest.fixture
def prio_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """Two models on one worker: ``bulk`` (an MLP) and ``fast`` (scale), names unique per test."""
    tag = uuid.uuid4().hex[:6]
    bulk_model, fast_model = f"bulk{tag}", f"fast{tag}"
    samples.mlp(tmp_path / bulk_model / "1" / "model.onnx")
    samples.scale(tmp_path / fast_model / "1" / "model.onnx", 2.0)
    for m in (bulk_model, fast_model):
        (tmp_path / m / "config.toml").write_text("max_batch = 1\nproviders = ['cpu']\n")
    return tmp_path, bulk_model, fast_model


def test_interactive_jobs_of_another_model_overtake_a_queued_bulk_backlog(
    redis_url: str, r: redis.Redis, prio_repo: tuple[Path, str, str]
) -> None:
    """Queued before the worker starts: 5 interactive jobs of model B after 100 bulk jobs of
    model A. The worker takes the lowest priority across both models' queues: B first."""
    repo, bulk_model, fast_model = prio_repo
    functions.install(r)
    with Client(redis_url, require_published=False) as c:  # nothing serves them yet
        bulk = c.submit_bulk(bulk_model, {"x": np.ones((100, 4), np.float32)}, samples_per_job=1)
        fast = c.submit_many(fast_model, [{"x": np.full((1, 2), i, np.float32)} for i in range(5)])
        w = WorkerProcess(repo, redis_url, f"test-prio-{os.getpid()}@local")
        try:
            bulk.result(timeout_s=120)
            assert [float(j.result(timeout_s=30)["y"][0, 0]) for j in fast] == [0.0, 2.0, 4.0, 6.0, 8.0]
        finally:
            w.stop()
        order = _done_order(r, [*bulk.jobs, *fast])
        last_fast = max(order.index(j.id) for j in fast)
        # At most one bulk job before them: every 8th take serves the other end first.
        assert last_fast <= len(fast), f"interactive jobs answered at ranks up to {last_fast} of {len(order)}"


def test_an_interactive_job_overtakes_another_models_backlog_on_a_running_worker(
    redis_url: str, r: redis.Redis, prio_repo: tuple[Path, str, str]
) -> None:
    repo, bulk_model, fast_model = prio_repo
    w = WorkerProcess(repo, redis_url, f"test-prio-{os.getpid()}@local")
    try:
        with Client(redis_url) as c:
            bulk = c.submit_bulk(bulk_model, {"x": np.ones((400, 4), np.float32)}, samples_per_job=1)
            bulk.jobs[0].result(timeout_s=60)  # the backlog is draining
            job = c.submit(fast_model, {"x": np.ones((1, 2), np.float32)})
            waiting = r.llen(keys.queue_list(keys.queue(bulk_model), bulk_module.PRIORITY_BATCH))
            assert job.result(timeout_s=60)["y"][0, 0] == 2.0
            bulk.result(timeout_s=120)
        order = _done_order(r, [*bulk.jobs, job])
        after = len(order) - 1 - order.index(job.id)
        # Bulk jobs still queued when it arrived ran after it, but for the one in hand and an
        # anti-starvation take.
        assert after >= waiting - 2, f"{waiting} bulk jobs were waiting; only {after} ran after the interactive one"
    finally:
        w.stop()


def test_lower_priorities_are_not_starved(redis_url: str, r: redis.Redis, prio_repo: tuple[Path, str, str]) -> None:
    """40 interactive jobs and 3 bulk jobs of one model, queued before the worker starts
    (max_batch 1: one job per take): every 8th take serves the bulk end first."""
    repo, _, model = prio_repo
    functions.install(r)
    with Client(redis_url, require_published=False) as c:
        bulk = c.submit_bulk(model, {"x": np.ones((3, 2), np.float32)}, samples_per_job=1)
        interactive = c.submit_many(model, [{"x": np.ones((1, 2), np.float32)}] * 40)
        w = WorkerProcess(repo, redis_url, f"test-starve-{os.getpid()}@local")
        try:
            bulk.result(timeout_s=60)
            for j in interactive:
                j.result(timeout_s=60)
        finally:
            w.stop()
    order = _done_order(r, [*bulk.jobs, *interactive])
    ranks = sorted(order.index(j.id) for j in bulk.jobs)
    assert ranks[0] <= 8 and ranks[-1] < len(order) - 1 - 10, f"bulk jobs answered at ranks {ranks} of {len(order)}"


def test_an_interactive_job_runs_between_the_slices_of_a_large_bulk_job(
    redis_url: str, batch_worker: WorkerProcess, r: redis.Redis
) -> None:
    """A bulk job carrying more than max_batch samples runs in slices of max_batch; an
    interactive job that arrives meanwhile is answered before the bulk job ends, and the
    sliced outputs equal the unsliced ones."""
    xs = np.random.default_rng(3).standard_normal((40_000, 4)).astype(np.float32)  # 10,000 slices
    with Client(redis_url) as c:
        bulk = c.submit_bulk("mlpb", {"x": xs}, samples_per_job=len(xs))  # one bulk job
        big = bulk.jobs[0]
        deadline = time.monotonic() + 60
        while big.status() != "running":  # the worker is inside the bulk job
            assert time.monotonic() < deadline, "the bulk job never started"
            time.sleep(0.005)
        job = c.submit("mlpb", {"x": xs[:1]})
        np.testing.assert_allclose(job.result(timeout_s=60)["y"], samples.mlp_reference(xs[:1]), rtol=1e-5)
        out = bulk.result(timeout_s=120)["y"]
    np.testing.assert_allclose(out, samples.mlp_reference(xs), rtol=1e-4, atol=1e-5)
    assert _done_order(r, [big, job]) == [job.id, big.id]
