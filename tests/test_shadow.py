"""Shadow runs: a version that answers nobody runs on live jobs after they are answered, and its
differences from the primary show in the worker's /metrics and in `icow status` (heartbeats).
Real Redis, a real worker process."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from icow.cli.fleet import free_port
from icow.cli.status import fleet_status, render
from icow.client import Client
from icow.errors import InvalidInput, ModelNotFound
from icow.workers import samples
from icow.workers.repository import ModelConfig
from icow.workers.shadow import ShadowSpec, beyond, compare

from .conftest import WorkerProcess

T = TypeVar("T")
SCALE = f"shadowed-{uuid.uuid4().hex[:6]}"  # v1 = x * 2 serves callers; v2 = x * 3 is the shadow
CLASSIFIER = f"shadowed-mlp-{uuid.uuid4().hex[:6]}"  # v1 and its shadow v2 are the same network
OTHER = f"shadowed-other-{uuid.uuid4().hex[:6]}"  # v1 and its shadow v2: the same shape, other weights


def until(read: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 30) -> T:
    """Read until ``ok`` holds (the worker's shadow thread and heartbeat run on their own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def metric(samples_: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples_.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def shadow_worker(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[WorkerProcess, int]]:
    repo = tmp_path_factory.mktemp("shadow-repo")
    samples.scale(repo / SCALE / "1" / "model.onnx", 2.0)
    samples.scale(repo / SCALE / "2" / "model.onnx", 3.0)
    (repo / SCALE / "config.toml").write_text(
        "versions = [1]\nproviders = ['cpu']\nshadow = { version = 2, fraction = 1.0 }\n"
    )
    samples.mlp(repo / CLASSIFIER / "1" / "model.onnx", seed=4)
    samples.mlp(repo / CLASSIFIER / "2" / "model.onnx", seed=4)
    (repo / CLASSIFIER / "config.toml").write_text(
        "versions = [1]\nproviders = ['cpu']\nshadow = { version = 2, fraction = 1.0 }\n"
    )
    samples.mlp(repo / OTHER / "1" / "model.onnx", seed=4)
    samples.mlp(repo / OTHER / "2" / "model.onnx", seed=5)
    (repo / OTHER / "config.toml").write_text(
        "versions = [1]\nproviders = ['cpu']\nshadow = { version = 2, fraction = 1.0, max_abs_err = 1e-4 }\n"
    )
    port = free_port()
    w = WorkerProcess(repo, redis_url, f"shadow-{uuid.uuid4().hex[:6]}@local", ["--metrics-port", str(port)])
    yield w, port
    w.stop()


def test_callers_get_the_primary_outputs_and_the_shadow_differences_show_in_metrics(
    shadow_worker: tuple[WorkerProcess, int], redis_url: str
) -> None:
    _, port = shadow_worker
    labels = {"model": SCALE, "primary": "1", "shadow": "2"}
    with Client(redis_url) as c:
        for k in range(1, 6):
            out = c.infer(SCALE, {"x": np.full((1, 2), k, np.float32)}, timeout_s=30)
            np.testing.assert_array_equal(out["y"], np.full((1, 2), 2 * k, np.float32))  # v1's, never v2's
        with pytest.raises(ModelNotFound):  # the shadow version takes no jobs of its own
            c.infer(SCALE, {"x": np.ones((1, 2), np.float32)}, version=2, timeout_s=30)
    # |3k - 2k| = k is past the default tolerance (1e-5): each job is a mismatch, figures included
    got = until(lambda: scrape(port), lambda s: metric(s, "icow_shadow_jobs_total", **labels, outcome="mismatch") >= 5)
    assert metric(got, "icow_shadow_jobs_total", **labels, outcome="mismatch") == 5
    assert metric(got, "icow_shadow_jobs_total", **labels, outcome="compared") == 0
    assert metric(got, "icow_shadow_jobs_total", **labels, outcome="failed") == 0
    # |3k - 2k| = k for k = 1..5: the per-job max abs errors add up to 15; relative error 0.5 each
    assert metric(got, "icow_shadow_max_abs_error_count", **labels, output="y") == 5
    assert metric(got, "icow_shadow_max_abs_error_sum", **labels, output="y") == pytest.approx(15.0)
    assert metric(got, "icow_shadow_max_rel_error_sum", **labels, output="y") == pytest.approx(2.5)
    assert metric(got, "icow_shadow_latency_ratio_count", **labels) == 5


def test_a_classifier_shadowed_by_the_same_network_agrees_everywhere(
    shadow_worker: tuple[WorkerProcess, int], redis_url: str
) -> None:
    _, port = shadow_worker
    labels = {"model": CLASSIFIER, "primary": "1", "shadow": "2"}
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    with Client(redis_url) as c:
        out = c.infer(CLASSIFIER, {"x": x}, timeout_s=30)
    np.testing.assert_allclose(out["y"], samples.mlp_reference(x, seed=4), atol=1e-5)
    got = until(lambda: scrape(port), lambda s: metric(s, "icow_shadow_jobs_total", **labels, outcome="compared") >= 1)
    assert metric(got, "icow_shadow_argmax_agreement_ratio", **labels, output="y") == 1.0
    assert metric(got, "icow_shadow_max_abs_error_sum", **labels, output="y") == 0.0
    assert metric(got, "icow_shadow_jobs_total", **labels, outcome="mismatch") == 0


def test_a_completely_different_model_counts_a_mismatch_for_every_job(
    shadow_worker: tuple[WorkerProcess, int], redis_url: str
) -> None:
    """The finding: a shadow with other weights read ``mismatch 0``. Each job whose outputs differ
    beyond the tolerance (here ``max_abs_err = 1e-4``) is now a mismatch."""
    _, port = shadow_worker
    labels = {"model": OTHER, "primary": "1", "shadow": "2"}
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((4, 4)).astype(np.float32) for _ in range(3)]
    with Client(redis_url) as c:
        for x in xs:
            np.testing.assert_allclose(
                c.infer(OTHER, {"x": x}, timeout_s=30)["y"], samples.mlp_reference(x, seed=4), 1e-5
            )
    worst = max(float(np.max(np.abs(samples.mlp_reference(x, seed=4) - samples.mlp_reference(x, seed=5)))) for x in xs)
    assert worst > 1e-2  # what the shadow sees: far past the tolerance
    got = until(lambda: scrape(port), lambda s: metric(s, "icow_shadow_jobs_total", **labels, outcome="mismatch") >= 3)
    assert metric(got, "icow_shadow_jobs_total", **labels, outcome="mismatch") == 3
    assert metric(got, "icow_shadow_jobs_total", **labels, outcome="compared") == 0
    assert metric(got, "icow_shadow_max_abs_error_count", **labels, output="y") == 3


