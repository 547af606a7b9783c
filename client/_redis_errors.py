"""The mapping of Redis failures to ICOW errors, I/O-free: every Redis call of a client surfaces
its failure through :func:`broker_error`, in the shells' ``_io`` or, for an error a pipeline
returned as a value, in the plan that reads it (:func:`surfaced`); the shells' ``_io`` through
:func:`surfacing`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions

from icow import functions
from icow.errors import BrokerFull, BrokerUnavailable, IcowError, InvalidInput, PermissionDenied

INVALID_PREFIX = "ICOW_INVALID "  # how icow_cancel_request refuses a malformed argument


@contextmanager
def surfacing(what: str) -> Iterator[None]:
    """Surface every Redis failure raised inside as its ICOW error (the shells' ``_io``)."""
    try:
        yield
    except Exception as exc:
        error = broker_error(exc, what)
        if error is None:
            raise
        raise error from exc


def surfaced(exc: BaseException, what: str) -> BaseException:
    """What to raise for ``exc``: a Redis failure as its ICOW error (chained to it), anything
    else as it is."""
    error = broker_error(exc, what)
    if error is None:
        return exc
    error.__cause__ = exc  # as ``raise error from exc``
    error.__suppress_context__ = True
    return error


def broker_error(exc: BaseException, what: str) -> IcowError | None:
    """The ICOW error a Redis failure surfaces as (None: not a Redis failure, let it be).

    Out of memory is :class:`BrokerFull`; an ACL refusal :class:`PermissionDenied`; a missing
    function library, a refused, broken, timed-out or unreachable connection are
    :class:`BrokerUnavailable` saying which."""
    if isinstance(exc, IcowError):
        return None
    text = str(exc)
    if text.startswith(INVALID_PREFIX):  # an ICOW function refused an argument: nothing was done
        return InvalidInput(f"Redis refused {what}: {text[len(INVALID_PREFIX) :]}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return BrokerFull(f"Redis is out of memory (maxmemory) and refused {what}: {text}")
    if isinstance(exc, redis.exceptions.NoPermissionError) or is_acl_denial(exc):
        return PermissionDenied(
            f"Redis refused {what}: the ACL user lacks a permission ICOW's client needs "
            f"(see `icow admin acl`, icow.keys.CLIENT_ACL_RULES): {text}"
        )
    if functions.is_missing(exc):
        return functions.missing_error(exc)
    if isinstance(exc, TimeoutError | redis.exceptions.TimeoutError):
        return BrokerUnavailable(f"Redis did not answer in time while {what}: {text or type(exc).__name__}")
    if isinstance(exc, redis.exceptions.RedisError | OSError):
        return BrokerUnavailable(f"Redis is unavailable while {what}: {text or type(exc).__name__}")
    return None


def is_acl_denial(exc: BaseException) -> bool:
    """A Redis error saying the ACL user may not run a command or touch a key (inside a
    function Redis words it differently)."""
    text = str(exc)
    return text.startswith("NOPERM") or "no permissions" in text or "can't access" in text
