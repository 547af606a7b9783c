"""Settings read once per process, at its start-up, and handed down (icow.settings): where
``from_env()`` may be called, the import direction, and the settings reaching what uses them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from icow import keys, settings
from icow.cli import main
from icow.workers import samples
from icow.workers.models import ModelManager
from icow.workers.repository import Repository
from tests.conftest import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
# The start-ups: the `icow` command's main(), Client.from_env (client/_options.env_arguments),
# the Celery app of `celery -A icow.workers.app` (read when Celery loads its configuration).
START_UPS = {"icow/cli/__init__.py", "client/_options.py", "workers/app.py"}


def _sources() -> list[Path]:
    return [p for d in ("icow", "client", "workers") for p in (ROOT / d).rglob("*.py")]


def _calls_from_env(tree: ast.AST) -> int:
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_env"
    )


def test_from_env_is_called_only_at_process_start_up() -> None:
    callers = {}
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "icow/settings.py":
            continue
        n = _calls_from_env(ast.parse(path.read_text(encoding="utf-8")))
        if n:
            callers[rel] = n
    assert set(callers) <= START_UPS, callers
    assert all(n == 1 for n in callers.values()), callers


def test_no_module_calls_from_env_at_import_time() -> None:
    """Only inside functions: importing a module never reads the environment."""
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        assert sum(_calls_from_env(n) for n in top) == 0, path


def test_settings_imports_nothing_of_icow_but_its_errors() -> None:
    """The core (keys, tensor, envelope) takes its defaults from settings, never the reverse."""
    tree = ast.parse((ROOT / "icow" / "settings.py").read_text(encoding="utf-8"))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert {m for m in imported if m and m.startswith("icow")} == {"icow.errors"}
    from icow import envelope, tensor

    assert keys.DEFAULT_RESULT_TTL_S == settings.DEFAULT_RESULT_TTL_S == settings.Settings().result_ttl_s
    assert keys.DEFAULT_LEASE_S == settings.Settings().lease_s
    assert envelope.DEFAULT_INLINE_MAX_BYTES == settings.Settings().inline_max_bytes
    assert tensor.DEFAULT_MAX_TENSOR_BYTES == settings.Settings().max_tensor_bytes


def test_main_reads_the_settings_once_and_hands_them_to_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from icow.cli import status

    seen: list[settings.Settings] = []
    calls = []
    real = settings.from_env
    monkeypatch.setattr(settings, "from_env", lambda env=None: calls.append(1) or real(env))
    monkeypatch.setattr(status, "cmd_status", lambda args: seen.append(args.settings) or 0)
    monkeypatch.setenv("ICOW_REDIS_URL", "redis://example.invalid:1/0")
    assert main(["status"]) == 0
    assert len(calls) == 1 and seen[0].redis_url == "redis://example.invalid:1/0"


def test_a_bad_setting_is_a_clear_error_of_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ICOW_LEASE_S", "soon")
    assert main(["status", "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert "ICOW_LEASE_S must be an integer" in capsys.readouterr().err


def test_the_model_manager_takes_the_fleet_default_limit_it_is_given(tmp_path: Path, r: redis.Redis) -> None:
    samples.scale(tmp_path / "repo" / "settings-limit" / "1" / "model.onnx", 2.0)
    manager = ModelManager(Repository(tmp_path / "repo"), threads=1, max_queue=7)
    assert manager.max_queue("settings-limit") == 7
    manager.publish(r)
    try:
        assert r.hget(keys.LIMITS, "settings-limit") == b"7"
    finally:
        r.hdel(keys.LIMITS, "settings-limit")
        r.srem(keys.MODELS, "settings-limit")
        r.delete(keys.model("settings-limit"))


def test_celery_dash_a_takes_its_broker_from_icow_redis_url(redis_url: str, worker: WorkerProcess) -> None:
    """`celery -A icow.workers.app`: the app reads ICOW_REDIS_URL when Celery loads it."""
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "icow.workers.app", "inspect", "registered", "-d", worker.name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ICOW_REDIS_URL": redis_url},
    )
    assert proc.returncode == 0, proc.stderr
    assert "icow.infer" in proc.stdout
