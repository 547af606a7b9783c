"""The synchronous client: a thin I/O shell over icow.client._core and redis.Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.exceptions

from icow import keys, protocol, settings
from icow.client import _core, bulk
from icow.client._core import JobStatus, ModelInfo, Outputs
from icow.errors import BrokerUnavailable, InvalidInput, JobNotFound, JobTimeout, ModelNotFound

# A blocking read never waits longer than this in one call, so a silently dead connection
# is noticed and the result key (the source of truth) is re-read now and then.
_SLICE_S = 2.0
_STASH_MAX = 10_000


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis is unavailable while {what}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        if not _core.is_acl_denial(exc):
            raise
        raise BrokerUnavailable(f"Redis refused {what} (check the ACL user's permissions): {exc}") from exc


class Job:
    """A handle on one job. Any process can build one from the id (``client.job(id)``)."""

    def __init__(self, client: Client, job_id: str, model: str | None = None, *, via_reply: bool = False):
        self._client = client
        self.id = job_id
        self.model = model
        self._via_reply = via_reply
        self._meta: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, model={self.model!r})"

    def status(self) -> JobStatus:
        """``queued``, ``running``, ``succeeded`` or ``failed``; JobNotFound if unknown/expired."""
        if self._meta is not None:
            return _core.status_of(self._meta, None, self.id)
        meta, state = self._client._read_state(self.id)
        if meta is not None:
            self._meta = meta
        return _core.status_of(meta, state, self.id)

    def done(self) -> bool:
        return self.status() in ("succeeded", "failed")

    def cancel(self) -> bool:
        """Cancel the job if it has not started: it is answered ``JobCancelled`` at once.
        False if it is already running (its result will stand) or finished."""
        return self._client._cancel(self.id, self._client._replies.key if self._via_reply else None)

    def result(self, timeout_s: float | None = None) -> Outputs:
        """Block (on Redis, no polling) until the job finishes; return outputs by name.

        Raises JobTimeout after ``timeout_s`` (None waits forever), the job's RemoteError
        subclass if it failed, JobNotFound if the job is unknown or expired.
        """
        _core.check_timeout(timeout_s)
        if self._meta is None:
            self._meta = self._client._wait_meta(self.id, timeout_s, via_reply=self._via_reply)
        return self._client._decode(self._meta)


class _ReplyRouter:
    """Waits on the client's reply list. One waiting thread reads (BLPOP) at a time and
    hands every result it pops to the thread that waits for it."""

    def __init__(self, r: redis.Redis, key: str):
        self._r = r
        self.key = key
        self._cond = threading.Condition()
        self._stash: dict[str, dict[str, Any]] = {}
        self._reading = False

    def take_any(self, job_ids: set[str] | dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Every stashed result among ``job_ids`` (one lock, however many ids)."""
        with self._cond:
            if len(self._stash) <= len(job_ids):
                hits = [i for i in self._stash if i in job_ids]
            else:
                hits = [i for i in job_ids if i in self._stash]
            return {i: self._stash.pop(i) for i in hits}

    def wait(self, job_id: str, deadline: float | None) -> dict[str, Any] | None:
        """The job's result meta, or None when the deadline or one read slice passes."""
        while True:
            with self._cond:
                while True:
                    if job_id in self._stash:
                        return self._stash.pop(job_id)
                    left = _core.remaining(deadline)
                    if left is not None and left <= 0:
                        return None
                    if not self._reading:
                        self._reading = True
                        break
                    self._cond.wait(_SLICE_S if left is None else min(left, _SLICE_S))
            try:
                slice_s = _SLICE_S if left is None else min(left, _SLICE_S)
                popped = self._r.blpop([self.key], timeout=max(slice_s, 0.001))
            finally:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()
            if popped is None:
                return None
            meta = protocol.parse_meta(popped[1])
            got = str(meta.get("task_id"))
            if got == job_id:
                return meta
            # Not ours: more results are probably waiting; take them all in one round trip.
            more = self._r.lpop(self.key, 1000) or []
            with self._cond:
                self._stash[got] = meta
                for raw in more:
                    m = protocol.parse_meta(raw)
                    self._stash[str(m.get("task_id"))] = m
                while len(self._stash) > _STASH_MAX:  # results nobody waits for stay in their keys
                    self._stash.pop(next(iter(self._stash)))
                self._cond.notify_all()


