"""A model that is not served because it failed reads "failed" everywhere, never "ready": the
worker's ready line, its heartbeat, `icow status` (also at 80 columns), the exporter, and the
ModelNotFound of a submit, which says which version failed on which worker and why. A
config.toml value out of bounds fails only its own model. Real worker processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import keys
from icow.cli.fleet import stop_process
from icow.client import Client
from icow.errors import ModelNotFound
from icow.workers import samples
from icow.workers.exporter import FleetCollector
from icow.workers.heartbeat import live_workers

from . import oddmodels
from .conftest import wait_ready

ONE = {"x": np.ones((1, 2), np.float32)}
WORKER = [sys.executable, "-m", "icow.cli", "worker", "--threads", "1", "--loglevel", "INFO"]


def wait_until(pred: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def icow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icow.cli", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


def beat_of(r: redis.Redis, name: str) -> dict[str, Any]:
    return next(b for b in live_workers(r) if b["name"] == name)


def model_workers(r: redis.Redis, model: str) -> dict[str, float]:
    """icow_model_workers of ``model`` by state, as the exporter reports it."""
    for family in FleetCollector(r).collect():
        if family.name == "icow_model_workers":
            return {s.labels["state"]: s.value for s in family.samples if s.labels["model"] == model}
    raise AssertionError("no icow_model_workers")


def test_a_failed_model_is_failed_everywhere_and_submit_says_why(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    good, broken, badcfg = f"good{tag}", f"broken{tag}", f"badcfg{tag}"
    repo = tmp_path / "repo"
    samples.scale(repo / good / "1" / "model.onnx", 2.0)
    oddmodels.garbage(repo / broken / "1" / "model.onnx")
    samples.scale(repo / badcfg / "1" / "model.onnx", 3.0)
    (repo / badcfg / "config.toml").write_text('max_queue = "x"\n')
    name = f"test-failed-{os.getpid()}-{tag}@local"
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*WORKER, "--repo", str(repo), "--redis", redis_url, "--name", name, "--rescan", "0.2"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(redis_url, name, proc)
        with Client(redis_url) as c:
            assert c.infer(good, ONE, timeout_s=30)["y"][0, 0] == 2.0
            ready_line = next(line for line in log_path.read_text().splitlines() if f"worker {name} ready" in line)
            assert f"ready: models {good}; failed (not served): " in ready_line
            assert f"{broken}:1 (InvalidProtobuf" in ready_line and f"{badcfg}:1 (InvalidInput" in ready_line

            # The heartbeat: served models only; failed ones with the reason.
            beat = beat_of(r, name)
            assert beat["ready"] and set(beat["models"]) == {good}
            assert set(beat["failed"]) == {f"{broken}:1", f"{badcfg}:1"}
            assert "max_queue = 'x': must be an integer in 0..1000000" in beat["failed"][f"{badcfg}:1"]

            # `icow status`: 0 workers serve it, 1 failed it.
            doc = json.loads(icow("status", "--redis", redis_url, "--json").stdout)
            queues = {q["model"]: q for q in doc["queues"]}
            assert queues[broken]["workers"] == 0 and queues[broken]["ready_workers"] == 0
            assert queues[broken]["failed_workers"] == 1 and queues[good]["failed_workers"] == 0
            view = icow("status", "--redis", redis_url, COLUMNS="80")
            assert view.returncode == 0, view.stderr
            assert all(len(line) <= 80 for line in view.stdout.splitlines()), view.stdout
            assert f"failed to load: {broken}:1" in view.stdout and "1 failed" in view.stdout

            # The exporter: failed, never ready.
            assert model_workers(r, broken) == {"alive": 0, "ready": 0, "failed": 1}
            assert model_workers(r, good)["ready"] == 1 and model_workers(r, good)["failed"] == 0

            # submit says which version failed on which worker, and why; pinned too.
            for version in (None, 1):
                with pytest.raises(ModelNotFound) as err:
                    c.submit(broken, ONE, version=version)
                assert f"model '{broken}' version 1 failed to load on worker {name}: InvalidProtobuf" in str(err.value)
            with pytest.raises(ModelNotFound) as err:
                c.submit(badcfg, ONE)
            assert f"model '{badcfg}' version 1 failed to load on worker {name}: InvalidInput" in str(err.value)
            assert "max_queue = 'x'" in str(err.value)
            with pytest.raises(ModelNotFound) as err:
                c.submit(broken, ONE, version=2)  # no report about version 2: the plain message
            assert "failed to load" not in str(err.value) and "nothing was queued" in str(err.value)

            # Fixed config at a rescan: served; a model added meanwhile is published without a
            # "Redis lost the published models" warning (Redis lost nothing).
            (repo / badcfg / "config.toml").write_text("max_queue = 5\n")
            samples.scale(tmp_path / "new.onnx", 7.0)
            (repo / f"new{tag}" / "1").mkdir(parents=True)
            shutil.move(tmp_path / "new.onnx", repo / f"new{tag}" / "1" / "model.onnx")
            wait_until(lambda: badcfg in c.models() and f"new{tag}" in c.models())
            assert wait_until(lambda: _answers(c, badcfg)) == 3.0
            wait_until(lambda: set(beat_of(r, name)["failed"]) == {f"{broken}:1"})
            assert "Redis lost the published models" not in log_path.read_text()
            assert r.hkeys(keys.failed(badcfg)) == []
    finally:
        stop_process(proc, timeout_s=30)
    assert r.hkeys(keys.failed(broken)) == []  # withdrawn at shutdown


def _answers(c: Client, model: str) -> float | None:
    try:
        return float(c.infer(model, ONE, timeout_s=30)["y"][0, 0])
    except ModelNotFound:
        return None
