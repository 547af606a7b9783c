"""Job handles: ``Job`` (sync) and ``AsyncJob`` (asyncio), and what both know without I/O.

A handle holds its id, model, cancel token and, once seen, its outcome. Its calls are plans
(icow.client._ops) that its client carries out: ``status()`` reads the job's two keys,
``result()`` waits (icow.client._wait) and then reads large outputs, ``cancel()`` asks the
fleet. Any process makes one from an id: ``client.job(id)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from icow import keys
from icow.client import _wait
from icow.client._cancel import check_token
from icow.client._deadlines import deadline_of
from icow.client._info import JobInfo, info_of
from icow.client._ops import ReadKeys, Steps, Within, one
from icow.client._options import DEFAULT_CANCEL_TIMEOUT_S, check_timeout
from icow.client._results import JobStatus, Outputs, decode_result, output_refs, read_meta, status_of, status_of_meta
from icow.errors import IcowError
from icow.result import Result

if TYPE_CHECKING:
    from icow.client.aio import AsyncClient
    from icow.client.sync import Client


class JobBase:
    """What a job handle knows without asking Redis: its id, model, cancel token, and its
    outcome once seen. ``own``: this client submitted it, so its result comes to our reply list."""

    def __init__(
        self,
        client: Any,
        job_id: str,
        model: str | None = None,
        *,
        cancel_token: str | None = None,
        own: bool = False,
        ttl_s: int | None = None,
    ):
        self._client = client
        self.id = job_id
        self.model = model
        self.cancel_token = cancel_token
        self._own = own
        self._ttl_s = ttl_s  # the result TTL it was submitted with (a cancel passes it on), if known
        self._meta: Result | None = None
        self._error: IcowError | None = None

    @classmethod
    def attach(cls, client: Any, job_id: str, cancel_token: str | None) -> Any:
        """``client.job(id, cancel_token)``: a handle on a job by id, from any process."""
        keys.check_job_id(job_id)
        return cls(client, job_id, cancel_token=check_token(job_id, cancel_token))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, model={self.model!r})"

    def _settle(self, meta: Result | None = None, error: IcowError | None = None) -> None:
        self._meta, self._error = meta, error

    def _known_meta(self) -> Result | None:
        if self._error is not None:
            raise self._error
        return self._meta

    def info(self) -> JobInfo:
        """How the finished job ran: the version that ran, the worker, its timings (a frozen
        :class:`icow.client.JobInfo`). There once ``result()`` has returned (or raised the job's
        error), ``status()`` read it finished or ``as_completed`` yielded it; NoResultYet before.
        No Redis call."""
        return info_of(self.id, self._known_meta())

    # -- plans (their client carries them out)

    def _status_plan(self) -> Steps:
        meta = self._known_meta()
        if meta is not None:
            return status_of_meta(meta)
        read = one(ReadKeys([keys.result(self.id), keys.state(self.id)]))
        raw, state = yield Within(read, "reading a job's status", self._client._deadline())
        status = status_of(self.id, raw, state)
        if status in ("succeeded", "failed"):
            self._settle(read_meta(self.id, raw))
        return status

    def _result_plan(self, timeout_s: float | None) -> Steps:
        check_timeout(timeout_s)
        meta = self._known_meta()
        if meta is None:
            deadline = deadline_of(timeout_s)
            wait = (_wait.wait_own if self._own else _wait.wait_other)(self.id, deadline, timeout_s)
            meta = yield Within(wait, "waiting for a result", deadline)
            self._settle(meta)
        refs = output_refs(meta)
        blobs: dict[str, Any] = {}
        if refs:
            read = one(ReadKeys(refs))
            blobs = dict(zip(refs, (yield Within(read, "reading large outputs", self._client._deadline()))))
        return decode_result(meta, blobs)

    def _cancel_plan(self, timeout_s: float) -> Steps:
        check_timeout(timeout_s)
        deadline = deadline_of(timeout_s)
        ask = _wait.cancel(self.id, self.cancel_token, self._client.reply_key, deadline, timeout_s, self._ttl_s)
        return bool((yield Within(ask, "cancelling a job", deadline)))


class Job(JobBase):
    """A handle on one job. Any process can make one from the id: ``client.job(id)``."""

    _client: Client

    def status(self) -> JobStatus:
        """``queued``, ``running``, ``succeeded`` or ``failed``; JobNotFound once its result has
        expired. An id nobody ever submitted also reads ``queued`` (docs/PROTOCOL.md §11)."""
        status: JobStatus = self._client._run(self._status_plan())
        return status

    def done(self) -> bool:
        return self.status() in ("succeeded", "failed")

    def result(self, timeout_s: float | None = None) -> Outputs:
        """Block (on Redis, no polling) until the job finishes; return its outputs by name.

        Raises JobTimeout after ``timeout_s`` (None: wait as long as it takes), the job's
        RemoteError if it failed (JobCancelled, InvalidJob, ...), JobNotFound if its result
        has expired."""
        outputs: Outputs = self._client._run(self._result_plan(timeout_s))
        return outputs

    def cancel(self, timeout_s: float = DEFAULT_CANCEL_TIMEOUT_S) -> bool:
        """Ask the fleet to cancel the job. True: it had not started and never will (its
        result is JobCancelled, and every waiter wakes); False: it is already running (its
        result will stand) or finished. JobTimeout when no worker answered in time;
        InvalidInput for a job without a cancel token (see ``cancel_token``)."""
        return bool(self._client._run(self._cancel_plan(timeout_s)))


class AsyncJob(JobBase):
    """A handle on one job (asyncio): ``await job.result(timeout_s)``. See icow.client.Job."""

    _client: AsyncClient

    async def status(self) -> JobStatus:
        status: JobStatus = await self._client._run(self._status_plan())
        return status

    async def done(self) -> bool:
        return await self.status() in ("succeeded", "failed")

    async def result(self, timeout_s: float | None = None) -> Outputs:
        outputs: Outputs = await self._client._run(self._result_plan(timeout_s))
        return outputs

    async def cancel(self, timeout_s: float = DEFAULT_CANCEL_TIMEOUT_S) -> bool:
        return bool(await self._client._run(self._cancel_plan(timeout_s)))