class Client:
    """Submit jobs to an ICOW fleet and read their results. Thread-safe.

    ``Client("redis://host:6379/0")``; ``Client.from_env()`` reads ``ICOW_REDIS_URL``.
    """

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
            "health_check_interval": 30,
        }
        options.update(redis_options)
        self._r: redis.Redis = redis.Redis.from_url(url, **options)
        self.client_id = _core.new_client_id()
        self._replies = _ReplyRouter(self._r, keys.reply(self.client_id))
        self._cancel_script = self._r.register_script(_core.CANCEL_SCRIPT)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        s = settings.from_env()
        if not s.redis_url:
            raise InvalidInput("ICOW_REDIS_URL is not set")
        kwargs.setdefault("result_ttl_s", s.result_ttl_s)
        for option, path in settings.tls_files(s.redis_url, s).items():  # ICOW_REDIS_CA, ...
            kwargs.setdefault(option, path)
        kwargs.setdefault("inline_max_bytes", s.inline_max_bytes)
        kwargs.setdefault("max_tensor_bytes", s.max_tensor_bytes)
        return cls(s.redis_url, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._r.close()

    # -- submitting

    def _prepare(self, model: str, inputs: Mapping[str, Any], **kw: Any) -> _core.PreparedJob:
        kw.setdefault("result_ttl_s", self.result_ttl_s)
        return _core.prepare(
            model,
            inputs,
            reply_to=self._replies.key,
            inline_max_bytes=self.inline_max_bytes,
            max_tensor_bytes=self.max_tensor_bytes,
            **kw,
        )

    def _check_published(self, model: str) -> None:
        keys.check_model_name(model)
        if not self.require_published or model in self._published:
            return
        with _redis_errors("checking the model is published"):
            names = self._r.smembers(keys.MODELS)
        self._published = {_core.text(n) for n in names}
        if model not in self._published:
            raise ModelNotFound(f"no worker has published model {model!r}; published: {sorted(self._published)}")

    def _queue(self, model: str, jobs: Sequence[_core.PreparedJob]) -> tuple[int, int, int]:
        """One round trip: SET the claim-checked blobs, then the submit script checks the
        model's backlog limit and queues the jobs. Returns (queued, depth, limit)."""
        script_keys, args = _core.submit_call(model, jobs)
        pipe = self._r.pipeline(transaction=False)
        for job in jobs:
            for key, data in job.blobs.items():
                pipe.set(key, data, ex=job.ttl_s)
        pipe.evalsha(_core.SUBMIT_SHA, len(script_keys), *script_keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        reply = replies[-1]
        if isinstance(reply, redis.exceptions.NoScriptError):  # first use, or Redis restarted
            self._r.script_load(_core.SUBMIT_SCRIPT)
            reply = self._r.evalsha(_core.SUBMIT_SHA, len(script_keys), *script_keys, *args)
        if isinstance(reply, Exception):
            raise reply
        return _core.submit_reply(reply)

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
    ) -> Job:
        """Queue one job and return its handle at once (fire-and-forget).

        Raises QueueFull (nothing queued) when the model's backlog is at its limit."""
        self._check_published(model)
        job = self._prepare(
            model,
            inputs,
            version=version,
            outputs=outputs,
            priority=priority,
            deadline_s=deadline_s,
            job_id=job_id,
            **({} if result_ttl_s is None else {"result_ttl_s": result_ttl_s}),
        )
        with _redis_errors("submitting a job"):
            queued, depth, limit = self._queue(model, [job])
        if not queued:
            raise _core.queue_full(model, depth, limit, [])
        return Job(self, job.job_id, model, via_reply=True)

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
        chunk: int = 500,
    ) -> list[Job]:
        """Queue many jobs in few round trips (one submit script call per ``chunk`` jobs).

        When the model's backlog limit is reached, raises QueueFull whose ``queued`` lists the
        handles of the jobs queued so far (a prefix of ``batch``); the rest were not queued.
        """
        extra = {} if result_ttl_s is None else {"result_ttl_s": result_ttl_s}
        jobs: list[Job] = []
        pending: list[_core.PreparedJob] = []

        def flush() -> None:
            with _redis_errors("submitting jobs"):
                queued, depth, limit = self._queue(model, pending)
            jobs.extend(Job(self, job.job_id, model, via_reply=True) for job in pending[:queued])
            if queued < len(pending):
                raise _core.queue_full(model, depth, limit, jobs)
            pending.clear()

        self._check_published(model)
        for inputs in batch:
            job = self._prepare(
                model,
                inputs,
                version=version,
                outputs=outputs,
                priority=priority,
                deadline_s=deadline_s,
                **extra,
            )
            pending.append(job)
            if len(pending) >= chunk:
                flush()
        if pending:
            flush()
        return jobs

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
        ``samples_per_job`` samples, at batch priority, in few round trips. Returns a
        :class:`Bulk` with progress; any process re-attaches with ``client.bulk(id)``."""
        chunks = bulk.split(inputs, samples_per_job)
        jobs = self.submit_many(
            model, chunks, version=version, outputs=outputs, priority=priority, result_ttl_s=result_ttl_s
        )
        bulk_id = protocol.new_job_id()
        n = sum(next(iter(c.values())).shape[0] for c in chunks)
        ttl = result_ttl_s or self.result_ttl_s
        with _redis_errors("recording a bulk"):
            self._r.set(bulk.key(bulk_id), bulk.record(bulk_id, model, [j.id for j in jobs], n), ex=ttl)
        return bulk.Bulk(self, bulk_id, model, jobs, n)

    def bulk(self, bulk_id: str) -> bulk.Bulk:
        """Re-attach to a bulk submission by id (from any process)."""
        keys.check_job_id(bulk_id)
        with _redis_errors("reading a bulk"):
            raw = self._r.get(bulk.key(bulk_id))
        model, job_ids, n = bulk.parse_record(bulk_id, raw)
        return bulk.Bulk(self, bulk_id, model, [Job(self, i, model) for i in job_ids], n)

    def _count_finished(self, job_ids: list[str]) -> int:
        done = 0
        with _redis_errors("counting finished jobs"):
            for i in range(0, len(job_ids), 10_000):
                done += int(self._r.exists(*[keys.result(j) for j in job_ids[i : i + 10_000]]))
        return done

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
        """Submit and wait: outputs by name, or the job's error."""
        _core.check_timeout(timeout_s)
        deadline_s = timeout_s if timeout_s else None
        return self.submit(
            model,
            inputs,
            version=version,
            outputs=outputs,
            priority=priority,
            deadline_s=deadline_s,
        ).result(timeout_s)

    # -- results

    def job(self, job_id: str) -> Job:
        """Re-attach to a job by id (from any process)."""
        return Job(self, keys.check_job_id(job_id))

    def as_completed(self, jobs: Iterable[Job], timeout_s: float | None = None) -> Iterator[Job]:
        """Yield jobs as their results arrive (their ``result()`` then returns at once)."""
        deadline = _core.deadline_of(_core.check_timeout(timeout_s))
        waiting = {j.id: j for j in jobs}
        reattached = [j for j in waiting.values() if not j._via_reply]
        for j in reattached:  # no reply list for these: wait on each in turn
            j._meta = self._wait_meta(j.id, _core.remaining(deadline), via_reply=False)
            del waiting[j.id]
            yield j
        while waiting:
            for job_id, stashed in self._replies.take_any(waiting).items():
                job = waiting.pop(job_id)
                job._meta = stashed
                yield job
            if not waiting:
                return
            left = _core.remaining(deadline)
            if left is not None and left <= 0:
                raise JobTimeout(f"{len(waiting)} jobs not finished within {timeout_s} s")
            probe = next(iter(waiting))
            with _redis_errors("waiting for results"):
                meta = self._replies.wait(probe, deadline)
                if meta is None:  # slice passed: check the keys, the source of truth
                    for job_id, data in zip(list(waiting), self._r.mget([keys.result(i) for i in waiting])):
                        if data is not None:
                            job = waiting.pop(job_id)
                            job._meta = protocol.parse_meta(data)
                            yield job
                    continue
            job = waiting.pop(probe)
            job._meta = meta
            yield job

    def cancel(self, job_id: str) -> bool:
        """Cancel a job by id (see :meth:`Job.cancel`)."""
        return self._cancel(keys.check_job_id(job_id), None)

    def _cancel(self, job_id: str, reply_to: str | None) -> bool:
        script_keys, args = _core.cancel_call(job_id, reply_to)
        with _redis_errors("cancelling a job"):
            code = self._cancel_script(keys=script_keys, args=args)
        return _core.cancel_outcome(job_id, code)

    def _read_state(self, job_id: str) -> tuple[dict[str, Any] | None, Any]:
        with _redis_errors("reading a job's state"):
            data, state = self._r.mget([keys.result(job_id), keys.state(job_id)])
        return (None if data is None else protocol.parse_meta(data)), state

    def _wait_meta(self, job_id: str, timeout_s: float | None, *, via_reply: bool) -> dict[str, Any]:
        deadline = _core.deadline_of(timeout_s)
        with _redis_errors("waiting for a result"):
            if via_reply:
                while True:
                    meta = self._replies.wait(job_id, deadline)
                    if meta is not None:
                        return meta
                    got = self._check_key(job_id)
                    if got is not None:
                        return got
                    if _core.remaining(deadline) == 0:
                        raise JobTimeout(f"job {job_id} not finished within {timeout_s} s")
            return self._wait_pubsub(job_id, deadline, timeout_s)

    def _check_key(self, job_id: str) -> dict[str, Any] | None:
        meta, state = self._read_state(job_id)
        if meta is None and state is None:
            raise JobNotFound(f"job {job_id} is unknown or its result has expired")
        return meta

    def _wait_pubsub(self, job_id: str, deadline: float | None, timeout_s: float | None) -> dict[str, Any]:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.result_channel(job_id))
            # Wait for the subscription to be confirmed, then read the key: a result
            # published before we subscribed is already in the key.
            pubsub.get_message(timeout=1.0, ignore_subscribe_messages=False)
            while True:
                meta = self._check_key(job_id)
                if meta is not None and meta.get("status") in protocol.READY_STATES:
                    return meta
                left = _core.remaining(deadline)
                if left == 0:
                    raise JobTimeout(f"job {job_id} not finished within {timeout_s} s")
                msg = pubsub.get_message(timeout=_SLICE_S if left is None else min(left, _SLICE_S))
                if msg is not None and msg.get("type") == "message":
                    meta = protocol.parse_meta(msg["data"])
                    if meta.get("status") in protocol.READY_STATES:
                        return meta
        finally:
            pubsub.close()

    def _decode(self, meta: Mapping[str, Any]) -> Outputs:
        refs = _core.output_refs(meta)
        blobs: dict[str, Any] = {}
        if refs:
            with _redis_errors("reading large outputs"):
                blobs = dict(zip(refs, self._r.mget(refs)))
        return _core.decode_result(meta, blobs)

    # -- models

    def models(self) -> dict[str, list[int]]:
        """Every published model and its versions."""
        with _redis_errors("listing models"):
            names = sorted(_core.text(n) for n in self._r.smembers(keys.MODELS))
            pipe = self._r.pipeline(transaction=False)
            for n in names:
                pipe.hkeys(keys.model(n))
            versions = pipe.execute()
        return {n: sorted(int(v) for v in vs) for n, vs in zip(names, versions) if vs}

    def model(self, name: str, version: int | None = None) -> ModelInfo:
        """A model's inputs and outputs (latest version unless ``version`` is given)."""
        keys.check_model_name(name)
        with _redis_errors("reading model metadata"):
            raw = self._r.hgetall(keys.model(name))
        return _core.model_info(name, raw, version)

    def ping(self) -> None:
        with _redis_errors("pinging"):
            self._r.ping()
