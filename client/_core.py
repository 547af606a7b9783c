"""The I/O-free half of the client: validate, encode, decode, deadlines.

The sync (icow.client.sync) and asyncio (icow.client.aio) clients are thin shells that only
do Redis I/O around these functions, so both behave identically.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from icow import keys, protocol, tensor
from icow.errors import InvalidInput, JobNotFound, NotFound, PayloadTooLarge, QueueFull, remote_error

JobStatus = Literal["queued", "running", "succeeded", "failed"]
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Open Inference Protocol datatype, shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A served model version and its signature, as published by the workers."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    versions: tuple[int, ...] = field(default=())
    providers: tuple[str, ...] = field(default=())

    @staticmethod
    def from_wire(meta: Mapping[str, Any], versions: Sequence[int] = ()) -> ModelInfo:
        def specs(items: Any) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in items
            )

        return ModelInfo(
            name=str(meta["name"]),
            version=int(meta["version"]),
            inputs=specs(meta["inputs"]),
            outputs=specs(meta["outputs"]),
            versions=tuple(sorted(versions)),
            providers=tuple(meta.get("providers", ())),
        )


@dataclass
class PreparedJob:
    """Everything one submission writes to Redis."""

    job_id: str
    queue_list: str
    message: bytes
    blobs: dict[str, Any]
    ttl_s: int
    model: str = ""


# The submit script: checks the model's backlog limit and queues jobs in one atomic step, so
# a full queue refuses jobs without anything half-written. docs/RELIABILITY.md specifies it.
# KEYS: limits hash, the model's 4 priority lists, then per job: its list, its state key and
#       its claim-checked blob keys (already SET by the caller in the same round trip).
# ARGV: model, number of jobs, then per job: message, ttl, number of blob keys.
# Returns {queued, depth, limit}: jobs 1..queued were queued (a prefix, in order); the blobs
# of the others are deleted; depth is the backlog after queuing; limit -1 means none.
SUBMIT_SCRIPT = """
local limit = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
local depth = 0
if limit then
  for i = 2, 5 do depth = depth + redis.call('LLEN', KEYS[i]) end
end
local k, a, queued = 6, 3, 0
for j = 1, tonumber(ARGV[2]) do
  local nblobs = tonumber(ARGV[a + 2])
  if limit and depth >= limit then
    for b = 1, nblobs do redis.call('DEL', KEYS[k + 1 + b]) end
  else
    redis.call('SET', KEYS[k + 1], 'queued', 'EX', ARGV[a + 1])
    redis.call('LPUSH', KEYS[k], ARGV[a])
    depth = depth + 1
    queued = queued + 1
  end
  k = k + 2 + nblobs
  a = a + 3
end
return {queued, depth, limit or -1}
"""
SUBMIT_SHA = hashlib.sha1(SUBMIT_SCRIPT.encode()).hexdigest()


def submit_call(model: str, jobs: Sequence[PreparedJob]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one submit script call queuing ``jobs`` (all for ``model``)."""
    script_keys = [keys.LIMITS, *keys.queue_lists(model)]
    args: list[Any] = [model, len(jobs)]
    for job in jobs:
        script_keys += [job.queue_list, keys.state(job.job_id), *job.blobs]
        args += [job.message, job.ttl_s, len(job.blobs)]
    return script_keys, args


def submit_reply(reply: Any) -> tuple[int, int, int]:
    """(queued, depth, limit) from the submit script's reply."""
    queued, depth, limit = (int(x) for x in reply)
    return queued, depth, limit


def queue_full(model: str, depth: int, limit: int, queued: list[Any]) -> QueueFull:
    done = f"; {len(queued)} jobs of this call were queued before the limit (QueueFull.queued)" if queued else ""
    return QueueFull(
        f"model {model!r} already has {depth} jobs waiting, its limit is {limit}: not queued{done}",
        model=model,
        depth=depth,
        limit=limit,
        queued=queued,
    )


def is_acl_denial(exc: Exception) -> bool:
    """A Redis error saying the ACL user may not run a command or touch a key (also from
    inside a script, where Redis words it differently)."""
    text = str(exc)
    return text.startswith("NOPERM") or "no permissions" in text or "can't access" in text


def new_client_id() -> str:
    return uuid.uuid4().hex


def check_timeout(timeout_s: float | None) -> float | None:
    if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or timeout_s < 0):
        raise InvalidInput(f"timeout_s must be a non-negative number or None, got {timeout_s!r}")
    return timeout_s


