"""Taking jobs from the queues without going through Celery's per-message path.

Celery delivers the first job of a burst; the runner then drains the jobs waiting behind it
straight from the same Redis lists (for dynamic batching and speed). Every message taken here
is registered in kombu's own ack-emulation structures (``unacked`` hash + ``unacked_index``
zset, the format kombu's ``restore_visible`` understands) in the same atomic step, so a worker
killed mid-job loses nothing: its messages are restored by any live worker once their lease
(kombu's visibility timeout, kept short and renewed by the heartbeat) runs out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from icow import keys

# KEYS: the lists to pop from, in order; ARGV: max messages, now, unacked key, index key.
# Pops from the consuming (right) end and records [message, exchange, routing_key] under the
# message's delivery tag exactly as kombu's QoS.append does.
_POP = """
local want = tonumber(ARGV[1])
local out = {}
for i, list in ipairs(KEYS) do
  while #out < want do
    local m = redis.call('RPOP', list)
    if not m then break end
    -- The delivery tag and routing key are read with patterns, not a JSON parse: kombu's
    -- properties map follows the body, whose base64 holds no quotes; take the last match.
    local tag, rk = nil, list
    for t in string.gmatch(m, '"delivery_tag":%s*"([^"]+)"') do tag = t end
    for k in string.gmatch(m, '"routing_key":%s*"(icow:q:[^"]+)"') do rk = k end
    if type(tag) == 'string' then
      redis.call('HSET', ARGV[3], tag, '[' .. m .. ',"",' .. cjson.encode(rk) .. ']')
      redis.call('ZADD', ARGV[4], ARGV[2], tag)
    end
    table.insert(out, m)
  end
  if #out >= want then break end
end
return out
"""


# Claiming a batch before running it, in one call. KEYS: per job its result key, state key
# and tries key. ARGV: number of jobs, tries TTL, then per job '1' if it was redelivered.
# Returns per job {answered already (0/1), deliveries so far}.
_CLAIM = """
local n, ttl = tonumber(ARGV[1]), ARGV[2]
local out = {}
for j = 1, n do
  local k = 3 * (j - 1)
  out[2 * j - 1] = redis.call('EXISTS', KEYS[k + 1])
  local deliveries = 1
  if ARGV[2 + j] == '1' then
    deliveries = redis.call('INCR', KEYS[k + 3]) + 1
    redis.call('EXPIRE', KEYS[k + 3], ttl)
  end
  out[2 * j] = deliveries
  redis.call('SET', KEYS[k + 2], 'running', 'XX', 'KEEPTTL')
end
return out
"""


@dataclass
class Delivery:
    """One message taken from a queue: its raw kombu envelope and where it came from."""

    tag: str | None
    envelope: dict[str, Any] | None
    error: str | None = None

    @property
    def task_id(self) -> str | None:
        if self.envelope is None:
            return None
        headers = self.envelope.get("headers") or {}
        tid = headers.get("id") or (self.envelope.get("properties") or {}).get("correlation_id")
        return tid if isinstance(tid, str) else None


def parse_delivery(raw: bytes) -> Delivery:
    try:
        env = json.loads(raw)
        if not isinstance(env, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return Delivery(None, None, f"the message is not a kombu JSON envelope ({exc})")
    props = env.get("properties")
    tag = props.get("delivery_tag") if isinstance(props, dict) else None
    return Delivery(tag if isinstance(tag, str) else None, env)


class Intake:
    """Pops messages (registering them as unacked) and acks or renews them."""

    def __init__(
        self, r: redis.Redis, *, unacked_key: str = keys.KOMBU_UNACKED, index_key: str = keys.KOMBU_UNACKED_INDEX
    ):
        self._r = r
        self.unacked_key = unacked_key
        self.index_key = index_key
        self._pop = r.register_script(_POP)
        self.claim_script = r.register_script(_CLAIM)

    def claim_call(self, jobs: Sequence[tuple[str, bool]]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the claim script for (job id, redelivered) jobs; its reply is
        [answered, deliveries] per job."""
        script_keys: list[str] = []
        args: list[Any] = [len(jobs), keys.TRIES_TTL_S]
        for job_id, redelivered in jobs:
            script_keys += [keys.result(job_id), keys.state(job_id), keys.tries(job_id)]
            args.append("1" if redelivered else "0")
        return script_keys, args

    def pop(self, lists: Sequence[str], max_messages: int) -> list[Delivery]:
        """Up to ``max_messages`` waiting messages, highest priority list first. Never blocks."""
        if max_messages <= 0 or not lists:
            return []
        raws = self._pop(keys=list(lists), args=[max_messages, time.time(), self.unacked_key, self.index_key])
        return [parse_delivery(m) for m in raws]

    def wait_burst(self, lists: Sequence[str], watch: str, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Wait up to ``timeout_s`` for work on the list ``watch``, then take up to
        ``max_messages`` from ``lists`` (highest priority first), in one round trip.

        The wait never consumes: ``BLMOVE watch watch RIGHT RIGHT`` blocks until the list has
        a message and puts it straight back where it was. The pop script, pipelined behind it,
        then takes and registers messages atomically, so no message is ever out of both its
        queue and kombu's ``unacked`` (a destructive BRPOP would leave a window in which a
        killed worker loses the message).
        """
        lists = list(lists)
        pop_args: list[Any] = [max_messages, time.time(), self.unacked_key, self.index_key]
        pool = self._r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(
                conn.pack_commands(
                    [
                        ("BLMOVE", watch, watch, "RIGHT", "RIGHT", timeout_s),
                        ("EVALSHA", self._pop.sha, len(lists), *lists, *pop_args),
                    ]
                )
            )
            conn.read_response()
            try:
                raws = conn.read_response()
            except redis.exceptions.NoScriptError:  # first use, or Redis restarted
                raws = self._pop(keys=lists, args=pop_args)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return [parse_delivery(m) for m in raws or []]

    def renew(self, tags: Iterable[str]) -> None:
        """Extend the lease of in-flight messages (their restore clock starts again now)."""
        tags = [t for t in tags if t]
        if tags:
            now = time.time()
            self._r.zadd(self.index_key, dict.fromkeys(tags, now), xx=True)
