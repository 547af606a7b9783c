"""The model repository ("collected ONNX weights"): ``<repo>/<model>/<version>/model.onnx``.

``<repo>`` is a folder, or ``s3://bucket/prefix`` on any S3-compatible store: files then come
through a local cache, each checked against its version's ``manifest.json`` (workers/store.py,
workers/s3store.py); everything below is the same for both.

Versions are positive integers; the highest is "latest". A model may have a
``<repo>/<model>/config.toml`` next to its versions::

    versions = "all"            # "all" (default), "latest", or a list such as [1, 3]
    preload = true              # create sessions when the worker starts (default true)
    providers = ["cuda", "cpu"] # execution providers in order of preference
    threads = 0                 # onnxruntime intra-op threads (0: the worker's setting)
    max_batch = 32              # dynamic batching: most samples per session call (1: off)
    max_wait_ms = 0             # how long a partial batch may wait for more jobs
    gpu_mem_limit = "4GiB"      # CUDA arena cap (bytes or a size); arena_extend_strategy =
                                # "kSameAsRequested"; cudnn_conv_algo_search = "HEURISTIC";
                                # tensorrt_fp16 = true; tensorrt_cache_dir = "/cache/trt"
    max_queue = 0               # backpressure: most jobs waiting in the queue (0: no limit)
    shadow = { version = 3, fraction = 0.1 }  # run a sample of live jobs on v3 too (workers/shadow.py)
    keep_inputs = 0             # keep the last N jobs' inputs for `icow replay` (workers/kept.py)
    latest = 0                  # the version unpinned jobs run on (0: the highest served); a newer
                                # version then serves only jobs pinned to it (replay, canaries)

Types and bounds: workers/config_bounds.py. A config.toml that does not parse or validate
refuses its own model alone: each of its versions is in ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icow import keys
from icow.errors import IcowError, InvalidInput
from icow.workers import config_bounds as bounds
from icow.workers.config_bounds import check_keys
from icow.workers.runtime import GpuOptions
from icow.workers.shadow import ShadowSpec
from icow.workers.store import CONFIG_FILE, MODEL_FILE, Store, open_store

__all__ = ["CONFIG_FILE", "MODEL_FILE", "ModelConfig", "ModelEntry", "Repository"]

log = logging.getLogger("icow.repository")
PROVIDER_NAMES = ("cuda", "tensorrt", "cpu")


@dataclass(frozen=True)
class ModelConfig:
    versions: str | tuple[int, ...] = "all"
    preload: bool = True
    providers: tuple[str, ...] = ("cuda", "cpu")
    threads: int = 0
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 0  # 0: the fleet default (ICOW_MAX_QUEUE), itself 0 = unbounded
    gpu: GpuOptions = field(default_factory=GpuOptions)  # gpu_mem_limit, arena_extend_strategy, ...
    shadow: ShadowSpec | None = None  # a version run on a sample of live jobs, answering nobody
    keep_inputs: int = 0  # inputs of the last N jobs kept for `icow replay` (0: none)
    latest: int = 0  # the version unpinned jobs run on (0: the highest served)
    extra: dict[str, Any] = field(default_factory=dict)  # always empty: unknown keys are refused

    @staticmethod
    def load(path: Path) -> ModelConfig:
        if not path.is_file():
            return ModelConfig()
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{path}: {exc}") from exc
        return ModelConfig.parse(text, str(path))

    @staticmethod
    def parse(text: str | None, path: str) -> ModelConfig:
        """A config.toml's text (None: no file, the defaults); ``path`` names it in errors."""
        if text is None:
            return ModelConfig()
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{path}: {exc}") from exc
        check_keys(raw, path)
        return ModelConfig(
            versions=bounds.versions(raw, path),
            preload=bounds.boolean(raw, "preload", True, path),
            providers=bounds.providers(raw, PROVIDER_NAMES, path),
            threads=bounds.integer(raw, "threads", 0, path),
            max_batch=bounds.integer(raw, "max_batch", 32, path),
            max_wait_ms=bounds.max_wait_ms(raw, path),
            max_queue=bounds.integer(raw, "max_queue", 0, path),
            gpu=GpuOptions.pop_from(raw, str(path)),
            shadow=ShadowSpec.pop_from(raw, str(path)),
            keep_inputs=bounds.integer(raw, "keep_inputs", 0, path),
            latest=bounds.integer(raw, "latest", 0, path),
        )


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    versions: tuple[int, ...]  # the versions served, ascending
    config: ModelConfig

    @property
    def latest(self) -> int:
        return self.versions[-1]

    def file(self, version: int) -> Path:
        return self.path / str(version) / MODEL_FILE