def deadline_of(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def prepare(
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | None = None,
    outputs: Sequence[str] | None = None,
    result_ttl_s: int = keys.DEFAULT_RESULT_TTL_S,
    reply_to: str | None = None,
    deadline_s: float | None = None,
    priority: int = 0,
    job_id: str | None = None,
    inline_max_bytes: int = protocol.DEFAULT_INLINE_MAX_BYTES,
    max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES,
) -> PreparedJob:
    """Validate and encode one job. Raises InvalidInput before anything reaches Redis."""
    keys.check_model_name(model)
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise InvalidInput(f"version must be a positive integer or None, got {version!r}")
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput("inputs must be a non-empty mapping of input name -> numpy array")
    if outputs is not None and (isinstance(outputs, str) or not all(isinstance(o, str) for o in outputs)):
        raise InvalidInput("outputs must be a sequence of output names")
    if not isinstance(result_ttl_s, int) or not 1 <= result_ttl_s <= keys.MAX_RESULT_TTL_S:
        raise InvalidInput(f"result_ttl_s must be an integer in 1..{keys.MAX_RESULT_TTL_S}")
    if not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidInput("priority must be an integer 0..9 (0 is served first)")
    if deadline_s is not None and (not isinstance(deadline_s, (int, float)) or deadline_s <= 0):
        raise InvalidInput("deadline_s must be a positive number of seconds")
    job_id = protocol.new_job_id() if job_id is None else keys.check_job_id(job_id)
    wire: list[dict[str, Any]] = []
    blobs: dict[str, Any] = {}
    total = 0
    for i, (name, array) in enumerate(inputs.items()):
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"input names must be non-empty strings, got {name!r}")
        t = tensor.encode(name, array, max_bytes=max_tensor_bytes)
        total += len(t["data"])
        if len(t["data"]) > inline_max_bytes:
            ref = keys.blob(job_id, "in", i)
            blobs[ref] = t.pop("data")
            t["ref"] = ref
        wire.append(t)
    if total > protocol.DEFAULT_MAX_JOB_BYTES:
        raise PayloadTooLarge(f"the job's inputs total {total} bytes; the limit is {protocol.DEFAULT_MAX_JOB_BYTES}")
    now = time.time()
    job = protocol.job_envelope(
        job_id=job_id,
        model=model,
        version=version,
        inputs=wire,
        outputs=outputs,
        result_ttl_s=result_ttl_s,
        reply_to=reply_to,
        deadline=None if deadline_s is None else now + deadline_s,
        created=now,
    )
    queue = keys.queue(model)
    message = protocol.celery_message(job, queue=queue, priority=priority)
    return PreparedJob(job_id, keys.queue_list(model, priority), message, blobs, result_ttl_s, model)


def output_refs(meta: Mapping[str, Any]) -> list[str]:
    """Claim-check keys the result's outputs point at (fetch them, then call decode_result)."""
    if meta.get("status") != "SUCCESS":
        return []
    return [t["ref"] for t in meta["result"].get("outputs", ()) if "ref" in t]


def decode_result(meta: Mapping[str, Any], blobs: Mapping[str, Any] | None = None) -> Outputs:
    """Outputs by name from a READY result meta, or raise the remote error it carries."""
    status = meta.get("status")
    job_id = meta.get("task_id")
    if status != "SUCCESS":
        error_type, message = protocol.failure_of(meta)
        raise remote_error(error_type, message, job_id=job_id)
    out: Outputs = {}
    for t in meta["result"].get("outputs", ()):
        if "ref" in t:
            data = (blobs or {}).get(t["ref"])
            if data is None:
                raise JobNotFound(f"job {job_id}: output {t['name']!r} has expired")
            t = {**t, "data": data}
        out[t["name"]] = tensor.decode(t, max_bytes=1 << 62)
    return out


def status_of(meta: Mapping[str, Any] | None, state: Any, job_id: str) -> JobStatus:
    if meta is not None:
        return "succeeded" if meta.get("status") == "SUCCESS" else "failed"
    if state is None:
        raise JobNotFound(f"job {job_id} is unknown or its result has expired")
    return "running" if state == b"running" else "queued"


def model_info(name: str, raw: Mapping[Any, Any], version: int | None) -> ModelInfo:
    if not raw:
        raise NotFound(f"model {name!r} is not published by any worker")
    metas = {int(k): protocol.unpackb(v) for k, v in raw.items()}
    chosen = max(metas) if version is None else version
    if chosen not in metas:
        raise NotFound(f"model {name!r} has no version {version}; published: {sorted(metas)}")
    return ModelInfo.from_wire(metas[chosen], versions=list(metas))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# Cancelling: answer a job that has not started with a JobCancelled failure, written like any
# result (SET NX: the first answer wins), so a worker that later takes it sees it answered and
# skips it. KEYS: result key, state key, reply list ('' for none). ARGV: meta, default ttl.
# Returns 1 cancelled, 0 already finished, -1 already running, -2 unknown or expired.
CANCEL_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local state = redis.call('GET', KEYS[2])
if state == 'running' then return -1 end
if not state then return -2 end
local ttl = redis.call('TTL', KEYS[2])
if ttl < 1 then ttl = tonumber(ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ttl)
redis.call('PUBLISH', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
if KEYS[3] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  if redis.call('TTL', KEYS[3]) < ttl then redis.call('EXPIRE', KEYS[3], ttl) end
end
return 1
"""


def cancel_call(job_id: str, reply_to: str | None) -> tuple[list[str], list[Any]]:
    meta = protocol.failure_meta(job_id, error_type="JobCancelled", message="the job was cancelled before it ran")
    return [keys.result(job_id), keys.state(job_id), reply_to or ""], [protocol.packb(meta), keys.DEFAULT_RESULT_TTL_S]


def cancel_outcome(job_id: str, code: Any) -> bool:
    """True if cancelled; False if it already started or finished; JobNotFound if unknown."""
    if int(code) == -2:
        raise JobNotFound(f"job {job_id} is unknown or its result has expired")
    return int(code) == 1
