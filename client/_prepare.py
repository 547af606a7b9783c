"""Encoding a job, I/O-free: where it goes (:class:`Target`), and the job validated and encoded
(:func:`prepare`): its envelope and Celery message, its large tensors split off under their own
input keys, its digest when the caller chose its id. Nothing here reaches Redis."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from icow import envelope, keys, tensor
from icow.celery_message import celery_message
from icow.client._deadlines import remaining
from icow.client._options import Options, check_ttl
from icow.digest import job_digest
from icow.errors import InvalidInput, PayloadTooLarge

DURABLE_WAIT_S = 1.0  # a durable submit waits this long (at most) for a replica to hold its jobs


@dataclass(frozen=True)
class Target:
    """Where jobs go: a model, a version or None (the fleet's latest), a priority (0-9)."""

    model: str
    version: int | None = None
    priority: int = 0
    durable: bool | None = None  # None: the client's ``durable``

    def __post_init__(self) -> None:
        keys.check_model_name(self.model)
        v = self.version
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InvalidInput(f"version must be a positive integer or None, got {v!r}")
        p = self.priority
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9:
            raise InvalidInput(f"priority must be an integer 0..9 (0 is served first), got {p!r}")

    @property
    def queue(self) -> str:
        return keys.queue(self.model, self.version)

    def durable_wait_ms(self, options: Options, deadline: float | None) -> int:
        """0: not durable; else how long ``WAIT`` may wait for a replica (ms, within the deadline)."""
        if not (options.durable if self.durable is None else self.durable):
            return 0
        left = remaining(deadline)
        limit_s = DURABLE_WAIT_S if left is None else min(DURABLE_WAIT_S, left)
        return max(1, int(1000 * limit_s))

    def describe(self) -> str:
        return f"model {self.model!r}" + ("" if self.version is None else f" version {self.version}")


@dataclass(frozen=True)
class PreparedJob:
    """One encoded job: its message, and the claim-checked inputs to SET before queuing it."""

    job_id: str
    cancel_token: str | None
    message: bytes
    inputs: dict[str, Any]  # input key -> bytes
    ttl_s: int
    digest: str | None = None  # a caller-chosen id's job digest (icow.digest), sent to icow_submit


def prepare(
    target: Target,
    inputs: Mapping[str, Any],
    *,
    options: Options,
    reply_to: str,
    outputs: Sequence[str] | None = None,
    deadline_s: float | None = None,
    result_ttl_s: int | None = None,
    job_id: str | None = None,
    inline_max_bytes: int | None = None,
) -> PreparedJob:
    """Validate and encode one job. Raises InvalidInput before anything reaches Redis.

    A job gets a fresh id and its cancel token (:func:`icow.envelope.new_job`); a ``job_id``
    of the caller's has no token, so it cannot be cancelled."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput("inputs must be a non-empty mapping of input name -> numpy array")
    if outputs is not None and (
        isinstance(outputs, str) or not outputs or not all(isinstance(o, str) and o for o in outputs)
    ):
        raise InvalidInput("outputs must be a non-empty sequence of output names (None returns every output)")
    ttl_s = options.result_ttl_s if result_ttl_s is None else check_ttl(result_ttl_s)
    if deadline_s is not None and (
        isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or deadline_s <= 0
    ):
        raise InvalidInput(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
    token: str | None = None
    custom = job_id is not None
    if job_id is None:
        job_id, token = envelope.new_job()
    else:
        keys.check_job_id(job_id)
    inline_max = options.inline_max_bytes if inline_max_bytes is None else inline_max_bytes
    wire: list[dict[str, Any]] = []
    hashed: list[tuple[str, str, Sequence[int], Any]] = []
    total = 0
    for name, array in inputs.items():
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"input names must be non-empty strings, got {name!r}")
        t = tensor.encode(name, array, max_bytes=options.max_tensor_bytes)
        if custom:
            hashed.append((name, t["datatype"], t["shape"], t["data"]))
        total += len(t["data"])
        wire.append(t)
    if total > envelope.DEFAULT_MAX_JOB_BYTES:
        raise PayloadTooLarge(f"the job's inputs total {total} bytes; the limit is {envelope.DEFAULT_MAX_JOB_BYTES}")
    blobs = envelope.split_inputs(wire, inline_max)
    now = time.time()
    job = envelope.job_envelope(
        job_id=job_id,
        model=target.model,
        version=target.version,
        inputs=wire,
        outputs=outputs,
        result_ttl_s=ttl_s,
        reply_to=reply_to,
        deadline=None if deadline_s is None else now + deadline_s,
        created=now,
    )
    # A caller-chosen id may be reused: its digest lets icow_submit tell a resubmission of the
    # same job (idempotent) from another job under that id (JobIdConflict).
    digest = job_digest(target.model, target.version, outputs, hashed) if custom else None
    message = celery_message(job, queue=target.queue, priority=target.priority, digest=digest)
    return PreparedJob(job_id, token, message, blobs, ttl_s, digest)