class Repository:
    """Reads a model repository (a folder or ``s3://bucket/prefix``). Cheap to rescan; holds no
    sessions. ``cache_dir`` (S3 only): the worker passes ``ICOW_CACHE_DIR`` (its settings);
    default the user's cache folder (icow.settings.user_cache_dir)."""

    def __init__(self, root: str | Path, *, cache_dir: str | Path | None = None):
        self.store: Store = open_store(root, cache_dir=cache_dir)
        self.root = self.store.root  # the local folder the model files lie in
        self.failed: dict[tuple[str, int], str] = {}  # versions refused (config, checksum, download), and why
        self._bad_config: set[str] = set()  # models whose config.toml is refused (all their versions failed)

    def scan(self, only: set[str] | None = None) -> dict[str, ModelEntry]:
        """Every valid model (or those in ``only``) with the versions its policy serves, each
        present and verified on local disk. A version that cannot be fetched is left out (and
        kept in ``failed``); the policy then picks among the others."""
        found: dict[str, ModelEntry] = {}
        listing = self.store.listing()
        for m, v in list(self.failed):  # gone from the store: nothing to report any more
            if v not in listing.get(m, ()):
                del self.failed[(m, v)]
        for name, present in sorted(listing.items()):
            if not present or not keys.MODEL_NAME_RE.match(name) or (only and name not in only):
                continue
            try:
                cfg = ModelConfig.parse(self.store.config_text(name), f"{self.store.where}/{name}/{CONFIG_FILE}")
            except IcowError as exc:  # this model alone is refused; the others are served
                self._refuse_config(name, present, exc)
                continue
            if name in self._bad_config:  # fixed: its versions are judged afresh below
                self._bad_config.discard(name)
                for key in [k for k in self.failed if k[0] == name]:
                    del self.failed[key]
            served = self._fetch_served(name, present, cfg)
            if served:
                found[name] = ModelEntry(name, self.store.model_dir(name), tuple(served), cfg)
        return found

    def _refuse_config(self, name: str, present: list[int], exc: IcowError) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if any(self.failed.get((name, v)) != reason for v in present):
            log.error("model %s is refused and not served: %s", name, reason)
        self._bad_config.add(name)
        for key in [k for k in self.failed if k[0] == name]:
            del self.failed[key]
        self.failed.update({(name, v): reason for v in present})

    def _fetch_served(self, name: str, present: list[int], cfg: ModelConfig) -> list[int]:
        candidates = list(present)
        while True:
            served = _policy(cfg, candidates)
            refused = []
            for v in served:
                try:
                    self.store.fetch(name, v)
                    self.failed.pop((name, v), None)
                except IcowError as exc:
                    reason = f"{type(exc).__name__}: {exc}"[:500]
                    if self.failed.get((name, v)) != reason:
                        log.error("model %s v%s is refused and not served: %s", name, v, reason)
                    self.failed[(name, v)] = reason
                    refused.append(v)
            if not refused:
                return served
            candidates = [v for v in candidates if v not in refused]


def _policy(cfg: ModelConfig, present: list[int]) -> list[int]:
    """The versions the config's ``versions`` policy serves among those present (ascending)."""
    if cfg.versions == "latest":
        return present[-1:]
    if cfg.versions == "all":
        return list(present)
    return [v for v in present if v in cfg.versions]
