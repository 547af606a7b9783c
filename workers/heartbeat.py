"""Worker heartbeats: a key with a TTL per worker, refreshed by a background thread.

A worker is listed (``icow:workers``) from its first beat; it counts as alive while its key
``icow:worker:<name>`` exists, and as ready once that beat says so (its preloaded models are
warm and its Celery consumer has started).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from icow import keys
from icow.codec import packb, unpackb

log = logging.getLogger("icow.heartbeat")


class Heartbeat:
    def __init__(
        self,
        r: redis.Redis,
        name: str,
        info: dict[str, Any],
        stats: Callable[[], dict[str, Any]] | None = None,
        *,
        ttl_s: int = keys.HEARTBEAT_TTL_S,
    ):
        self._r = r
        self.ttl_s = ttl_s  # a worker is taken for dead this long after its last beat
        self.interval_s = min(keys.HEARTBEAT_INTERVAL_S, ttl_s / 3)
        self._stats = stats
        self.name = name
        self.info = {
            "name": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "ready": False,
            "jobs": 0,
            "failures": 0,
            "last_error": None,
            "ttl_s": ttl_s,
            **info,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.info["time"] = time.time()
        if self._stats is not None:
            self.info.update(self._stats())
        pipe = self._r.pipeline(transaction=False)
        pipe.sadd(keys.WORKERS, self.name)
        pipe.set(keys.worker(self.name), packb(self.info), ex=self.ttl_s)
        pipe.execute()

    def mark_ready(self) -> None:
        self.info["ready"] = True
        self._safe_beat()

    def _safe_beat(self) -> None:
        try:
            self.beat()
        except redis.exceptions.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)
        except Exception:  # a bug in an upkeep step must never stop the beats (or the worker)
            log.exception("heartbeat failed")

    def start(self) -> None:
        self._safe_beat()
        self._thread = threading.Thread(target=self._run, name="icow-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._safe_beat()

    def stop(self) -> None:
        self._stop.set()
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.delete(keys.worker(self.name))
            pipe.srem(keys.WORKERS, self.name)
            pipe.execute()
        except redis.exceptions.RedisError:
            pass


def live_workers(r: redis.Redis) -> list[dict[str, Any]]:
    """Heartbeats of workers alive now; names whose key expired are dropped from the set."""
    names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in r.smembers(keys.WORKERS))
    if not names:
        return []
    beats = r.mget([keys.worker(n) for n in names])
    dead = [n for n, b in zip(names, beats) if b is None]
    if dead:
        r.srem(keys.WORKERS, *dead)
    return [unpackb(b) for b in beats if b is not None]


def failed_models(beat: dict[str, Any]) -> set[str]:
    """Models with a version this worker does not serve because it failed (its ``failed``
    keys are ``"model:version"``)."""
    return {str(k).rpartition(":")[0] for k in beat.get("failed") or {}}
