"""The asyncio client: the same surface and the same decisions as icow.client.sync, over
redis.asyncio. Imported only when ``AsyncClient`` is used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.exceptions

from icow import connection, functions, keys
from icow.client import _core, _wait, bulk
from icow.client._base import ClientBase, JobBase
from icow.client._core import JobStatus, ModelInfo, Outputs
from icow.client._wait import Finished, ReplyBox
from icow.errors import BrokerUnavailable, NotDurable, QueueFull
from icow.result import Result


class AsyncJob(JobBase):
    """A handle on one job (asyncio): ``await job.result(timeout_s)``. See icow.client.Job."""

    _client: AsyncClient

    async def status(self) -> JobStatus:
        known = self._known_status()
        return known if known is not None else await self._client._status(self)

    async def done(self) -> bool:
        return await self.status() in ("succeeded", "failed")

    async def result(self, timeout_s: float | None = None) -> Outputs:
        _core.check_timeout(timeout_s)
        meta = self._known_meta()
        if meta is None:
            meta = await self._client._wait_for(self, timeout_s)
        return await self._client._decode(meta)

    async def cancel(self, timeout_s: float = _core.DEFAULT_CANCEL_TIMEOUT_S) -> bool:
        _core.check_timeout(timeout_s)
        return await self._client._cancel(self, timeout_s)


class _AsyncRouter:
    """Coroutines sharing a client wait on its one reply list through one reader task, which
    files every reply in the box and wakes the waiters it is for in the same step (no await in
    between), so no reply is ever stranded."""

    def __init__(
        self,
        box: ReplyBox,
        blpop: Callable[[list[str], float], Awaitable[Any]],
        drain: Callable[[], Awaitable[list[Any]]],
    ):
        self._box = box
        self._blpop = blpop
        self._drain = drain
        self._waiters: list[tuple[Collection[str], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def wait(self, wanted: Collection[str], bells: Sequence[str], slice_s: float) -> dict[str, Result]:
        """The replies of ``wanted`` that arrive within ``slice_s`` ({} if none)."""
        hits = self._box.take(wanted)
        if hits or slice_s <= 0:
            return hits
        waiter = (wanted, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._box.watch(bells)
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.ensure_future(self._read())
            try:
                await asyncio.wait_for(waiter[1], slice_s)
            except TimeoutError:
                pass
        finally:
            self._waiters.remove(waiter)
            self._box.unwatch(bells)
        return self._box.take(wanted)

    def _wake(self, got: set[str]) -> None:
        for wanted, fut in self._waiters:
            if not fut.done() and any(k in wanted for k in got):
                fut.set_result(None)

    async def _read(self) -> None:
        try:
            while self._waiters:
                first = await self._blpop(self._box.read_keys(), _core.SLICE_S)
                if first is None:
                    continue
                got = self._box.deliver([first])
                self._wake(got)
                if self._waiters and (len(self._waiters) > 1 or len(self._waiters[0][0]) > 1 or not got):
                    self._wake(self._box.deliver(await self._drain()))
        except Exception as exc:  # every waiter learns of it (a BrokerUnavailable)
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(exc)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass


class AsyncClient(ClientBase):
    """asyncio twin of :class:`icow.client.Client`: the same methods, awaited; submissions from
    concurrent coroutines in one event-loop turn share one round trip."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any):
        super().__init__(url, **options)
        retry = redis.asyncio.retry.Retry(
            redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )
        self._r: redis.asyncio.Redis = connection.connect_async(url, retry=retry, **self.options.redis_kwargs())
        self._router = _AsyncRouter(self._box, self._blpop, self._drain)
        self._coalesce: dict[_core.Target, list[tuple[_core.PreparedJob, float | None, asyncio.Future[None]]]] = {}
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Delete this client's reply list (results stay under their keys) and disconnect.
        Every later call raises ClientClosed; closing again does nothing."""
        if self._closed:
            return
        await self._router.close()
        try:
            async with self._io("closing the client", _core.deadline_of(0.0)):
                await self._r.delete(self.reply_key)
        except BrokerUnavailable:
            pass  # unreachable: the list expires on its own
        finally:
            self._closed = True
            await self._r.aclose()

    async def ping(self) -> None:
        async with self._io("pinging", self._deadline()):
            await self._r.ping()

    # -- submitting

    async def submit(
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
    ) -> AsyncJob:
        """See :meth:`icow.client.Client.submit`."""
        target = _core.Target(model, version, priority, durable)
        return await self._submit(target, inputs, outputs, deadline_s, result_ttl_s, job_id, self._deadline())

    async def _submit(
        self,
        target: _core.Target,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None,
        deadline_s: float | None,
        result_ttl_s: int | None,
        job_id: str | None,
        deadline: float | None,
    ) -> AsyncJob:
        [job] = self._prepare(
            target, [inputs], outputs=outputs, deadline_s=deadline_s, result_ttl_s=result_ttl_s, job_id=job_id
        )
        own = job.digest is None  # a caller-chosen id: waited as re-attached (see Client._submit)
        handle = AsyncJob(self, job.job_id, target.model, cancel_token=job.cancel_token, own=own, ttl_s=job.ttl_s)
        try:
            await self._queue_coalesced(target, job, deadline)
        except NotDurable as exc:  # queued, not yet on a replica: the caller re-attaches
            raise _core.not_durable(exc, [handle]) from exc
        return handle

    async def _queue_coalesced(self, target: _core.Target, job: _core.PreparedJob, deadline: float | None) -> None:
        """Queue one job; jobs of the same target submitted by concurrent coroutines in the same
        event-loop turn share one ``icow_submit`` call, in submission order. A caller-chosen id
        travels alone: its JobIdConflict (or QueueFull) is its own."""
        if job.digest is not None:
            queued, depth, limit = await self._queue(target, [job], deadline)
            if not queued:
                raise _core.queue_full(target, depth, limit, [])
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._coalesce.setdefault(target, []).append((job, deadline, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        await fut

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._coalesce = self._coalesce, {}
        for target, items in pending.items():
            deadlines = [d for _, d, _ in items if d is not None]
            try:
                queued, depth, limit = await self._queue(
                    target, [job for job, _, _ in items], min(deadlines) if deadlines else None
                )
            except Exception as exc:
                for job, _, fut in items:
                    if not fut.done():
                        fut.set_exception(_not_queued_with(exc, job, target))
                continue
            for i, (_, _, fut) in enumerate(items):
                if not fut.done():
                    if i < queued:
                        fut.set_result(None)
                    else:
                        fut.set_exception(_core.queue_full(target, depth, limit, []))

    async def submit_many(
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
    ) -> list[AsyncJob]:
        """See :meth:`icow.client.Client.submit_many`."""
        target = _core.Target(model, version, priority, durable)
        return await self._submit_many(target, batch, outputs, deadline_s, result_ttl_s, chunk, None)

    async def _submit_many(
        self,
        target: _core.Target,
        batch: Iterable[Mapping[str, Any]],
        outputs: Sequence[str] | None,
        deadline_s: float | None,
        result_ttl_s: int | None,
        chunk: int,
        inline_max_bytes: int | None,
    ) -> list[AsyncJob]:
        handles: list[AsyncJob] = []
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
                queued, depth, limit = await self._queue(target, part, self._deadline())
            except NotDurable as exc:  # every job queued so far is the caller's to re-attach
                handles += [
                    AsyncJob(self, j.job_id, target.model, cancel_token=j.cancel_token, own=True, ttl_s=j.ttl_s)
                    for j in part
                    if j.job_id in exc.job_ids
                ]
                raise _core.not_durable(exc, handles) from exc
            handles += [
                AsyncJob(self, j.job_id, target.model, cancel_token=j.cancel_token, own=True, ttl_s=j.ttl_s)
                for j in part[:queued]
            ]
            if queued < len(part):
                raise _core.queue_full(target, depth, limit, handles)
        return handles

    async def submit_bulk(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        samples_per_job: int = 256,
        version: int | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = bulk.PRIORITY_BATCH,
        result_ttl_s: int | None = None,
    ) -> bulk.AsyncBulk:
        """See :meth:`icow.client.Client.submit_bulk`."""
        target = _core.Target(model, version, priority)
        plan = bulk.Plan.of(inputs, samples_per_job, result_ttl_s or self.options.result_ttl_s)
        jobs = await self._submit_many(target, plan.chunks, outputs, None, result_ttl_s, _core.SUBMIT_CHUNK, 0)
        async with self._io("recording a bulk", self._deadline()):
            await self._r.set(keys.bulk(plan.bulk_id), plan.record(model, jobs), ex=plan.ttl_s)
        return bulk.AsyncBulk(self, plan.bulk_id, model, jobs, plan.samples)

    async def bulk(self, bulk_id: str) -> bulk.AsyncBulk:
        """Re-attach to a bulk submission by id (from any process)."""
        keys.check_job_id(bulk_id)
        async with self._io("reading a bulk", self._deadline()):
            raw = await self._r.get(keys.bulk(bulk_id))
        model, job_ids, samples = bulk.parse_record(bulk_id, raw)
        return bulk.AsyncBulk(self, bulk_id, model, [AsyncJob(self, i, model) for i in job_ids], samples)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = 30.0,
        priority: int = 0,
    ) -> Outputs:
        """See :meth:`icow.client.Client.infer`."""
        _core.check_timeout(timeout_s)
        deadline = _core.deadline_of(timeout_s)
        target = _core.Target(model, version, priority)
        job = await self._submit(target, inputs, outputs, timeout_s or None, None, None, deadline or self._deadline())
        return await job.result(_core.remaining(deadline))

    # -- results

    def job(self, job_id: str, cancel_token: str | None = None) -> AsyncJob:
        """Re-attach to a job by id (see :meth:`icow.client.Client.job`)."""
        keys.check_job_id(job_id)
        return AsyncJob(self, job_id, cancel_token=_core.check_token(job_id, cancel_token))

    async def as_completed(self, jobs: Iterable[AsyncJob], timeout_s: float | None = None) -> AsyncIterator[AsyncJob]:
        """Yield jobs as they finish (``async for``); JobTimeout at ``timeout_s``."""
        _core.check_timeout(timeout_s)
        deadline = _core.deadline_of(timeout_s)
        handles: dict[str, list[AsyncJob]] = {}
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
        session = _AsyncPubSub(self, "waiting for results", deadline)
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
                    reply = await self._execute(op, "waiting for results", deadline, session)
        finally:
            await session.close()

    async def _status(self, job: AsyncJob) -> JobStatus:
        async with self._io("reading a job's status", self._deadline()):
            raw, state = await self._r.mget([keys.result(job.id), keys.state(job.id)])
        status = _core.status_of(job.id, raw, state)
        if status in ("succeeded", "failed"):
            job._settle(_core.read_meta(job.id, raw))
        return status

    async def _wait_for(self, job: AsyncJob, timeout_s: float | None) -> Result:
        deadline = _core.deadline_of(timeout_s)
        steps = (_wait.wait_own if job._own else _wait.wait_other)(job.id, deadline, timeout_s)
        meta: Result = await self._run(steps, "waiting for a result", deadline)
        job._settle(meta)
        return meta

    async def _cancel(self, job: AsyncJob, timeout_s: float) -> bool:
        deadline = _core.deadline_of(timeout_s)
        steps = _wait.cancel(job.id, job.cancel_token, self.reply_key, deadline, timeout_s, job._ttl_s)
        return bool(await self._run(steps, "cancelling a job", deadline))

    async def _decode(self, meta: Result) -> Outputs:
        refs = _core.output_refs(meta)
        blobs: dict[str, Any] = {}
        if refs:
            async with self._io("reading large outputs", self._deadline()):
                blobs = dict(zip(refs, await self._r.mget(refs)))
        return _core.decode_result(meta, blobs)

    async def _count_finished(self, job_ids: list[str]) -> int:
        done = 0
        for part in _core.chunked(iter(job_ids), _wait.MGET_MAX):
            async with self._io("counting finished jobs", self._deadline()):
                done += int(await self._r.exists(*[keys.result(j) for j in part]))
        return done

    # -- models

    async def models(self) -> dict[str, list[int]]:
        """Every published model and its versions."""
        async with self._io("listing models", self._deadline()):
            names = sorted(await self._r.smembers(keys.MODELS))
            pipe = self._r.pipeline(transaction=False)
            for n in names:
                pipe.hkeys(keys.model(_core.text(n)))
            versions = await pipe.execute()
        return _core.models_of(names, versions)

    async def model(self, name: str, version: int | None = None) -> ModelInfo:
        """A model's inputs and outputs (latest version unless ``version`` is given)."""
        keys.check_model_name(name)
        async with self._io("reading model metadata", self._deadline()):
            raw = await self._r.hgetall(keys.model(name))
        return _core.model_info(name, raw, version)

    # -- I/O

    def _deadline(self) -> float | None:
        return _core.deadline_of(self.options.timeout_s)

    @asynccontextmanager
    async def _io(self, what: str, deadline: float | None, blocking_s: float = 0.0) -> AsyncIterator[None]:
        """Bound the Redis commands inside by the call's deadline, and surface every Redis
        failure as an ICOW error. ClientClosed after ``close()``."""
        self._check_open()
        try:
            async with asyncio.timeout(_core.io_limit(deadline, blocking_s, self.options.timeout_s)):
                yield
        except Exception as exc:
            error = _core.broker_error(exc, what)
            if error is None:
                raise
            raise error from exc

    async def _queue(
        self, target: _core.Target, jobs: Sequence[_core.PreparedJob], deadline: float | None
    ) -> tuple[int, int, int]:
        """See icow.client.sync.Client._queue."""
        fkeys, args = _core.submit_call(target, jobs, self.options.require_published)
        wait_ms = target.durable_wait_ms(self.options, deadline)
        acked: Any = 0
        async with self._io("submitting a job" if len(jobs) == 1 else "submitting jobs", deadline):
            try:
                pipe = self._r.pipeline(transaction=False)
                for job in jobs:
                    for key, data in job.inputs.items():
                        pipe.set(key, data, ex=job.ttl_s)
                pipe.fcall(functions.SUBMIT, len(fkeys), *fkeys, *args)
                if wait_ms:  # durable: WAIT counts this connection's writes, so it rides along
                    connection.wait_replicas(pipe, 1, wait_ms)
                replies = await pipe.execute(raise_on_error=False)
                if wait_ms:
                    acked = replies.pop()
                for reply in replies[:-1]:  # the input SETs
                    if isinstance(reply, Exception):
                        raise reply
                reply = replies[-1]
                if isinstance(reply, Exception):  # an error, or the library is missing (a Redis that lost its data)
                    async with self._r.client() as one:  # one connection: WAIT counts the submit's writes
                        reply = await functions.reply_of_async(one, reply, functions.SUBMIT, fkeys, args)
                        if wait_ms:
                            acked = await connection.wait_replicas(one, 1, wait_ms)
            except Exception:
                await self._forget_inputs(jobs)
                raise
            if wait_ms and isinstance(acked, Exception):
                raise acked
        failed = None if _core.is_served(reply) else await self._failed_versions(target.model)
        outcome = _core.submit_outcome(target, reply, failed)
        _core.check_conflicts(reply, jobs)  # a custom id already used by other inputs: JobIdConflict
        if wait_ms and outcome[0]:
            # queued on the primary, not yet on a replica: NotDurable names the queued jobs
            connection.require_replicas(acked, 1, [job.job_id for job in jobs[: outcome[0]]])
        return outcome

    async def _failed_versions(self, model: str) -> Any:
        """Why workers do not serve ``model`` (``icow:failed:<m>``), for ModelNotFound's message;
        empty when unreadable (the error is ModelNotFound all the same)."""
        try:
            return await self._r.hgetall(keys.failed(model))
        except redis.exceptions.RedisError:
            return {}

    async def _forget_inputs(self, jobs: Sequence[_core.PreparedJob]) -> None:
        inputs = [key for job in jobs for key in job.inputs]
        if inputs:
            try:
                async with asyncio.timeout(_core.MARGIN_S):
                    await self._r.delete(*inputs)
            except (redis.exceptions.RedisError, OSError):
                pass  # they expire with the job's TTL

    async def _blpop(self, read_keys: list[str], timeout: float) -> Any:
        async with self._io("waiting for a result", None, blocking_s=timeout):
            popped = await self._r.blpop(read_keys, timeout=timeout)
        return None if popped is None else popped[1]

    async def _drain(self) -> list[Any]:
        async with self._io("waiting for a result", None):
            return list(await self._r.lpop(self.reply_key, _core.DRAIN_MAX) or [])

    async def _run(self, steps: _wait.Steps, what: str, deadline: float | None) -> Any:
        """Carry out a wait's operations; return its result."""
        session = _AsyncPubSub(self, what, deadline)
        try:
            reply: Any = None
            while True:
                try:
                    op = steps.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply = await self._execute(op, what, deadline, session)
        finally:
            await session.close()

    async def _execute(self, op: Any, what: str, deadline: float | None, session: _AsyncPubSub) -> Any:
        if isinstance(op, _wait.ReadReplies):
            return await self._router.wait(op.wanted, op.bells, op.slice_s)
        if isinstance(op, _wait.ReadKeys):
            async with self._io(what, deadline):
                return await self._r.mget(op.keys)
        if isinstance(op, _wait.Call):
            async with self._io(what, deadline):
                return await functions.call_async(self._r, op.name, op.keys, op.args)
        if isinstance(op, _wait.Subscribe):
            return await session.subscribe(op.channels)
        return await session.listen(op.slice_s)


