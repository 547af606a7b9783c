"""Each job fails alone, and so does each model.

A model with an output that is not a tensor (sklearn-onnx's default ZipMap output, a sequence)
beside tensor outputs answers its tensor outputs by default; only a job that asks for the other
by name fails, with an error naming it, its type and the outputs that can be returned. (A model
with no tensor output at all is refused at load: tests/test_odd_models.py.) A model file that
does not load is reported (worker heartbeat, `icow status`, the ``icow_model_failed`` metric)
while the worker serves the rest, and is served once a valid file replaces it. `icow up` keeps running through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import functions, keys
from icow.cli.fleet import free_port, stop_process
from icow.client import Client
from icow.codec import unpackb
from icow.errors import InvalidJob, ModelNotFound
from icow.workers import samples
from icow.workers.heartbeat import live_workers

from . import oddmodels
from .conftest import WorkerProcess


def wait_until(pred: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_model_with_a_map_or_sequence_output_fails_only_its_own_jobs(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    zipm, seqm, mlp, scale = f"zip{tag}", f"seq{tag}", f"mlp{tag}", f"scale{tag}"
    oddmodels.zipmap_classifier(tmp_path / zipm / "1" / "model.onnx")
    oddmodels.sequence_output(tmp_path / seqm / "1" / "model.onnx")
    samples.mlp(tmp_path / mlp / "1" / "model.onnx")
    samples.scale(tmp_path / scale / "1" / "model.onnx", 2.0)
    functions.install(r)
    x3 = {"x": np.array([[0.0, 5.0, 1.0]], np.float32)}
    x2 = {"x": np.ones((1, 2), np.float32)}
    # One burst, queued before the worker starts so that it finds all of it at once.
    with Client(redis_url, require_published=False) as c:
        innocent_mlp = c.submit_many(mlp, [{"x": np.full((1, 4), i, np.float32)} for i in range(10)])
        zip_jobs = c.submit_many(zipm, [x3, x3, x3])  # no outputs named: the tensor outputs
        zip_probs = c.submit(zipm, x3, outputs=["label", "probabilities"])
        zip_labels = c.submit(zipm, x3, outputs=["label"])
        seq_bad = c.submit(seqm, x2, outputs=["parts"])
        seq_good = c.submit(seqm, x2, outputs=["y"])
        seq_default = c.submit(seqm, x2)
        innocent_scale = c.submit_many(scale, [{"x": np.full((1, 2), i, np.float32)} for i in range(10)])
        w = WorkerProcess(tmp_path, redis_url, f"test-zip-{os.getpid()}@local")
        try:
            for job in zip_jobs:
                out = job.result(timeout_s=60)
                assert list(out) == ["label"] and out["label"].tolist() == [1]
            with pytest.raises(InvalidJob) as err:
                zip_probs.result(timeout_s=60)
            message = str(err.value)
            assert "'probabilities'" in message and "seq(map(int64,tensor(float)))" in message
            assert "not a tensor" in message and "outputs=['label']" in message
            with pytest.raises(InvalidJob, match=r"'parts'.*seq\(tensor\(float\)\).*outputs=\['y'\]"):
                seq_bad.result(timeout_s=60)
            assert zip_labels.result(timeout_s=60)["label"].tolist() == [1]  # its tensor output works
            np.testing.assert_array_equal(seq_good.result(timeout_s=60)["y"], x2["x"])
            assert list(seq_default.result(timeout_s=60)) == ["y"]
            for i, job in enumerate(innocent_mlp):
                x = np.full((1, 4), i, np.float32)
                np.testing.assert_allclose(job.result(timeout_s=60)["y"], samples.mlp_reference(x), atol=1e-5)
            for i, job in enumerate(innocent_scale):
                assert job.result(timeout_s=60)["y"][0, 0] == 2.0 * i
            assert c.infer(zipm, x3, outputs=["label"], timeout_s=30)["label"].tolist() == [1]
            assert c.infer(zipm, x3, timeout_s=30)["label"].tolist() == [1]

            # The metadata lists the output as unsupported, never as a datatype ICOW does not have.
            info = c.model(zipm)
            assert [(t.name, t.datatype) for t in info.outputs] == [("label", "INT64")]
            meta = unpackb(r.hget(keys.model(zipm), "1"))
            assert meta["unsupported_outputs"] == [{"name": "probabilities", "type": "seq(map(int64,tensor(float)))"}]
            assert w.proc.poll() is None
        finally:
            w.stop()


def _status_json(redis_url: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "icow.cli", "status", "--redis", redis_url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _metric(port: int, name: str) -> dict[str, float]:
    """Samples of one metric from the worker's /metrics: label text -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


