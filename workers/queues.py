"""Queue inspection without consuming: backlog per model and the age of its oldest waiting job.

A model's jobs wait in its latest queue ``icow:q:<m>`` and one pinned queue per published
version ``icow:q:<m>@<v>``, each in four priority lists (icow/keys.py). Clients ``LPUSH`` and
workers take from the right end, so the oldest message of a list is ``LINDEX -1``; its
creation time is read by icow.celery_message from the first bytes only (the library's ``icow_peek``
returns a prefix; nothing scans whole messages).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from icow import functions, keys
from icow.celery_message import created_from_message

PREFIX_BYTES = 2048


@dataclass(frozen=True)
class QueueState:
    model: str
    backlog: int  # messages waiting in every priority list of the model's queue
    oldest_age_s: float | None  # age of the oldest waiting job; None when empty or unreadable


def published_models(r: redis.Redis) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in r.smembers(keys.MODELS))


def queue_states(r: redis.Redis, models: Iterable[str], *, now: float | None = None) -> list[QueueState]:
    """Backlog and oldest-job age of every model's queue, in one round trip (plus one per
    oldest message whose prefix did not hold its creation time)."""
    models = list(models)
    if not models:
        return []
    pipe = r.pipeline(transaction=False)
    for m in models:
        pipe.hkeys(keys.model(m))
    versions = pipe.execute()
    lists = [
        (m, lst)
        for m, vs in zip(models, versions)
        for q in [keys.queue(m), *[keys.queue(m, int(v)) for v in vs]]
        for lst in keys.queue_lists(q)
    ]
    raw = functions.call(r, functions.PEEK, [lst for _, lst in lists], [PREFIX_BYTES])
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
