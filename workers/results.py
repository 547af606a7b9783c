"""The one writer of results. A result is written once per job id: the first write wins, so a
duplicate run (redelivery) can never overwrite or corrupt it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from icow import keys, protocol

# KEYS: result key, state key, reply list ('' for none). ARGV: meta, ttl.
# SET NX decides the winner; only the winner publishes, pushes the reply and drops the state.
_WRITE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('PUBLISH', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  if KEYS[3] ~= '' then
    redis.call('RPUSH', KEYS[3], ARGV[1])
    if redis.call('TTL', KEYS[3]) < tonumber(ARGV[2]) then
      redis.call('EXPIRE', KEYS[3], ARGV[2])
    end
  end
  return 1
end
return 0
"""


class ResultWriter:
    def __init__(self, r: redis.Redis):
        self._r = r
        self._write = r.register_script(_WRITE)

    def write(
        self,
        job_id: str,
        meta: Mapping[str, Any],
        *,
        ttl_s: int,
        reply_to: str | None,
        blobs: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store, publish and push one result; False when a result already existed."""
        return self.write_many([(job_id, meta, ttl_s, reply_to, blobs or {})])[0]

    def write_many(
        self,
        items: list[tuple[str, Mapping[str, Any], int, str | None, Mapping[str, Any]]],
        delete: list[str] | None = None,
        ack: Callable[[Any], None] | None = None,
        dead: list[tuple[str, Mapping[str, Any], int]] | None = None,
    ) -> list[bool]:
        """Write several results in one round trip, then drop ``delete`` (consumed inputs),
        record ``dead`` (job id, failure meta, deliveries) as dead letters, and let ``ack``
        queue the messages' acks on the same pipeline: a job is acked only with its answer."""
        pipe = self._r.pipeline(transaction=False)
        at: list[int] = []
        n = 0
        for job_id, meta, ttl_s, reply_to, blobs in items:
            for key, data in blobs.items():
                pipe.set(key, data, ex=ttl_s)
                n += 1
            at.append(n)
            n += 1
            self._write(
                keys=[keys.result(job_id), keys.state(job_id), reply_to or ""],
                args=[protocol.packb(meta), ttl_s],
                client=pipe,
            )
        failures = [_failure_record(meta) for _, meta, *_ in items if meta.get("status") == "FAILURE"]
        if failures:  # "recent failures" for `icow status` (a capped list, not a dead-letter queue)
            pipe.lpush(keys.RECENT_FAILURES, *failures)
            pipe.ltrim(keys.RECENT_FAILURES, 0, keys.RECENT_FAILURES_MAX - 1)
        for job_id, meta, tries in dead or ():
            pipe.set(keys.dead(job_id), _dead_record(job_id, meta, tries), ex=keys.DEAD_TTL_S)
            pipe.lpush(keys.DEAD, job_id)
        if dead:
            pipe.ltrim(keys.DEAD, 0, keys.DEAD_MAX - 1)
        if delete:
            pipe.delete(*delete)
        if ack is not None:
            ack(pipe)
        out = pipe.execute()
        return [bool(out[i]) for i in at]


def _dead_record(job_id: str, meta: Mapping[str, Any], tries: int) -> bytes:
    """A dead letter: why the job was given up on, inspectable with `icow failures show`."""
    error_type, message = protocol.failure_of(meta)
    res = meta.get("result") if isinstance(meta.get("result"), Mapping) else {}
    assert isinstance(res, Mapping)
    return protocol.packb(
        {
            "id": job_id,
            "error": error_type,
            "message": message[:2000],
            "model": res.get("model"),
            "version": res.get("version"),
            "worker": res.get("worker"),
            "deliveries": tries,
            "time": time.time(),
        }
    )


def _failure_record(meta: Mapping[str, Any]) -> bytes:
    res = meta.get("result") if isinstance(meta.get("result"), Mapping) else {}
    assert isinstance(res, Mapping)
    msg = res.get("exc_message")
    return protocol.packb(
        {
            "id": meta.get("task_id"),
            "model": res.get("model"),
            "version": res.get("version"),
            "worker": res.get("worker"),
            "error": res.get("exc_type"),
            "message": (" ".join(map(str, msg)) if isinstance(msg, list) else str(msg or ""))[:500],
            "time": time.time(),
        }
    )
