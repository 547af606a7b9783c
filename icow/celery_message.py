"""The Celery task message around a job: the only module that builds or reads its headers,
properties and body (the kombu Redis-transport envelope, JSON).

A job travels as a Celery protocol-2 task message: a JSON envelope whose base64 ``body`` is
``msgpack([[job], {}, embed])`` (docs/PROTOCOL.md section 5). :func:`celery_message` builds
it; :func:`decode_message` is the worker's one reader of a queued message, which hands the job
envelope inside it, unread, to icow.envelope; :func:`created_from_message` reads the job's
creation time from a message's first bytes (queue inspection). Nothing else parses a message:
the Lua library moves messages whole (``icow_take`` and ``icow_peek`` cut a prefix by length)
and reads none of their fields.

The JSON form: clients that can only send JSON task bodies (Celery clients in other languages)
send the same job with ``content-type: application/json`` and each tensor's ``data`` as a
standard base64 string; the body is decoded here as kombu's JSON decoder does.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack

from icow import keys
from icow.codec import packb, unpackb
from icow.errors import InvalidInput

TASK_NAME = "icow.infer"
CONTENT_TYPE = "application/x-msgpack"

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


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
    # Headers first, the id first among them: a message too large to read whole is answered
    # under the id found in its first bytes (oversize_message); the golden vectors pin the order.
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


# ---------------------------------------------------------------------------- reading


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
            decoded = unpackb(data)
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
