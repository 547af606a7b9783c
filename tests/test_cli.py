"""The `icow` command: demo, models, infer, and the model repository it serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from icow import keys
from icow.cli.fleet import LocalRedis
from icow.cli.tools import output_filename, write_outputs
from icow.codec import packb
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
    assert "embedded valkey-server (AOF on)" in proc.stdout
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
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("icow: error: InvalidJob: ") and line.count("InvalidJob") == 1, line


def odd_names_model(path: Path) -> Path:
    """FP32 ``x`` -> outputs named ``a/b`` (x) and ``../x`` (2x): names that are not file names."""
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a/b"]), helper.make_node("Mul", ["x", "two"], ["../x"])],
        "odd_names",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("a/b", "../x")],
        initializer=[two],
    )
    return samples._save(samples._model(graph), path)


def test_output_names_become_escaped_file_names_never_paths() -> None:
    assert output_filename("y") == "y.npy"
    assert output_filename("a/b") == "a%2Fb.npy"
    assert output_filename("../x") == "%2E.%2Fx.npy"
    assert output_filename("..") == "%2E..npy" and output_filename(".env") == "%2Eenv.npy"
    assert output_filename("x\0y") == "x%00y.npy" and output_filename("") == "%.npy"
    odd = ["a/b", "a%2Fb", "../x", "..", ".", "", "x\0", "/etc/passwd", "\\x", "é", "%", ".a", "%2Ea"]
    files = [output_filename(n) for n in odd]
    assert len(set(files)) == len(odd)  # distinct names never share a file
    assert all("/" not in f and "\0" not in f and not f.startswith(".") for f in files)
    with pytest.raises(InvalidInput, match="too long"):
        output_filename("y" * 300)


def test_outputs_with_hostile_names_stay_inside_the_out_folder(tmp_path: Path) -> None:
    outputs = {n: np.full(2, i, np.float32) for i, n in enumerate(["a/b", "../x", "..", "/abs", "ok"])}
    written = write_outputs(tmp_path / "out", outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    assert sorted(p.name for p in written) == ["%2E.%2Fx.npy", "%2E..npy", "%2Fabs.npy", "a%2Fb.npy", "ok.npy"]
    assert [float(np.load(p)[0]) for p in written] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_infer_out_dir_escapes_output_names(redis_url: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    odd_names_model(repo / "odd" / "1" / "model.onnx")
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "x.npy", np.array([1.0, 2.0], np.float32))
    work = tmp_path / "work"
    work.mkdir()
    w = WorkerProcess(repo, redis_url, f"test-odd-{os.getpid()}@local")
    try:
        proc = icow("infer", "odd", f"x={tmp_path / 'in' / 'x.npy'}", "--out", str(work / "out"), "--redis", redis_url)
    finally:
        w.stop()
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # nothing written beside the folder
    assert sorted(p.name for p in (work / "out").iterdir()) == ["%2E.%2Fx.npy", "a%2Fb.npy"]
    assert np.load(work / "out" / "a%2Fb.npy").tolist() == [1.0, 2.0]
    assert np.load(work / "out" / "%2E.%2Fx.npy").tolist() == [2.0, 4.0]


@pytest.fixture
def own_redis() -> object:
    server = LocalRedis()
    yield server
    server.stop()


def test_failures_print_readable_records(own_redis: LocalRedis) -> None:
    r = redis.Redis.from_url(own_redis.url)
    refused = {  # as a worker records a message it could not parse: no model, no version
        "id": "bad:0123",
        "error": "InvalidJob",
        "message": "not a task message",
        "model": None,
        "version": None,
        "sample": b"\x80\x81junk",
        "deliveries": 1,
        "time": 1_790_000_000.0,
    }
    poison = {"id": "job-1", "error": "InternalError", "message": "poison job", "model": "mlp", "version": 2}
    poison |= {"worker": "w1@host", "deliveries": 3, "time": 1_790_000_060.0}
    for rec in (refused, poison):
        r.set(keys.dead(str(rec["id"])), packb(rec))
        r.lpush(keys.DEAD, str(rec["id"]))
    meta = {"status": "FAILURE", "task_id": "job-1"}
    meta["result"] = {"exc_type": "InternalError", "exc_message": ["poison job"]}
    r.set(keys.result("job-1"), packb(meta))
    r.close()

    listed = icow("failures", "--redis", own_redis.url)
    assert listed.returncode == 0, listed.stderr
    first, second = listed.stdout.strip().splitlines()
    assert first.startswith("2026-09-21 14:14:20 UTC  job-1  mlp v2  InternalError: poison job")
    assert second.startswith("2026-09-21 14:13:20 UTC  bad:0123  -  InvalidJob: not a task message")
    assert "vNone" not in listed.stdout and "None" not in listed.stdout

    shown = icow("failures", "show", "job-1", "--redis", own_redis.url)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.strip().split(": ", 1) for line in shown.stdout.strip().splitlines())
    assert fields["time"] == "2026-09-21 14:14:20 UTC"
    assert fields["model"] == "mlp v2" and fields["worker"] == "w1@host"
    assert fields["result"] == "InternalError: poison job"
    assert "(" not in shown.stdout and "None" not in shown.stdout  # no Python tuples or None
    bad = icow("failures", "show", "bad:0123", "--redis", own_redis.url)
    assert "sample: \\x80\\x81junk" in bad.stdout and "b'" not in bad.stdout

    missing = icow("failures", "show", "nope", "--redis", own_redis.url)
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("icow: error: JobNotFound: no dead-letter record for job nope")


def aof_holds(folder: Path, text: bytes) -> bool:
    """Whether the append-only file in ``folder`` already contains ``text`` (written, so a
    SIGKILL of the server cannot lose it; only the OS could, within the fsync second)."""
    return any(text in p.read_bytes() for p in folder.rglob("*.aof*") if p.is_file())


def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_local_redis_keeps_its_data_across_a_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    server = LocalRedis(persist=True, data_dir=data)
    r = redis.Redis.from_url(server.url)
    r.rpush("icow:q:mlp", *[f"job-{i}" for i in range(100)])
    r.set("last", "written")
    r.close()
    wait_for(lambda: aof_holds(data, b"last"))
    server.kill()  # a crash: no shutdown, no final flush

    again = LocalRedis(persist=True, data_dir=data)
    try:
        r = redis.Redis.from_url(again.url)
        assert r.llen("icow:q:mlp") == 100 and r.get("last") == b"written"
        r.close()
        with pytest.raises(Exception, match="in use by another ICOW Redis"):
            LocalRedis(persist=True, data_dir=data)  # one server per folder
    finally:
        again.stop()
    assert data.is_dir()  # a folder the caller gave is never removed

    ephemeral = LocalRedis(persist=False, data_dir=tmp_path / "eph")
    r = redis.Redis.from_url(ephemeral.url)
    r.set("last", "written")
    r.close()
    ephemeral.kill()
    ephemeral = LocalRedis(persist=False, data_dir=tmp_path / "eph")
    try:
        r = redis.Redis.from_url(ephemeral.url)
        assert r.get("last") is None  # what persistence buys: without it the data is gone
        r.close()
    finally:
        ephemeral.stop()


def start_up(*args: str, cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """`icow up` (Redis only: --workers 0) and the ICOW_REDIS_URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "icow.cli", "up", "--workers", "0", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ICOW_REDIS_URL="):
            return proc, line.split("=", 1)[1].strip()
    raise AssertionError("icow up exited: " + "".join(lines))


