"""What Client and AsyncClient, Job and AsyncJob share without doing I/O: construction,
options, identity, job preparation and the state a handle keeps. The two drivers subclass
these and add only their Redis calls."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from icow import keys
from icow.client import _core
from icow.client._core import JobStatus
from icow.client._info import JobInfo, info_of
from icow.client._wait import ReplyBox
from icow.errors import ClientClosed, IcowError
from icow.result import Result


class ClientBase:
    """Options, the client's identity and reply list, and job preparation."""

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, model={self.model!r})"

    def _settle(self, meta: Result | None = None, error: IcowError | None = None) -> None:
        self._meta, self._error = meta, error

    def _known_status(self) -> JobStatus | None:
        if self._error is not None:
            raise self._error
        return None if self._meta is None else _core.status_of_meta(self._meta)

    def info(self) -> JobInfo:
        """How the finished job ran: the version that ran, the worker, its timings (a frozen
        :class:`icow.client.JobInfo`). There once ``result()`` has returned (or raised the job's
        error), ``status()`` read it finished or ``as_completed`` yielded it; NoResultYet before.
        No Redis call."""
        if self._error is not None:
            raise self._error
        return info_of(self.id, self._meta)

    def _known_meta(self) -> Result | None:
        if self._error is not None:
            raise self._error
        return self._meta
