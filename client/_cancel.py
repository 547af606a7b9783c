"""Cancelling, I/O-free: the ``icow_cancel_request`` call (token checks before anything is sent),
where its answer is filed in the reply box, and what the answer says (docs/PROTOCOL.md §12)."""

from __future__ import annotations

from typing import Any

from icow import envelope, keys
from icow.client._options import check_ttl
from icow.errors import InvalidInput
from icow.result import Result


def cancel_key(job_id: str) -> str:
    """Who waits for the fleet's answer to a cancel request for ``job_id`` (in the reply box):
    ``"cancel <job id>"``, a space that no job id holds, so it never meets a job's own result.
    On the wire the answer's task id is ``cancel:<job id>``."""
    return "cancel " + job_id


def check_token(job_id: str, token: str | None) -> str | None:
    """A re-attached job's cancel token must be the one its id was made from."""
    if token is not None and envelope.job_id_for_token(token) != job_id:
        raise InvalidInput(f"this cancel token does not belong to job {job_id}")
    return token


def cancel_request(
    job_id: str, token: str | None, reply_key: str, ttl_s: int | None = None
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``icow_cancel_request``: the token, the reply list to answer on, and the
    job's result TTL when known (its JobCancelled result keeps it; else one day). InvalidInput
    for a job without a token, or a malformed one (checked here, before anything is sent)."""
    if token is None:
        raise InvalidInput(
            f"job {job_id} has no cancel token: only the client that submitted it with an id of "
            "ICOW's making (or whoever it gave job.cancel_token to: client.job(id, cancel_token=...)) "
            "can cancel it; jobs submitted with job_id=... cannot be cancelled"
        )
    if envelope.job_id_for_token(token) != job_id:
        raise InvalidInput(f"this cancel token does not belong to job {job_id}")
    return [keys.CANCELS], [token, reply_key] + ([] if ttl_s is None else [str(check_ttl(ttl_s))])


def cancel_outcome(meta: Result) -> bool:
    """The fleet's answer: True cancelled; False already finished (0) or already running (-1)."""
    return meta.code == 1