def stop_up(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    if proc.stdout is not None:
        proc.stdout.close()


def test_icow_up_keeps_its_jobs_in_a_data_folder_across_restarts(tmp_path: Path) -> None:
    proc, url = start_up(cwd=tmp_path)
    r = redis.Redis.from_url(url)
    r.rpush("icow:q:mlp", "job-1", "job-2")
    r.close()
    stop_up(proc)
    assert (tmp_path / ".icow" / "redis" / "appendonlydir").is_dir()  # the default data folder

    proc, url = start_up(cwd=tmp_path)
    r = redis.Redis.from_url(url)
    assert r.lrange("icow:q:mlp", 0, -1) == [b"job-1", b"job-2"]
    assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
    r.close()
    stop_up(proc)

    proc, url = start_up("--ephemeral", cwd=tmp_path / "..")
    r = redis.Redis.from_url(url)
    assert r.config_get("appendonly") == {"appendonly": "no"} and r.llen("icow:q:mlp") == 0
    r.close()
    stop_up(proc)


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
    repo = Repository(tmp_path)
    assert "m" not in repo.scan()  # refused alone, each version reported failed with the reason
    assert set(repo.failed) == {("m", 1), ("m", 2), ("m", 3)}
    assert "providers = ['metal']: must be a non-empty list of distinct names" in repo.failed[("m", 1)]


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
