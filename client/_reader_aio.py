"""The asyncio client's reply readers: coroutines sharing a client wait on its one reply list
(and bells) through one reader task (:class:`AsyncRouter`); a wait for re-attached jobs listens
on its own pub/sub connection (:class:`AsyncPubSub`). What to read and when is decided by
icow.client._wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions

from icow.client._deadlines import MARGIN_S, SLICE_S
from icow.client._wait import ReplyBox
from icow.result import Result

if TYPE_CHECKING:
    from icow.client.aio import AsyncClient


class AsyncRouter:
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
                first = await self._blpop(self._box.read_keys(), SLICE_S)
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


class AsyncPubSub:
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
            pending = len(channels)  # wait for every confirmation (see _reader_sync.PubSub)
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
                async with asyncio.timeout(MARGIN_S):
                    await self._ps.aclose()
            except (redis.exceptions.RedisError, OSError):
                pass
