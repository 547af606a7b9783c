"""The asyncio client: the same surface as icow.client.sync over redis.asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from icow import keys, protocol, settings
from icow.client import _core
from icow.client._core import JobStatus, ModelInfo, Outputs
from icow.errors import BrokerUnavailable, InvalidInput, JobNotFound, JobTimeout, ModelNotFound

_SLICE_S = 2.0
_STASH_MAX = 10_000


@asynccontextmanager
async def _redis_errors(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"Redis is unavailable while {what}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        if not _core.is_acl_denial(exc):
            raise
        raise BrokerUnavailable(f"Redis refused {what} (check the ACL user's permissions): {exc}") from exc


class AsyncJob:
    """A handle on one job (asyncio). ``await job.result(timeout_s)``."""

    def __init__(self, client: AsyncClient, job_id: str, model: str | None = None, *, via_reply: bool = False):
        self._client = client
        self.id = job_id
        self.model = model
        self._via_reply = via_reply
        self._meta: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, model={self.model!r})"

    async def status(self) -> JobStatus:
        if self._meta is not None:
            return _core.status_of(self._meta, None, self.id)
        meta, state = await self._client._read_state(self.id)
        if meta is not None:
            self._meta = meta
        return _core.status_of(meta, state, self.id)

    async def done(self) -> bool:
        return await self.status() in ("succeeded", "failed")

    async def cancel(self) -> bool:
        """Cancel the job if it has not started (see icow.client.Job.cancel)."""
        return await self._client._cancel(self.id, self._client._replies.key if self._via_reply else None)

    async def result(self, timeout_s: float | None = None) -> Outputs:
        _core.check_timeout(timeout_s)
        if self._meta is None:
            self._meta = await self._client._wait_meta(self.id, timeout_s, via_reply=self._via_reply)
        return await self._client._decode(self._meta)


class _ReplyReader:
    """One reader task per client pops the reply list and resolves the waiting futures."""

    def __init__(self, r: aioredis.Redis, key: str):
        self._r = r
        self.key = key
        self._stash: dict[str, dict[str, Any]] = {}
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, job_id: str, deadline: float | None) -> dict[str, Any] | None:
        if job_id in self._stash:
            return self._stash.pop(job_id)
        left = _core.remaining(deadline)
        if left is not None and left <= 0:
            return None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._read())
        try:
            return await asyncio.wait_for(fut, _SLICE_S if left is None else min(left, _SLICE_S))
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(job_id, [])
            if fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[job_id]

    async def _read(self) -> None:
        try:
            while self._waiters:
                popped = await self._r.blpop([self.key], timeout=_SLICE_S)
                if popped is None:
                    continue
                raws = [popped[1]]
                if len(self._waiters) > 1:  # more results are probably waiting: take them all
                    more: Any = await self._r.lpop(self.key, 1000)
                    raws += list(more or [])
                for raw in raws:
                    meta = protocol.parse_meta(raw)
                    job_id = str(meta.get("task_id"))
                    futs = self._waiters.pop(job_id, None)
                    if futs:
                        for f in futs:
                            if not f.done():
                                f.set_result(meta)
                    else:
                        self._stash[job_id] = meta
                        while len(self._stash) > _STASH_MAX:
                            self._stash.pop(next(iter(self._stash)))
        except Exception as exc:  # wake every waiter with the error
            for futs in self._waiters.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(exc)
            self._waiters.clear()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass


class AsyncClient:
    """asyncio twin of :class:`icow.client.Client`."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        result_ttl_s: int = keys.DEFAULT_RESULT_TTL_S,
        connect_timeout_s: float = 2.0,
        inline_max_bytes: int = protocol.DEFAULT_INLINE_MAX_BYTES,
        max_tensor_bytes: int = settings.Settings.max_tensor_bytes,
        require_published: bool = True,
        **redis_options: Any,
    ):
        self.url = url
        # Refuse jobs for models no worker has published (they would wait forever);
        # turn off to queue jobs before the fleet is up.
        self.require_published = require_published
        self._published: set[str] = set()
        self.result_ttl_s = result_ttl_s
        self.inline_max_bytes = inline_max_bytes
        self.max_tensor_bytes = max_tensor_bytes
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": _SLICE_S + 10.0,
            "socket_keepalive": True,
        }
        options.update(redis_options)
        self._r: aioredis.Redis = aioredis.Redis.from_url(url, **options)
        self.client_id = _core.new_client_id()
        self._replies = _ReplyReader(self._r, keys.reply(self.client_id))
        self._cancel_script = self._r.register_script(_core.CANCEL_SCRIPT)
        self._coalesce: dict[str, list[tuple[_core.PreparedJob, asyncio.Future[None]]]] = {}
        self._flush_scheduled = False
        self._flushes: set[asyncio.Future[None]] = set()

    @classmethod
    def from_env(cls, **kwargs: Any) -> AsyncClient:
        s = settings.from_env()
        if not s.redis_url:
            raise InvalidInput("ICOW_REDIS_URL is not set")
        kwargs.setdefault("result_ttl_s", s.result_ttl_s)
        for option, path in settings.tls_files(s.redis_url, s).items():  # ICOW_REDIS_CA, ...
            kwargs.setdefault(option, path)
        return cls(s.redis_url, **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._replies.close()
        await self._r.aclose()

    def _prepare(self, model: str, inputs: Mapping[str, Any], **kw: Any) -> _core.PreparedJob:
        if kw.get("result_ttl_s") is None:
            kw["result_ttl_s"] = self.result_ttl_s
        return _core.prepare(
            model,
            inputs,
            reply_to=self._replies.key,
            inline_max_bytes=self.inline_max_bytes,
            max_tensor_bytes=self.max_tensor_bytes,
            **kw,
        )

    async def _check_published(self, model: str) -> None:
        keys.check_model_name(model)
        if not self.require_published or model in self._published:
            return
        async with _redis_errors("checking the model is published"):
            names = await self._r.smembers(keys.MODELS)
        self._published = {_core.text(n) for n in names}
        if model not in self._published:
            raise ModelNotFound(f"no worker has published model {model!r}; published: {sorted(self._published)}")

    async def _queue(self, model: str, jobs: Sequence[_core.PreparedJob]) -> tuple[int, int, int]:
        """One round trip: blobs, then the submit script (see Client._queue)."""
        script_keys, args = _core.submit_call(model, jobs)
        pipe = self._r.pipeline(transaction=False)
        for job in jobs:
            for key, data in job.blobs.items():
                pipe.set(key, data, ex=job.ttl_s)
        pipe.evalsha(_core.SUBMIT_SHA, len(script_keys), *script_keys, *args)
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        reply = replies[-1]
        if isinstance(reply, redis.exceptions.NoScriptError):  # first use, or Redis restarted
            await self._r.script_load(_core.SUBMIT_SCRIPT)
            reply = await self._r.evalsha(_core.SUBMIT_SHA, len(script_keys), *script_keys, *args)
        if isinstance(reply, Exception):
            raise reply
        return _core.submit_reply(reply)

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
    ) -> AsyncJob:
        await self._check_published(model)
        job = self._prepare(
            model,
            inputs,
            version=version,
            outputs=outputs,
            priority=priority,
            deadline_s=deadline_s,
            job_id=job_id,
            result_ttl_s=result_ttl_s,
        )
        async with _redis_errors("submitting a job"):
            await self._queue_coalesced(model, job)
        return AsyncJob(self, job.job_id, model, via_reply=True)

    async def _queue_coalesced(self, model: str, job: _core.PreparedJob) -> None:
        """Queue one job; jobs submitted by concurrent coroutines in the same event-loop turn
        share one round trip (one submit script call per model), in submission order."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._coalesce.setdefault(model, []).append((job, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: self._flushes.add(asyncio.ensure_future(self._flush())))
        await fut

    async def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._coalesce = self._coalesce, {}
        for model, items in pending.items():
            try:
                queued, depth, limit = await self._queue(model, [job for job, _ in items])
            except BaseException as exc:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for i, (_, fut) in enumerate(items):
                if fut.done():
                    continue
                if i < queued:
                    fut.set_result(None)
                else:
                    fut.set_exception(_core.queue_full(model, depth, limit, []))
        self._flushes.discard(asyncio.current_task())

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
        chunk: int = 500,
    ) -> list[AsyncJob]:
        """Queue many jobs in few round trips; QueueFull as in Client.submit_many."""
        jobs: list[AsyncJob] = []
        pending: list[_core.PreparedJob] = []

        async def flush() -> None:
            async with _redis_errors("submitting jobs"):
                queued, depth, limit = await self._queue(model, pending)
            jobs.extend(AsyncJob(self, job.job_id, model, via_reply=True) for job in pending[:queued])
            if queued < len(pending):
                raise _core.queue_full(model, depth, limit, jobs)
            pending.clear()

        await self._check_published(model)
        for inputs in batch:
            job = self._prepare(
                model,
                inputs,
                version=version,
                outputs=outputs,
                priority=priority,
                deadline_s=deadline_s,
                result_ttl_s=result_ttl_s,
            )
            pending.append(job)
            if len(pending) >= chunk:
                await flush()
        if pending:
            await flush()
        return jobs

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
        _core.check_timeout(timeout_s)
        job = await self.submit(
            model,
            inputs,
            version=version,
            outputs=outputs,
            priority=priority,
            deadline_s=timeout_s if timeout_s else None,
        )
        return await job.result(timeout_s)

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, keys.check_job_id(job_id))

    async def as_completed(self, jobs: Iterable[AsyncJob], timeout_s: float | None = None) -> AsyncIterator[AsyncJob]:
        """Yield jobs as their results arrive."""
        deadline = _core.deadline_of(_core.check_timeout(timeout_s))
        pending = {asyncio.ensure_future(self._settle(j, deadline, timeout_s)): j for j in jobs}
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    fut.result()
                    yield job
        finally:
            for fut in pending:
                fut.cancel()

    async def _settle(self, job: AsyncJob, deadline: float | None, timeout_s: float | None) -> None:
        if job._meta is None:
            left = _core.remaining(deadline)
            job._meta = await self._wait_meta(job.id, left, via_reply=job._via_reply, shown_timeout=timeout_s)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job by id if it has not started."""
        return await self._cancel(keys.check_job_id(job_id), None)

    async def _cancel(self, job_id: str, reply_to: str | None) -> bool:
        script_keys, args = _core.cancel_call(job_id, reply_to)
        async with _redis_errors("cancelling a job"):
            code = await self._cancel_script(keys=script_keys, args=args)
        return _core.cancel_outcome(job_id, code)

    async def _read_state(self, job_id: str) -> tuple[dict[str, Any] | None, Any]:
        async with _redis_errors("reading a job's state"):
            data, state = await self._r.mget([keys.result(job_id), keys.state(job_id)])
        return (None if data is None else protocol.parse_meta(data)), state

    async def _check_key(self, job_id: str) -> dict[str, Any] | None:
        meta, state = await self._read_state(job_id)
        if meta is None and state is None:
            raise JobNotFound(f"job {job_id} is unknown or its result has expired")
        return meta

    async def _wait_meta(
        self,
        job_id: str,
        timeout_s: float | None,
        *,
        via_reply: bool,
        shown_timeout: float | None = None,
    ) -> dict[str, Any]:
        shown = timeout_s if shown_timeout is None else shown_timeout
        deadline = _core.deadline_of(timeout_s)
        async with _redis_errors("waiting for a result"):
            if via_reply:
                while True:
                    meta = await self._replies.wait(job_id, deadline)
                    if meta is not None:
                        return meta
                    got = await self._check_key(job_id)
                    if got is not None:
                        return got
                    if _core.remaining(deadline) == 0:
                        raise JobTimeout(f"job {job_id} not finished within {shown} s")
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.result_channel(job_id))
                await pubsub.get_message(timeout=1.0, ignore_subscribe_messages=False)
                while True:
                    meta = await self._check_key(job_id)
                    if meta is not None and meta.get("status") in protocol.READY_STATES:
                        return meta
                    left = _core.remaining(deadline)
                    if left == 0:
                        raise JobTimeout(f"job {job_id} not finished within {shown} s")
                    msg = await pubsub.get_message(timeout=_SLICE_S if left is None else min(left, _SLICE_S))
                    if msg is not None and msg.get("type") == "message":
                        meta = protocol.parse_meta(msg["data"])
                        if meta.get("status") in protocol.READY_STATES:
                            return meta
            finally:
                await pubsub.aclose()

    async def _decode(self, meta: Mapping[str, Any]) -> Outputs:
        refs = _core.output_refs(meta)
        blobs: dict[str, Any] = {}
        if refs:
            async with _redis_errors("reading large outputs"):
                blobs = dict(zip(refs, await self._r.mget(refs)))
        return _core.decode_result(meta, blobs)

    async def models(self) -> dict[str, list[int]]:
        async with _redis_errors("listing models"):
            names = sorted(_core.text(n) for n in await self._r.smembers(keys.MODELS))
            pipe = self._r.pipeline(transaction=False)
            for n in names:
                pipe.hkeys(keys.model(n))
            versions = await pipe.execute()
        return {n: sorted(int(v) for v in vs) for n, vs in zip(names, versions) if vs}

    async def model(self, name: str, version: int | None = None) -> ModelInfo:
        keys.check_model_name(name)
        async with _redis_errors("reading model metadata"):
            raw = await self._r.hgetall(keys.model(name))
        return _core.model_info(name, raw, version)

    async def ping(self) -> None:
        async with _redis_errors("pinging"):
            await self._r.ping()
