"""Queue inspection without consuming: backlog per model and the age of its oldest waiting job.

Clients ``LPUSH`` and workers ``BRPOP``, so the oldest message of a list is its right end
(``LINDEX -1``). Its creation time is the ``created`` field of the job inside the message
(kombu JSON envelope -> base64 ``body`` -> msgpack ``[[job], {}, embed]``). Messages may carry
megabytes of inline tensors, so a Lua script returns only the first bytes of each oldest
message; ICOW's encoder puts ``created`` before the tensors, so a few hundred bytes suffice.
Only when they do not (another encoder, another key order) is the whole message fetched.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import redis

from icow import keys

PREFIX_BYTES = 1024

# KEYS: queue lists. ARGV[1]: how many leading bytes of each oldest message to return.
# Returns, per key, its length and the prefix of its right-most (oldest) message ('' if empty).
_PEEK = """
local out = {}
for i, k in ipairs(KEYS) do
  out[#out + 1] = redis.call('LLEN', k)
  local m = redis.call('LINDEX', k, -1)
  if m then out[#out + 1] = string.sub(m, 1, tonumber(ARGV[1])) else out[#out + 1] = '' end
end
return out
"""


@dataclass(frozen=True)
class QueueState:
    model: str
    backlog: int  # messages waiting in every priority list of the model's queue
    oldest_age_s: float | None  # age of the oldest waiting job; None when empty or unreadable


def created_from_message(message: bytes) -> float | None:
    """The job's ``created`` time from a whole message or a prefix of one; None if not in it."""
    start = message.find(b'"body":"')
    if start < 0:
        return None
    start += len(b'"body":"')
    end = message.find(b'"', start)
    b64 = message[start:] if end < 0 else message[start:end]
    b64 = b64[: len(b64) // 4 * 4]
    try:
        body = base64.b64decode(b64, validate=True)
        u = msgpack.Unpacker(raw=False, strict_map_key=False)
        u.feed(body)
        u.read_array_header()  # [args, kwargs, embed]
        u.read_array_header()  # args = [job]
        for _ in range(u.read_map_header()):
            key = u.unpack()
            if key == "created":
                value = u.unpack()
                return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            u.skip()
    except (ValueError, msgpack.OutOfData, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError):
        return None
    return None


def published_models(r: redis.Redis) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in r.smembers(keys.MODELS))


def queue_states(r: redis.Redis, models: Iterable[str], *, now: float | None = None) -> list[QueueState]:
    """Backlog and oldest-job age of every model's queue, in one round trip (plus one per
    oldest message whose prefix did not hold its creation time)."""
    models = list(models)
    if not models:
        return []
    lists = [(m, lst) for m in models for lst in keys.queue_lists(m)]
    raw = r.eval(_PEEK, len(lists), *[lst for _, lst in lists], PREFIX_BYTES)
    now = time.time() if now is None else now
    backlog: dict[str, int] = dict.fromkeys(models, 0)
    oldest: dict[str, float] = {}
    for i, (m, lst) in enumerate(lists):
        length, prefix = int(raw[2 * i]), raw[2 * i + 1]
        backlog[m] += length
        if not length or not prefix:
            continue
        created = created_from_message(prefix)
        if created is None and len(prefix) >= PREFIX_BYTES:
            full: Any = r.lindex(lst, -1)
            created = created_from_message(full) if full else None
        if created is not None:
            oldest[m] = min(created, oldest.get(m, created))
    return [
        QueueState(m, backlog[m], max(0.0, now - oldest[m]) if m in oldest else None)
        for m in models  # keep the caller's order
    ]
