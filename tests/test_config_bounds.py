"""config.toml values are checked per model, with types and bounds: a bad value refuses its own
model (reported failed, naming the key, the value and what is allowed) while the others are
served; a repository that cannot be read at all is logged once, not at every rescan."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import redis

from icow.errors import InvalidInput
from icow.workers import samples
from icow.workers.models import ModelManager
from icow.workers.reload import RepositoryWatcher
from icow.workers.repository import ModelConfig, Repository


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('max_queue = "x"', "max_queue = 'x': must be an integer in 0..1000000"),
        ("max_batch = 1e12", "max_batch = 1000000000000.0: must be an integer in 1..65536"),
        ("max_batch = 0", "max_batch = 0: must be an integer in 1..65536"),
        ("threads = 1e6", "threads = 1000000.0: must be an integer in 0..1024"),
        ("threads = true", "threads = True: must be an integer in 0..1024"),
        ("max_wait_ms = 1e9", "max_wait_ms = 1000000000.0: must be a number of milliseconds in 0..10000"),
        ("max_wait_ms = -1", "max_wait_ms = -1: must be a number of milliseconds in 0..10000"),
        ("latest = -3", "latest = -3: must be an integer in 0..2147483647"),
        ('preload = "yes"', "preload = 'yes': must be true or false"),
        ("keep_inputs = -1", "keep_inputs = -1: must be an integer in 0..10000"),
        ("versions = []", "versions = []: must be 'all', 'latest' or a non-empty list of positive integers"),
        ("versions = [0]", "versions = [0]: must be 'all'"),
        ("providers = ['cpu', 'cpu']", "providers = ['cpu', 'cpu']: must be a non-empty list of distinct names"),
        ("max_bacth = 8", "unknown keys ['max_bacth']; known keys: ["),
    ],
)
def test_a_value_out_of_bounds_is_refused_naming_key_value_and_range(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ModelConfig.parse(text, "models/m/config.toml")
    assert str(err.value).startswith("models/m/config.toml: ") and message in str(err.value)


def test_values_within_bounds_are_accepted() -> None:
    cfg = ModelConfig.parse(
        "versions = [1, 3]\npreload = false\nproviders = ['cpu']\nthreads = 4\nmax_batch = 65536\n"
        "max_wait_ms = 2.5\nmax_queue = 1000000\nkeep_inputs = 10\nlatest = 3\n",
        "config.toml",
    )
    assert (cfg.versions, cfg.preload, cfg.providers, cfg.threads) == ((1, 3), False, ("cpu",), 4)
    assert (cfg.max_batch, cfg.max_wait_ms, cfg.max_queue, cfg.keep_inputs, cfg.latest) == (65536, 2.5, 10**6, 10, 3)
    assert ModelConfig.parse("max_wait_ms = 5", "config.toml").max_wait_ms == 5.0


def test_one_bad_config_refuses_only_its_model(tmp_path: Path) -> None:
    samples.scale(tmp_path / "good" / "1" / "model.onnx", 2.0)
    for v in (1, 2):
        samples.scale(tmp_path / "bad" / str(v) / "model.onnx", 2.0)
    (tmp_path / "bad" / "config.toml").write_text('max_queue = "x"\n')
    repo = Repository(tmp_path)
    assert set(repo.scan()) == {"good"}
    assert set(repo.failed) == {("bad", 1), ("bad", 2)}
    assert "bad/config.toml: max_queue = 'x'" in repo.failed[("bad", 1)]
    (tmp_path / "bad" / "config.toml").write_text("max_queue = 3\n")
    assert set(repo.scan()) == {"good", "bad"} and repo.failed == {}


def test_a_repository_that_cannot_be_read_is_logged_once_per_change(
    tmp_path: Path, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    samples.scale(root / "m" / "1" / "model.onnx", 2.0)
    manager = ModelManager(Repository(root))
    manager.start()
    watcher = RepositoryWatcher(manager, r, interval_s=0)
    caplog.set_level(logging.INFO, logger="icow.reload")
    root.rename(tmp_path / "away")  # as a deleted bucket would: every listing fails
    for _ in range(5):
        watcher.refresh()
    failed = [rec for rec in caplog.records if "rescan failed" in rec.getMessage()]
    assert len(failed) == 1 and manager.names == ["m"]  # still served
    (tmp_path / "away").rename(root)
    watcher.refresh()
    assert sum("readable again" in rec.getMessage() for rec in caplog.records) == 1
    root.rename(tmp_path / "away")
    watcher.refresh()
    watcher.refresh()
    assert sum("rescan failed" in rec.getMessage() for rec in caplog.records) == 2  # once more, not twice


def test_a_served_model_whose_config_breaks_is_taken_out_until_fixed(tmp_path: Path, r: redis.Redis) -> None:
    m, other = f"m{uuid.uuid4().hex[:6]}", f"other{uuid.uuid4().hex[:6]}"
    samples.scale(tmp_path / m / "1" / "model.onnx", 2.0)
    samples.scale(tmp_path / other / "1" / "model.onnx", 2.0)
    (tmp_path / m / "config.toml").write_text("providers = ['cpu']\n")
    manager = ModelManager(Repository(tmp_path))
    manager.start()
    watcher = RepositoryWatcher(manager, r, interval_s=0)
    (tmp_path / m / "config.toml").write_text("providers = ['cpu']\nthreads = 1e6\n")
    assert watcher.refresh().removed == [(m, 1)]
    assert manager.names == [other] and "threads = 1000000.0" in manager.failures()[f"{m}:1"]
    (tmp_path / m / "config.toml").write_text("providers = ['cpu']\nthreads = 2\n")
    assert watcher.refresh().added == [(m, 1)]
    assert manager.names == [m, other] and manager.failures() == {}
    assert manager.entries[m].config.threads == 2
