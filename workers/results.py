"""The one writer of results. A result is written once per job id: the first write wins, so a
duplicate run (redelivery) can never overwrite or corrupt it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from icow import keys, protocol

# One call writes a whole batch. KEYS: unacked hash, unacked index, then per job its result
# key, state key and reply list ('' for none). ARGV: number of jobs, number of acks, then per
# job its meta and ttl, then the delivery tags to ack. SET NX decides each job's winner; only
# the winner publishes, pushes the reply and drops the state. The acks go with the answers.
_WRITE = """
local n, nacks = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for j = 1, n do
  local k, a = 2 + 3 * (j - 1), 2 + 2 * (j - 1)
  local meta, ttl = ARGV[a + 1], tonumber(ARGV[a + 2])
  if redis.call('SET', KEYS[k + 1], meta, 'NX', 'EX', ttl) then
    redis.call('PUBLISH', KEYS[k + 1], meta)
    redis.call('DEL', KEYS[k + 2])
    if KEYS[k + 3] ~= '' then
      redis.call('RPUSH', KEYS[k + 3], meta)
      if redis.call('TTL', KEYS[k + 3]) < ttl then redis.call('EXPIRE', KEYS[k + 3], ttl) end
    end
    out[j] = 1
  else
    out[j] = 0
  end
end
local a = 2 + 2 * n
for t = 1, nacks do
  redis.call('ZREM', KEYS[2], ARGV[a + t])
  redis.call('HDEL', KEYS[1], ARGV[a + t])
end
return out
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
        ack: list[str] | None = None,
        dead: list[tuple[str, Mapping[str, Any], int]] | None = None,
    ) -> list[bool]:
        """Write several results in one round trip (claim-checked outputs first, then one
        script call for every answer and the ``ack`` of the messages), record ``dead`` (job id,
        failure meta, deliveries) as dead letters, and drop ``delete`` (consumed inputs)."""
        pipe = self._r.pipeline(transaction=False)
        script_keys: list[str] = [keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX]
        args: list[Any] = [len(items), len(ack or ())]
        for job_id, meta, ttl_s, reply_to, blobs in items:
            for key, data in blobs.items():
                pipe.set(key, data, ex=ttl_s)
            script_keys += [keys.result(job_id), keys.state(job_id), reply_to or ""]
            args += [protocol.packb(meta), ttl_s]
        args += list(ack or ())
        at = len(pipe)
        # EVALSHA directly: a Script object in a pipeline costs a SCRIPT EXISTS round trip.
        pipe.evalsha(self._write.sha, len(script_keys), *script_keys, *args)
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
        out = pipe.execute(raise_on_error=False)
        if isinstance(out[at], redis.exceptions.NoScriptError):  # Redis restarted or flushed
            out[at] = self._write(keys=script_keys, args=args)
        for x in out:
            if isinstance(x, Exception):
                raise x
        return [bool(x) for x in out[at]]


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
