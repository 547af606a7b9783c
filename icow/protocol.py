"""The wire format: job envelopes, result envelopes, and the Celery message that carries a job.

This module is the only place that builds or parses bytes that cross Redis (with
icow.tensor for tensors and icow.keys for key names). docs/PROTOCOL.md describes the same
format for other languages, and tests/test_protocol.py pins it with golden bytes.

A job travels as a Celery protocol-2 task message on the kombu Redis transport: a JSON
envelope whose base64 ``body`` is ``msgpack([[job], {}, embed])``. ``job`` is the ICOW job
envelope (a msgpack map, see :func:`job_envelope`). The worker answers with a Celery result
meta map (msgpack) under ``celery-task-meta-<id>``, see :func:`success_meta`.

The JSON form: clients that can only send JSON task bodies (Celery clients in other languages)
send the same job with ``content-type: application/json`` and each tensor's ``data`` as a
standard base64 string; :func:`parse_job` accepts both. Results are always msgpack.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgpack

from icow import keys, tensor
from icow.errors import InvalidInput

PROTOCOL_VERSION = 1
TASK_NAME = "icow.infer"
CONTENT_TYPE = "application/x-msgpack"

# Tensors larger than this travel under their own key (claim check), not inside the message.
DEFAULT_INLINE_MAX_BYTES = 256 * 1024
# Redis refuses bulk strings over 512 MB (proto-max-bulk-len); stay clearly below.
DEFAULT_MAX_JOB_BYTES = 480 * 1024 * 1024

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

READY_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: Any) -> Any:
    # strict_map_key=False is safe here: keys are validated by the readers below.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def new_job_id() -> str:
    """A random id (bulk records, Celery-style ids). Jobs take theirs from :func:`new_job`."""
    return str(uuid.uuid4())


def job_id_for_token(token: str) -> str:
    """The job id that a cancel token commits to: the UUID made of the first 16 bytes of
    SHA-256(token). Whoever holds the token may cancel the job; knowing the id is not enough."""
    if not isinstance(token, str) or len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
        raise InvalidInput("a cancel token is 32 lowercase hex characters")
    return str(uuid.UUID(bytes=hashlib.sha256(token.encode("ascii")).digest()[:16]))


def new_job() -> tuple[str, str]:
    """(job id, cancel token) for a new job: 128 random bits, and the id they commit to."""
    token = secrets.token_hex(16)
    return job_id_for_token(token), token


def new_input_key() -> str:
    """A claim-check key for one input tensor: 128 random bits, so no other client can find,
    read or overwrite it (clients may not list keys)."""
    return keys.input_blob(secrets.token_hex(16))


# ---------------------------------------------------------------------------- jobs


def job_envelope(
    *,
    job_id: str,
    model: str,
    version: int | None,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[str] | None = None,
    result_ttl_s: int = keys.DEFAULT_RESULT_TTL_S,
    reply_to: str | None = None,
    deadline: float | None = None,
    created: float | None = None,
) -> dict[str, Any]:
    """The ICOW job: what to run, on which inputs, and where to answer."""
    return {
        "v": PROTOCOL_VERSION,
        "id": job_id,
        "model": model,
        "version": version,
        "created": time.time() if created is None else created,
        "inputs": list(inputs),
        "outputs": None if outputs is None else list(outputs),
        "ttl": result_ttl_s,
        "reply_to": reply_to,
        "deadline": deadline,
    }


def celery_message(
    job: Mapping[str, Any],
    *,
    queue: str,
    priority: int = 0,
    delivery_tag: str | None = None,
) -> bytes:
    """The kombu Redis-transport envelope (JSON) that a stock Celery worker consumes."""
    job_id = job["id"]
    body = packb([[job], {}, _EMBED])
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "binary",
        "content-type": CONTENT_TYPE,
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": job_id,
            "root_id": job_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": f"<icow job {job['model']}>",
            "kwargsrepr": "{}",
            "ignore_result": False,
        },
        "properties": {
            "correlation_id": job_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def parse_job(
    obj: Any,
    *,
    task_id: str | None = None,
    max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES,
) -> dict[str, Any]:
    """Validate a job envelope read from the queue (the worker never trusts the queue).

    Returns a normalised copy; raises InvalidInput naming the first problem.
    """
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"job must be a map, got {type(obj).__name__}")
    v = obj.get("v")
    if v != PROTOCOL_VERSION:
        raise InvalidInput(f"unsupported protocol version {v!r}; this worker speaks {PROTOCOL_VERSION}")
    job_id = obj.get("id", task_id)
    keys.check_job_id(job_id)
    if task_id is not None and job_id != task_id:
        raise InvalidInput(f"job id {job_id!r} does not match the task id {task_id!r}")
    model = keys.check_model_name(obj.get("model"))
    version = obj.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise InvalidInput(f"version must be a positive integer or null, got {version!r}")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    seen: set[str] = set()
    checked: list[Any] = []
    for i, t in enumerate(inputs):
        name, datatype, shape = tensor.check_header(t, max_bytes=max_tensor_bytes)
        if name in seen:
            raise InvalidInput(f"input {name!r} is given twice")
        seen.add(name)
        if "ref" in t:
            if "data" in t:
                raise InvalidInput(f"input {name!r} has both data and ref; send one")
            if not keys.is_input_blob(t["ref"]):
                raise InvalidInput(f"input {name!r}: claim-check ref must be an {keys.input_blob('<32 hex>')!r} key")
        else:
            data = _tensor_data(name, t.get("data"))
            _check_data_size(name, datatype, shape, data)
            t = {**t, "data": data} if data is not t.get("data") else t
        checked.append(t)
    inputs = checked
    outputs = obj.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs)
    ):
        raise InvalidInput("outputs must be a non-empty list of output names, or null for all")
    ttl = obj.get("ttl", keys.DEFAULT_RESULT_TTL_S)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= keys.MAX_RESULT_TTL_S:
        raise InvalidInput(f"ttl must be an integer in 1..{keys.MAX_RESULT_TTL_S} seconds")
    reply_to = obj.get("reply_to")
    if reply_to is not None and not keys.is_reply(reply_to):
        raise InvalidInput(f"reply_to must be an {keys.reply('<32 hex>')!r} key or null")
    created = obj.get("created")
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        raise InvalidInput("created must be a unix time in seconds")
    deadline = obj.get("deadline")
    if deadline is not None and (not isinstance(deadline, (int, float)) or isinstance(deadline, bool)):
        raise InvalidInput("deadline must be a unix time in seconds or null")
    return {
        "v": v,
        "id": job_id,
        "model": model,
        "version": version,
        "created": float(created),
        "inputs": inputs,
        "outputs": outputs,
        "ttl": ttl,
        "reply_to": reply_to,
        "deadline": None if deadline is None else float(deadline),
    }


def _tensor_data(name: str, data: Any) -> bytes | bytearray:
    """Inline tensor bytes: msgpack bin, or (the JSON form) a standard base64 string."""
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as exc:  # binascii.Error is a ValueError
            raise InvalidInput(f"input {name!r}: data is not valid base64 ({exc})") from exc
    raise InvalidInput(f"input {name!r}: data must be raw bytes (msgpack bin) or a base64 string (JSON form)")


def _check_data_size(name: str, datatype: str, shape: list[int], data: bytes | bytearray) -> None:
    count = math.prod(shape)
    if datatype == tensor.BYTES:
        tensor.unpack_bytes(bytes(data), count)  # every length prefix must fit exactly
        return
    expected = count * tensor.DATATYPES[datatype].itemsize
    if len(data) != expected:
        raise InvalidInput(f"input {name!r}: {len(data)} bytes of data but shape {shape} x {datatype} needs {expected}")


# ---------------------------------------------------------------------------- results


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
) -> dict[str, Any]:
    """A Celery result meta map (status SUCCESS) carrying the ICOW result envelope."""
    return {
        "status": "SUCCESS",
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
) -> dict[str, Any]:
    """A Celery result meta map (status FAILURE). Stock Celery clients rebuild the exception
    from exc_type/exc_message/exc_module; ICOW clients map ``exc_type`` via icow.errors."""
    return {
        "status": "FAILURE",
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


def parse_meta(data: Any) -> dict[str, Any]:
    meta = unpackb(data)
    if not isinstance(meta, dict) or meta.get("status") not in (*READY_STATES, "PENDING", "STARTED", "RETRY"):
        raise InvalidInput("not a result meta map")
    return meta


def failure_of(meta: Mapping[str, Any]) -> tuple[str, str]:
    """(error type, message) of a FAILURE/REVOKED meta."""
    res = meta.get("result")
    if meta.get("status") == "REVOKED":
        return "JobCancelled", "the job was revoked"
    if isinstance(res, Mapping):
        msg = res.get("exc_message")
        if isinstance(msg, list):
            msg = " ".join(str(m) for m in msg)
        return str(res.get("exc_type", "RemoteError")), str(msg or "")
    return "RemoteError", str(res)


def _kombu_json_types(obj: dict[str, Any]) -> Any:
    """kombu's JSON typed values for bytes, decoded as a Celery worker's JSON decoder does, so a
    JSON message means the same whichever path takes it: ``{"__type__": "base64", "__value__":
    <base64>}`` and ``{"__type__": "bytes", "__value__": <utf-8 text>}`` become bytes."""
    if obj.keys() == {"__type__", "__value__"} and isinstance(obj["__value__"], str):
        if obj["__type__"] == "base64":
            return base64.b64decode(obj["__value__"], validate=True)
        if obj["__type__"] == "bytes":
            return obj["__value__"].encode("utf-8")
    return obj


def decode_celery_message(envelope: Mapping[str, Any]) -> tuple[str, Any]:
    """(task name, job) from a kombu envelope taken straight off a queue list.

    The same decoding a Celery worker does, for messages the runner drains itself: base64
    body, then msgpack (``application/x-msgpack``) or JSON (``application/json``); any other
    content type (pickle, yaml) is refused. Raises InvalidInput naming the problem.
    """
    headers = envelope.get("headers")
    task = headers.get("task") if isinstance(headers, Mapping) else None
    if not isinstance(task, str):
        raise InvalidInput("the message has no task name (headers.task)")
    body = envelope.get("body")
    if not isinstance(body, str):
        raise InvalidInput("the message body must be a base64 string")
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise InvalidInput(f"the message body is not valid base64 ({exc})") from exc
    content_type = envelope.get("content-type")
    try:
        if content_type == CONTENT_TYPE:
            decoded = unpackb(raw)
        elif content_type == "application/json":
            decoded = json.loads(raw, object_hook=_kombu_json_types)
        else:
            raise InvalidInput(f"content type {content_type!r} is not accepted (use msgpack or JSON)")
    except (ValueError, TypeError, OverflowError, msgpack.exceptions.UnpackException) as exc:
        raise InvalidInput(f"the message body could not be decoded ({type(exc).__name__}: {exc})") from exc
    if not isinstance(decoded, list) or len(decoded) < 2 or not isinstance(decoded[0], list):
        raise InvalidInput("the message body must be [args, kwargs, embed]")
    args, kwargs = decoded[0], decoded[1]
    if len(args) == 1 and not kwargs:
        return task, args[0]
    if not args and isinstance(kwargs, Mapping) and "job" in kwargs:
        return task, kwargs["job"]
    raise InvalidInput("the task takes exactly one argument: the job")
