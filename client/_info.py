"""What a finished job's result says about its run, besides the outputs: ``job.info()``.

I/O-free: read from the result (icow.result.Result) the handle already holds (docs/PROTOCOL.md §9), the same
for ``Job`` and ``AsyncJob``.
"""

from __future__ import annotations

from dataclasses import dataclass

from icow.errors import NoResultYet
from icow.result import Result


@dataclass(frozen=True)
class JobInfo:
    """How a finished job ran. ``version``: the version that ran (a failure: the one asked
    for, None when it asked for none); ``worker``: the worker that answered; ``queued_s``:
    receipt by the worker minus the job's creation; ``compute_s``: ONNX Runtime time of the
    session call it ran in; ``batch`` / ``batch_samples``: jobs and samples in that call.
    Timings and batch are None for a failure (no run). ``finished``: ISO-8601 UTC time the
    result was made."""

    job_id: str
    status: str  # "succeeded" | "failed"
    model: str | None
    version: int | None
    worker: str | None
    queued_s: float | None
    compute_s: float | None
    batch: int | None
    batch_samples: int | None
    finished: str | None


def info_of(job_id: str, meta: Result | None) -> JobInfo:
    """The :class:`JobInfo` of a result; NoResultYet while the handle has seen none."""
    if meta is None:
        raise NoResultYet(
            f"job {job_id}: no result seen yet; info() is there once result() has returned or raised "
            "the job's error (or status() read it finished, or as_completed yielded it)"
        )
    return JobInfo(
        job_id=job_id,
        status="succeeded" if meta.ok else "failed",
        model=meta.model,
        version=meta.version,
        worker=meta.worker or None,
        queued_s=meta.timing.queued_s,
        compute_s=meta.timing.compute_s,
        batch=meta.timing.batch,
        batch_samples=meta.timing.batch_samples,
        finished=meta.finished,
    )
