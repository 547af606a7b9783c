"""One test table for both clients: :func:`make_client` gives a ``Client``, or an
``AsyncClient`` behind the same synchronous surface (every call runs on the facade's own event
loop), so each behaviour is written once and checked against both."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

from icow.client import AsyncBulk, AsyncClient, AsyncJob, Bulk, Client, Job
from icow.errors import QueueFull

KINDS = ["sync", "async"]


class AsyncFacade:
    """An asyncio object (client, job or bulk) seen through synchronous calls."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop):
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return _wrap(value, self._loop)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = value(*_unwrap(args), **_unwrap(kwargs))
                if inspect.isawaitable(result):
                    result = self._loop.run_until_complete(result)
            except QueueFull as exc:
                exc.queued = [_wrap(j, self._loop) for j in exc.queued]
                raise
            if inspect.isasyncgen(result):
                return self._iterate(result)
            return _wrap(result, self._loop)

        return call

    def _iterate(self, agen: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    item = self._loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
                yield _wrap(item, self._loop)
        finally:
            self._loop.run_until_complete(agen.aclose())

    def __repr__(self) -> str:
        return f"AsyncFacade({self._target!r})"


class AsyncClientFacade(AsyncFacade):
    def __init__(self, url: str, **options: Any):
        loop = asyncio.new_event_loop()
        super().__init__(AsyncClient(url, **options), loop)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self._target.close())
        finally:
            self._loop.close()

    def __enter__(self) -> AsyncClientFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wrap(value: Any, loop: asyncio.AbstractEventLoop) -> Any:
    if isinstance(value, (AsyncJob, AsyncBulk)):
        return AsyncFacade(value, loop)
    if isinstance(value, list):
        return [_wrap(v, loop) for v in value]
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, AsyncFacade):
        return value._target
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def make_client(kind: str, url: str, **options: Any) -> Any:
    """A ``Client`` (``sync``) or an ``AsyncClient`` behind a synchronous facade (``async``)."""
    return Client(url, **options) if kind == "sync" else AsyncClientFacade(url, **options)


def is_job(value: Any) -> bool:
    return isinstance(value, Job) or (isinstance(value, AsyncFacade) and isinstance(value._target, AsyncJob))


def is_bulk(value: Any) -> bool:
    return isinstance(value, Bulk) or (isinstance(value, AsyncFacade) and isinstance(value._target, AsyncBulk))