def test_icow_status_shows_the_shadow_totals_from_heartbeats(
    shadow_worker: tuple[WorkerProcess, int], redis_url: str, r: redis.Redis
) -> None:
    with Client(redis_url) as c:
        c.infer(SCALE, {"x": np.full((1, 2), 10, np.float32)}, timeout_s=30)

    def row() -> dict[str, Any] | None:
        return next((s for s in fleet_status(r)["shadow"] if s["model"] == SCALE), None)

    found = until(row, lambda s: s is not None and s["max_abs_error"] >= 10.0)
    assert found is not None
    assert (found["primary"], found["shadow"], found["failed"], found["compared"]) == (1, 2, 0, 0)
    assert found["mismatch"] >= 1 and found["max_abs_error"] == 10.0 and found["max_rel_error"] == 0.5
    assert found["latency_ratio"] is not None and found["latency_ratio"] > 0
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(fleet_status(r)))
    text = console.export_text()
    assert "shadow runs" in text and f"{SCALE}" in text and "1 -> 2" in text


# -- the comparison and the config, no worker needed


def test_compare_reports_errors_agreement_and_incomparable_outputs() -> None:
    a = {"p": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    b = {"p": np.array([[0.2, 0.8], [0.1, 0.9]], np.float32)}
    diffs = compare(a, b)
    assert not isinstance(diffs, str)
    d = diffs["p"]
    assert d.max_abs_error == pytest.approx(0.7) and d.max_rel_error == pytest.approx(0.7 / 0.9)
    assert (d.argmax_rows, d.argmax_agree) == (2, 1)
    assert "shape" in str(compare(a, {"p": np.zeros((3, 2), np.float32)}))
    assert "outputs" in str(compare(a, {"q": b["p"]}))
    assert beyond(diffs, 0.71) is None and "max abs error 0.7 > 0.5" in str(beyond(diffs, 0.5))


def test_nan_against_a_number_is_infinitely_off_and_nan_against_nan_agrees() -> None:
    a = {"y": np.array([1.0, np.nan, np.inf], np.float32)}
    same = compare(a, {"y": np.array([1.0, np.nan, np.inf], np.float32)})
    assert not isinstance(same, str) and same["y"].max_abs_error == 0.0 and beyond(same, 0.0) is None
    off = compare(a, {"y": np.array([1.0, 2.0, np.inf], np.float32)})
    assert not isinstance(off, str) and off["y"].max_abs_error == float("inf") and beyond(off, 1e9)


def test_shadow_config_is_validated() -> None:
    cfg = ModelConfig.parse("shadow = { version = 3, fraction = 0.1 }\nkeep_inputs = 50\n", "config.toml")
    assert cfg.shadow == ShadowSpec(3, 0.1) and cfg.keep_inputs == 50 and cfg.extra == {}
    assert cfg.shadow.max_abs_err == 1e-5  # the default tolerance
    tolerant = ModelConfig.parse("shadow = { version = 3, max_abs_err = 0.01 }\n", "config.toml")
    assert tolerant.shadow == ShadowSpec(3, 1.0, 0.01)
    for bad in (
        "shadow = { version = 0 }",
        "shadow = { version = 2, fraction = 1.5 }",
        "shadow = 3",
        "shadow = { version = 2, share = 0.1 }",
        "shadow = { version = 2, max_abs_err = -1 }",
        "shadow = { version = 2, max_abs_err = inf }",
        "shadow = { version = 2, max_abs_err = '1e-3' }",
        "keep_inputs = -1",
        "keep_inputs = 10000000",
    ):
        with pytest.raises(InvalidInput):
            ModelConfig.parse(bad, "config.toml")


def test_the_repository_serves_only_the_versions_listed_while_the_shadow_lies_beside_them(tmp_path: Path) -> None:
    from icow.workers.repository import Repository

    samples.scale(tmp_path / "m" / "1" / "model.onnx", 2.0)
    samples.scale(tmp_path / "m" / "2" / "model.onnx", 3.0)
    (tmp_path / "m" / "config.toml").write_text("versions = [1]\nshadow = { version = 2, fraction = 0.5 }\n")
    entry = Repository(tmp_path).scan()["m"]
    assert entry.versions == (1,) and entry.config.shadow == ShadowSpec(2, 0.5)


def test_a_full_shadow_queue_drops_the_job_instead_of_waiting(tmp_path: Path) -> None:
    """The intake never waits for the shadow: past the queue's bound, jobs are counted as dropped."""
    from icow import tensor
    from icow.workers.followup import Answered
    from icow.workers.models import ModelManager
    from icow.workers.repository import Repository
    from icow.workers.shadow import ShadowResult, ShadowRunner, ShadowStats

    samples.scale(tmp_path / "m" / "1" / "model.onnx", 2.0)
    samples.scale(tmp_path / "m" / "2" / "model.onnx", 3.0)
    (tmp_path / "m" / "config.toml").write_text("versions = [1]\nshadow = { version = 2, fraction = 1.0 }\n")
    manager = ModelManager(Repository(tmp_path))
    seen: list[ShadowResult] = []
    stats = ShadowStats()

    class Recorder:
        def shadow_done(self, result: ShadowResult) -> None:
            seen.append(result)

    runner = ShadowRunner(manager, [Recorder(), stats], queue_max=2)  # not started: nothing drains the queue
    x = tensor.encode("x", np.ones((1, 2), np.float32))
    y = tensor.encode("y", np.full((1, 2), 2, np.float32))
    answered = [
        Answered(
            f"job-{i}",
            {"id": f"job-{i}", "model": "m", "version": 1, "inputs": [x], "outputs": None},
            {"status": "SUCCESS", "result": {"outputs": [y], "timing": {"compute_s": 0.001, "batch_samples": 1}}},
            {},
        )
        for i in range(5)
    ]
    runner.jobs_answered(answered)
    assert [r.outcome for r in seen] == ["dropped"] * 3
    assert stats.snapshot()["shadow"][0]["dropped"] == 3
    runner.start()  # the two queued jobs now run on v2 and are compared
    runner.stop()
    assert [r.outcome for r in seen] == ["dropped"] * 3 + ["mismatch"] * 2  # |3 - 2| = 1 > 1e-5
    assert seen[-1].outputs["y"].max_abs_error == 1.0 and "max abs error 1 > 1e-05" in str(seen[-1].error)
    assert runner.run(answered[0], 2, max_abs_err=1.0).outcome == "compared"
    assert runner.run(answered[0], 2, max_abs_err=0.999).outcome == "mismatch"


def test_replay_jobs_are_not_shadowed(shadow_worker: tuple[WorkerProcess, int], redis_url: str) -> None:
    _, port = shadow_worker
    labels = {"model": SCALE, "primary": "1", "shadow": "2"}

    def counts(s: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[float, float]:
        return (
            metric(s, "icow_shadow_jobs_total", **labels, outcome="mismatch"),
            metric(s, "icow_shadow_max_abs_error_sum", **labels, output="y"),
        )

    jobs, errors = counts(scrape(port))
    with Client(redis_url) as c:
        c.submit(SCALE, {"x": np.ones((1, 2), np.float32)}, job_id=f"replay-{uuid.uuid4()}").result(timeout_s=30)
        c.infer(SCALE, {"x": np.full((1, 2), 100, np.float32)}, timeout_s=30)  # its shadow's error: 100
    # The shadow thread runs jobs in order: once the second job's error is in, the first was passed over.
    after = counts(until(lambda: scrape(port), lambda s: counts(s)[1] >= errors + 100))
    assert after == (jobs + 1, errors + 100)
