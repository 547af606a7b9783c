"""What Client and AsyncClient share without doing I/O: construction, options, identity, job
preparation, and the plans of their calls (icow.client._ops), built from the sans-I/O core.
The two shells subclass it and add only their Redis calls: each public method runs a plan."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from icow import keys
from icow.client import _core, _submit
from icow.client._job import JobBase
from icow.client._ops import Steps
from icow.client._wait import ReplyBox
from icow.errors import ClientClosed


class ClientBase:
    """Options, the client's identity and reply list, job preparation and the calls' plans.
    ``_Job``: the shell's handle class."""

    _Job: type[JobBase]

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        result_ttl_s: int = keys.DEFAULT_RESULT_TTL_S,
        timeout_s: float = _core.DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = 2.0,
        inline_max_bytes: int = _core.Options.inline_max_bytes,
        max_tensor_bytes: int = _core.Options.max_tensor_bytes,
        require_published: bool = True,
        durable: bool = False,
        **redis_options: Any,
    ):
        self.options = _core.Options(
            url=url,
            result_ttl_s=result_ttl_s,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            inline_max_bytes=inline_max_bytes,
            max_tensor_bytes=max_tensor_bytes,
            require_published=require_published,
            redis_options=dict(redis_options),
            durable=durable,
        )
        self.url = url
        # 128 random bits: nobody else can name this client's reply list.
        self.client_id = _core.new_client_id()
        self.reply_key = keys.reply(self.client_id)
        self._box = ReplyBox(self.reply_key)
        self._closed = False

    def _check_open(self) -> None:
        """ClientClosed once ``close()`` has run: every call that would reach Redis refuses."""
        if self._closed:
            raise ClientClosed(f"{type(self).__name__} {self.client_id} is closed: make a new client")

    @classmethod
    def from_env(cls, **kwargs: Any) -> Any:
        """A client for ``ICOW_REDIS_URL`` with the ``ICOW_*`` settings (icow.settings);
        keyword arguments win."""
        url, arguments = _core.env_arguments(kwargs)
        return cls(url, **arguments)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r})"

    def _prepare(
        self,
        target: _core.Target,
        batch: Iterable[Mapping[str, Any]],
        *,
        outputs: Sequence[str] | None,
        deadline_s: float | None,
        result_ttl_s: int | None,
        job_id: str | None = None,
        inline_max_bytes: int | None = None,
    ) -> Iterable[_core.PreparedJob]:
        """Encode jobs lazily (a bulk submission never holds every message at once)."""
        for inputs in batch:
            yield _core.prepare(
                target,
                inputs,
                options=self.options,
                reply_to=self.reply_key,
                outputs=outputs,
                deadline_s=deadline_s,
                result_ttl_s=result_ttl_s,
                job_id=job_id,
                inline_max_bytes=inline_max_bytes,
            )

    def _deadline(self) -> float | None:
        """The deadline of a call that takes no timeout of its own (``timeout_s``)."""
        return _core.deadline_of(self.options.timeout_s)

    def _handle(self, target: _core.Target) -> _submit.Handle:
        def make(job: _core.PreparedJob, own: bool) -> Any:
            return self._Job(self, job.job_id, target.model, cancel_token=job.cancel_token, own=own, ttl_s=job.ttl_s)

        return make

    # -- plans of the public calls (the shells run them)

    def _submit_plan(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | None,
        outputs: Sequence[str] | None,
        priority: int,
        deadline_s: float | None,
        result_ttl_s: int | None,
        job_id: str | None,
        durable: bool | None,
        deadline: float | None = None,
    ) -> Steps:
        """``submit``: one job queued, its handle (``deadline``: the call's, else the client's)."""
        target = _core.Target(model, version, priority, durable)
        [job] = self._prepare(
            target, [inputs], outputs=outputs, deadline_s=deadline_s, result_ttl_s=result_ttl_s, job_id=job_id
        )
        return (yield from _submit.one(target, job, self._handle(target), deadline or self._deadline()))

    def _many_plan(
        self,
        target: _core.Target,
        batch: Iterable[Mapping[str, Any]],
        outputs: Sequence[str] | None,
        deadline_s: float | None,
        result_ttl_s: int | None,
        chunk: int,
        inline_max_bytes: int | None = None,
    ) -> Steps:
        """``submit_many`` (and a bulk's jobs): handles of the jobs queued, in order."""
        prepared = self._prepare(
            target,
            batch,
            outputs=outputs,
            deadline_s=deadline_s,
            result_ttl_s=result_ttl_s,
            inline_max_bytes=inline_max_bytes,
        )
        return (yield from _submit.many(target, prepared, chunk, self._handle(target), self.options))

    def _infer_plan(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | None,
        outputs: Sequence[str] | None,
        timeout_s: float | None,
        priority: int,
    ) -> Steps:
        """``infer``: submit, then wait; the job expires unstarted after ``timeout_s``, and the
        whole call, submission included, ends by then."""
        _core.check_timeout(timeout_s)
        deadline = _core.deadline_of(timeout_s)
        job = yield from self._submit_plan(
            model, inputs, version, outputs, priority, timeout_s or None, None, None, None, deadline
        )
        return (yield from job._result_plan(_core.remaining(deadline)))
