"""Why this worker does not serve a version, where callers read it: ``icow:failed:<m>``.

Each heartbeat the worker writes one field ``<version>:<worker>`` per version it does not serve
(its file does not load, its config.toml is refused, the store refused it) with the reason,
drops the fields of versions it serves again, and renews the key's TTL to the liveness TTL. A
client whose submit finds no live worker reads the hash and says why in ``ModelNotFound``. A
worker that stops withdraws its fields; a killed one's expire with the key unless another
worker renews it meanwhile (then they name a dead worker until that one recovers or stops).
"""

from __future__ import annotations

from typing import Any

import redis

from icow import keys


class FailureBoard:
    """This worker's fields in ``icow:failed:<m>``."""

    def __init__(self, r: redis.Redis, worker: str):
        self.r = r
        self.worker = worker
        self._written: dict[str, set[str]] = {}  # model -> fields this worker wrote

    def publish(self, failures: dict[str, str], ttl_s: float) -> None:
        """``failures``: ``"model:version"`` -> reason (ModelManager.failures())."""
        fields: dict[str, dict[Any, Any]] = {}  # model -> field -> reason (Any: redis-py's Mapping type)
        for key, why in failures.items():
            model, _, version = key.rpartition(":")
            fields.setdefault(model, {})[f"{version}:{self.worker}"] = why
        pipe = self.r.pipeline(transaction=False)
        for model, mine in fields.items():
            pipe.hset(keys.failed(model), mapping=mine)
            pipe.pexpire(keys.failed(model), int(ttl_s * 1000))
        for model, old in self._written.items():
            gone = sorted(old - set(fields.get(model, {})))
            if gone:
                pipe.hdel(keys.failed(model), *gone)
        if fields or self._written:
            pipe.execute()
        self._written = {m: set(f) for m, f in fields.items()}

    def withdraw(self) -> None:
        """Remove every field this worker wrote (at shutdown)."""
        self.publish({}, 0)
