"""The synchronous client's reply readers: the threads sharing a client wait on its one reply
list (and bells) through :class:`Router`; a wait for re-attached jobs listens on its own pub/sub
connection (:class:`PubSub`). What to read and when is decided by icow.client._wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions

from icow.client._bounded import LIMIT
from icow.client._wait import ReplyBox
from icow.result import Result

if TYPE_CHECKING:
    from icow.client.sync import Client


class Router:
    """Threads sharing a client wait on its one reply list. One of them reads (BLPOP) at a
    time; it files everything it popped in the box, under the lock and *before* it wakes the
    others, so a reply is never left in the box while its waiter sleeps through a read."""

    def __init__(
        self,
        box: ReplyBox,
        blpop: Callable[[list[str], float, float | None], Any],
        drain: Callable[[float | None], list[Any]],
    ):
        self._box = box
        self._blpop = blpop
        self._drain = drain
        self._cond = threading.Condition()
        self._reading = False

    def wait(
        self, wanted: Collection[str], bells: Sequence[str], slice_s: float, deadline: float | None
    ) -> dict[str, Result]:
        """The replies of ``wanted`` that arrive within ``slice_s`` ({} if none)."""
        end = time.monotonic() + slice_s
        with self._cond:
            self._box.watch(bells)
        try:
            while True:
                with self._cond:
                    while True:
                        hits = self._box.take(wanted)
                        if hits:
                            return hits
                        left = end - time.monotonic()
                        if left <= 0:
                            return {}
                        if not self._reading:
                            self._reading = True
                            read_keys = self._box.read_keys()
                            break
                        self._cond.wait(left)
                self._read(read_keys, left, deadline, wanted)
        finally:
            with self._cond:
                self._box.unwatch(bells)

    def _read(self, read_keys: list[str], timeout: float, deadline: float | None, wanted: Collection[str]) -> None:
        more: list[Any] = []
        try:
            first = self._blpop(read_keys, timeout, deadline)
            if first is not None:
                with self._cond:  # filed, not announced: nobody is woken yet
                    got = self._box.deliver([first])
                if len(wanted) > 1 or not got & set(wanted):
                    more = self._drain(deadline)  # more replies are probably waiting: take them all
        finally:
            with self._cond:
                self._reading = False
                self._box.deliver(more)  # file everything first...
                self._cond.notify_all()  # ...then wake the others


class PubSub:
    """The pub/sub connection of one wait (re-attached jobs), opened on first use."""

    def __init__(self, client: Client, what: str, deadline: float | None):
        self._client = client
        self._what = what
        self._deadline = deadline
        self._ps: Any = None
        self._early: list[Any] = []  # messages that came with the subscription confirmations

    def subscribe(self, channels: list[str]) -> None:
        c = self._client
        with c._io(self._what, self._deadline):
            if self._ps is None:
                self._ps = c._r.pubsub(ignore_subscribe_messages=False)
            self._ps.subscribe(*channels)
            # Wait until Redis has confirmed them all: only then is a result published from
            # now on sure to reach us, and reading the keys after that misses nothing.
            limit = LIMIT.get() or 0.0
            pending = len(channels)
            while pending:
                left = limit - time.monotonic()
                msg = self._ps.get_message(timeout=max(left, 0.0))
                if msg is None:
                    if left <= 0:
                        raise redis.exceptions.TimeoutError("Redis did not confirm the subscription in time")
                elif msg["type"] == "subscribe":
                    pending -= 1
                elif msg["type"] == "message":
                    self._early.append(msg["data"])

    def listen(self, slice_s: float) -> Any:
        if self._early:
            return self._early.pop(0)
        end = time.monotonic() + slice_s
        with self._client._io(self._what, self._deadline, blocking_s=slice_s):
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                msg = self._ps.get_message(timeout=left)
                if msg is not None and msg["type"] == "message":
                    return msg["data"]

    def close(self) -> None:
        if self._ps is not None:
            try:
                self._ps.close()
            except (redis.exceptions.RedisError, OSError):
                pass
