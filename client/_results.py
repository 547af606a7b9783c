"""Reading results, I/O-free: reply-list and bell entries, the result and state keys, statuses,
and a finished job's outputs (joined with the large ones stored under their own keys). Every
result is read through icow.result's one reader (:class:`icow.result.Result`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from icow import envelope, result, tensor
from icow.client._cancel import cancel_key
from icow.errors import JobNotFound, remote_error
from icow.result import Result

JobStatus = Literal["queued", "running", "succeeded", "failed"]
Outputs = dict[str, np.ndarray]


def parse_entry(raw: Any) -> tuple[str, Result] | None:
    """(who waits for it, result) of a reply-list or bell entry (icow.result.reply_entry): a
    job's answer goes to its job id; a cancel outcome to :func:`cancel_key` of the job. None
    for anything else."""
    r = result.reply_entry(raw)
    if r is None or r.job_id is None:
        return None
    return (cancel_key(r.job_id) if r.status == result.CANCEL else r.job_id), r


def read_meta(job_id: str, raw: Any) -> Result | None:
    """The result stored under ``celery-task-meta-<id>``, if it is this job's answer."""
    if raw is None:
        return None
    r = result.read(raw)
    return r if r.job_id == job_id and r.ready else None


def settled(job_id: str, raw_result: Any, raw_state: Any) -> Result | None:
    """The job's result from its two keys; None while it is queued or running; JobNotFound
    once it was answered but the result has expired."""
    meta = read_meta(job_id, raw_result)
    if meta is None and raw_state == b"done":
        raise JobNotFound(f"job {job_id}: its result has expired")
    return meta


def status_of(job_id: str, raw_result: Any, raw_state: Any) -> JobStatus:
    """docs/PROTOCOL.md §11: a result says succeeded or failed; state ``running`` says running;
    ``done`` without a result is JobNotFound; no record at all is ``queued`` (a client cannot
    tell an unknown id from a job that waits in a queue)."""
    meta = settled(job_id, raw_result, raw_state)
    if meta is not None:
        return status_of_meta(meta)
    return "running" if raw_state == b"running" else "queued"


def status_of_meta(meta: Result) -> JobStatus:
    return "succeeded" if meta.ok else "failed"


def output_refs(meta: Result) -> list[str]:
    """Claim-check keys the result's outputs point at (fetch them, then call decode_result)."""
    return envelope.refs(meta.outputs) if meta.ok else []


def decode_result(meta: Result, blobs: Mapping[str, Any] | None = None) -> Outputs:
    """Outputs by name from a finished job's result, or raise the remote error it carries."""
    if not meta.ok:
        error_type, message = meta.error or ("RemoteError", "")
        raise remote_error(error_type, message, job_id=meta.job_id)
    wire, missing = envelope.join(meta.outputs, blobs or {})
    if missing:
        raise JobNotFound(f"job {meta.job_id}: output {missing[0]!r} has expired")
    return {t["name"]: tensor.decode(t, max_bytes=1 << 62) for t in wire}
