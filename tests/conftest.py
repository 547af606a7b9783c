"""Fixtures: a real redis-server on a free loopback port, ONNX models built with onnx.helper,
and real worker processes (``icow worker``) serving them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from icow import connection
from icow.cli.fleet import LocalRedis, start_worker, stop_process
from icow.workers import samples
from icow.workers.heartbeat import live_workers

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    server = LocalRedis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: LocalRedis) -> str:
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


def build_repo(root: Path) -> Path:
    """The test repository: every model the end-to-end tests use."""
    from onnx import TensorProto

    samples.mlp(root / "mlp" / "1" / "model.onnx")
    samples.multi_io(root / "multi" / "1" / "model.onnx")
    samples.identity(root / "ident" / "1" / "model.onnx", rank=1)
    samples.identity(root / "text" / "1" / "model.onnx", datatype=TensorProto.STRING, rank=1)
    samples.scale(root / "scale" / "1" / "model.onnx", 2.0)
    samples.scale(root / "scale" / "2" / "model.onnx", 3.0)
    (root / "lazy" / "1").mkdir(parents=True)
    samples.scale(root / "lazy" / "1" / "model.onnx", 5.0)
    (root / "lazy" / "config.toml").write_text("preload = false\nproviders = ['cpu']\n")
    return root


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("repo"))


def wait_ready(url: str, name: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    conn = connection.connect(url)  # redis+sentinel:// too
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"worker exited with {proc.returncode}"
            if any(w["name"] == name and w.get("ready") for w in live_workers(conn)):
                return
            time.sleep(0.05)
    finally:
        conn.close()
    raise TimeoutError(f"worker {name} not ready")


class WorkerProcess:
    """A real ``icow worker`` process."""

    def __init__(
        self, repo: Path, url: str, name: str, extra: list[str] | None = None, env: dict[str, str] | None = None
    ):
        self.name = name
        self.proc = start_worker(
            repo,
            url,
            extra=["--name", name, "--threads", "1", *(extra or [])],
            quiet=not os.environ.get("ICOW_TEST_VERBOSE"),
            env=env,
        )
        wait_ready(url, name, self.proc)

    def stop(self) -> int:
        return stop_process(self.proc)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def worker(model_repo: Path, redis_url: str) -> Iterator[WorkerProcess]:
    """One worker serving the whole test repository, shared by the end-to-end tests."""
    w = WorkerProcess(model_repo, redis_url, f"test-main-{os.getpid()}@local")
    yield w
    w.stop()


@pytest.fixture
def client(redis_url: str, worker: WorkerProcess) -> Iterator[object]:
    from icow.client import Client

    with Client(redis_url) as c:
        yield c


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
