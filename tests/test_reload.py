"""Model updates without restarts: a version or model dropped into (or removed from) the
repository is served (or unpublished) by running workers at their next rescan."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import keys
from icow.cli.ops import push_model
from icow.client import Client
from icow.errors import InvalidInput, ModelNotFound
from icow.workers import samples
from icow.workers.models import ModelManager
from icow.workers.reload import RepositoryWatcher
from icow.workers.repository import Repository

from .conftest import WorkerProcess

ONE = {"x": np.ones((1, 2), np.float32)}


def wait_for(pred: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = pred()
        except ModelNotFound:
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_a_pushed_version_and_a_new_model_are_served_without_restarting(redis_url: str, tmp_path: Path) -> None:
    model = f"upd{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo"
    samples.scale(repo / model / "1" / "model.onnx", 2.0)
    w = WorkerProcess(repo, redis_url, f"{model}@local", ["--rescan", "0.5"])
    pid = w.proc.pid
    try:
        with Client(redis_url) as c:
            assert c.infer(model, ONE, timeout_s=30)["y"][0, 0] == 2.0
            samples.scale(tmp_path / "v2.onnx", 3.0)
            push = ["models", "push", str(tmp_path / "v2.onnx"), "--name", model, "--repo", str(repo)]
            proc = subprocess.run([sys.executable, "-m", "icow.cli", *push], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            assert (repo / model / "2" / "model.onnx").is_file()
            wait_for(lambda: c.models().get(model) == [1, 2])
            assert c.infer(model, ONE, timeout_s=30)["y"][0, 0] == 3.0  # latest is now 2
            assert c.infer(model, ONE, version=1, timeout_s=30)["y"][0, 0] == 2.0

            other = f"{model}new"  # a model this worker did not have: its queue is consumed too
            samples.scale(repo / other / "1" / "model.onnx", 7.0)
            wait_for(lambda: other in c.models())
            assert c.infer(other, ONE, timeout_s=30)["y"][0, 0] == 7.0
        assert w.proc.pid == pid and w.proc.poll() is None  # the same process all along
    finally:
        w.stop()


def test_latest_policy_drops_the_old_version_and_a_removed_model_is_unpublished(redis_url: str, tmp_path: Path) -> None:
    model = f"pol{uuid.uuid4().hex[:6]}"
    samples.scale(tmp_path / model / "1" / "model.onnx", 2.0)
    (tmp_path / model / "config.toml").write_text('versions = "latest"\n')
    gone = f"{model}gone"
    samples.scale(tmp_path / gone / "1" / "model.onnx", 5.0)
    w = WorkerProcess(tmp_path, redis_url, f"{model}@local", ["--rescan", "0.5"])
    try:
        with Client(redis_url) as c:
            assert c.models()[model] == [1]
            samples.scale(tmp_path / model / "2" / "model.onnx", 3.0)
            wait_for(lambda: c.models().get(model) == [2])
            assert c.infer(model, ONE, timeout_s=30)["y"][0, 0] == 3.0
            with pytest.raises(ModelNotFound):
                c.infer(model, ONE, version=1, timeout_s=30)
            shutil.rmtree(tmp_path / gone)
            wait_for(lambda: gone not in c.models())
    finally:
        w.stop()


def test_watcher_loads_new_versions_frees_dropped_sessions_and_retries_broken_files(
    r: redis.Redis, tmp_path: Path
) -> None:
    model = f"unit{uuid.uuid4().hex[:6]}"
    samples.scale(tmp_path / model / "1" / "model.onnx", 2.0)
    (tmp_path / model / "config.toml").write_text('versions = "latest"\n')
    manager = ModelManager(Repository(tmp_path), threads=1)
    manager.start()
    manager.publish(r)
    watcher = RepositoryWatcher(manager, r, interval_s=0)
    assert not watcher.refresh()  # nothing changed

    (tmp_path / model / "2").mkdir()
    (tmp_path / model / "2" / "model.onnx").write_bytes(b"half a file")  # still being copied
    ch = watcher.refresh()
    assert ch.failed == [(model, 2)] and not ch
    assert manager.entries[model].versions == (1,)  # v1 stays served meanwhile

    samples.scale(tmp_path / model / "2" / "model.onnx", 3.0)  # the copy completes
    ch = watcher.refresh()
    assert ch.added == [(model, 2)] and ch.removed == [(model, 1)]
    assert [(m.name, m.version) for m in manager.loaded()] == [(model, 2)]  # v1's session dropped
    assert manager.get(model).run({"x": np.ones((1, 2), np.float32)})["y"][0, 0] == 3.0
    assert set(r.hkeys(keys.model(model))) == {b"2"}
    r.delete(keys.model(model))
    r.srem(keys.MODELS, model)


def test_push_refuses_bad_input(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    good = samples.scale(tmp_path / "m.onnx", 2.0)
    assert push_model(good, repo, "m") == repo / "m" / "1" / "model.onnx"
    assert push_model(good, repo, "m") == repo / "m" / "2" / "model.onnx"  # next version
    with pytest.raises(InvalidInput):
        push_model(good, repo, "m", 2)  # versions are immutable
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(InvalidInput):
        push_model(tmp_path / "bad.onnx", repo, "m")
    with pytest.raises(InvalidInput):
        push_model(good, repo, "../evil")
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]  # no staging folders left
