"""The model repository ("collected ONNX weights"): ``<repo>/<model>/<version>/model.onnx``.

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
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icow import keys
from icow.errors import InvalidInput
from icow.workers.runtime import GpuOptions

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"
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
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def load(path: Path) -> ModelConfig:
        if not path.is_file():
            return ModelConfig()
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path}: {exc}") from exc
        versions = raw.pop("versions", "all")
        if isinstance(versions, list):
            if not all(isinstance(v, int) and v >= 1 for v in versions):
                raise InvalidInput(f"{path}: versions must be positive integers")
            versions = tuple(versions)
        elif versions not in ("all", "latest"):
            raise InvalidInput(f"{path}: versions must be 'all', 'latest' or a list of integers")
        providers = tuple(raw.pop("providers", ("cuda", "cpu")))
        bad = [p for p in providers if p not in PROVIDER_NAMES]
        if bad or not providers:
            raise InvalidInput(f"{path}: unknown providers {bad}; use {PROVIDER_NAMES}")
        cfg = ModelConfig(
            versions=versions,
            preload=bool(raw.pop("preload", True)),
            providers=providers,
            threads=int(raw.pop("threads", 0)),
            max_batch=int(raw.pop("max_batch", 32)),
            max_wait_ms=float(raw.pop("max_wait_ms", 0.0)),
            max_queue=int(raw.pop("max_queue", 0)),
            gpu=GpuOptions.pop_from(raw, str(path)),
            extra=raw,
        )
        if cfg.max_batch < 1 or cfg.max_wait_ms < 0 or cfg.threads < 0 or cfg.max_queue < 0:
            raise InvalidInput(
                f"{path}: max_batch >= 1, max_wait_ms >= 0, threads >= 0 and max_queue >= 0 are required"
            )
        return cfg


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
    """Reads a model repository folder. Cheap to rescan; holds no sessions."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise InvalidInput(f"model repository {self.root} is not a folder")

    def scan(self, only: set[str] | None = None) -> dict[str, ModelEntry]:
        """Every valid model (or those in ``only``) with the versions its policy serves."""
        found: dict[str, ModelEntry] = {}
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or not keys.MODEL_NAME_RE.match(d.name) or (only and d.name not in only):
                continue
            present = sorted(
                int(v.name)
                for v in d.iterdir()
                if v.is_dir() and v.name.isdigit() and int(v.name) >= 1 and (v / MODEL_FILE).is_file()
            )
            if not present:
                continue
            cfg = ModelConfig.load(d / CONFIG_FILE)
            if cfg.versions == "latest":
                served = present[-1:]
            elif cfg.versions == "all":
                served = present
            else:
                served = [v for v in present if v in cfg.versions]
            if served:
                found[d.name] = ModelEntry(d.name, d, tuple(served), cfg)
        return found
