"""The worker's warm models: which models it serves, their sessions, their published metadata."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

import redis

from icow import keys
from icow.codec import packb
from icow.errors import ModelNotFound
from icow.workers.repository import ModelEntry, Repository
from icow.workers.runtime import OnnxModel

log = logging.getLogger("icow.models")


class ModelManager:
    """Holds one session per (model, version) for the life of the process.

    Preloaded models are loaded by :meth:`start`; others on first use.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        only: set[str] | None = None,
        device: int = 0,
        threads: int = 0,
        max_queue: int = 0,
        ort_spin: bool = False,
        ort_verbose: bool = False,
    ):
        self.repo = repo
        self.only = only
        self.device = device
        self.threads = threads
        self.default_max_queue = max_queue  # ICOW_MAX_QUEUE: the fleet default backlog limit
        self.ort_spin, self.ort_verbose = ort_spin, ort_verbose  # ICOW_ORT_SPIN, ICOW_ORT_VERBOSE
        self.entries: dict[str, ModelEntry] = repo.scan(only)
        self._sessions: dict[tuple[str, int], OnnxModel] = {}
        self._lock = threading.Lock()
        self.load_times_s: dict[tuple[str, int], float] = {}
        self.failed: dict[tuple[str, int], str] = {}  # versions that do not load, and why

    @property
    def names(self) -> list[str]:
        """The models served (at least one version)."""
        return sorted(m for m, e in self.entries.items() if e.versions)

    def start(self) -> None:
        """Load every preloaded model version now (the worker is ready after this). A version
        that does not load is marked failed with the reason and not served; the rest are (the
        repository watcher retries it at each rescan)."""
        entries = dict(self.entries)
        for name, entry in self.entries.items():
            good = []
            for v in entry.versions:
                try:
                    if entry.config.preload:
                        self.get(name, v)
                    else:  # the file must at least load
                        self._cpu_model(name, v, entry.file(v)).unload()
                    good.append(v)
                except Exception as exc:
                    self.mark_failed(name, v, exc)
            if good:
                entries[name] = dataclasses.replace(entry, versions=tuple(good))
            else:  # nothing of it is served: it is listed as failed, never as served
                del entries[name]
        self.entries = entries

    def failures(self) -> dict[str, str]:
        """``"model:version"`` -> why it is not served: versions that do not load, config.toml
        values refused, versions the store refused (checksum, download)."""
        return {f"{m}:{v}": why for (m, v), why in sorted({**self.repo.failed, **self.failed}.items())}

    def mark_failed(self, name: str, version: int, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        self.failed[(name, version)] = reason
        log.error("model %s v%s does not load and is not served: %s", name, version, reason)

    def latest(self, name: str) -> int:
        """The version this worker runs unpinned jobs of ``name`` on: config.toml ``latest`` when
        it is served (a candidate can be served to pinned jobs, for replay, without becoming
        "latest"), else the highest served version; 0 when none is served."""
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            return 0
        chosen = entry.config.latest
        return chosen if chosen in entry.versions else max(entry.versions)

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not served by this worker")
        return entry

    def get(self, name: str, version: int | None = None) -> OnnxModel:
        entry = self.entry(name)
        v = self.latest(name) if version is None else version
        if v not in entry.versions:
            raise ModelNotFound(f"model {name!r} has no version {v}; served versions: {list(entry.versions)}")
        model = self._sessions.get((name, v))
        if model is not None:
            return model
        return self.load(entry, v)

    def _cpu_model(self, name: str, v: int, path: Path) -> OnnxModel:
        """A one-thread CPU session (to read a model's metadata)."""
        return OnnxModel(name, v, path, providers=("cpu",), threads=1, spin=self.ort_spin, ort_verbose=self.ort_verbose)

    def load(self, entry: ModelEntry, v: int) -> OnnxModel:
        """The session of ``entry`` version ``v``, created now unless it exists."""
        name = entry.name
        with self._lock:
            model = self._sessions.get((name, v))
            if model is None:
                t0 = time.perf_counter()
                model = OnnxModel(
                    name,
                    v,
                    entry.file(v),
                    providers=entry.config.providers,
                    device=self.device,
                    threads=entry.config.threads or self.threads,
                    gpu=entry.config.gpu,
                    spin=self.ort_spin,
                    ort_verbose=self.ort_verbose,
                )
                self.load_times_s[(name, v)] = time.perf_counter() - t0
                log.info("loaded %s v%s in %.3f s on %s", name, v, self.load_times_s[(name, v)], model.providers[0])
                self._sessions[(name, v)] = model
        return model

    def loaded(self) -> list[OnnxModel]:
        return list(self._sessions.values())

    # -- model updates without restarts (driven by workers/reload.py)

    def set_entries(self, entries: dict[str, ModelEntry]) -> None:
        """Serve these models and versions from now on (one atomic swap; the task thread reads
        ``entries`` without the lock)."""
        self.entries = entries

    def unload(self, name: str, version: int) -> None:
        """Drop the session; it is freed once no running job holds it any more."""
        with self._lock:
            self._sessions.pop((name, version), None)
            self.load_times_s.pop((name, version), None)

    def state(self) -> dict[str, Any]:
        """What the heartbeat reports: served versions, and the provider each session runs on."""
        loaded = self.loaded()
        return {
            "models": {m: list(e.versions) for m, e in self.entries.items() if e.versions},
            "providers": {f"{m.name}:{m.version}": m.providers[0] for m in loaded},
            "cpu_fallback": sorted(f"{m.name}:{m.version}" for m in loaded if getattr(m, "cpu_fallback", False)),
            "failed": self.failures(),
        }

    def metadata(self) -> list[dict[str, Any]]:
        """Signature of every served version (loading, then dropping, sessions not preloaded)."""
        out = []
        for entry in self.entries.values():
            for v in entry.versions:
                model = self._sessions.get((entry.name, v))
                if model is None:
                    # Not preloaded: read the signature on the CPU and let the session go.
                    try:
                        model = self._cpu_model(entry.name, v, entry.file(v))
                    except Exception as exc:
                        self.mark_failed(entry.name, v, exc)
                        continue
                    meta = model.metadata()
                    meta["providers"] = []
                    model.unload()
                else:
                    meta = model.metadata()
                out.append(meta)
        return out

    def max_queue(self, name: str, default: int | None = None) -> int:
        """The model's backlog limit: its config.toml ``max_queue``, else the fleet default
        (``ICOW_MAX_QUEUE``); 0 means unbounded."""
        own = self.entry(name).config.max_queue
        if own:
            return own
        return self.default_max_queue if default is None else default

    def publish(self, r: redis.Redis, *, default_max_queue: int | None = None) -> None:
        """Write every served model's metadata and backlog limit where clients read them
        (icow.keys). The last worker to publish a model sets its limit."""
        metas = self.metadata()
        pipe = r.pipeline(transaction=False)
        for meta in metas:
            pipe.sadd(keys.MODELS, meta["name"])
            pipe.hset(keys.model(meta["name"]), str(meta["version"]), packb(meta))
        for name in self.entries:
            limit = self.max_queue(name, default_max_queue)
            if limit > 0:
                pipe.hset(keys.LIMITS, name, limit)
            else:
                pipe.hdel(keys.LIMITS, name)
        pipe.execute()
