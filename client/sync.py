"""The synchronous client: a thin driver that does the Redis I/O that icow.client._core and
icow.client._wait decide, over redis-py. Thread-safe: threads share one reply list through
:class:`_Router`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.backoff
import redis.exceptions
import redis.retry

from icow import connection, functions, keys
from icow.client import _core, _wait, bulk
from icow.client._base import ClientBase, JobBase
from icow.client._bounded import LIMIT, bound_pool
from icow.client._core import JobStatus, ModelInfo, Outputs
from icow.client._wait import Finished, ReplyBox
from icow.errors import BrokerUnavailable, NotDurable
from icow.result import Result


class Job(JobBase):
    """A handle on one job. Any process can make one from the id: ``client.job(id)``."""

    _client: Client

    def status(self) -> JobStatus:
        """``queued``, ``running``, ``succeeded`` or ``failed``; JobNotFound once its result has
        expired. An id nobody ever submitted also reads ``queued`` (docs/PROTOCOL.md §11)."""
        known = self._known_status()
        return known if known is not None else self._client._status(self)

    def done(self) -> bool:
        return self.status() in ("succeeded", "failed")

    def result(self, timeout_s: float | None = None) -> Outputs:
        """Block (on Redis, no polling) until the job finishes; return its outputs by name.

        Raises JobTimeout after ``timeout_s`` (None: wait as long as it takes), the job's
        RemoteError if it failed (JobCancelled, InvalidJob, ...), JobNotFound if its result
        has expired."""
        _core.check_timeout(timeout_s)
        meta = self._known_meta()
        if meta is None:
            meta = self._client._wait_for(self, timeout_s)
        return self._client._decode(meta)

    def cancel(self, timeout_s: float = _core.DEFAULT_CANCEL_TIMEOUT_S) -> bool:
        """Ask the fleet to cancel the job. True: it had not started and never will (its
        result is JobCancelled, and every waiter wakes); False: it is already running (its
        result will stand) or finished. JobTimeout when no worker answered in time;
        InvalidInput for a job without a cancel token (see ``cancel_token``)."""
        _core.check_timeout(timeout_s)
        return self._client._cancel(self, timeout_s)


class _Router:
    """Threads sharing a client wait on its one reply list. One of them reads (BLPOP) at a
    time; it files everything it popped in the box, under the lock and *before* it wakes the
    others, so a reply is never left in the box while its waiter sleeps through a read."""

    def __init__(
        self,
        box: ReplyBox,
        blpop: Callable[[list[str], float, float | None], Any],
        drain: Callable[[float | None], list[Any]],
    ):
        self._box = box
        self._blpop = blpop
        self._drain = drain
        self._cond = threading.Condition()
        self._reading = False

    def wait(
        self, wanted: Collection[str], bells: Sequence[str], slice_s: float, deadline: float | None
    ) -> dict[str, Result]:
        """The replies of ``wanted`` that arrive within ``slice_s`` ({} if none)."""
        end = time.monotonic() + slice_s
        with self._cond:
            self._box.watch(bells)
        try:
            while True:
                with self._cond:
                    while True:
                        hits = self._box.take(wanted)
                        if hits:
                            return hits
                        left = end - time.monotonic()
                        if left <= 0:
                            return {}
                        if not self._reading:
                            self._reading = True
                            read_keys = self._box.read_keys()
                            break
                        self._cond.wait(left)
                self._read(read_keys, left, deadline, wanted)
        finally:
            with self._cond:
                self._box.unwatch(bells)

    def _read(self, read_keys: list[str], timeout: float, deadline: float | None, wanted: Collection[str]) -> None:
        more: list[Any] = []
        try:
            first = self._blpop(read_keys, timeout, deadline)
            if first is not None:
                with self._cond:  # filed, not announced: nobody is woken yet
                    got = self._box.deliver([first])
                if len(wanted) > 1 or not got & set(wanted):
                    more = self._drain(deadline)  # more replies are probably waiting: take them all
        finally:
            with self._cond:
                self._reading = False
                self._box.deliver(more)  # file everything first...
                self._cond.notify_all()  # ...then wake the others


class Client(ClientBase):
    """Submit jobs to an ICOW fleet and read their results. Thread-safe.

    ``Client("redis://host:6379/0")``; ``Client.from_env()`` reads ``ICOW_REDIS_URL`` and the
    other ``ICOW_*`` settings. ``timeout_s`` bounds every call that takes no timeout of its own
    (submit, status, models, ...); no call outlives its timeout by more than 1 s
    (``icow.client._core.MARGIN_S``), whatever state Redis is in.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any):
        super().__init__(url, **options)
        retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        self._r: redis.Redis = connection.connect(url, retry=retry, **self.options.redis_kwargs())
        bound_pool(self._r.connection_pool)
        self._router = _Router(self._box, self._blpop, self._drain)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete this client's reply list (results stay under their keys) and disconnect.
        Every later call raises ClientClosed; closing again does nothing."""
        if self._closed:
            return
        try:
            with self._io("closing the client", _core.deadline_of(0.0)):
                self._r.delete(self.reply_key)
        except BrokerUnavailable:
            pass  # unreachable: the list expires on its own
        finally:
            self._closed = True
            self._r.close()

    def ping(self) -> None:
        with self._io("pinging", self._deadline()):
            self._r.ping()

    # -- submitting

    def submit(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        deadline_s: float | None = None,
        result_ttl_s: int | None = None,
        job_id: str | None = None,
        durable: bool | None = None,
    ) -> Job:
        """Queue one job and return its handle at once (fire-and-forget).

        ``version``: run on that version (its own queue), else the fleet's highest live one.
        ``deadline_s``: a job not started by then is answered JobExpired. ModelNotFound when no
        live worker serves the model (version), QueueFull when its backlog is at its limit:
        then nothing was queued."""
        target = _core.Target(model, version, priority, durable)
        return self._submit(target, inputs, outputs, deadline_s, result_ttl_s, job_id, self._deadline())

    def _submit(
        self,
        target: _core.Target,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None,
        deadline_s: float | None,
        result_ttl_s: int | None,
        job_id: str | None,
        deadline: float | None,
    ) -> Job:
        [job] = self._prepare(
            target, [inputs], outputs=outputs, deadline_s=deadline_s, result_ttl_s=result_ttl_s, job_id=job_id
        )
        # own=False for a caller-chosen id: waited like a re-attached job (pub/sub, then its keys),
        # so a resubmission the fleet drops at its claim (answered already) is answered at once.
        own = job.digest is None
        handle = Job(self, job.job_id, target.model, cancel_token=job.cancel_token, own=own, ttl_s=job.ttl_s)
        try:
            queued, depth, limit = self._queue(target, [job], deadline)
        except NotDurable as exc:  # queued, not yet on a replica: the caller re-attaches
            raise _core.not_durable(exc, [handle]) from exc
        if not queued:
            raise _core.queue_full(target, depth, limit, [])
        return handle

    def submit_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, Any]],
        *,
        version: int | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        deadline_s: float | None = None,
        result_ttl_s: int | None = None,
        chunk: int = _core.SUBMIT_CHUNK,
        durable: bool | None = None,
    ) -> list[Job]:
        """Queue many jobs in few round trips (one ``icow_submit`` call per ``chunk`` jobs).

        When the backlog limit is reached, QueueFull's ``queued`` holds the handles of the jobs
        queued so far (a prefix of ``batch``); the others were not queued."""
        target = _core.Target(model, version, priority, durable)
        return self._submit_many(target, batch, outputs, deadline_s, result_ttl_s, chunk, None)

    def _submit_many(
        self,
        target: _core.Target,
        batch: Iterable[Mapping[str, Any]],
        outputs: Sequence[str] | None,
        deadline_s: float | None,
        result_ttl_s: int | None,
        chunk: int,
        inline_max_bytes: int | None,
    ) -> list[Job]:
        handles: list[Job] = []
        prepared = self._prepare(
            target,
            batch,
            outputs=outputs,
            deadline_s=deadline_s,
            result_ttl_s=result_ttl_s,
            inline_max_bytes=inline_max_bytes,
        )
        for part in _core.chunked(prepared, chunk):
            try:
                queued, depth, limit = self._queue(target, part, self._deadline())
            except NotDurable as exc:  # every job queued so far is the caller's to re-attach
                handles += [
                    Job(self, j.job_id, target.model, cancel_token=j.cancel_token, own=True, ttl_s=j.ttl_s)
                    for j in part
                    if j.job_id in exc.job_ids
                ]
                raise _core.not_durable(exc, handles) from exc
            handles += [
                Job(self, j.job_id, target.model, cancel_token=j.cancel_token, own=True, ttl_s=j.ttl_s)
                for j in part[:queued]
            ]
            if queued < len(part):
                raise _core.queue_full(target, depth, limit, handles)
        return handles

    def submit_bulk(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        samples_per_job: int = 256,
        version: int | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = bulk.PRIORITY_BATCH,
        result_ttl_s: int | None = None,
    ) -> bulk.Bulk:
        """Queue ``inputs`` (arrays whose first axis is the sample axis) as jobs of
        ``samples_per_job`` samples, at batch priority, in few round trips; every chunk travels
        under its own key, never inside the message. Any process re-attaches with
        ``client.bulk(id)``."""
        target = _core.Target(model, version, priority)
        plan = bulk.Plan.of(inputs, samples_per_job, result_ttl_s or self.options.result_ttl_s)
        jobs = self._submit_many(target, plan.chunks, outputs, None, result_ttl_s, _core.SUBMIT_CHUNK, 0)
        with self._io("recording a bulk", self._deadline()):
            self._r.set(keys.bulk(plan.bulk_id), plan.record(model, jobs), ex=plan.ttl_s)
        return bulk.Bulk(self, plan.bulk_id, model, jobs, plan.samples)

    def bulk(self, bulk_id: str) -> bulk.Bulk:
        """Re-attach to a bulk submission by id (from any process)."""
        keys.check_job_id(bulk_id)
        with self._io("reading a bulk", self._deadline()):
            raw = self._r.get(keys.bulk(bulk_id))
        model, job_ids, samples = bulk.parse_record(bulk_id, raw)
        return bulk.Bulk(self, bulk_id, model, [Job(self, i, model) for i in job_ids], samples)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = 30.0,
        priority: int = 0,
    ) -> Outputs:
        """Submit and wait: outputs by name, or the job's error. The job expires unstarted
        after ``timeout_s``, and the whole call, submission included, ends by then."""
        _core.check_timeout(timeout_s)
        deadline = _core.deadline_of(timeout_s)
        target = _core.Target(model, version, priority)
        job = self._submit(target, inputs, outputs, timeout_s or None, None, None, deadline or self._deadline())
        return job.result(_core.remaining(deadline))

    # -- results

    def job(self, job_id: str, cancel_token: str | None = None) -> Job:
        """Re-attach to a job by id (from any process); with its ``cancel_token`` it can be
        cancelled from here too."""
        keys.check_job_id(job_id)
        return Job(self, job_id, cancel_token=_core.check_token(job_id, cancel_token))

    def as_completed(self, jobs: Iterable[Job], timeout_s: float | None = None) -> Iterator[Job]:
        """Yield jobs as they finish (their ``result()`` then returns at once); JobTimeout
        for those still running at ``timeout_s``."""
        _core.check_timeout(timeout_s)
        deadline = _core.deadline_of(timeout_s)
        handles: dict[str, list[Job]] = {}
        own: list[str] = []
        other: list[str] = []
        for job in jobs:
            if job._meta is not None or job._error is not None:
                yield job
            elif job.id in handles:
                handles[job.id].append(job)
            else:
                handles[job.id] = [job]
                (own if job._own else other).append(job.id)
        steps = _wait.as_completed(own, other, deadline, timeout_s)
        session = _PubSub(self, "waiting for results", deadline)
        try:
            reply: Any = None
            while True:
                try:
                    op = steps.send(reply)
                except StopIteration:
                    return
                reply = None
                if isinstance(op, Finished):
                    for job in handles.pop(op.job_id, ()):
                        job._settle(op.meta, op.error)
                        yield job
                else:
                    reply = self._execute(op, "waiting for results", deadline, session)
        finally:
            session.close()

    def _status(self, job: Job) -> JobStatus:
        with self._io("reading a job's status", self._deadline()):
            raw, state = self._r.mget([keys.result(job.id), keys.state(job.id)])
        status = _core.status_of(job.id, raw, state)
        if status in ("succeeded", "failed"):
            job._settle(_core.read_meta(job.id, raw))
        return status

    def _wait_for(self, job: Job, timeout_s: float | None) -> Result:
        deadline = _core.deadline_of(timeout_s)
        steps = (_wait.wait_own if job._own else _wait.wait_other)(job.id, deadline, timeout_s)
        meta: Result = self._run(steps, "waiting for a result", deadline)
        job._settle(meta)
        return meta

    def _cancel(self, job: Job, timeout_s: float) -> bool:
        deadline = _core.deadline_of(timeout_s)
        steps = _wait.cancel(job.id, job.cancel_token, self.reply_key, deadline, timeout_s, job._ttl_s)
        return bool(self._run(steps, "cancelling a job", deadline))

    def _decode(self, meta: Result) -> Outputs:
        refs = _core.output_refs(meta)
        blobs: dict[str, Any] = {}
        if refs:
            with self._io("reading large outputs", self._deadline()):
                blobs = dict(zip(refs, self._r.mget(refs)))
        return _core.decode_result(meta, blobs)

    def _count_finished(self, job_ids: list[str]) -> int:
        done = 0
        for part in _core.chunked(iter(job_ids), _wait.MGET_MAX):
            with self._io("counting finished jobs", self._deadline()):
                done += int(self._r.exists(*[keys.result(j) for j in part]))
        return done

    # -- models

    def models(self) -> dict[str, list[int]]:
        """Every published model and its versions."""
        with self._io("listing models", self._deadline()):
            names = sorted(self._r.smembers(keys.MODELS))
            pipe = self._r.pipeline(transaction=False)
            for n in names:
                pipe.hkeys(keys.model(_core.text(n)))
            versions = pipe.execute()
        return _core.models_of(names, versions)

    def model(self, name: str, version: int | None = None) -> ModelInfo:
        """A model's inputs and outputs (latest version unless ``version`` is given)."""
        keys.check_model_name(name)
        with self._io("reading model metadata", self._deadline()):
            raw = self._r.hgetall(keys.model(name))
        return _core.model_info(name, raw, version)

    # -- I/O

    def _deadline(self) -> float | None:
        return _core.deadline_of(self.options.timeout_s)

    @contextmanager
    def _io(self, what: str, deadline: float | None, blocking_s: float = 0.0) -> Iterator[None]:
        """Bound every Redis command inside by the call's deadline, and surface every Redis
        failure as an ICOW error. ClientClosed after ``close()``."""
        self._check_open()
        token = LIMIT.set(time.monotonic() + _core.io_limit(deadline, blocking_s, self.options.timeout_s))
        try:
            yield
        except Exception as exc:
            error = _core.broker_error(exc, what)
            if error is None:
                raise
            raise error from exc
        finally:
            LIMIT.reset(token)

    def _queue(
        self, target: _core.Target, jobs: Sequence[_core.PreparedJob], deadline: float | None
    ) -> tuple[int, int, int]:
        """One round trip: SET the claim-checked inputs, then ``icow_submit`` checks that a live
        worker serves the target and the backlog limit, and queues. (queued, depth, limit)."""
        fkeys, args = _core.submit_call(target, jobs, self.options.require_published)
        wait_ms = target.durable_wait_ms(self.options, deadline)
        acked: Any = 0
        with self._io("submitting a job" if len(jobs) == 1 else "submitting jobs", deadline):
            try:
                pipe = self._r.pipeline(transaction=False)
                for job in jobs:
                    for key, data in job.inputs.items():
                        pipe.set(key, data, ex=job.ttl_s)
                pipe.fcall(functions.SUBMIT, len(fkeys), *fkeys, *args)
                if wait_ms:  # durable: WAIT counts this connection's writes, so it rides along
                    connection.wait_replicas(pipe, 1, wait_ms)
                replies = pipe.execute(raise_on_error=False)
                if wait_ms:
                    acked = replies.pop()
                for reply in replies[:-1]:  # the input SETs
                    if isinstance(reply, Exception):
                        raise reply
                reply = replies[-1]
                if isinstance(reply, Exception):  # an error, or the library is missing (a Redis that lost its data)
                    with self._r.client() as one:  # one connection: WAIT counts the submit's writes
                        reply = functions.reply_of(one, reply, functions.SUBMIT, fkeys, args)
                        if wait_ms:
                            acked = connection.wait_replicas(one, 1, wait_ms)
            except Exception:
                self._forget_inputs(jobs)
                raise
            if wait_ms and isinstance(acked, Exception):
                raise acked
        failed = None if _core.is_served(reply) else self._failed_versions(target.model)
        outcome = _core.submit_outcome(target, reply, failed)
        _core.check_conflicts(reply, jobs)  # a custom id already used by other inputs: JobIdConflict
        if wait_ms and outcome[0]:
            # queued on the primary, not yet on a replica: NotDurable names the queued jobs
            connection.require_replicas(acked, 1, [job.job_id for job in jobs[: outcome[0]]])
        return outcome

    def _failed_versions(self, model: str) -> Any:
        """Why workers do not serve ``model`` (``icow:failed:<m>``), for ModelNotFound's message;
        empty when unreadable (the error is ModelNotFound all the same)."""
        try:
            return self._r.hgetall(keys.failed(model))
        except redis.exceptions.RedisError:
            return {}

    def _forget_inputs(self, jobs: Sequence[_core.PreparedJob]) -> None:
        inputs = [key for job in jobs for key in job.inputs]
        if inputs:
            try:
                self._r.delete(*inputs)
            except (redis.exceptions.RedisError, OSError):
                pass  # they expire with the job's TTL

    def _blpop(self, read_keys: list[str], timeout: float, deadline: float | None) -> Any:
        timeout = max(timeout, 0.01)  # BLPOP 0 would block forever
        with self._io("waiting for a result", deadline, blocking_s=timeout):
            popped = self._r.blpop(read_keys, timeout=timeout)
        return None if popped is None else popped[1]

    def _drain(self, deadline: float | None) -> list[Any]:
        with self._io("waiting for a result", deadline):
            return list(self._r.lpop(self.reply_key, _core.DRAIN_MAX) or [])

    def _run(self, steps: _wait.Steps, what: str, deadline: float | None) -> Any:
        """Carry out a wait's operations; return its result."""
        session = _PubSub(self, what, deadline)
        try:
            reply: Any = None
            while True:
                try:
                    op = steps.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply = self._execute(op, what, deadline, session)
        finally:
            session.close()

    def _execute(self, op: Any, what: str, deadline: float | None, session: _PubSub) -> Any:
        if isinstance(op, _wait.ReadReplies):
            return self._router.wait(op.wanted, op.bells, op.slice_s, op.deadline)
        if isinstance(op, _wait.ReadKeys):
            with self._io(what, deadline):
                return self._r.mget(op.keys)
        if isinstance(op, _wait.Call):
            with self._io(what, deadline):
                return functions.call(self._r, op.name, op.keys, op.args)
        if isinstance(op, _wait.Subscribe):
            return session.subscribe(op.channels)
        return session.listen(op.slice_s)


