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

# -- unit / integration: every test is one or the other (pyproject.toml registers the markers).
# A test is `integration` when it, or any fixture it uses (directly or through other fixtures),
# starts something real: a redis-server, a worker or fleet, a Sentinel, another process. The
# rest are `unit` (`pytest -m unit` runs in seconds, no server).
_REAL = (
    "LocalRedis(",
    "WorkerProcess(",
    "start_worker(",
    "LocalFleet(",
    "redis_server",
    "run_python(",
    "subprocess.",
    "Popen(",
    "multiprocessing",
    "S3Server(",
)
_real_cache: dict[object, bool] = {}
_helper_cache: dict[object, tuple[str, ...]] = {}


def _starts_something(fn: object) -> bool:
    import inspect

    if fn not in _real_cache:
        try:
            source = inspect.getsource(fn)  # type: ignore[arg-type]
        except (OSError, TypeError):
            source = ""
        _real_cache[fn] = any(sign in source for sign in _REAL)
    return _real_cache[fn]


def _helpers(module: object) -> tuple[str, ...]:
    """Names of the module's own and imported helpers (functions, classes) that start
    something, followed two calls deep: a test calling one of them is an integration test."""
    import inspect

    if module not in _helper_cache:
        found: set[str] = set()
        members = [(n, o) for n, o in vars(module).items() if inspect.isfunction(o) or inspect.isclass(o)]
        members = [(n, o) for n, o in members if (getattr(o, "__module__", "") or "").startswith(("tests", "icow.cli"))]
        for _ in range(2):
            signs = (*_REAL, *(f"{n}(" for n in found))
            for name, obj in members:
                try:
                    source = inspect.getsource(obj)
                except (OSError, TypeError):
                    continue
                if any(sign in source for sign in signs):
                    found.add(name)
        _helper_cache[module] = tuple(f"{n}(" for n in sorted(found))
    return _helper_cache[module]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    import inspect

    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        funcs = [getattr(item, "function", None)]
        if fixtures is not None:
            funcs += [d.func for defs in fixtures.name2fixturedefs.values() for d in defs]
        signs = _helpers(getattr(item, "module", None))
        real = False
        for f in funcs:
            if f is None:
                continue
            try:
                source = inspect.getsource(f)
            except (OSError, TypeError):
                source = ""
            if _starts_something(f) or any(sign in source for sign in signs):
                real = True
                break
        item.add_marker(pytest.mark.integration if real else pytest.mark.unit)


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
