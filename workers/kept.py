"""Kept inputs for replay: with ``keep_inputs = N`` in a model's config.toml, the worker keeps
the inputs of the last N jobs it answered successfully for that model (``icow:kept:<m>``,
LPUSH + LTRIM, newest first), so that `icow replay` (icow/cli/replay.py) can run them again on
two versions and compare.

Each record is the job's input tensors inline (claim-checked data included, read before the
job ran), its id, the version that answered, the time and the job's result TTL
(icow.records.kept_entry). The list expires with the longest result TTL of what it holds;
`icow replay` skips records older than their own TTL. Jobs sent by `icow replay` itself are
never kept. One pipelined round trip per take, after the answers are written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis

from icow import keys, records
from icow.workers.followup import Answered
from icow.workers.models import ModelManager

log = logging.getLogger("icow.kept")


class InputKeeper:
    """A follow-up (workers/followup.py) that keeps answered jobs' inputs per model."""

    def __init__(self, manager: ModelManager, r: redis.Redis):
        self.manager = manager
        self.r = r

    def keep_for(self, model: str) -> int:
        entry = self.manager.entries.get(model)
        return entry.config.keep_inputs if entry is not None else 0

    def jobs_answered(self, answered: Sequence[Answered]) -> None:
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        for a in answered:
            n = self.keep_for(a.model) if a.ok and not keys.is_replay_job(a.job_id) else 0
            if n <= 0:
                continue
            key, ttl = keys.kept(a.model), int(a.job["ttl"] or keys.DEFAULT_RESULT_TTL_S)
            pipe.lpush(key, records.kept_entry(a.job, time_s=now))
            pipe.ltrim(key, 0, n - 1)
            pipe.expire(key, ttl, nx=True)  # a new list; then only ever lengthened:
            pipe.expire(key, ttl, gt=True)  # a short-TTL job never cuts older records short
        if len(pipe):
            try:
                pipe.execute()
            except redis.exceptions.RedisError as exc:
                log.warning("could not keep %d jobs' inputs for replay: %s", len(pipe) // 4, exc)
