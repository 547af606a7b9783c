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
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

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


class Job(TypedDict):
    """The ICOW job envelope (section 6 of docs/PROTOCOL.md), as built and as validated."""

    v: int
    id: str
    model: str
    version: int | None
    created: float
    inputs: list[dict[str, Any]]  # wire tensors: name, datatype, shape, and data or ref
    outputs: list[str] | None
    ttl: int
    reply_to: str | None
    deadline: float | None


class ResultMeta(TypedDict):
    """A Celery result meta map carrying an ICOW result (section 9 of docs/PROTOCOL.md)."""

    status: str  # SUCCESS or FAILURE
    result: dict[str, Any]  # the ICOW result envelope, or the failure's exc_type/exc_message...
    traceback: None
    children: list[Any]
    date_done: str
    task_id: str


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
) -> Job:
    """The ICOW job: what to run, on which inputs, and where to answer."""
    return {
        "v": PROTOCOL_VERSION,
        "id": job_id,
        "model": model,
        "version": version,
        "created": time.time() if created is None else created,
        "inputs": [dict(t) for t in inputs],
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
    digest: str | None = None,
) -> bytes:
    """The kombu Redis-transport envelope (JSON) that a stock Celery worker consumes.
    ``digest``: the job digest (icow.digest) of a job whose id the caller chose, as the
    ``icow_digest`` header right after ``id``."""
    job_id = job["id"]
    body = packb([[job], {}, _EMBED])
    # Headers first, the id first among them: a worker's take reads the id from the first bytes
    # (icow_take claims the job in the same atomic step) without reading the body.
    first: dict[str, Any] = {"id": job_id} if digest is None else {"id": job_id, "icow_digest": digest}
    envelope = {
        "headers": {
            **first,
            "task": TASK_NAME,
            "lang": "py",
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
        "content-type": CONTENT_TYPE,
        "content-encoding": "binary",
        "body": base64.b64encode(body).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def parse_job(
    obj: Any,
    *,
    task_id: str | None = None,
    max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES,
    json_form: bool = False,
) -> Job:
    """Validate a job envelope read from the queue (the worker never trusts the queue).

    ``json_form``: the job came in a JSON body, where tensor data is a base64 string; in the
    msgpack form it must be msgpack bin.

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
    for t in inputs:
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
            data = _tensor_data(name, t.get("data"), json_form)
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


def _tensor_data(name: str, data: Any, json_form: bool = False) -> bytes | bytearray:
    """Inline tensor bytes: msgpack bin, or (the JSON form only) a standard base64 string."""
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, str) and not json_form:
        raise InvalidInput(
            f"input {name!r}: data is a msgpack str; send raw bytes as msgpack bin "
            "(base64 strings only in the JSON form)"
        )
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
) -> ResultMeta:
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
) -> ResultMeta:
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
    JSON message means the same whichever client sent it: ``{"__type__": "base64", "__value__":
    <base64>}`` and ``{"__type__": "bytes", "__value__": <utf-8 text>}`` become bytes."""
    if obj.keys() == {"__type__", "__value__"} and isinstance(obj["__value__"], str):
        if obj["__type__"] == "base64":
            return base64.b64decode(obj["__value__"], validate=True)
        if obj["__type__"] == "bytes":
            return obj["__value__"].encode("utf-8")
    return obj


# ---------------------------------------------------------------------------- the intake's decoder

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a message larger than this is refused unread
_ID_IN_PREFIX = re.compile(rb'"(?:id|correlation_id)":\s*"([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})"')
ETA_TOLERANCE_S = 1.0  # an eta this close to now counts as "now"


@dataclass(frozen=True)
class Message:
    """One raw queue message as the intake decoded it. ``error`` says why it cannot run;
    ``job_id`` is its id when usable (its failure is then answered), else None."""

    job_id: str | None
    job: Any = None
    error: str | None = None
    json_form: bool = False
    priority: int = 0
    expires: float | None = None  # Celery's ``expires`` header: the job's latest start
    raw_id: str | None = None  # the id as sent, for the dead-letter record


def _when(value: Any, what: str) -> float | None:
    """Celery's ``eta``/``expires`` header (ISO 8601, or unix seconds) as unix seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and len(value) < 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise InvalidInput(f"header {what} must be an ISO 8601 time or unix seconds, got {str(value)[:80]!r}")


def oversize_message(length: int, prefix: bytes, max_bytes: int) -> Message:
    """A message too large to read: refused from its first bytes (its id, when they hold it)."""
    found = _ID_IN_PREFIX.search(prefix)
    job_id = found.group(1).decode() if found else None
    return Message(job_id, error=f"the message is {length} bytes; the limit is {max_bytes}", raw_id=job_id)


def decode_message(raw: bytes, *, now: float | None = None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode one raw queue message: the only reader of the kombu envelope. Never raises.

    Checks, in order, before anything else touches the bytes: size, JSON object, headers, a
    usable id, task name, no compression, content type, base64 body, body decode (msgpack or
    JSON; nesting is bounded by the decoders, which raise instead of recursing without limit),
    ``[args, kwargs, embed]`` shape, Celery's ``expires`` (a deadline) and ``eta``/``countdown``
    (refused: ICOW runs a job as soon as a worker is free).
    """
    if len(raw) > max_bytes:
        return oversize_message(len(raw), raw[:512], max_bytes)
    try:
        env = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        found = _ID_IN_PREFIX.search(raw[:4096])
        job_id = found.group(1).decode() if found else None
        return Message(None, error=f"the message is not a JSON envelope ({type(exc).__name__})", raw_id=job_id)
    if not isinstance(env, dict):
        return Message(None, error=f"the message is JSON {type(env).__name__}, not an envelope object")
    headers = env.get("headers")
    props = env.get("properties")
    headers = headers if isinstance(headers, dict) else {}
    props = props if isinstance(props, dict) else {}
    sent_id = headers.get("id", props.get("correlation_id"))
    raw_id = sent_id[:200] if isinstance(sent_id, str) else None if sent_id is None else repr(sent_id)[:200]
    try:
        # Only a string is an id: the repr of a number (123, 1.5, true) is kept for the dead
        # letter but never answered under (tests/test_fuzz.py).
        if not isinstance(sent_id, str):
            raise InvalidInput(f"the job id must be a string, got {type(sent_id).__name__}")
        job_id = keys.check_job_id(raw_id)
    except InvalidInput as exc:
        return Message(None, error=f"the message has no usable job id: {exc}", raw_id=raw_id)
    priority = props.get("priority")
    priority = priority if isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority <= 9 else 0

    def refused(reason: str) -> Message:
        return Message(job_id, error=reason, priority=priority, raw_id=raw_id)

    task = headers.get("task")
    if task != TASK_NAME:
        return refused(f"unknown task {str(task)[:100]!r}; ICOW workers run {TASK_NAME!r}")
    if headers.get("compression") is not None:
        return refused(f"compressed messages ({str(headers.get('compression'))[:60]}) are refused")
    content_type = env.get("content-type")
    if content_type not in (CONTENT_TYPE, "application/json"):
        return refused(f"content type {str(content_type)[:60]!r} is not accepted (use {CONTENT_TYPE} or JSON)")
    if props.get("body_encoding", "base64") != "base64":
        return refused("the body must be base64 (properties.body_encoding)")
    body = env.get("body")
    if not isinstance(body, str):
        return refused("the message body must be a base64 string")
    try:
        data = base64.b64decode(body, validate=True)
        if content_type == CONTENT_TYPE:
            decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
        else:
            decoded = json.loads(data, object_hook=_kombu_json_types)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.exceptions.UnpackException) as exc:
        return refused(f"the message body could not be decoded ({type(exc).__name__})")
    if not isinstance(decoded, list) or len(decoded) < 2 or not isinstance(decoded[0], list):
        return refused("the message body must be [args, kwargs, embed]")
    args, kwargs = decoded[0], decoded[1]
    if len(args) == 1 and not kwargs:
        job = args[0]
    elif not args and isinstance(kwargs, dict) and "job" in kwargs and len(kwargs) == 1:
        job = kwargs["job"]
    else:
        return refused("the task takes exactly one argument: the job")
    now = time.time() if now is None else now
    try:
        expires = _when(headers.get("expires"), "expires")
        eta = _when(headers.get("eta"), "eta")
    except InvalidInput as exc:
        return refused(str(exc))
    if eta is not None and eta > now + ETA_TOLERANCE_S:
        return refused(
            "eta/countdown is not supported: ICOW runs a job as soon as a worker is free "
            "(use expires or the job's deadline)"
        )
    return Message(
        job_id,
        job=job,
        json_form=content_type == "application/json",
        priority=priority,
        expires=expires,
        raw_id=raw_id,
    )


def created_from_message(message: bytes) -> float | None:
    """The job's ``created`` time from a whole message or a prefix of one; None if not in it
    (queue inspection reads only the first bytes of the oldest message)."""
    start = message.find(b'"body":"')
    if start < 0:
        return None
    start += len(b'"body":"')
    end = message.find(b'"', start)
    b64 = message[start:] if end < 0 else message[start:end]
    b64 = b64[: len(b64) // 4 * 4]
    try:
        body = base64.b64decode(b64, validate=True)
        u = msgpack.Unpacker(raw=False, strict_map_key=False)
        u.feed(body)
        u.read_array_header()  # [args, kwargs, embed]
        u.read_array_header()  # args = [job]
        for _ in range(u.read_map_header()):
            key = u.unpack()
            if key == "created":
                value = u.unpack()
                return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            u.skip()
    except (ValueError, msgpack.OutOfData, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError):
        return None
    return None


def cancel_outcome(job_id: str, code: int) -> bytes:
    """What a worker pushes onto a canceller's reply list: 1 cancelled, 0 already finished,
    -1 already running."""
    return packb({"status": "CANCEL", "task_id": f"cancel:{job_id}", "result": int(code)})


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
        _check_data_size(name, datatype, shape, _tensor_data(name, t.get("data")))
    outputs = rec.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)):
        raise InvalidInput("a kept input record's outputs must be a list of names or null")
    return rec
