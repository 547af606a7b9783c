"""The asyncio client: the same surface and the same plans as icow.client.sync, carried out
over redis.asyncio. Imported only when ``AsyncClient`` is used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.exceptions

from icow import connection, functions
from icow.client import _core, _models, _ops, _wait, bulk
from icow.client._base import ClientBase
from icow.client._core import ModelInfo, Outputs
from icow.client._job import AsyncJob
from icow.client._reader_aio import AsyncPubSub, AsyncRouter
from icow.errors import BrokerUnavailable

_Pending = list[tuple[_ops.QueueJobs, "asyncio.Future[tuple[int, int, int]]"]]


class AsyncClient(ClientBase):
    """asyncio twin of :class:`icow.client.Client`: the same methods, awaited; submissions from
    concurrent coroutines in one event-loop turn share one round trip."""

    _Job = AsyncJob

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any):
        super().__init__(url, **options)
        retry = redis.asyncio.retry.Retry(
            redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )
        self._r: redis.asyncio.Redis = connection.connect_async(url, retry=retry, **self.options.redis_kwargs())
        self._router = AsyncRouter(self._box, self._blpop, self._drain)
        self._coalesce: dict[_core.Target, _Pending] = {}
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

    # -- submitting (see icow.client.Client for each call)

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
        return await self._run(
            self._submit_plan(model, inputs, version, outputs, priority, deadline_s, result_ttl_s, job_id, durable)
        )

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
        many = self._many_plan(
            _core.Target(model, version, priority, durable), batch, outputs, deadline_s, result_ttl_s, chunk
        )
        return await self._run(many)

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
        plan = bulk.submitting(self, bulk.AsyncBulk, target, inputs, samples_per_job, outputs, result_ttl_s)
        return await self._run(plan)

    async def bulk(self, bulk_id: str) -> bulk.AsyncBulk:
        """Re-attach to a bulk submission by id (from any process)."""
        return await self._run(bulk.attaching(self, bulk.AsyncBulk, bulk_id), "reading a bulk", self._deadline())

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
        return await self._run(self._infer_plan(model, inputs, version, outputs, timeout_s, priority))

    # -- results

    def job(self, job_id: str, cancel_token: str | None = None) -> AsyncJob:
        """Re-attach to a job by id (see :meth:`icow.client.Client.job`)."""
        return AsyncJob.attach(self, job_id, cancel_token)

    async def as_completed(self, jobs: Iterable[AsyncJob], timeout_s: float | None = None) -> AsyncIterator[AsyncJob]:
        """Yield jobs as they finish (``async for``); JobTimeout at ``timeout_s``."""
        deadline = _core.deadline_of(_core.check_timeout(timeout_s))
        run = _ops.Run(_wait.completed(jobs, deadline, timeout_s))
        async for job in self._events(run, "waiting for results", deadline):
            yield job

    # -- models

    async def models(self) -> dict[str, list[int]]:
        """Every published model and its versions."""
        return await self._run(_models.listing(), "listing models", self._deadline())

    async def model(self, name: str, version: int | None = None) -> ModelInfo:
        """A model's inputs and outputs (latest version unless ``version`` is given)."""
        return await self._run(_models.reading(name, version), "reading model metadata", self._deadline())

    # -- I/O: carrying out plans (see icow.client.Client)

    async def _run(self, steps: _ops.Steps, what: str = "", deadline: float | None = None) -> Any:
        run = _ops.Run(steps)
        async for _ in self._events(run, what, deadline):
            pass
        return run.result

    async def _events(self, run: _ops.Run, what: str, deadline: float | None) -> AsyncIterator[Any]:
        session = AsyncPubSub(self, what, deadline)
        try:
            for op in run:
                if isinstance(op, _ops.Ready):
                    for job in op.jobs:
                        yield job
                    continue
                try:
                    run.reply = await self._do(op, what, deadline, session)
                except Exception as exc:
                    run.error = exc
        finally:
            await session.close()

    async def _do(self, op: Any, what: str, deadline: float | None, session: AsyncPubSub) -> Any:
        if isinstance(op, _ops.ReadReplies):
            return await self._router.wait(op.wanted, op.bells, op.slice_s)
        if isinstance(op, _ops.Subscribe):
            return await session.subscribe(op.channels)
        if isinstance(op, _ops.Listen):
            return await session.listen(op.slice_s)
        if isinstance(op, _ops.Within):
            return await self._run(op.steps, op.what, op.deadline)
        if isinstance(op, _ops.QueueJobs):
            return await (self._coalesced(op) if op.coalesce else self._queue(op))
        async with self._io(what, deadline):
            return await self._command(op)

    async def _command(self, op: Any) -> Any:
        r = self._r
        if isinstance(op, _ops.Command):
            return await getattr(r, op.name)(*op.args, **op.kwargs)
        if isinstance(op, _ops.ReadKeys):
            return await r.mget(op.keys)
        if isinstance(op, _ops.Call):
            return await functions.call_async(r, op.name, op.keys, op.args)
        if isinstance(op, _ops.Pipeline):
            return await _ops.fill(r.pipeline(transaction=False), op).execute(raise_on_error=not op.errors_as_values)
        async with r.client() as alone:  # CallAlone: one connection, so WAIT counts the FCALL's writes
            reply = await functions.reply_of_async(alone, op.reply, op.name, op.keys, op.args)
            return reply, (await connection.wait_replicas(alone, 1, op.wait_ms) if op.wait_ms else 0)

    @asynccontextmanager
    async def _io(self, what: str, deadline: float | None, blocking_s: float = 0.0) -> AsyncIterator[None]:
        """Bound the Redis commands inside by the call's deadline, and surface every Redis
        failure as an ICOW error. ClientClosed after ``close()``."""
        self._check_open()
        with _core.surfacing(what):
            async with asyncio.timeout(_core.io_limit(deadline, blocking_s, self.options.timeout_s)):
                yield

    async def _queue(self, op: _ops.QueueJobs) -> Any:
        return await self._run(_core.queue(op.target, op.jobs, self.options, op.deadline), op.what, op.deadline)

    async def _coalesced(self, op: _ops.QueueJobs) -> tuple[int, int, int]:
        """Single jobs of the same target submitted by concurrent coroutines in the same
        event-loop turn share one ``icow_submit`` call, in submission order."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int, int]] = loop.create_future()
        self._coalesce.setdefault(op.target, []).append((op, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._coalesce = self._coalesce, {}
        for target, items in pending.items():
            deadlines = [op.deadline for op, _ in items if op.deadline is not None]
            jobs = [job for op, _ in items for job in op.jobs]
            try:
                outcome = await self._queue(_ops.QueueJobs(target, jobs, min(deadlines) if deadlines else None))
            except Exception as exc:
                for op, fut in items:
                    if not fut.done():
                        fut.set_exception(_core.not_queued_with(exc, op.jobs[0], target))
                continue
            for i, (_, fut) in enumerate(items):
                if not fut.done():
                    fut.set_result(_core.share(outcome, i))

    async def _blpop(self, read_keys: list[str], timeout: float) -> Any:
        async with self._io("waiting for a result", None, blocking_s=timeout):
            popped = await self._r.blpop(read_keys, timeout=timeout)
        return None if popped is None else popped[1]

    async def _drain(self) -> list[Any]:
        async with self._io("waiting for a result", None):
            return list(await self._r.lpop(self.reply_key, _core.DRAIN_MAX) or [])
