"""Per-call socket timeouts for redis-py's sync connections.

redis-py fixes one ``socket_timeout`` per connection pool; a caller's ``timeout_s`` needs one
per call. The sync client sets :data:`LIMIT` (a ``time.monotonic()`` time) around each Redis
command it sends, and connections of the pool it built end connecting, sending and every read
by then: a frozen Redis (TCP connect still succeeds, nothing answers) or a slow one cannot hold
a call past its deadline. Outside a limit a connection behaves as redis-py's own. (The asyncio
client needs none of this: it bounds each command with ``asyncio.timeout``.)
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

LIMIT: ContextVar[float | None] = ContextVar("icow_redis_limit", default=None)
_MIN_S = 0.001  # a socket timeout of 0 would mean non-blocking, not "now"


class _Bounded:
    """Mixin over a redis-py connection class (TCP, TLS, unix socket or Sentinel-managed)."""

    socket_connect_timeout: float | None
    socket_timeout: float | None
    _sock: Any

    @staticmethod
    def _left() -> float | None:
        limit = LIMIT.get()
        return None if limit is None else max(limit - time.monotonic(), _MIN_S)

    def _connect(self) -> Any:
        left = self._left()
        if left is None:
            return super()._connect()  # type: ignore[misc]
        saved = self.socket_connect_timeout
        self.socket_connect_timeout = left if saved is None else min(saved, left)
        try:
            return super()._connect()  # type: ignore[misc]
        finally:
            self.socket_connect_timeout = saved

    def _bound(self) -> None:
        sock = self._sock
        if sock is not None:
            left = self._left()
            sock.settimeout(self.socket_timeout if left is None else left)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._bound()
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self._bound()
        return super().read_response(*args, **kwargs)  # type: ignore[misc]


_CLASSES: dict[type, type] = {}


def bounded(cls: type) -> type:
    """``cls`` with per-call limits (one subclass per class, made once)."""
    if issubclass(cls, _Bounded):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Bounded{cls.__name__}", (_Bounded, cls), {})
    return _CLASSES[cls]


def bound_pool(pool: Any) -> None:
    """Make the connections a fresh pool will open honour :data:`LIMIT`."""
    pool.connection_class = bounded(pool.connection_class)
