"""Submitting, I/O-free: the ``icow_submit`` call and what its reply says, and the plans of
``submit``, ``submit_many`` and ``submit_bulk`` (docs/PROTOCOL.md §8).

:func:`queue` is one round trip: SET the claim-checked inputs and ``FCALL icow_submit`` (and,
durable, ``WAIT``) in one pipeline; the library-missing fallback on one connection; the inputs
deleted again when the call failed; ``icow:failed:<m>`` read for ModelNotFound's reason; digest
conflicts, the backlog limit and NotDurable raised. :func:`one` and :func:`many` are the calls
around it: handles, QueueFull and NotDurable carrying the jobs queued. The shells run these
plans (icow.client._ops); the asyncio client may send the single jobs of concurrent coroutines
in one :func:`queue` (:func:`share`, :func:`not_queued_with`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from icow import connection, functions, keys
from icow.client._deadlines import deadline_of
from icow.client._ops import CallAlone, Command, Pipeline, QueueJobs, Steps
from icow.client._options import Options
from icow.client._prepare import PreparedJob, Target
from icow.client._redis_errors import surfaced
from icow.errors import IcowError, InvalidInput, JobIdConflict, ModelNotFound, NotDurable, QueueFull

T = TypeVar("T")
Handle = Callable[[PreparedJob, bool], Any]  # (job, own) -> the shell's job handle

SUBMIT_CHUNK = 500  # jobs per FCALL in submit_many
DIGEST_CONFLICT = 2  # icow_submit's per-job code: the id's first job had other inputs (§8.4)


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
    ``exc`` (from :func:`queue`) with the handles of every job the call queued."""
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


# ---------------------------------------------------------------------------- plans


def queue(target: Target, jobs: Sequence[PreparedJob], options: Options, deadline: float | None) -> Steps:
    """One round trip: SET the claim-checked inputs, then ``icow_submit`` checks that a live
    worker serves the target and the backlog limit, and queues. Returns (queued, depth, limit)."""
    what = QueueJobs(target, list(jobs), deadline).what
    fkeys, args = submit_call(target, jobs, options.require_published)
    wait_ms = target.durable_wait_ms(options, deadline)
    sets = [Command("set", (key, data), {"ex": job.ttl_s}) for job in jobs for key, data in job.inputs.items()]
    fcall = Command("fcall", (functions.SUBMIT, len(fkeys), *fkeys, *args))
    wait = [Command("execute_command", ("WAIT", 1, wait_ms))] if wait_ms else []  # connection.wait_replicas
    acked: Any = 0
    try:
        replies = yield Pipeline((*sets, fcall, *wait), errors_as_values=True)
        if wait_ms:  # durable: WAIT counts this connection's writes, so it rode along
            acked = replies.pop()
        for reply in replies[:-1]:  # the input SETs
            if isinstance(reply, Exception):
                raise surfaced(reply, what)
        reply = replies[-1]
        if isinstance(reply, Exception):  # an error, or the library is missing (a Redis that lost its data)
            reply, acked = yield CallAlone(reply, functions.SUBMIT, fkeys, args, wait_ms)
    except Exception:
        inputs = [key for job in jobs for key in job.inputs]
        if inputs:
            try:
                yield Command("delete", tuple(inputs))
            except IcowError:
                pass  # they expire with the job's TTL
        raise
    if wait_ms and isinstance(acked, Exception):
        raise surfaced(acked, what)
    failed = None
    if not is_served(reply):  # why no worker serves it, for ModelNotFound's message (if readable)
        try:
            failed = yield Command("hgetall", (keys.failed(target.model),))
        except IcowError:
            failed = {}
    outcome = submit_outcome(target, reply, failed)
    check_conflicts(reply, jobs)  # a custom id already used by other inputs: JobIdConflict
    if wait_ms and outcome[0]:
        # queued on the primary, not yet on a replica: NotDurable names the queued jobs
        connection.require_replicas(acked, 1, [job.job_id for job in jobs[: outcome[0]]])
    return outcome


def one(target: Target, job: PreparedJob, handle: Handle, deadline: float | None) -> Steps:
    """``submit``: queue one job; its handle. A caller-chosen id travels alone (its
    JobIdConflict or QueueFull is its own) and is waited for like a re-attached job (pub/sub,
    then its keys), so a resubmission the fleet drops at its claim is answered at once."""
    own = job.digest is None
    made = handle(job, own)
    try:
        queued, depth, limit = yield QueueJobs(target, [job], deadline, coalesce=own)
    except NotDurable as exc:  # queued, not yet on a replica: the caller re-attaches
        raise not_durable(exc, [made]) from exc
    if not queued:
        raise queue_full(target, depth, limit, [])
    return made


def many(target: Target, prepared: Iterable[PreparedJob], chunk: int, handle: Handle, options: Options) -> Steps:
    """``submit_many``: one ``icow_submit`` per ``chunk`` jobs, each bounded by the client's
    timeout. QueueFull and NotDurable carry the handles of every job queued so far."""
    handles: list[Any] = []
    for part in chunked(prepared, chunk):
        try:
            queued, depth, limit = yield QueueJobs(target, part, deadline_of(options.timeout_s))
        except NotDurable as exc:  # every job queued so far is the caller's to re-attach
            handles += [handle(j, True) for j in part if j.job_id in exc.job_ids]
            raise not_durable(exc, handles) from exc
        handles += [handle(j, True) for j in part[:queued]]
        if queued < len(part):
            raise queue_full(target, depth, limit, handles)
    return handles


def share(outcome: tuple[int, int, int], i: int) -> tuple[int, int, int]:
    """The outcome of the ``i``-th job of a coalesced call, as if it had been queued alone."""
    queued, depth, limit = outcome
    return (1 if i < queued else 0), depth, limit


def not_queued_with(exc: Exception, job: PreparedJob, target: Target) -> Exception:
    """The error one coalesced submit gets when its shared ``icow_submit`` call raised ``exc``:
    a NotDurable that did not queue this job (the backlog limit came first) is QueueFull."""
    if isinstance(exc, NotDurable) and job.job_id not in exc.job_ids:
        return QueueFull(f"{target.describe()}: its backlog limit was reached: not queued", model=target.model)
    return exc
