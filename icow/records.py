"""The records beside the results: the only module that builds or reads dead letters, recent
failures, kept inputs and bulk records (all msgpack maps, docs/PROTOCOL.md and icow/keys.py).

- a dead letter (``icow:dead:<id>``): why the fleet gave up on a job, or on a message it could
  not even answer (no usable id); `icow failures` reads them;
- a recent failure (``icow:failures``, a capped list): one line of `icow status`;
- a kept input (``icow:kept:<m>``): a job's inputs inline, for `icow replay`;
- a bulk record (``icow:bulk:<id>``): the job ids of a bulk submission.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from icow import keys, result, tensor
from icow.codec import PROTOCOL_VERSION, packb, unpackb
from icow.envelope import check_data_size, tensor_data
from icow.errors import InvalidInput

# ---------------------------------------------------------------------------- dead letters and failures


def bad_message(raw_id: str | None, reason: str, sample: bytes, *, time_s: float | None = None) -> bytes:
    """The dead letter of a message that could not be answered (no usable id)."""
    return packb(
        {
            "id": raw_id,
            "error": "InvalidJob",
            "message": reason[:2000],
            "model": None,
            "version": None,
            "sample": sample[:256],
            "deliveries": 1,
            "time": time.time() if time_s is None else time_s,
        }
    )


def dead_letter(job_id: str, meta: Mapping[str, Any], deliveries: int, *, time_s: float | None = None) -> bytes:
    """A dead letter: why the job was given up on (its failure result ``meta``)."""
    r = result.of(meta)
    error_type, message = r.error or result.failure_of(meta)
    return packb(
        {
            "id": job_id,
            "error": error_type,
            "message": message[:2000],
            "model": r.model,
            "version": r.version,
            "worker": r.worker,
            "deliveries": deliveries,
            "time": time.time() if time_s is None else time_s,
        }
    )


def recent_failure(meta: Mapping[str, Any], *, time_s: float | None = None) -> bytes | None:
    """The "recent failures" entry of a result (None: it is not a failure)."""
    r = result.of(meta)
    if r.status != result.FAILURE or r.error is None:
        return None
    return packb(
        {
            "id": r.job_id,
            "model": r.model,
            "version": r.version,
            "worker": r.worker,
            "error": r.error[0],
            "message": r.error[1][:500],
            "time": time.time() if time_s is None else time_s,
        }
    )


def parse_record(raw: Any) -> dict[str, Any] | None:
    """A dead letter or recent failure as a map of its fields (None: not one)."""
    try:
        rec = unpackb(raw)
    except Exception:
        return None
    return rec if isinstance(rec, dict) else None


# ---------------------------------------------------------------------------- kept inputs (replay)


def kept_entry(job: Mapping[str, Any], *, time_s: float | None = None) -> bytes:
    """A kept input record (``icow:kept:<m>``): the job's id, model, the version that answered
    it, when, its result TTL, the outputs it asked for, and its input tensors inline (claim-
    checked data included). Workers write it; `icow replay` reads it with :func:`parse_kept`."""
    return packb(
        {
            "v": PROTOCOL_VERSION,
            "id": job["id"],
            "model": job["model"],
            "version": job.get("version"),
            "time": time.time() if time_s is None else time_s,
            "ttl": job.get("ttl", keys.DEFAULT_RESULT_TTL_S),
            "outputs": job.get("outputs"),
            "inputs": [
                {"name": t["name"], "datatype": t["datatype"], "shape": list(t["shape"]), "data": bytes(t["data"])}
                for t in job["inputs"]
            ],
        }
    )


def parse_kept(raw: Any, *, max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES) -> dict[str, Any]:
    """Validate a kept input record; InvalidInput naming the first problem."""
    try:
        rec = unpackb(raw)
    except Exception as exc:
        raise InvalidInput(f"a kept input record is not msgpack ({type(exc).__name__})") from exc
    if not isinstance(rec, dict) or rec.get("v") != PROTOCOL_VERSION:
        raise InvalidInput("a kept input record must be a map of this protocol version")
    keys.check_job_id(rec.get("id"))
    keys.check_model_name(rec.get("model"))
    when, ttl = rec.get("time"), rec.get("ttl")
    if not isinstance(when, (int, float)) or isinstance(when, bool) or not isinstance(ttl, int):
        raise InvalidInput("a kept input record needs a time and a ttl")
    inputs = rec.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("a kept input record needs a non-empty list of inputs")
    for t in inputs:
        name, datatype, shape = tensor.check_header(t, max_bytes=max_tensor_bytes)
        check_data_size(name, datatype, shape, tensor_data(name, t.get("data")))
    outputs = rec.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)):
        raise InvalidInput("a kept input record's outputs must be a list of names or null")
    return rec


# ---------------------------------------------------------------------------- bulks


def bulk(bulk_id: str, model: str, job_ids: list[str], samples: int) -> bytes:
    """The record of a bulk submission (``icow:bulk:<id>``): its model, job ids in sample
    order, and sample count."""
    return packb({"id": bulk_id, "model": model, "jobs": job_ids, "samples": samples})


def parse_bulk(raw: Any) -> tuple[str, list[str], int]:
    """(model, job ids, samples) of a bulk record."""
    rec = unpackb(raw)
    return str(rec["model"]), [str(i) for i in rec["jobs"]], int(rec["samples"])
