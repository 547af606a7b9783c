"""What the runner tells the rest of the worker about finished jobs.

The runner calls :meth:`JobObserver.jobs_done` once per :meth:`JobRunner.handle_many` call
with one :class:`JobOutcome` per answered job; metrics (workers/metrics.py) and the per-model
counters in heartbeats (:class:`WorkerStats`) are observers. An observer never fails a job:
the runner logs and ignores its exceptions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from icow import result

SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    model: str | None  # None when the job could not be parsed
    version: int | None  # the version that ran; the requested one (or None) for failures
    outcome: str  # "succeeded" or the error type ("InvalidJob", "JobExpired", ...)
    queue_wait_s: float | None  # created -> taken by the worker
    compute_s: float | None  # the session call that produced it (shared by a batch)
    latency_s: float | None  # created -> result written
    batch: int | None = None  # jobs that shared the session call (None: not reported)
    batch_samples: int | None = None  # samples in that session call

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCEEDED


class JobObserver(Protocol):
    def jobs_done(self, outcomes: Sequence[JobOutcome]) -> None: ...


def outcome_of(
    job_id: str, meta: Mapping[str, Any], job: Mapping[str, Any] | None, received: float, done: float
) -> JobOutcome:
    """Build the outcome of one job from its result meta and (if it parsed) its envelope."""
    r = result.of(meta)
    created = job["created"] if job else None
    wait = max(0.0, received - created) if isinstance(created, float) else None
    latency = max(0.0, done - created) if isinstance(created, float) else None
    if r.ok:
        t = r.timing
        return JobOutcome(job_id, r.model, r.version, SUCCEEDED, wait, t.compute_s, latency, t.batch, t.batch_samples)
    error_type = r.error[0] if r.error else "InternalError"
    return JobOutcome(job_id, r.model, r.version, error_type, wait, None, latency)


class FanOut:
    """Several observers behind one."""

    def __init__(self, *observers: JobObserver):
        self.observers = list(observers)

    def jobs_done(self, outcomes: Sequence[JobOutcome]) -> None:
        for o in self.observers:
            o.jobs_done(outcomes)


class WorkerStats:
    """Per-model job counts and recent rates, for the worker's heartbeat (``icow status``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self._last: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self._rates: dict[str, float] = {}

    def jobs_done(self, outcomes: Sequence[JobOutcome]) -> None:
        with self._lock:
            for o in outcomes:
                m = o.model or "?"
                self.jobs[m] = self.jobs.get(m, 0) + 1
                if not o.ok:
                    self.failed[m] = self.failed.get(m, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Counts, and jobs/s per model since the previous snapshot (the heartbeat interval)."""
        now = time.monotonic()
        with self._lock:
            jobs, failed = dict(self.jobs), dict(self.failed)
        then, before = self._last
        if now - then >= 0.5:
            self._rates = {m: (n - before.get(m, 0)) / (now - then) for m, n in jobs.items()}
            self._last = (now, jobs)
        return {"jobs_by_model": jobs, "failures_by_model": failed, "jobs_per_s": dict(self._rates)}
