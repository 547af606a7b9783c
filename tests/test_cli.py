"""The `icow` command: demo, models, infer, and the model repository it serves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icow.errors import InvalidInput
from icow.workers import samples
from icow.workers.repository import Repository

from .conftest import WorkerProcess


def icow(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icow.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_a_whole_fleet_and_exits_0() -> None:
    proc = icow("demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches numpy: True" in proc.stdout
    assert "correct: True" in proc.stdout
    assert "InvalidJob" in proc.stdout
    assert "CPUExecutionProvider" in proc.stdout or "CUDAExecutionProvider" in proc.stdout
    assert proc.stdout.strip().endswith("demo OK")


def test_models_list_and_show(redis_url: str, worker: WorkerProcess) -> None:
    listed = json.loads(icow("models", "--redis", redis_url, "--json").stdout)
    assert listed["scale"] == [1, 2]
    shown = json.loads(icow("models", "show", "multi", "--redis", redis_url, "--json").stdout)
    assert shown["inputs"][1] == {"name": "ids", "datatype": "INT64", "shape": [-1, 2]}
    text = icow("models", "show", "mlp", "--redis", redis_url).stdout
    assert "input  x" in text and "FP32" in text


def test_infer_from_npz_and_npy_files(redis_url: str, worker: WorkerProcess, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    proc = icow("infer", "mlp", str(tmp_path / "in.npz"), "--out", str(tmp_path / "out"), "--redis", redis_url)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), samples.mlp_reference(x), atol=1e-5)
    np.save(tmp_path / "x.npy", np.ones((1, 2), np.float32))
    proc = icow(
        "infer",
        "scale",
        f"x={tmp_path / 'x.npy'}",
        "--version",
        "1",
        "--out",
        str(tmp_path / "o.npz"),
        "--redis",
        redis_url,
    )
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "o.npz")["y"].tolist() == [[2.0, 2.0]]


def test_infer_reports_a_failed_job_as_an_error(redis_url: str, worker: WorkerProcess, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 9), np.float32))
    proc = icow("infer", "mlp", f"x={tmp_path / 'x.npy'}", "--redis", redis_url)
    assert proc.returncode == 2
    assert "InvalidJob" in proc.stderr


def test_worker_refuses_an_empty_selection(model_repo: Path, redis_url: str) -> None:
    proc = icow("worker", "--repo", str(model_repo), "--redis", redis_url, "--models", "absent", timeout=60)
    assert proc.returncode == 2 and "no models among ['absent']" in proc.stderr


def test_repository_scan_and_version_policy(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        samples.scale(tmp_path / "m" / str(v) / "model.onnx", float(v))
    (tmp_path / "m" / "notaversion").mkdir()
    (tmp_path / "bad name").mkdir()
    assert Repository(tmp_path).scan()["m"].versions == (1, 2, 3)
    (tmp_path / "m" / "config.toml").write_text("versions = 'latest'\n")
    assert Repository(tmp_path).scan()["m"].versions == (3,)
    (tmp_path / "m" / "config.toml").write_text("versions = [1, 3]\npreload = false\nproviders = ['cpu']\n")
    entry = Repository(tmp_path).scan()["m"]
    assert entry.versions == (1, 3) and entry.config.preload is False and entry.config.providers == ("cpu",)
    (tmp_path / "m" / "config.toml").write_text("providers = ['metal']\n")
    with pytest.raises(InvalidInput, match="unknown providers"):
        Repository(tmp_path).scan()


def test_bench_sweeps_concurrency_and_times_bulk(redis_url: str, worker: WorkerProcess) -> None:
    proc = icow("bench", "mlp", "--redis", redis_url, "--concurrency", "1,4", "--duration", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["concurrency"] for r in doc["results"]] == [1, 4]
    assert all(r["jobs"] > 0 and r["errors"] == 0 and r["p50_ms"] <= r["p99_ms"] for r in doc["results"])
    proc = icow(
        "bench", "multi", "--redis", redis_url, "--mode", "bulk", "--samples", "500", "--samples-per-job", "100"
    )
    assert proc.returncode == 0, proc.stderr
    assert "500 samples in 5 jobs" in proc.stdout
