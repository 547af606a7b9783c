"""Settings read from ``ICOW_*`` environment variables. The only module that reads them, and
the owner of their defaults.

:func:`from_env` is called once per process, at its start-up (the ``icow`` command's
``main``, ``Client.from_env``, the Celery app of ``celery -A icow.workers.app``), and the
:class:`Settings` it returns are handed down as an argument. The module imports nothing of
ICOW but its errors: the core modules (icow.keys, icow.tensor, icow.envelope) take their
defaults from here, never the other way round.

==========================  ==================================================  =============
variable                    meaning                                             default
==========================  ==================================================  =============
``ICOW_REDIS_URL``          Redis URL (``redis://``, ``rediss://``, ``unix://``)  none: embedded
``ICOW_REPO``               model repository folder for workers                 none
                            (or ``s3://bucket/prefix``; AWS_* variables: boto3)
``ICOW_CACHE_DIR``          where workers keep models downloaded from S3          $XDG_CACHE_HOME/icow
                                                                                or ~/.cache/icow
``ICOW_RESULT_TTL_S``       how long results are kept                            86400
``ICOW_INLINE_MAX_BYTES``   tensors above this travel under their own key        262144
``ICOW_MAX_TENSOR_BYTES``   largest tensor accepted                             268435456
``ICOW_THREADS``            onnxruntime intra-op threads per worker (0 = auto)   0
``ICOW_DEVICE``             GPU device id for the CUDA execution provider        0
``ICOW_MAX_QUEUE``          fleet default backlog limit per model (0: none)      0
``ICOW_LEASE_S``            a dead worker's jobs are redone after this long      15
``ICOW_REDIS_CA``           CA bundle that verifies a ``rediss://`` server         system CAs
``ICOW_REDIS_CERT``         client certificate for ``rediss://`` (mutual TLS)      none
``ICOW_REDIS_KEY``          its private key                                      none
``ICOW_ORT_VERBOSE``        1: keep onnxruntime's own log lines (CUDA load        off
                            errors on a host without CUDA, ...)
``ICOW_ORT_SPIN``           1: let onnxruntime's idle threads spin (faster on     off
                            a dedicated host, burns cores on a shared one)
==========================  ==================================================  =============
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from icow.errors import InvalidInput

DEFAULT_RESULT_TTL_S = 24 * 3600
# Tensors larger than this travel under their own key (claim check), not inside the message.
DEFAULT_INLINE_MAX_BYTES = 256 * 1024
DEFAULT_MAX_TENSOR_BYTES = 256 * 1024 * 1024
DEFAULT_LEASE_S = 15  # a dead (or frozen) worker's jobs are taken again after this


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    repo: str | None = None
    cache_dir: str = ""  # from_env() fills it: ICOW_CACHE_DIR, else user_cache_dir()
    result_ttl_s: int = DEFAULT_RESULT_TTL_S
    inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    threads: int = 0
    device: int = 0
    max_queue: int = 0
    lease_s: int = DEFAULT_LEASE_S
    redis_ca: str | None = None
    redis_cert: str | None = None
    redis_key: str | None = None
    ort_verbose: bool = False
    ort_spin: bool = False


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {raw!r}") from None


def user_cache_dir(env: Mapping[str, str] | None = None) -> str:
    """The user's cache folder for ICOW: $XDG_CACHE_HOME/icow, else ~/.cache/icow."""
    env = os.environ if env is None else env
    return os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "icow")


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of this process, from ``env`` (default ``os.environ``). Call it once, at
    start-up, and hand the result down."""
    env = os.environ if env is None else env
    return Settings(
        redis_url=env.get("ICOW_REDIS_URL") or None,
        repo=env.get("ICOW_REPO") or None,
        cache_dir=env.get("ICOW_CACHE_DIR") or user_cache_dir(env),
        result_ttl_s=_int(env, "ICOW_RESULT_TTL_S", DEFAULT_RESULT_TTL_S),
        inline_max_bytes=_int(env, "ICOW_INLINE_MAX_BYTES", DEFAULT_INLINE_MAX_BYTES),
        max_tensor_bytes=_int(env, "ICOW_MAX_TENSOR_BYTES", DEFAULT_MAX_TENSOR_BYTES),
        threads=_int(env, "ICOW_THREADS", 0),
        device=_int(env, "ICOW_DEVICE", 0),
        max_queue=_int(env, "ICOW_MAX_QUEUE", 0),
        lease_s=_int(env, "ICOW_LEASE_S", DEFAULT_LEASE_S),
        redis_ca=env.get("ICOW_REDIS_CA") or None,
        redis_cert=env.get("ICOW_REDIS_CERT") or None,
        redis_key=env.get("ICOW_REDIS_KEY") or None,
        ort_verbose=env.get("ICOW_ORT_VERBOSE", "") not in ("", "0"),
        ort_spin=env.get("ICOW_ORT_SPIN", "") not in ("", "0"),
    )
