"""The synchronous client: a thin shell that carries out the plans of the sans-I/O core
(icow.client._core, icow.client._wait) with redis-py, doing their Redis I/O and nothing else.
Thread-safe: threads share one reply list through icow.client._reader_sync.Router."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.backoff
import redis.exceptions
import redis.retry

from icow import connection, functions
from icow.client import _core, _models, _ops, _wait, bulk
from icow.client._base import ClientBase
from icow.client._bounded import LIMIT, bound_pool
from icow.client._core import ModelInfo, Outputs
from icow.client._job import Job
from icow.client._reader_sync import PubSub, Router
from icow.errors import BrokerUnavailable


class Client(ClientBase):
    """Submit jobs to an ICOW fleet and read their results. Thread-safe.

    ``Client("redis://host:6379/0")``; ``Client.from_env()`` reads ``ICOW_REDIS_URL`` and the
    other ``ICOW_*`` settings. ``timeout_s`` bounds every call that takes no timeout of its own
    (submit, status, models, ...); no call outlives its timeout by more than 1 s
    (``icow.client._core.MARGIN_S``), whatever state Redis is in.
    """

    _Job = Job

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any):
        super().__init__(url, **options)
        retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        self._r: redis.Redis = connection.connect(url, retry=retry, **self.options.redis_kwargs())
        bound_pool(self._r.connection_pool)
        self._router = Router(self._box, self._blpop, self._drain)

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
        plan = self._submit_plan(model, inputs, version, outputs, priority, deadline_s, result_ttl_s, job_id, durable)
        return self._run(plan)

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
        return self._run(self._many_plan(target, batch, outputs, deadline_s, result_ttl_s, chunk))

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
        return self._run(bulk.submitting(self, bulk.Bulk, target, inputs, samples_per_job, outputs, result_ttl_s))

    def bulk(self, bulk_id: str) -> bulk.Bulk:
        """Re-attach to a bulk submission by id (from any process)."""
        return self._run(bulk.attaching(self, bulk.Bulk, bulk_id), "reading a bulk", self._deadline())

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
        return self._run(self._infer_plan(model, inputs, version, outputs, timeout_s, priority))

    # -- results

    def job(self, job_id: str, cancel_token: str | None = None) -> Job:
        """Re-attach to a job by id (from any process); with its ``cancel_token`` it can be
        cancelled from here too."""
        return Job.attach(self, job_id, cancel_token)

    def as_completed(self, jobs: Iterable[Job], timeout_s: float | None = None) -> Iterator[Job]:
        """Yield jobs as they finish (their ``result()`` then returns at once); JobTimeout
        for those still running at ``timeout_s``."""
        deadline = _core.deadline_of(_core.check_timeout(timeout_s))
        yield from self._events(_ops.Run(_wait.completed(jobs, deadline, timeout_s)), "waiting for results", deadline)

    # -- models

    def models(self) -> dict[str, list[int]]:
        """Every published model and its versions."""
        return self._run(_models.listing(), "listing models", self._deadline())

    def model(self, name: str, version: int | None = None) -> ModelInfo:
        """A model's inputs and outputs (latest version unless ``version`` is given)."""
        return self._run(_models.reading(name, version), "reading model metadata", self._deadline())

    # -- I/O: carrying out plans

    def _run(self, steps: _ops.Steps, what: str = "", deadline: float | None = None) -> Any:
        """Carry out a plan's operations; return its result."""
        run = _ops.Run(steps)
        for _ in self._events(run, what, deadline):
            pass
        return run.result

    def _events(self, run: _ops.Run, what: str, deadline: float | None) -> Iterator[Any]:
        """Carry out ``run``, yielding the jobs its :class:`~icow.client._ops.Ready` events hand out."""
        session = PubSub(self, what, deadline)
        try:
            for op in run:
                if isinstance(op, _ops.Ready):
                    yield from op.jobs
                    continue
                try:
                    run.reply = self._do(op, what, deadline, session)
                except Exception as exc:
                    run.error = exc
        finally:
            session.close()

    def _do(self, op: Any, what: str, deadline: float | None, session: PubSub) -> Any:
        if isinstance(op, _ops.ReadReplies):
            return self._router.wait(op.wanted, op.bells, op.slice_s, op.deadline)
        if isinstance(op, _ops.Subscribe):
            return session.subscribe(op.channels)
        if isinstance(op, _ops.Listen):
            return session.listen(op.slice_s)
        if isinstance(op, _ops.Within):
            return self._run(op.steps, op.what, op.deadline)
        if isinstance(op, _ops.QueueJobs):
            return self._run(_core.queue(op.target, op.jobs, self.options, op.deadline), op.what, op.deadline)
        with self._io(what, deadline):
            return self._command(op)

    def _command(self, op: Any) -> Any:
        r = self._r
        if isinstance(op, _ops.Command):
            return getattr(r, op.name)(*op.args, **op.kwargs)
        if isinstance(op, _ops.ReadKeys):
            return r.mget(op.keys)
        if isinstance(op, _ops.Call):
            return functions.call(r, op.name, op.keys, op.args)
        if isinstance(op, _ops.Pipeline):
            return _ops.fill(r.pipeline(transaction=False), op).execute(raise_on_error=not op.errors_as_values)
        with r.client() as alone:  # CallAlone: one connection, so WAIT counts the FCALL's writes
            reply = functions.reply_of(alone, op.reply, op.name, op.keys, op.args)
            return reply, (connection.wait_replicas(alone, 1, op.wait_ms) if op.wait_ms else 0)

    @contextmanager
    def _io(self, what: str, deadline: float | None, blocking_s: float = 0.0) -> Iterator[None]:
        """Bound every Redis command inside by the call's deadline, and surface every Redis
        failure as an ICOW error. ClientClosed after ``close()``."""
        self._check_open()
        token = LIMIT.set(time.monotonic() + _core.io_limit(deadline, blocking_s, self.options.timeout_s))
        try:
            with _core.surfacing(what):
                yield
        finally:
            LIMIT.reset(token)

    def _blpop(self, read_keys: list[str], timeout: float, deadline: float | None) -> Any:
        timeout = max(timeout, 0.01)  # BLPOP 0 would block forever
        with self._io("waiting for a result", deadline, blocking_s=timeout):
            popped = self._r.blpop(read_keys, timeout=timeout)
        return None if popped is None else popped[1]

    def _drain(self, deadline: float | None) -> list[Any]:
        with self._io("waiting for a result", deadline):
            return list(self._r.lpop(self.reply_key, _core.DRAIN_MAX) or [])
