"""What a client is built with, I/O-free: its options (checked once), the ``ICOW_*`` settings of
``from_env``, its identity, and the argument checks every call shares."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from icow import connection, envelope, keys, settings, tensor
from icow.client._deadlines import MARGIN_S
from icow.errors import InvalidInput

DEFAULT_TIMEOUT_S = 10.0  # the bound of calls that take no timeout_s (submit, status, models...)
DEFAULT_CANCEL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Options:
    """What a client was built with, checked once."""

    url: str = "redis://127.0.0.1:6379/0"
    result_ttl_s: int = keys.DEFAULT_RESULT_TTL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = 2.0
    inline_max_bytes: int = envelope.DEFAULT_INLINE_MAX_BYTES
    max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES
    require_published: bool = True
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    durable: bool = False  # submits return once a replica holds the jobs (WAIT), see Target

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or "://" not in self.url:
            raise InvalidInput(f"url must be a Redis URL such as redis://host:6379/0, got {self.url!r}")
        check_ttl(self.result_ttl_s)
        for name in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidInput(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("inline_max_bytes", "max_tensor_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"{name} must be a non-negative integer, got {value!r}")

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py options, derived from the timeouts (each call then bounds its own commands
        by its own deadline, see :func:`io_limit`); the caller's ``redis_options`` win."""
        return {
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": self.timeout_s + MARGIN_S,
            "socket_keepalive": True,
            "health_check_interval": 30,
            **self.redis_options,
        }


def env_arguments(kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(url, constructor keywords) for ``from_env``: ``ICOW_*`` settings, then ``kwargs``."""
    s = settings.from_env()
    if not s.redis_url:
        raise InvalidInput("ICOW_REDIS_URL is not set")
    out: dict[str, Any] = {
        "result_ttl_s": s.result_ttl_s,
        "inline_max_bytes": s.inline_max_bytes,
        "max_tensor_bytes": s.max_tensor_bytes,
        **connection.tls_options(s.redis_url, s),  # ICOW_REDIS_CA, ICOW_REDIS_CERT, ICOW_REDIS_KEY
    }
    out.update(kwargs)
    return s.redis_url, out


def new_client_id() -> str:
    """128 random bits: the client's reply list ``icow:reply:<id>`` cannot be guessed."""
    return secrets.token_hex(16)


def check_ttl(ttl_s: object) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= keys.MAX_RESULT_TTL_S:
        raise InvalidInput(f"result_ttl_s must be an integer in 1..{keys.MAX_RESULT_TTL_S}, got {ttl_s!r}")
    return ttl_s


def check_timeout(timeout_s: object, what: str = "timeout_s") -> float | None:
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s < 0
    ):
        raise InvalidInput(f"{what} must be a non-negative number of seconds or None, got {timeout_s!r}")
    return timeout_s
