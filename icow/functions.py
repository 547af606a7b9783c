"""ICOW's Redis Functions (icow/lua/icow.lua): the one home of server-side code, and the one
way to call it. Clients and workers call them with FCALL; workers install the library
(FUNCTION LOAD REPLACE) at start and whenever it is missing (a Redis that lost its data).

A client user of the ACL (icow.keys.CLIENT_ACL_RULES) can call the functions but never load
code; when the library is missing it gets BrokerUnavailable saying so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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


def is_missing(exc: BaseException) -> bool:
    """True for the error Redis gives when a called function is not loaded."""
    return isinstance(exc, redis.exceptions.ResponseError) and "function not found" in str(exc).lower()


def missing_error(exc: BaseException | None = None) -> BrokerUnavailable:
    return BrokerUnavailable(
        "ICOW's Redis functions are not installed on this Redis (they are installed by any "
        f"worker at start and every heartbeat, or by `icow admin install`){f': {exc}' if exc else ''}"
    )


def install(r: redis.Redis) -> bool:
    """Load the library unless this exact version is there. True if it was (re)loaded."""
    try:
        if _text(r.fcall(VERSION, 0)) == LIBRARY_SHA:
            return False
    except redis.exceptions.ResponseError as exc:
        if not is_missing(exc):
            raise
    r.function_load(LIBRARY, replace=True)
    return True


def call(r: redis.Redis | Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """FCALL ``name``; a missing library is installed when this user may (then retried once),
    else BrokerUnavailable."""
    try:
        return r.fcall(name, len(keys), *keys, *args)
    except redis.exceptions.ResponseError as exc:
        if not is_missing(exc):
            raise
        try:
            install(r)
        except redis.exceptions.ResponseError as denied:
            raise missing_error(denied) from exc
    return r.fcall(name, len(keys), *keys, *args)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
