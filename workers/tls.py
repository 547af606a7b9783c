"""TLS for the worker's Redis connections (``rediss://``), with certificate verification on.

kombu, given a ``rediss://`` broker URL without ssl options, logs a warning and connects with
``CERT_NONE`` (kombu/connection.py): anyone on the path could pose as Redis. ICOW's worker
instead always verifies the server: against the CA named in the URL (``?ssl_ca_certs=PATH``)
or in ``ICOW_REDIS_CA``, else the system's CAs. A client certificate (mutual TLS) comes from
``?ssl_certfile=&ssl_keyfile=`` or ``ICOW_REDIS_CERT`` / ``ICOW_REDIS_KEY``. Verification is
only off when the URL says so explicitly (``?ssl_cert_reqs=none``).

Wiring (workers/serve.py and workers/app.py)::

    app.conf.broker_use_ssl = tls.ssl_options(url)              # kombu: None for redis://
    r = redis.Redis.from_url(url, **tls.redis_options(url), ...)  # redis-py connections
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from icow import settings as icow_settings
from icow.errors import InvalidInput

_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}


def is_tls(url: str) -> bool:
    return urlsplit(url).scheme in ("rediss", "rediss+sentinel")


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items() if v}


def _files(url: str, s: icow_settings.Settings | None) -> dict[str, str]:
    """CA / certificate / key paths: the URL's, else the ICOW_REDIS_* settings'."""
    return icow_settings.tls_files(url, icow_settings.from_env() if s is None else s)


def _cert_reqs(url: str) -> ssl.VerifyMode:
    raw = _query(url).get("ssl_cert_reqs", "required")
    try:
        return _CERT_REQS[raw.lower()]
    except KeyError:
        raise InvalidInput(f"ssl_cert_reqs={raw!r} in the Redis URL: use required, optional or none") from None


def ssl_options(url: str, s: icow_settings.Settings | None = None) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for this broker URL: None for ``redis://``; for ``rediss://``
    the CA and client certificate, with ``CERT_REQUIRED`` unless the URL says otherwise."""
    if not is_tls(url):
        return None
    return {"ssl_cert_reqs": _cert_reqs(url), **_files(url, s)}


def redis_options(url: str, s: icow_settings.Settings | None = None) -> dict[str, Any]:
    """Extra ``redis.Redis.from_url`` options: the ``ICOW_REDIS_*`` files the URL lacks
    (redis-py reads the URL's own ``ssl_*`` parameters and verifies by default)."""
    if not is_tls(url):
        return {}
    query = _query(url)
    return {k: v for k, v in _files(url, s).items() if k not in query}
