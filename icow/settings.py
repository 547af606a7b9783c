"""Settings read from ``ICOW_*`` environment variables. The only module that reads them.

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
from urllib.parse import parse_qs, urlsplit

from icow import envelope, keys, tensor
from icow.errors import InvalidInput


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    repo: str | None = None
    cache_dir: str = ""  # from_env() fills it: ICOW_CACHE_DIR, else the user's cache folder
    result_ttl_s: int = keys.DEFAULT_RESULT_TTL_S
    inline_max_bytes: int = envelope.DEFAULT_INLINE_MAX_BYTES
    max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES
    threads: int = 0
    device: int = 0
    max_queue: int = 0
    lease_s: int = keys.DEFAULT_LEASE_S
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


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    return Settings(
        redis_url=env.get("ICOW_REDIS_URL") or None,
        repo=env.get("ICOW_REPO") or None,
        cache_dir=env.get("ICOW_CACHE_DIR")
        or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "icow"),
        result_ttl_s=_int(env, "ICOW_RESULT_TTL_S", keys.DEFAULT_RESULT_TTL_S),
        inline_max_bytes=_int(env, "ICOW_INLINE_MAX_BYTES", envelope.DEFAULT_INLINE_MAX_BYTES),
        max_tensor_bytes=_int(env, "ICOW_MAX_TENSOR_BYTES", tensor.DEFAULT_MAX_TENSOR_BYTES),
        threads=_int(env, "ICOW_THREADS", 0),
        device=_int(env, "ICOW_DEVICE", 0),
        max_queue=_int(env, "ICOW_MAX_QUEUE", 0),
        lease_s=_int(env, "ICOW_LEASE_S", keys.DEFAULT_LEASE_S),
        redis_ca=env.get("ICOW_REDIS_CA") or None,
        redis_cert=env.get("ICOW_REDIS_CERT") or None,
        redis_key=env.get("ICOW_REDIS_KEY") or None,
        ort_verbose=env.get("ICOW_ORT_VERBOSE", "") not in ("", "0"),
        ort_spin=env.get("ICOW_ORT_SPIN", "") not in ("", "0"),
    )


def tls_files(url: str, s: Settings) -> dict[str, str]:
    """redis-py options naming the CA, client certificate and key for a ``rediss://`` URL: the
    URL's own ``ssl_ca_certs`` / ``ssl_certfile`` / ``ssl_keyfile``, else ``ICOW_REDIS_CA`` /
    ``ICOW_REDIS_CERT`` / ``ICOW_REDIS_KEY``. Empty for other URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ("rediss", "rediss+sentinel"):
        return {}
    query = {k: v[-1] for k, v in parse_qs(parts.query).items() if v}
    out: dict[str, str] = {}
    for option, value in (("ssl_ca_certs", s.redis_ca), ("ssl_certfile", s.redis_cert), ("ssl_keyfile", s.redis_key)):
        chosen = query.get(option) or value
        if chosen:
            out[option] = chosen
    return out
