"""The I/O-free half of the client (httpx's model): every decision that needs no Redis call.

Options and settings, validation and encoding, submit planning (which keys to SET and what to
pass ``FCALL icow_submit``), reading replies and results, statuses, the mapping of Redis
failures to ICOW errors, and deadlines live here once. How to *wait* is in
:mod:`icow.client._wait`. :mod:`icow.client.sync` and :mod:`icow.client.aio` only do the Redis
I/O around these, so the two clients cannot drift.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import redis.exceptions

from icow import connection, envelope, functions, keys, result, settings, tensor
from icow.celery_message import celery_message
from icow.codec import unpackb
from icow.digest import job_digest
from icow.errors import (
    BrokerFull,
    BrokerUnavailable,
    IcowError,
    InvalidInput,
    JobIdConflict,
    JobNotFound,
    ModelNotFound,
    NotDurable,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    remote_error,
)
from icow.result import Result

JobStatus = Literal["queued", "running", "succeeded", "failed"]
T = TypeVar("T")
Outputs = dict[str, np.ndarray]

SLICE_S = 2.0  # the longest one blocking read lasts: a dead connection is noticed, keys re-read
MARGIN_S = 1.0  # every call returns within its timeout_s plus this, a frozen Redis included
DEFAULT_TIMEOUT_S = 10.0  # the bound of calls that take no timeout_s (submit, status, models...)
DEFAULT_CANCEL_TIMEOUT_S = 10.0
BELLS_MAX = 64  # bell keys watched in one read, besides the reply list
STASH_MAX = 10_000  # replies kept for waiters that have not asked yet (the keys keep them all)
DRAIN_MAX = 1000  # replies taken in one round trip once one has arrived
SUBMIT_CHUNK = 500  # jobs per FCALL in submit_many
DIGEST_CONFLICT = 2  # icow_submit's per-job code: the id's first job had other inputs (§8.4)
INVALID_PREFIX = "ICOW_INVALID "  # how icow_cancel_request refuses a malformed argument


# ---------------------------------------------------------------------------- options

DURABLE_WAIT_S = 1.0  # a durable submit waits this long (at most) for a replica to hold its jobs


@dataclass(frozen=True)
class Options:
    """What a client was built with, checked once."""

    url: str = "redis://127.0.0.1:6379/0"
    result_ttl_s: int = keys.DEFAULT_RESULT_TTL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = 2.0
    inline_max_bytes: int = envelope.DEFAULT_INLINE_MAX_BYTES
    max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES
    require_published: bool = True
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    durable: bool = False  # submits return once a replica holds the jobs (WAIT), see Target

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or "://" not in self.url:
            raise InvalidInput(f"url must be a Redis URL such as redis://host:6379/0, got {self.url!r}")
        check_ttl(self.result_ttl_s)
        for name in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidInput(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("inline_max_bytes", "max_tensor_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"{name} must be a non-negative integer, got {value!r}")

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py options, derived from the timeouts (each call then bounds its own commands
        by its own deadline, see :func:`io_limit`); the caller's ``redis_options`` win."""
        return {
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": self.timeout_s + MARGIN_S,
            "socket_keepalive": True,
            "health_check_interval": 30,
            **self.redis_options,
        }


def env_arguments(kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(url, constructor keywords) for ``from_env``: ``ICOW_*`` settings, then ``kwargs``."""
    s = settings.from_env()
    if not s.redis_url:
        raise InvalidInput("ICOW_REDIS_URL is not set")
    out: dict[str, Any] = {
        "result_ttl_s": s.result_ttl_s,
        "inline_max_bytes": s.inline_max_bytes,
        "max_tensor_bytes": s.max_tensor_bytes,
        **settings.tls_files(s.redis_url, s),  # ICOW_REDIS_CA, ICOW_REDIS_CERT, ICOW_REDIS_KEY
    }
    out.update(kwargs)
    return s.redis_url, out


def new_client_id() -> str:
    """128 random bits: the client's reply list ``icow:reply:<id>`` cannot be guessed."""
    return secrets.token_hex(16)


def check_ttl(ttl_s: object) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= keys.MAX_RESULT_TTL_S:
        raise InvalidInput(f"result_ttl_s must be an integer in 1..{keys.MAX_RESULT_TTL_S}, got {ttl_s!r}")
    return ttl_s


def check_timeout(timeout_s: object, what: str = "timeout_s") -> float | None:
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s < 0
    ):
        raise InvalidInput(f"{what} must be a non-negative number of seconds or None, got {timeout_s!r}")
    return timeout_s