class _PubSub:
    """The pub/sub connection of one wait (re-attached jobs), opened on first use."""

    def __init__(self, client: Client, what: str, deadline: float | None):
        self._client = client
        self._what = what
        self._deadline = deadline
        self._ps: Any = None
        self._early: list[Any] = []  # messages that came with the subscription confirmations

    def subscribe(self, channels: list[str]) -> None:
        c = self._client
        with c._io(self._what, self._deadline):
            if self._ps is None:
                self._ps = c._r.pubsub(ignore_subscribe_messages=False)
            self._ps.subscribe(*channels)
            # Wait until Redis has confirmed them all: only then is a result published from
            # now on sure to reach us, and reading the keys after that misses nothing.
            limit = LIMIT.get() or 0.0
            pending = len(channels)
            while pending:
                left = limit - time.monotonic()
                msg = self._ps.get_message(timeout=max(left, 0.0))
                if msg is None:
                    if left <= 0:
                        raise redis.exceptions.TimeoutError("Redis did not confirm the subscription in time")
                elif msg["type"] == "subscribe":
                    pending -= 1
                elif msg["type"] == "message":
                    self._early.append(msg["data"])

    def listen(self, slice_s: float) -> Any:
        if self._early:
            return self._early.pop(0)
        end = time.monotonic() + slice_s
        with self._client._io(self._what, self._deadline, blocking_s=slice_s):
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                msg = self._ps.get_message(timeout=left)
                if msg is not None and msg["type"] == "message":
                    return msg["data"]

    def close(self) -> None:
        if self._ps is not None:
            try:
                self._ps.close()
            except (redis.exceptions.RedisError, OSError):
                pass