class _AsyncPubSub:
    """The pub/sub connection of one wait (re-attached jobs), opened on first use."""

    def __init__(self, client: AsyncClient, what: str, deadline: float | None):
        self._client = client
        self._what = what
        self._deadline = deadline
        self._ps: Any = None
        self._early: list[Any] = []

    async def subscribe(self, channels: list[str]) -> None:
        c = self._client
        async with c._io(self._what, self._deadline):
            if self._ps is None:
                self._ps = c._r.pubsub(ignore_subscribe_messages=False)
            await self._ps.subscribe(*channels)
            pending = len(channels)  # wait for every confirmation (see the sync client)
            while pending:
                msg = await self._ps.get_message(timeout=None)
                if msg is None:
                    continue
                if msg["type"] == "subscribe":
                    pending -= 1
                elif msg["type"] == "message":
                    self._early.append(msg["data"])

    async def listen(self, slice_s: float) -> Any:
        if self._early:
            return self._early.pop(0)
        loop = asyncio.get_running_loop()
        end = loop.time() + slice_s
        async with self._client._io(self._what, self._deadline, blocking_s=slice_s):
            while True:
                left = end - loop.time()
                if left <= 0:
                    return None
                msg = await self._ps.get_message(timeout=left)
                if msg is not None and msg["type"] == "message":
                    return msg["data"]

    async def close(self) -> None:
        if self._ps is not None:
            try:
                async with asyncio.timeout(_core.MARGIN_S):
                    await self._ps.aclose()
            except (redis.exceptions.RedisError, OSError):
                pass


def _not_queued_with(exc: Exception, job: _core.PreparedJob, target: _core.Target) -> Exception:
    """The error one coalesced submit gets when its shared ``icow_submit`` call raised ``exc``:
    a NotDurable that did not queue this job (the backlog limit came first) is QueueFull."""
    if isinstance(exc, NotDurable) and job.job_id not in exc.job_ids:
        return QueueFull(f"{target.describe()}: its backlog limit was reached: not queued", model=target.model)
    return exc
