"""Operating a fleet: `icow status`, health checks, graceful shutdown, GPU provider options,
and `icow infer` over many inputs. Real Redis, real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from onnx import TensorProto, helper, numpy_helper

from icow import keys
from icow.client import Client
from icow.errors import InvalidInput, InvalidJob
from icow.workers import samples
from icow.workers.repository import ModelConfig
from icow.workers.runtime import GpuOptions, OnnxModel, parse_bytes, provider_list

from .conftest import WorkerProcess

ICOW = [sys.executable, "-m", "icow.cli"]


def icow(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ICOW, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


def status(url: str) -> dict[str, Any]:
    proc = icow("status", "--redis", url, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def wait_for(pred: Any, timeout_s: float = 20.0, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(poll_s)
    raise AssertionError("condition not met in time")


# -- icow status


def test_status_of_a_live_fleet(redis_url: str, client: Client, worker: WorkerProcess) -> None:
    client.infer("scale", {"x": np.ones((1, 2), np.float32)}, timeout_s=30)
    bad = client.submit("mlp", {"x": np.ones((1, 7), np.float32)})
    with pytest.raises(InvalidJob):
        bad.result(timeout_s=30)

    def mine() -> dict[str, Any] | None:  # counters travel with the next heartbeat (every 2 s)
        doc = status(redis_url)
        me = next(w for w in doc["workers"] if w["name"] == worker.name)
        return doc if me["jobs"] >= 1 and me["failures"] >= 1 else None

    doc = wait_for(mine, 10)
    me = next(w for w in doc["workers"] if w["name"] == worker.name)
    assert me["ready"] is True
    assert me["models"]["scale"] == [1, 2]
    assert me["providers"]["scale:2"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert "InvalidJob" in me["last_error"]
    queues = {q["model"]: q for q in doc["queues"]}
    assert queues["scale"]["backlog"] == 0 and queues["scale"]["oldest_age_s"] is None
    assert queues["scale"]["ready_workers"] >= 1
    failure = next(f for f in doc["recent_failures"] if f["id"] == bad.id)
    assert failure["error"] == "InvalidJob" and failure["model"] == "mlp" and "shape" in failure["message"]
    # The terminal view renders the same facts.
    view = icow("status", "--redis", redis_url, COLUMNS="200")
    assert view.returncode == 0 and worker.name[:10] in view.stdout and "recent failures" in view.stdout


def test_status_fits_80_columns_and_cuts_messages_at_a_word() -> None:
    from rich.console import Console

    from icow.cli.status import render, shorten

    assert shorten("input 'x' has shape [1, 7]", 20) == "input 'x' has…"
    assert shorten("short", 20) == "short" and shorten("line\nbreaks\ttoo", 40) == "line breaks too"
    now = time.time()
    reason = "InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /tmp/x failed"
    doc = {
        "time": now,
        "queues": [
            {"model": "classifier", "backlog": 1200, "oldest_age_s": 75.0, "jobs_per_s": 1234.5}
            | {"workers": 12, "ready_workers": 11, "failed_workers": 1}
        ],
        "workers": [
            {
                "name": f"icow-local{i}-1234567@build-host-{i}.example.com",
                "host": "build-host.example.com",
                "device": 0,
                "ready": True,
                "models": {"classifier": [1, 2], "mlp": [3]},
                "providers": {"mlp:3": "CUDAExecutionProvider", "classifier:1": "CPUExecutionProvider"},
                "cpu_fallback": ["classifier:1"],
                "failed_models": {"broken:1": reason},
                "jobs": 1234567,
                "failures": 42,
                "last_error": "InvalidJob: input 'x' has shape [1, 7]; the model expects [-1, 4] (-1: any) " * 2,
            }
            for i in range(3)
        ],
        "recent_failures": [
            {"time": now - 3, "id": str(uuid.uuid4()), "model": "mlp", "version": 3, "error": "InvalidJob"}
            | {"message": "input 'x' has shape [1, 7]; the model expects [-1, 4] (-1: any), and more words " * 3}
        ],
        "shadow": [],
    }
    console = Console(width=80, record=True, color_system=None)
    console.print(render(doc, 80))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [i for i, line in enumerate(lines) if line.startswith(" icow-local")]  # notes start with 2 spaces
    assert len(rows) == 3 and rows[1] - rows[0] <= 3 and rows[2] - rows[1] <= 3  # a worker row: at most 3 lines
    cut = [line for line in lines if line.endswith("…")]
    assert cut and all(line[-2] != " " for line in cut)  # cut between words, ellipsis after the last
    assert any("failed to load: broken:1" in line for line in lines)
    assert any(line.strip().startswith("InvalidProtobuf: [ONNXRuntimeError]") for line in lines)


def test_status_shows_waiting_jobs_and_a_killed_worker_disappears(redis_url: str, tmp_path: Path) -> None:
    model = f"only{uuid.uuid4().hex[:6]}"
    samples.scale(tmp_path / model / "1" / "model.onnx", 2.0)
    name = f"doomed-{model}@local"
    w = WorkerProcess(tmp_path, redis_url, name, ["--heartbeat-ttl", "2"])
    alive = status(redis_url)
    assert any(x["name"] == name and x["ready"] for x in alive["workers"])
    w.kill()  # SIGKILL: no goodbye, the heartbeat just stops
    with Client(redis_url) as c:
        c.submit(model, {"x": np.ones((1, 2), np.float32)})  # waits: nobody else serves it

    def gone() -> dict[str, Any] | None:
        doc = status(redis_url)
        return doc if all(x["name"] != name for x in doc["workers"]) else None

    doc = wait_for(gone, 10)
    waiting = next(q for q in doc["queues"] if q["model"] == model)
    assert waiting["backlog"] == 1 and waiting["oldest_age_s"] is not None and waiting["workers"] == 0


# -- health


def test_health_is_ok_only_for_a_live_ready_worker(redis_url: str, model_repo: Path) -> None:
    name = f"health-{uuid.uuid4().hex[:6]}@local"
    assert icow("health", "--redis", redis_url, "--worker", name).returncode == 1  # not started
    w = WorkerProcess(model_repo, redis_url, name, ["--models", "scale", "--heartbeat-ttl", "2"])
    ok = icow("health", "--redis", redis_url, "--worker", name)
    assert ok.returncode == 0 and "ready" in ok.stdout
    assert icow("worker", "--check", "--name", name, "--redis", redis_url).returncode == 0
    w.kill()
    wait_for(lambda: icow("health", "--redis", redis_url, "--worker", name).returncode == 1, 10)


def test_health_without_redis_fails() -> None:
    assert icow("health", "--redis", "redis://127.0.0.1:1/0").returncode != 0


# -- graceful shutdown


def slow_model(path: Path, width: int = 1024, steps: int = 48) -> Path:
    """x [N, width] -> y: ``steps`` matmuls by the identity (slow on purpose, exact result)."""
    eye = numpy_helper.from_array(np.eye(width, dtype=np.float32), "eye")
    nodes, prev = [], "x"
    for i in range(steps):
        out = "y" if i == steps - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "eye"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [eye],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_sigterm_finishes_the_job_in_flight(redis_url: str, tmp_path: Path, r: redis.Redis) -> None:
    model = f"slow{uuid.uuid4().hex[:6]}"
    slow_model(tmp_path / model / "1" / "model.onnx")
    (tmp_path / model / "config.toml").write_text("providers = ['cpu']\n")
    w = WorkerProcess(tmp_path, redis_url, f"{model}@local")
    x = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)  # about 2 s of work
    with Client(redis_url) as c:
        job = c.submit(model, {"x": x})
        wait_for(lambda: job.status() == "running", 30, poll_s=0.01)
        assert r.get(keys.result(job.id)) is None  # still computing when the signal arrives
        assert w.proc.poll() is None
        w.proc.terminate()  # SIGTERM: Celery's warm shutdown
        out = job.result(timeout_s=60)
        np.testing.assert_allclose(out["y"], x, rtol=1e-5)
        assert w.proc.wait(60) == 0


# -- GPU placement: provider options built from config.toml (no GPU needed)


def test_cuda_and_tensorrt_provider_options_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        'providers = ["tensorrt", "cuda", "cpu"]\n'
        'gpu_mem_limit = "2GiB"\n'
        'arena_extend_strategy = "kSameAsRequested"\n'
        'cudnn_conv_algo_search = "HEURISTIC"\n'
        "tensorrt_fp16 = true\n"
        'tensorrt_cache_dir = "/cache/trt"\n'
    )
    c = ModelConfig.load(cfg)
    assert c.extra == {}
    assert provider_list(c.providers, device=3, gpu=c.gpu) == [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": 3,
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": "/cache/trt",
            },
        ),
        (
            "CUDAExecutionProvider",
            {
                "device_id": 3,
                "gpu_mem_limit": 2 * 1024**3,
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC",
            },
        ),
        "CPUExecutionProvider",
    ]
    assert provider_list(("cuda", "cpu"), device=1) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize(
    "line",
    ["gpu_mem_limit = -1", 'gpu_mem_limit = "lots"', 'arena_extend_strategy = "kAlways"', "cudnn_conv_algo_search = 1"],
)
def test_bad_gpu_settings_are_refused(tmp_path: Path, line: str) -> None:
    (tmp_path / "config.toml").write_text(line + "\n")
    with pytest.raises(InvalidInput):
        ModelConfig.load(tmp_path / "config.toml")


def test_sizes() -> None:
    assert parse_bytes(1024) == 1024
    assert parse_bytes("512MB") == 512 * 1000**2
    assert parse_bytes("1.5 GiB") == int(1.5 * 1024**3)
    assert GpuOptions().gpu_mem_limit is None


def test_cuda_requested_on_a_host_without_gpu_falls_back_visibly(tmp_path: Path) -> None:
    path = samples.scale(tmp_path / "m.onnx", 2.0)
    m = OnnxModel("m", 1, path, providers=("cuda", "cpu"), gpu=GpuOptions(gpu_mem_limit=1 << 30))
    if m.providers[0] == "CUDAExecutionProvider":
        pytest.skip("this host has a GPU")
    assert m.cpu_fallback is True
    assert OnnxModel("m", 1, path, providers=("cpu",)).cpu_fallback is False


# -- icow infer over many inputs: progress, outputs, a manifest of job ids, --resume


def test_infer_a_folder_of_npz_files(redis_url: str, worker: WorkerProcess, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    xs = {f"in{i}": rng.standard_normal((2, 4)).astype(np.float32) for i in range(5)}
    (tmp_path / "inputs").mkdir()
    for name, x in xs.items():
        np.savez(tmp_path / "inputs" / f"{name}.npz", x=x)
    proc = icow("infer", "mlp", str(tmp_path / "inputs"), "--out", str(tmp_path / "out"), "--redis", redis_url)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "5/5" in proc.stderr  # the progress bar
    for name, x in xs.items():
        with np.load(tmp_path / "out" / f"{name}.npz") as z:
            np.testing.assert_allclose(z["y"], samples.mlp_reference(x), atol=1e-5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"] == "mlp" and len(manifest["jobs"]) == 5


def test_infer_many_samples_of_one_npz_along_the_batch_axis(
    redis_url: str, worker: WorkerProcess, tmp_path: Path
) -> None:
    x = np.random.default_rng(2).standard_normal((10, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "y.npz"
    proc = icow(
        "infer", "mlp", str(tmp_path / "x.npz"), "--many", "--chunk", "3", "--out", str(out), "--redis", redis_url
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    with np.load(out) as z:
        np.testing.assert_allclose(z["y"], samples.mlp_reference(x), atol=1e-5)
    manifest = json.loads((tmp_path / "y.npz.manifest.json").read_text())
    assert [(j["start"], j["stop"]) for j in manifest["jobs"]] == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_an_interrupted_run_is_resumed_from_its_manifest(redis_url: str, tmp_path: Path) -> None:
    from icow.cli import bulk

    model = f"later{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo"
    samples.scale(repo / model / "1" / "model.onnx", 2.0)
    WorkerProcess(repo, redis_url, f"{model}-a@local").stop()  # published, then nobody serves it
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "y.npz"
    args = ["infer", model, str(tmp_path / "x.npz"), "--many", "--chunk", "2", "--out", str(out)]
    first = icow(*args, "--timeout", "1", "--redis", redis_url)
    # Nobody serves the model: the first job is refused at submit, after the manifest was written.
    assert first.returncode == 2 and "ModelNotFound" in first.stderr, first.stderr
    manifest = tmp_path / "y.npz.manifest.json"
    assert manifest.is_file()
    # A run interrupted before it submitted anything: only its manifest exists.
    never = bulk.plan(model, None, tmp_path / "x.npz", tmp_path / "z.npz", many=True, chunk=4)
    never.save(tmp_path / "never.json")
    w = WorkerProcess(repo, redis_url, f"{model}-b@local")
    try:
        again = icow("infer", "--resume", str(manifest), "--redis", redis_url)
        assert again.returncode == 0, again.stderr + again.stdout
        with np.load(out) as z:
            np.testing.assert_array_equal(z["y"], x * 2)
        resubmitted = icow("infer", "--resume", str(tmp_path / "never.json"), "--redis", redis_url)
        assert resubmitted.returncode == 0, resubmitted.stderr + resubmitted.stdout
        with np.load(tmp_path / "z.npz") as z:
            np.testing.assert_array_equal(z["y"], x * 2)
    finally:
        w.stop()
