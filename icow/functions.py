"""ICOW's Redis Functions (icow/lua/icow.lua): the one home of server-side code, and the one
way to call it. Clients and workers call them with FCALL; workers install the library
(FUNCTION LOAD REPLACE) at start and whenever it is missing (a Redis that lost its data).

Every key a function touches is passed in as a key (``KEYS``, named by icow.keys): the Lua
builds no key name, so a function's keys are all declared (ACL checks, Redis Cluster slots).
The library's version is the SHA-1 of its source: any edit of icow.lua is a new version, which
the workers load over the old one.

A client user of the ACL (icow.keys.CLIENT_ACL_RULES) can call the functions but never load
code; when the library is missing it gets BrokerUnavailable saying so. The fallback (library
missing: install it and retry once) is written once, in :func:`call` and, for an FCALL that
rode in a pipeline, :func:`reply_of` (and their ``_async`` twins).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Sequence
from importlib import resources
from typing import Any

import redis
import redis.exceptions

from icow.errors import BrokerUnavailable

_SOURCE = resources.files("icow").joinpath("lua/icow.lua").read_text(encoding="utf-8")
LIBRARY_SHA = hashlib.sha1(_SOURCE.encode()).hexdigest()
LIBRARY = _SOURCE.replace("__ICOW_LIBRARY_SHA__", LIBRARY_SHA)
LIBRARY_NAME = "icow"

SUBMIT = "icow_submit"
CANCEL_REQUEST = "icow_cancel_request"
TAKE = "icow_take"
CLAIM = "icow_claim"
ANSWER = "icow_answer"
CANCEL = "icow_cancel"
RENEW = "icow_renew"
EXPIRED = "icow_expired"
REQUEUE = "icow_requeue"
FORGET = "icow_forget"
VERSION = "icow_version"
PEEK = "icow_peek"


def is_missing(exc: BaseException) -> bool:
    """True for the error Redis gives when a called function is not loaded."""
    return isinstance(exc, redis.exceptions.ResponseError) and "function not found" in str(exc).lower()


def missing_error(exc: BaseException | None = None) -> BrokerUnavailable:
    return BrokerUnavailable(
        "ICOW's Redis functions are not installed on this Redis (they are installed by any "
        f"worker at start and every heartbeat, or by `icow admin install`){f': {exc}' if exc else ''}"
    )


# The decisions of install() and call() are written once, as generators that say which redis-py
# method to run next (an error it raised is thrown back in); _run and _run_async only do the I/O,
# so the sync and asyncio paths cannot drift.
_Step = tuple[str, tuple[Any, ...], dict[str, Any]]


def _install_steps() -> Generator[_Step, Any, bool]:
    try:
        if _text((yield ("fcall", (VERSION, 0), {}))) == LIBRARY_SHA:
            return False
    except redis.exceptions.ResponseError as exc:
        if not is_missing(exc):
            raise
    yield ("function_load", (LIBRARY,), {"replace": True})
    return True


def _fcall(name: str, keys: Sequence[Any], args: Sequence[Any]) -> _Step:
    return ("fcall", (name, len(keys), *keys, *args), {})


def _retry_steps(
    name: str, keys: Sequence[Any], args: Sequence[Any], missing: BaseException
) -> Generator[_Step, Any, Any]:
    """The one "library missing: install it and retry" fallback."""
    try:
        yield from _install_steps()
    except redis.exceptions.ResponseError as denied:  # NOPERM: this user may not load code
        raise missing_error(denied) from missing
    return (yield _fcall(name, keys, args))


def _call_steps(name: str, keys: Sequence[Any], args: Sequence[Any]) -> Generator[_Step, Any, Any]:
    try:
        return (yield _fcall(name, keys, args))
    except redis.exceptions.ResponseError as exc:
        if not is_missing(exc):
            raise
        return (yield from _retry_steps(name, keys, args, exc))


def _reply_steps(reply: Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Generator[_Step, Any, Any]:
    if not isinstance(reply, BaseException):
        return reply
    if not is_missing(reply):
        raise reply
    return (yield from _retry_steps(name, keys, args, reply))


def _run(r: Any, steps: Generator[_Step, Any, Any]) -> Any:
    reply: Any = None
    error: redis.exceptions.ResponseError | None = None
    while True:
        try:
            method, args, kwargs = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        try:
            reply, error = getattr(r, method)(*args, **kwargs), None
        except redis.exceptions.ResponseError as exc:
            reply, error = None, exc


async def _run_async(r: Any, steps: Generator[_Step, Any, Any]) -> Any:
    reply: Any = None
    error: redis.exceptions.ResponseError | None = None
    while True:
        try:
            method, args, kwargs = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        try:
            reply, error = await getattr(r, method)(*args, **kwargs), None
        except redis.exceptions.ResponseError as exc:
            reply, error = None, exc


def install(r: redis.Redis) -> bool:
    """Load the library unless this exact version is there. True if it was (re)loaded."""
    return bool(_run(r, _install_steps()))


def call(r: redis.Redis | Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """FCALL ``name``; a missing library is installed when this user may (then retried once),
    else BrokerUnavailable."""
    return _run(r, _call_steps(name, keys, args))


def reply_of(r: redis.Redis | Any, reply: Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """The reply of ``FCALL name`` sent in a pipeline run with ``execute(raise_on_error=False)``
    (to share a round trip with other commands): the reply itself; an error raised; when the
    library is missing it is installed if this user may and the call made again on ``r``, as
    :func:`call` does."""
    return _run(r, _reply_steps(reply, name, keys, args))


async def install_async(r: Any) -> bool:
    """:func:`install` for a ``redis.asyncio`` client."""
    return bool(await _run_async(r, _install_steps()))


async def call_async(r: Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """:func:`call` for a ``redis.asyncio`` client."""
    return await _run_async(r, _call_steps(name, keys, args))


async def reply_of_async(r: Any, reply: Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """:func:`reply_of` for a ``redis.asyncio`` client."""
    return await _run_async(r, _reply_steps(reply, name, keys, args))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
