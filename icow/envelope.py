"""The job envelope: the only module that builds, reads or validates it, and the one that
splits its large tensors off to their own keys and joins them back (the claim check).

The envelope (section 6 of docs/PROTOCOL.md) is a msgpack map: what to run, on which inputs,
and where to answer. It travels inside a Celery task message (icow.celery_message, which
decodes the wrapper and hands the envelope here unread). A tensor over the inline limit
travels under its own key: ``{"name", "datatype", "shape", "ref": <key>}`` in place of
``data``, both ways (inputs under ``icow:in:<random>``, outputs under ``icow:out:<id>:<i>``);
:func:`split` and :func:`join` are the only code that moves data between a tensor and its key,
:func:`refs` and :func:`input_refs` the only readers of ``ref``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from icow import keys, tensor
from icow.codec import PROTOCOL_VERSION
from icow.errors import InvalidInput
from icow.settings import DEFAULT_INLINE_MAX_BYTES as DEFAULT_INLINE_MAX_BYTES  # ICOW_INLINE_MAX_BYTES

# Redis refuses bulk strings over 512 MB (proto-max-bulk-len); stay clearly below.
DEFAULT_MAX_JOB_BYTES = 480 * 1024 * 1024


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


# ---------------------------------------------------------------------------- ids


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


# ---------------------------------------------------------------------------- building


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


# ---------------------------------------------------------------------------- reading


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
            data = tensor_data(name, t.get("data"), json_form)
            check_data_size(name, datatype, shape, data)
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


def salvage(raw: Any) -> tuple[int, str | None]:
    """TTL and reply list of a job that may fail validation, if they themselves are valid (its
    failure is then answered there, kept as long as the caller asked)."""
    ttl, reply = keys.DEFAULT_RESULT_TTL_S, None
    if isinstance(raw, Mapping):
        t = raw.get("ttl")
        if isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= keys.MAX_RESULT_TTL_S:
            ttl = t
        r = raw.get("reply_to")
        if keys.is_reply(r):
            reply = r
    return ttl, reply


def tensor_data(name: str, data: Any, json_form: bool = False) -> bytes | bytearray:
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


def check_data_size(name: str, datatype: str, shape: list[int], data: bytes | bytearray) -> None:
    """The data holds exactly what the shape and datatype say (every BYTES length prefix fits)."""
    count = math.prod(shape)
    if datatype == tensor.BYTES:
        tensor.unpack_bytes(bytes(data), count)  # every length prefix must fit exactly
        return
    expected = count * tensor.DATATYPES[datatype].itemsize
    if len(data) != expected:
        raise InvalidInput(f"input {name!r}: {len(data)} bytes of data but shape {shape} x {datatype} needs {expected}")


# ---------------------------------------------------------------------------- the claim check


def split(tensors: Sequence[dict[str, Any]], inline_max_bytes: int, key_for: Callable[[int], str]) -> dict[str, Any]:
    """Move the data of every tensor over ``inline_max_bytes`` to its own key, in place: the
    tensor keeps ``ref`` (``key_for(its index)``); returns key -> data, to SET with the job."""
    blobs: dict[str, Any] = {}
    for i, t in enumerate(tensors):
        if len(t["data"]) > inline_max_bytes:
            ref = key_for(i)
            blobs[ref] = t.pop("data")
            t["ref"] = ref
    return blobs


def split_inputs(tensors: Sequence[dict[str, Any]], inline_max_bytes: int) -> dict[str, Any]:
    """:func:`split` of a job's input tensors, each under a fresh random key."""
    return split(tensors, inline_max_bytes, lambda _: new_input_key())


def split_outputs(job_id: str, tensors: Sequence[dict[str, Any]], inline_max_bytes: int) -> dict[str, Any]:
    """:func:`split` of a result's output tensors, under ``icow:out:<job id>:<index>``."""
    return split(tensors, inline_max_bytes, lambda i: keys.output_blob(job_id, i))


def refs(tensors: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys that tensors of a validated job or a result point at, in order."""
    return [t["ref"] for t in tensors if "ref" in t]


def input_refs(raw: Any) -> list[str]:
    """The input keys of a job that may not have passed validation (to drop them with its
    answer): only well-formed ``icow:in:`` keys, never anything else it names."""
    inputs = raw.get("inputs") if isinstance(raw, Mapping) else None
    if not isinstance(inputs, list):
        return []
    return [t["ref"] for t in inputs if isinstance(t, Mapping) and keys.is_input_blob(t.get("ref"))]


def join(tensors: Sequence[Mapping[str, Any]], blobs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The tensors with the data of each ``ref`` read back in from ``blobs`` (key -> data, or
    None when the key has expired), and the names of those whose data is missing (they keep
    their ``ref``; a joined one keeps it too, beside its ``data``)."""
    out: list[dict[str, Any]] = []
    missing: list[str] = []
    for t in tensors:
        if "ref" in t:
            data = blobs.get(t["ref"])
            if data is None:
                missing.append(str(t.get("name")))
            else:
                t = {**t, "data": data}
        out.append(dict(t))
    return out, missing
