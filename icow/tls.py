"""TLS of every Redis connection ICOW makes (``rediss://``, ``rediss+sentinel://``), with the
server's certificate always verified. Part of icow.connection (which re-exports these; kept
apart to keep that module small): clients, workers, the exporter and the CLI call
``connection.tls_options`` / ``connection.celery_ssl``.

The CA, client certificate and key come from the URL (``?ssl_ca_certs=`` / ``ssl_certfile`` /
``ssl_keyfile``), else from the settings ``ICOW_REDIS_CA`` / ``ICOW_REDIS_CERT`` /
``ICOW_REDIS_KEY`` (icow.settings, read once at start-up and handed in); without a CA the
system's CAs verify. Verification is only off when the URL says so (``?ssl_cert_reqs=none``).

kombu, given a ``rediss://`` broker URL without ssl options, logs a warning and connects with
``CERT_NONE`` (kombu/connection.py): anyone on the path could pose as Redis. The worker hands
Celery :func:`celery_ssl` as ``broker_use_ssl`` instead. Wiring::

    app.conf.broker_use_ssl = connection.celery_ssl(url, s)               # None for redis://
    r = connection.connect(url, **connection.tls_options(url, s), ...)    # redis-py connections
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from icow.errors import InvalidInput
from icow.settings import Settings

TLS_SCHEMES = ("rediss", "rediss+sentinel")
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def is_tls(url: str) -> bool:
    """``rediss://`` or ``rediss+sentinel://``."""
    return urlsplit(url).scheme in TLS_SCHEMES


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items() if v}


def tls_options(url: str, s: Settings | None) -> dict[str, str]:
    """Extra redis-py options for a ``rediss://`` URL: the ``ICOW_REDIS_*`` files of ``s`` that
    the URL does not name itself (redis-py reads the URL's own ``ssl_*`` options, and verifies
    by default). Empty for other URLs and for ``s`` None."""
    if not is_tls(url) or s is None:
        return {}
    query = _query(url)
    files = zip(_FILES, (s.redis_ca, s.redis_cert, s.redis_key))
    return {option: path for option, path in files if path and option not in query}


def celery_ssl(url: str, s: Settings | None) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for this broker URL: None for ``redis://``; for ``rediss://``
    the CA and client certificate (the URL's, else those of ``s``), with ``CERT_REQUIRED``
    unless the URL's ``ssl_cert_reqs`` says ``optional`` or ``none``."""
    if not is_tls(url):
        return None
    query = _query(url)
    raw = query.get("ssl_cert_reqs", "required")
    reqs = _CERT_REQS.get(raw.lower().removeprefix("cert_"))
    if reqs is None:
        raise InvalidInput(f"ssl_cert_reqs={raw!r} in the Redis URL: use required, optional or none")
    own = {option: query[option] for option in _FILES if option in query}
    return {"ssl_cert_reqs": reqs, **own, **tls_options(url, s)}