def test_a_model_that_does_not_load_is_reported_and_served_once_fixed(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    good, broken = f"good{tag}", f"broken{tag}"
    samples.scale(tmp_path / good / "1" / "model.onnx", 2.0)
    oddmodels.garbage(tmp_path / broken / "1" / "model.onnx")
    port = free_port()
    name = f"test-broken-{os.getpid()}@local"
    w = WorkerProcess(tmp_path, redis_url, name, ["--rescan", "0.2", "--metrics-port", str(port)])
    try:
        with Client(redis_url) as c:
            assert c.infer(good, {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0] == 2.0
            with pytest.raises(ModelNotFound):
                c.submit(broken, {"x": np.ones((1, 2), np.float32)})
            # Reported: the heartbeat, `icow status`, the metric.
            beat = next(b for b in live_workers(r) if b["name"] == name)
            assert f"{broken}:1" in beat["failed"] and "InvalidProtobuf" in beat["failed"][f"{broken}:1"]
            row = next(wk for wk in _status_json(redis_url)["workers"] if wk["name"] == name)
            assert list(row["failed_models"]) == [f"{broken}:1"]
            assert _metric(port, "icow_model_failed") == {f'{{model="{broken}",version="1"}}': 1.0}
            plain = subprocess.run(
                [sys.executable, "-m", "icow.cli", "status", "--redis", redis_url],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "COLUMNS": "400"},
            )
            assert f"failed to load: {broken}:1" in plain.stdout

            # A valid file replaces it (atomically, as a copy tool would): served at the rescan.
            samples.scale(tmp_path / "fixed.onnx", 5.0)
            os.replace(tmp_path / "fixed.onnx", tmp_path / broken / "1" / "model.onnx")
            wait_until(lambda: broken in c.models())
            wait_until(lambda: not next(b for b in live_workers(r) if b["name"] == name)["failed"])
            wait_until(lambda: _try_infer(c, broken))
            assert c.infer(broken, {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0] == 5.0
            assert _metric(port, "icow_model_failed") == {}
            assert w.proc.poll() is None
    finally:
        w.stop()


def _try_infer(c: Client, model: str) -> bool:
    """Whether a job for ``model`` is accepted now (its version is live) and succeeds."""
    try:
        c.infer(model, {"x": np.ones((1, 2), np.float32)}, timeout_s=30)
    except ModelNotFound:
        return False
    return True


def test_icow_up_keeps_running_with_a_model_that_does_not_load(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    good, broken = f"upgood{tag}", f"upbroken{tag}"
    samples.scale(tmp_path / "repo" / good / "1" / "model.onnx", 3.0)
    oddmodels.garbage(tmp_path / "repo" / broken / "1" / "model.onnx")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "icow.cli", "up", "--redis", redis_url, "--repo", str(tmp_path / "repo")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: b"Press Ctrl-C" in (tmp_path / "up.log").read_bytes() or up.poll() is not None, 120)
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        with Client(redis_url) as c:
            assert c.infer(good, {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0] == 3.0
            mine = [b for b in live_workers(r) if b["name"].startswith(f"icow-local0-{up.pid}@")]
            assert mine and f"{broken}:1" in mine[0]["failed"]
        assert up.poll() is None  # still up, serving the rest
    finally:
        up.send_signal(signal.SIGINT)
        stop_process(up, timeout_s=30)
        log.close()