# ---------------------------------------------------------------------------- deadlines


def deadline_of(timeout_s: float | None) -> float | None:
    """The monotonic time a call with ``timeout_s`` must be over by (None: no deadline)."""
    return None if timeout_s is None else time.monotonic() + timeout_s


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def slice_for(deadline: float | None) -> float:
    """How long the next blocking read may last."""
    left = remaining(deadline)
    return SLICE_S if left is None else min(left, SLICE_S)


def io_limit(deadline: float | None, blocking_s: float, cap_s: float) -> float:
    """Seconds one Redis command (or pipeline) may take in all: the time it blocks on purpose
    (a BLPOP's timeout), then what is left of the call's deadline (at most ``cap_s``), then
    :data:`MARGIN_S`. So no call outlives its deadline by more than the margin, and a frozen
    Redis (TCP up, no answer) is given up on in time."""
    left = remaining(deadline)
    allowance = cap_s if left is None else min(cap_s, max(left - blocking_s, 0.0))
    return blocking_s + allowance + MARGIN_S


# ---------------------------------------------------------------------------- Redis failures


def broker_error(exc: BaseException, what: str) -> IcowError | None:
    """The ICOW error a Redis failure surfaces as (None: not a Redis failure, let it be).

    Out of memory is :class:`BrokerFull`; an ACL refusal :class:`PermissionDenied`; a missing
    function library, a refused, broken, timed-out or unreachable connection are
    :class:`BrokerUnavailable` saying which."""
    if isinstance(exc, IcowError):
        return None
    text = str(exc)
    if text.startswith(INVALID_PREFIX):  # an ICOW function refused an argument: nothing was done
        return InvalidInput(f"Redis refused {what}: {text[len(INVALID_PREFIX) :]}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return BrokerFull(f"Redis is out of memory (maxmemory) and refused {what}: {text}")
    if isinstance(exc, redis.exceptions.NoPermissionError) or is_acl_denial(exc):
        return PermissionDenied(
            f"Redis refused {what}: the ACL user lacks a permission ICOW's client needs "
            f"(see `icow admin acl`, icow.keys.CLIENT_ACL_RULES): {text}"
        )
    if functions.is_missing(exc):
        return functions.missing_error(exc)
    if isinstance(exc, TimeoutError | redis.exceptions.TimeoutError):
        return BrokerUnavailable(f"Redis did not answer in time while {what}: {text or type(exc).__name__}")
    if isinstance(exc, redis.exceptions.RedisError | OSError):
        return BrokerUnavailable(f"Redis is unavailable while {what}: {text or type(exc).__name__}")
    return None


def is_acl_denial(exc: BaseException) -> bool:
    """A Redis error saying the ACL user may not run a command or touch a key (inside a
    function Redis words it differently)."""
    text = str(exc)
    return text.startswith("NOPERM") or "no permissions" in text or "can't access" in text


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, Open Inference Protocol datatype, shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A published model version and its signature."""

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


def model_info(name: str, raw: Mapping[Any, Any], version: int | None) -> ModelInfo:
    if not raw:
        raise NotFound(f"model {name!r} is not published by any worker")
    metas = {int(k): unpackb(v) for k, v in raw.items()}
    chosen = max(metas) if version is None else version
    if chosen not in metas:
        raise NotFound(f"model {name!r} has no version {version}; published: {sorted(metas)}")
    return ModelInfo.from_wire(metas[chosen], versions=list(metas))


def models_of(names: Sequence[Any], versions: Sequence[Any]) -> dict[str, list[int]]:
    return {text(n): sorted(int(v) for v in vs) for n, vs in zip(names, versions) if vs}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------- submitting


@dataclass(frozen=True)
class Target:
    """Where jobs go: a model, a version or None (the fleet's latest), a priority (0-9)."""

    model: str
    version: int | None = None
    priority: int = 0
    durable: bool | None = None  # None: the client's ``durable``

    def __post_init__(self) -> None:
        keys.check_model_name(self.model)
        v = self.version
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InvalidInput(f"version must be a positive integer or None, got {v!r}")
        p = self.priority
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9:
            raise InvalidInput(f"priority must be an integer 0..9 (0 is served first), got {p!r}")

    @property
    def queue(self) -> str:
        return keys.queue(self.model, self.version)

    def durable_wait_ms(self, options: Options, deadline: float | None) -> int:
        """0: not durable; else how long ``WAIT`` may wait for a replica (ms, within the deadline)."""
        if not (options.durable if self.durable is None else self.durable):
            return 0
        left = remaining(deadline)
        limit_s = DURABLE_WAIT_S if left is None else min(DURABLE_WAIT_S, left)
        return max(1, int(1000 * limit_s))

    def describe(self) -> str:
        return f"model {self.model!r}" + ("" if self.version is None else f" version {self.version}")


@dataclass(frozen=True)
class PreparedJob:
    """One encoded job: its message, and the claim-checked inputs to SET before queuing it."""

    job_id: str
    cancel_token: str | None
    message: bytes
    inputs: dict[str, Any]  # input key -> bytes
    ttl_s: int
    digest: str | None = None  # a caller-chosen id's job digest (icow.digest), sent to icow_submit


def prepare(
    target: Target,
    inputs: Mapping[str, Any],
    *,
    options: Options,
    reply_to: str,
    outputs: Sequence[str] | None = None,
    deadline_s: float | None = None,
    result_ttl_s: int | None = None,
    job_id: str | None = None,
    inline_max_bytes: int | None = None,
) -> PreparedJob:
    """Validate and encode one job. Raises InvalidInput before anything reaches Redis.

    A job gets a fresh id and its cancel token (:func:`icow.envelope.new_job`); a ``job_id``
    of the caller's has no token, so it cannot be cancelled."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput("inputs must be a non-empty mapping of input name -> numpy array")
    if outputs is not None and (
        isinstance(outputs, str) or not outputs or not all(isinstance(o, str) and o for o in outputs)
    ):
        raise InvalidInput("outputs must be a non-empty sequence of output names (None returns every output)")
    ttl_s = options.result_ttl_s if result_ttl_s is None else check_ttl(result_ttl_s)
    if deadline_s is not None and (
        isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or deadline_s <= 0
    ):
        raise InvalidInput(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
    token: str | None = None
    custom = job_id is not None
    if job_id is None:
        job_id, token = envelope.new_job()
    else:
        keys.check_job_id(job_id)
    inline_max = options.inline_max_bytes if inline_max_bytes is None else inline_max_bytes
    wire: list[dict[str, Any]] = []
    hashed: list[tuple[str, str, Sequence[int], Any]] = []
    total = 0
    for name, array in inputs.items():
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"input names must be non-empty strings, got {name!r}")
        t = tensor.encode(name, array, max_bytes=options.max_tensor_bytes)
        if custom:
            hashed.append((name, t["datatype"], t["shape"], t["data"]))
        total += len(t["data"])
        wire.append(t)
    if total > envelope.DEFAULT_MAX_JOB_BYTES:
        raise PayloadTooLarge(f"the job's inputs total {total} bytes; the limit is {envelope.DEFAULT_MAX_JOB_BYTES}")
    blobs = envelope.split_inputs(wire, inline_max)
    now = time.time()
    job = envelope.job_envelope(
        job_id=job_id,
        model=target.model,
        version=target.version,
        inputs=wire,
        outputs=outputs,
        result_ttl_s=ttl_s,
        reply_to=reply_to,
        deadline=None if deadline_s is None else now + deadline_s,
        created=now,
    )
    # A caller-chosen id may be reused: its digest lets icow_submit tell a resubmission of the
    # same job (idempotent) from another job under that id (JobIdConflict).
    digest = job_digest(target.model, target.version, outputs, hashed) if custom else None
    message = celery_message(job, queue=target.queue, priority=target.priority, digest=digest)
    return PreparedJob(job_id, token, message, blobs, ttl_s, digest)


def submit_call(target: Target, jobs: Sequence[PreparedJob], require_published: bool) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the ``icow_submit`` call that queues ``jobs`` (docs/PROTOCOL.md §8)."""
    q = target.queue
    fkeys = [keys.LIMITS, keys.live(target.model), keys.wake(q), *keys.queue_lists(q)]
    args: list[Any] = [
        target.model,
        "" if target.version is None else str(target.version),
        "1" if require_published else "0",
        str(len(jobs)),  # every ARGV is a bulk string: counts in decimal ASCII
    ]
    queue_list = keys.queue_list(q, target.priority)
    for job in jobs:
        fkeys += [queue_list, *job.inputs]
        args += [job.message, str(len(job.inputs))]
    if any(job.digest for job in jobs):  # §8.4: then per job its digest key, digest and the key's TTL
        for job in jobs:
            fkeys.append(keys.digest(job.job_id))
            args += [job.digest or "", str(job.ttl_s + keys.DONE_EXTRA_TTL_S)]
    return fkeys, args


def is_served(reply: Any) -> bool:
    """Whether ``icow_submit``'s reply says a live worker serves the target (if not, the shell
    reads ``icow:failed:<m>`` for :func:`submit_outcome`'s message)."""
    try:
        return bool(int(reply[3]))
    except (TypeError, ValueError, IndexError):
        return True  # not a reply submit_outcome accepts: it raises


def not_served_reasons(target: Target, failed: Mapping[Any, Any]) -> list[str]:
    """Why workers do not serve the target, from ``icow:failed:<m>`` (field
    ``<version>:<worker>``, value the reason): one sentence per failed version and worker."""
    found = []
    for field_, why in failed.items():
        version, _, worker = _str(field_).partition(":")
        if version.isdigit() and worker and (target.version is None or int(version) == target.version):
            found.append((int(version), worker, _str(why)))
    return [f"model {target.model!r} version {v} failed to load on worker {w}: {why}" for v, w, why in sorted(found)]


def submit_outcome(target: Target, reply: Any, failed: Mapping[Any, Any] | None = None) -> tuple[int, int, int]:
    """(queued, depth, limit) from ``icow_submit``'s reply; ModelNotFound when no live worker
    serves the target (then nothing was queued), saying why when workers reported it
    (``failed``: the ``icow:failed:<m>`` hash)."""
    queued, depth, limit, served = (int(x) for x in reply[:4])
    if not served:
        reasons = not_served_reasons(target, failed or {})
        more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        why = "; " + "; ".join(reasons[:3]) + more if reasons else ""
        raise ModelNotFound(f"no live worker serves {target.describe()}: nothing was queued{why}")
    return queued, depth, limit


def check_conflicts(reply: Any, jobs: Sequence[PreparedJob]) -> None:
    """JobIdConflict when ``icow_submit`` refused a job because its custom id was already used
    by a job with other inputs (§8.4: the per-job codes after the first four; that job was not
    queued). Raised for single submits only: only they carry caller-chosen ids."""
    refused = [job.job_id for job, code in zip(jobs, reply[4:]) if int(code) == DIGEST_CONFLICT]
    if refused:
        raise JobIdConflict(
            f"job id {refused[0]!r} was already used by a job with other inputs (model, version, outputs "
            "or tensors): not queued; choose a new id (the same id with the same inputs is idempotent)",
            job_id=refused[0],
        )


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidInput(f"chunk must be a positive integer, got {size!r}")
    part: list[T] = []
    for item in items:
        part.append(item)
        if len(part) >= size:
            yield part
            part = []
    if part:
        yield part


def not_durable(exc: NotDurable, handles: list[Any]) -> NotDurable:
    """What a submit call raises when its jobs were queued but no replica acknowledged them:
    ``exc`` (from ``_queue``) with the handles of every job the call queued."""
    return connection.not_durable(exc.acknowledged, exc.replicas, [h.id for h in handles], handles)


def queue_full(target: Target, depth: int, limit: int, queued: list[Any]) -> QueueFull:
    done = f"; {len(queued)} jobs of this call were queued before the limit (QueueFull.queued)" if queued else ""
    return QueueFull(
        f"{target.describe()} already has {depth} jobs waiting, its limit is {limit}: not queued{done}",
        model=target.model,
        depth=depth,
        limit=limit,
        queued=queued,
    )


# ---------------------------------------------------------------------------- results


def parse_entry(raw: Any) -> tuple[str, Result] | None:
    """(who waits for it, result) of a reply-list or bell entry (icow.result.reply_entry): a
    job's answer goes to its job id; a cancel outcome to :func:`cancel_key` of the job. None
    for anything else."""
    r = result.reply_entry(raw)
    if r is None or r.job_id is None:
        return None
    return (cancel_key(r.job_id) if r.status == result.CANCEL else r.job_id), r


def read_meta(job_id: str, raw: Any) -> Result | None:
    """The result stored under ``celery-task-meta-<id>``, if it is this job's answer."""
    if raw is None:
        return None
    r = result.read(raw)
    return r if r.job_id == job_id and r.ready else None


def settled(job_id: str, raw_result: Any, raw_state: Any) -> Result | None:
    """The job's result from its two keys; None while it is queued or running; JobNotFound
    once it was answered but the result has expired."""
    meta = read_meta(job_id, raw_result)
    if meta is None and raw_state == b"done":
        raise JobNotFound(f"job {job_id}: its result has expired")
    return meta


def status_of(job_id: str, raw_result: Any, raw_state: Any) -> JobStatus:
    """docs/PROTOCOL.md §11: a result says succeeded or failed; state ``running`` says running;
    ``done`` without a result is JobNotFound; no record at all is ``queued`` (a client cannot
    tell an unknown id from a job that waits in a queue)."""
    meta = settled(job_id, raw_result, raw_state)
    if meta is not None:
        return status_of_meta(meta)
    return "running" if raw_state == b"running" else "queued"


def status_of_meta(meta: Result) -> JobStatus:
    return "succeeded" if meta.ok else "failed"


def output_refs(meta: Result) -> list[str]:
    """Claim-check keys the result's outputs point at (fetch them, then call decode_result)."""
    return envelope.refs(meta.outputs) if meta.ok else []


def decode_result(meta: Result, blobs: Mapping[str, Any] | None = None) -> Outputs:
    """Outputs by name from a finished job's result, or raise the remote error it carries."""
    if not meta.ok:
        error_type, message = meta.error or ("RemoteError", "")
        raise remote_error(error_type, message, job_id=meta.job_id)
    wire, missing = envelope.join(meta.outputs, blobs or {})
    if missing:
        raise JobNotFound(f"job {meta.job_id}: output {missing[0]!r} has expired")
    return {t["name"]: tensor.decode(t, max_bytes=1 << 62) for t in wire}


# ---------------------------------------------------------------------------- cancelling


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
