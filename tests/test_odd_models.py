"""Models as real users have them, end to end through a real worker: scalar inputs, a batch
axis that is not axis 0, symbolic dimensions, INT32 / INT64 / BOOL / string tensors both ways,
and models with no tensor output at all (refused at load, with the reason).
(FP16 outputs, several inputs and BYTES identity are in tests/test_e2e.py and test_bytes.py.)"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from icow.client import Client
from icow.errors import ModelNotFound
from icow.workers import samples
from icow.workers.heartbeat import live_workers

from . import oddmodels
from .conftest import WorkerProcess


@pytest.fixture(scope="module")
def odd_client(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Client]:
    repo = Path(tmp_path_factory.mktemp("oddrepo"))
    oddmodels.scalar(repo / "odd-scalar" / "1" / "model.onnx")
    oddmodels.batch_last(repo / "odd-batchlast" / "1" / "model.onnx")
    oddmodels.symbolic(repo / "odd-symbolic" / "1" / "model.onnx")
    oddmodels.int32_ops(repo / "odd-int32" / "1" / "model.onnx")
    oddmodels.labels(repo / "odd-labels" / "1" / "model.onnx")
    for m in ("odd-batchlast", "odd-symbolic", "odd-labels"):
        (repo / m / "config.toml").write_text("max_batch = 16\nproviders = ['cpu']\n")
    w = WorkerProcess(repo, redis_url, f"test-odd-{os.getpid()}@local")
    try:
        with Client(redis_url) as c:
            yield c
    finally:
        w.stop()


def test_scalar_inputs_and_outputs(odd_client: Client) -> None:
    info = odd_client.model("odd-scalar")
    assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [("x", "FP32", ()), ("n", "INT64", ())]
    jobs = [
        odd_client.submit("odd-scalar", {"x": np.array(1.5 * i, np.float32), "n": np.array(i, np.int64)})
        for i in range(8)
    ]
    for i, job in enumerate(jobs):
        y = job.result(timeout_s=30)["y"]
        assert y.shape == () and y.dtype == np.float32 and float(y) == 1.5 * i * i


def test_a_batch_axis_that_is_not_axis_0(odd_client: Client) -> None:
    """Jobs queued together are never concatenated along axis 0 (the model's batch is axis 1)."""
    info = odd_client.model("odd-batchlast")
    assert info.inputs[0].shape == (3, -1)
    xs = [np.arange(3 * n, dtype=np.float32).reshape(3, n) for n in (1, 2, 2, 5, 1, 3)]
    jobs = odd_client.submit_many("odd-batchlast", [{"x": x} for x in xs])
    for job, x in zip(jobs, xs):
        y = job.result(timeout_s=30)["y"]
        np.testing.assert_array_equal(y, x * np.array([[1], [10], [100]], np.float32))


def test_symbolic_dims_named_by_the_exporter(odd_client: Client) -> None:
    info = odd_client.model("odd-symbolic")
    assert info.inputs[0].shape == (-1, -1, 4)
    assert [(t.name, t.datatype, t.shape) for t in info.outputs] == [
        ("pooled", "FP32", (-1, 4)),
        ("lengths", "INT64", (-1,)),
    ]
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((b, s, 4)).astype(np.float32) for b, s in [(1, 3), (2, 3), (1, 7), (3, 1), (2, 7)]]
    jobs = odd_client.submit_many("odd-symbolic", [{"tokens": x} for x in xs])
    for job, x in zip(jobs, xs):
        out = job.result(timeout_s=30)
        np.testing.assert_allclose(out["pooled"], x.mean(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out["lengths"], np.full(x.shape[0], x.shape[1], np.int64))


def test_int32_in_int32_and_bool_out(odd_client: Client) -> None:
    x = np.array([[-2, 0], [5, 2**31 - 2]], np.int32)
    out = odd_client.infer("odd-int32", {"x": x}, timeout_s=30)
    assert out["y"].dtype == np.int32 and out["positive"].dtype == np.bool_
    np.testing.assert_array_equal(out["y"], x + 1)
    np.testing.assert_array_equal(out["positive"], x > 0)
    info = odd_client.model("odd-int32")
    assert [t.datatype for t in info.inputs] == ["INT32"]
    assert [t.datatype for t in info.outputs] == ["INT32", "BOOL"]


def test_strings_in_and_out_with_int64(odd_client: Client) -> None:
    info = odd_client.model("odd-labels")
    assert [t.datatype for t in info.inputs] == ["INT64", "BYTES"]
    assert [t.datatype for t in info.outputs] == ["BYTES", "INT64"]
    batch = [
        {"ids": np.array([0, 2, 9], np.int64), "words": np.array(["dog", "emu", "cat"])},
        {"ids": np.array([1], np.int64), "words": np.array(["eel"])},
        {"ids": np.array([2, 2], np.int64), "words": np.array(["", "dög"])},
    ]
    jobs = odd_client.submit_many("odd-labels", batch)
    want = [([b"cat", b"eel", b"?"], [1, -1, 0]), ([b"dog"], [2]), ([b"eel", b"eel"], [-1, -1])]
    for job, (names, codes) in zip(jobs, want):
        out = job.result(timeout_s=30)
        assert list(out["names"]) == names
        assert out["codes"].dtype == np.int64 and out["codes"].tolist() == codes


def test_a_model_with_no_tensor_output_is_refused_at_load_with_the_reason(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    """A model whose only output is a sequence (or a ZipMap) is never offered: it is failed at
    load like a file that does not load, and submit says why; the other models are served."""
    tag = uuid.uuid4().hex[:6]
    seq, zipm, good = f"seqonly{tag}", f"ziponly{tag}", f"good{tag}"
    oddmodels.sequence_only(tmp_path / seq / "1" / "model.onnx")
    oddmodels.zipmap_only(tmp_path / zipm / "1" / "model.onnx")
    samples.scale(tmp_path / good / "1" / "model.onnx", 2.0)
    name = f"test-notensor-{os.getpid()}@local"
    w = WorkerProcess(tmp_path, redis_url, name)
    try:
        with Client(redis_url) as c:
            assert c.infer(good, {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0] == 2.0
            assert good in c.models() and seq not in c.models() and zipm not in c.models()
            beat = next(b for b in live_workers(r) if b["name"] == name)
            assert set(beat["models"]) == {good}
            assert "has no tensor output ('parts' is seq(tensor(float)))" in beat["failed"][f"{seq}:1"]
            assert "'probabilities' is seq(map(string,tensor(float)))" in beat["failed"][f"{zipm}:1"]
            for model, kind in ((seq, "seq(tensor(float))"), (zipm, "seq(map(string,tensor(float)))")):
                with pytest.raises(ModelNotFound) as err:
                    c.submit(model, {"x": np.ones((1, 2), np.float32)})
                text = str(err.value)
                assert f"model '{model}' version 1 failed to load on worker {name}: InvalidInput:" in text
                assert "has no tensor output" in text and kind in text and "nothing was queued" in text
    finally:
        w.stop()
