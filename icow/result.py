"""The result record: the only module that builds a job's result or reads one.

A worker answers with a Celery result meta map (msgpack) under ``celery-task-meta-<id>``
(section 9 of docs/PROTOCOL.md): ``status`` SUCCESS with the ICOW result envelope (outputs,
the version that ran, the worker, timings), or FAILURE with ``exc_type``/``exc_message`` as a
stock Celery client rebuilds them. The same map goes to the caller's reply list; a cancel
outcome (status CANCEL) shares that list. Every module that needs to know what a result says
reads it as a :class:`Result`, made by :func:`read` (bytes), :func:`of` (a map already
decoded) or :func:`reply_entry` (a reply-list entry), never field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

from icow.codec import PROTOCOL_VERSION, packb, unpackb
from icow.errors import InvalidInput

SUCCESS, FAILURE, REVOKED, CANCEL = "SUCCESS", "FAILURE", "REVOKED", "CANCEL"
READY_STATES = (SUCCESS, FAILURE, REVOKED)
CANCEL_PREFIX = "cancel:"  # the task_id of a cancel outcome on a reply list: cancel:<job id>


class ResultMeta(TypedDict):
    """A Celery result meta map carrying an ICOW result (section 9 of docs/PROTOCOL.md)."""

    status: str  # SUCCESS or FAILURE
    result: dict[str, Any]  # the ICOW result envelope, or the failure's exc_type/exc_message...
    traceback: None
    children: list[Any]
    date_done: str
    task_id: str


# ---------------------------------------------------------------------------- building


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def success_meta(
    job_id: str,
    *,
    model: str,
    version: int,
    outputs: list[dict[str, Any]],
    worker: str,
    timing: Mapping[str, float],
) -> ResultMeta:
    """A Celery result meta map (status SUCCESS) carrying the ICOW result envelope."""
    return {
        "status": SUCCESS,
        "result": {
            "v": PROTOCOL_VERSION,
            "id": job_id,
            "model": model,
            "version": version,
            "outputs": outputs,
            "worker": worker,
            "timing": dict(timing),
        },
        "traceback": None,
        "children": [],
        "date_done": _now_iso(),
        "task_id": job_id,
    }


def failure_meta(
    job_id: str,
    *,
    error_type: str,
    message: str,
    model: str | None = None,
    version: int | None = None,
    worker: str = "",
) -> ResultMeta:
    """A Celery result meta map (status FAILURE). Stock Celery clients rebuild the exception
    from exc_type/exc_message/exc_module; ICOW clients map ``exc_type`` via icow.errors."""
    return {
        "status": FAILURE,
        "result": {
            "exc_type": error_type,
            "exc_message": [message],
            "exc_module": "icow.errors",
            "v": PROTOCOL_VERSION,
            "id": job_id,
            "model": model,
            "version": version,
            "worker": worker,
        },
        "traceback": None,
        "children": [],
        "date_done": _now_iso(),
        "task_id": job_id,
    }


def cancel_outcome(job_id: str, code: int) -> bytes:
    """What a worker pushes onto a canceller's reply list: 1 cancelled, 0 already finished,
    -1 already running."""
    return packb({"status": CANCEL, "task_id": f"{CANCEL_PREFIX}{job_id}", "result": int(code)})


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Timing:
    """How a successful job ran: receipt minus creation, ONNX Runtime time of its session
    call, and the jobs and samples that shared that call (None where the result says none)."""

    queued_s: float | None = None
    compute_s: float | None = None
    batch: int | None = None
    batch_samples: int | None = None


@dataclass(frozen=True)
class Result:
    """A result record as read. ``job_id``: its task id (a cancel outcome: the cancelled
    job's id); ``outputs``: wire tensors, inline or claim-checked (icow.envelope.join);
    ``error``: (error type, message) of a failure; ``code``: a cancel outcome's 1/0/-1."""

    job_id: str | None
    status: str
    model: str | None = None
    version: int | None = None
    worker: str | None = None  # as written ("" when the answer came from outside a worker)
    outputs: tuple[Mapping[str, Any], ...] = ()
    error: tuple[str, str] | None = None
    timing: Timing = field(default_factory=Timing)
    finished: str | None = None  # date_done, ISO 8601 UTC
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    @property
    def ready(self) -> bool:
        """A job's answer (success, failure or revoked), not a state or a cancel outcome."""
        return self.status in READY_STATES


def _num(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def failure_of(meta: Mapping[str, Any]) -> tuple[str, str]:
    """(error type, message) of a FAILURE/REVOKED meta."""
    res = meta.get("result")
    if meta.get("status") == REVOKED:
        return "JobCancelled", "the job was revoked"
    if isinstance(res, Mapping):
        msg = res.get("exc_message")
        if isinstance(msg, list):
            msg = " ".join(str(m) for m in msg)
        return str(res.get("exc_type", "RemoteError")), str(msg or "")
    return "RemoteError", str(res)


def of(meta: Mapping[str, Any]) -> Result:
    """The :class:`Result` of a result meta map (as built here, or decoded by :func:`parse_meta`)."""
    status = str(meta.get("status"))
    task_id = meta.get("task_id")
    res = meta.get("result")
    if status == CANCEL:
        job_id = task_id[len(CANCEL_PREFIX) :] if isinstance(task_id, str) else None
        return Result(job_id, status, code=_num(res, int))
    env = res if isinstance(res, Mapping) else {}
    model, worker, date = env.get("model"), env.get("worker"), meta.get("date_done")
    timing: Timing = Timing()
    outputs: tuple[Mapping[str, Any], ...] = ()
    error = None
    if status == SUCCESS:
        t = env.get("timing")
        if isinstance(t, Mapping):
            timing = Timing(
                _num(t.get("queued_s"), float),
                _num(t.get("compute_s"), float),
                _num(t.get("batch"), int),
                _num(t.get("batch_samples"), int),
            )
        outs = env.get("outputs", ())
        outputs = tuple(outs) if isinstance(outs, (list, tuple)) else ()
    else:
        error = failure_of(meta)
    return Result(
        job_id=task_id if isinstance(task_id, str) else None,
        status=status,
        model=model if isinstance(model, str) else None,
        version=_num(env.get("version"), int),
        worker=worker if isinstance(worker, str) else None,
        outputs=outputs,
        error=error,
        timing=timing,
        finished=date if isinstance(date, str) else None,
    )


def parse_meta(data: Any) -> dict[str, Any]:
    """The result meta map in ``data`` (msgpack), untyped; InvalidInput if it is none."""
    meta = unpackb(data)
    if not isinstance(meta, dict) or meta.get("status") not in (*READY_STATES, "PENDING", "STARTED", "RETRY"):
        raise InvalidInput("not a result meta map")
    return meta


def read(data: Any) -> Result:
    """The :class:`Result` stored under ``celery-task-meta-<id>``; InvalidInput if it is none."""
    return of(parse_meta(data))


def reply_entry(raw: Any) -> Result | None:
    """A reply-list or bell entry: a job's answer, or a cancel outcome (status CANCEL, task id
    ``cancel:<job id>``). Told apart by the status, never by the task id alone: a custom job
    id may itself read ``cancel:abc`` (docs/PROTOCOL.md §12). None for anything else."""
    try:
        meta = unpackb(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("task_id"), str):
        return None
    status = meta.get("status")
    if status == CANCEL:
        return of(meta) if meta["task_id"].startswith(CANCEL_PREFIX) else None
    return of(meta) if status in READY_STATES else None
