"""What a finished job's result says about its run, besides the outputs: ``job.info()``.

I/O-free: read from the result meta the handle already holds (docs/PROTOCOL.md §9), the same
for ``Job`` and ``AsyncJob``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from icow.errors import NoResultYet


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


def _num(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def info_of(job_id: str, meta: Mapping[str, Any] | None) -> JobInfo:
    """The :class:`JobInfo` of a result meta; NoResultYet while the handle has seen none."""
    if meta is None:
        raise NoResultYet(
            f"job {job_id}: no result seen yet; info() is there once result() has returned or raised "
            "the job's error (or status() read it finished, or as_completed yielded it)"
        )
    res = meta.get("result")
    res = res if isinstance(res, Mapping) else {}
    timing = res.get("timing")
    timing = timing if isinstance(timing, Mapping) else {}
    model, worker, date = res.get("model"), res.get("worker"), meta.get("date_done")
    return JobInfo(
        job_id=job_id,
        status="succeeded" if meta.get("status") == "SUCCESS" else "failed",
        model=model if isinstance(model, str) else None,
        version=_num(res.get("version"), int),
        worker=worker if isinstance(worker, str) and worker else None,
        queued_s=_num(timing.get("queued_s"), float),
        compute_s=_num(timing.get("compute_s"), float),
        batch=_num(timing.get("batch"), int),
        batch_samples=_num(timing.get("batch_samples"), int),
        finished=date if isinstance(date, str) else None,
    )
