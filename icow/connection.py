"""The one place that turns a Redis URL into a connection: clients, workers, the exporter and
the CLI all call :func:`connect` / :func:`connect_async`, and the worker's Celery shell takes
its broker settings from :func:`celery_broker`.

URL forms::

    redis://[[user]:password@]host[:port][/db][?options]      plain TCP (redis-py's own form)
    rediss://...                                               TLS (?ssl_ca_certs=ca.pem ...)
    unix://[[user]:password@]/path/redis.sock[?db=N]           a local socket
    redis+sentinel://[[user]:password@]host1[:port][,host2[:port]...]/service[/db][?options]
    rediss+sentinel://...                                      the same, over TLS

Sentinel form. The hosts are the *sentinels* (port 26379 when left out), ``service`` is the
name they monitor (``sentinel monitor <service> ...``) and ``db`` the database (0). The user
and password are those of the Redis primary and replicas, as in ``redis://``. Options:

==========================  ========================================================  =========
option                      meaning                                                   default
==========================  ========================================================  =========
``sentinel_password``       password of the sentinels themselves (``requirepass``)     none
``sentinel_username``       their ACL user                                            none
``socket_connect_timeout``  seconds to connect, to a sentinel or to the primary        caller's
``socket_timeout``          seconds a reply may take (the same)                        caller's
``min_other_sentinels``     ignore a sentinel that sees fewer peers than this          0
``ssl_ca_certs`` ...        ``rediss+sentinel``: CA, ``ssl_certfile``, ``ssl_keyfile``  system CAs
``ssl_cert_reqs``           ``required`` (default), ``optional`` or ``none``           required
``sentinel_ssl``            ``rediss+sentinel``: speak TLS to the sentinels too         true
==========================  ========================================================  =========

After a failover every connection finds the new primary by itself: redis-py's
``SentinelConnectionPool`` asks the sentinels again on each new connection, and a connection to
a primary that was demoted is dropped on its first ``READONLY`` reply. ICOW's pool also asks
again at most every :data:`SENTINEL_RECHECK_S` before handing out a connection, so a connection
to an old primary that came back still a primary (frozen, then resumed) is not used. While the sentinels have
no primary to give (between the primary's death and the promotion), commands fail with
``redis.exceptions.ConnectionError`` (``MasterNotFoundError``), which callers map to
``BrokerUnavailable`` as for any outage.

Durable writes: :func:`wait_replicas` (Redis ``WAIT``) and :func:`require_replicas`.
TLS: :func:`tls_options` (redis-py) and :func:`celery_ssl` (kombu), from icow/tls.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from icow.errors import BrokerUnavailable, IcowError, InvalidInput, NotDurable, PermissionDenied
from icow.tls import celery_ssl as celery_ssl  # TLS (icow/tls.py): verified, CA from URL or settings
from icow.tls import is_tls as is_tls
from icow.tls import tls_options as tls_options

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_WAIT_TIMEOUT_MS = 1000

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_FLOAT_OPTIONS = ("socket_connect_timeout", "socket_timeout")
_SENTINEL_OPTIONS = ("sentinel_password", "sentinel_username", "min_other_sentinels", "sentinel_ssl")
_KNOWN = (*_FLOAT_OPTIONS, *_TLS_OPTIONS, *_SENTINEL_OPTIONS)


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    min_other_sentinels: int = 0
    timeouts: dict[str, float] = field(default_factory=dict)
    ssl: dict[str, str] = field(default_factory=dict)

    def redis_options(self) -> dict[str, Any]:
        """redis-py options of the primary's connections that come from the URL."""
        out: dict[str, Any] = {"db": self.db, **self.timeouts}
        if self.username is not None:
            out["username"] = self.username
        if self.password is not None:
            out["password"] = self.password
        if self.tls:
            out["ssl"] = True
            out.update(self.ssl)
        return out

    def sentinel_options(self, redis_options: dict[str, Any]) -> dict[str, Any]:
        """redis-py options of the connections to the sentinels: the timeouts (the URL's, else
        the caller's), the sentinels' own credentials, TLS when ``sentinel_ssl``."""
        out: dict[str, Any] = {k: v for k, v in redis_options.items() if k in _FLOAT_OPTIONS}
        out.update(self.timeouts)
        if self.sentinel_username is not None:
            out["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            out["password"] = self.sentinel_password
        if self.sentinel_tls:
            out["ssl"] = True
            out.update({k: v for k, v in redis_options.items() if k in _TLS_OPTIONS})
            out.update(self.ssl)
        return out


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise InvalidInput(f"empty sentinel host in {redact(url)!r}")
    try:
        return host, int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise InvalidInput(f"bad sentinel port {port!r} in {redact(url)!r}") from None


def _flag(raw: str, name: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidInput(f"{name}={raw!r}: use true or false")


def parse_sentinel(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://`` / ``rediss+sentinel://``; InvalidInput if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise InvalidInput(f"not a Sentinel URL: {redact(url)!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    sentinels = tuple(_host_port(h, url) for h in hosts.split(",") if h)
    if not sentinels:
        raise InvalidInput(f"no sentinel hosts in {redact(url)!r}")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise InvalidInput(f"{redact(url)!r}: the path must be /<service>[/<db>]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise InvalidInput(f"{redact(url)!r}: database {path[1]!r} is not a number") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items() if v}
    unknown = sorted(set(query) - set(_KNOWN))
    if unknown:
        raise InvalidInput(f"unknown option(s) {', '.join(unknown)} in {redact(url)!r}")
    tls = parts.scheme == "rediss+sentinel"
    try:
        timeouts = {k: float(query[k]) for k in _FLOAT_OPTIONS if k in query}
        min_other = int(query.get("min_other_sentinels", "0"))
    except ValueError as exc:
        raise InvalidInput(f"bad number in {redact(url)!r}: {exc}") from None
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        tls=tls,
        sentinel_tls=tls and _flag(query.get("sentinel_ssl", "true"), "sentinel_ssl"),
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
        min_other_sentinels=min_other,
        timeouts=timeouts,
        ssl={k: query[k] for k in _TLS_OPTIONS if k in query},
    )


def redact(url: str) -> str:
    """The URL without its passwords (for logs and errors)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query = "&".join(f"{k}=***" if k.endswith("password") else f"{k}={v[-1]}" for k, v in parse_qs(parts.query).items())
    return parts._replace(netloc=f"{userinfo}{at}{hosts}", query=query).geturl()


class _SentinelRedis(redis.Redis):
    """The primary's client; closing it also closes the connections to the sentinels."""

    sentinel_manager: redis.sentinel.Sentinel | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.sentinel_manager is not None:
                self.sentinel_manager.close()


class _AsyncSentinelRedis(redis.asyncio.Redis):
    sentinel_manager: redis.asyncio.sentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                await self.sentinel_manager.aclose()


SENTINEL_RECHECK_S = 1.0  # a Sentinel pool asks the sentinels again at most this often


class _RecheckingPool(redis.sentinel.SentinelConnectionPool):
    """redis-py's Sentinel pool, asking the sentinels which node is the primary again (at most
    every :data:`SENTINEL_RECHECK_S`) before handing out a connection. When the answer changed,
    redis-py drops the idle connections to the old node and does not take back the busy ones;
    the next command connects to the new primary.

    Without it a connection opened before a failover stays on the old primary as long as that
    node answers: one that was frozen (a hung host, a partition) and comes back still says
    ``role:master`` until the sentinels convert it, and whatever was written to it meanwhile is
    lost then (its data is replaced by the new primary's). tests/test_stale_primary.py."""

    _rechecked = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._rechecked >= SENTINEL_RECHECK_S:
            self._rechecked = now
            try:
                self.get_master_address()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                pass  # no answer now: the connection's own connect (or command) reports it
        return super().get_connection(*args, **kwargs)


class _AsyncRecheckingPool(redis.asyncio.sentinel.SentinelConnectionPool):
    """The asyncio twin of :class:`_RecheckingPool`."""

    _rechecked = 0.0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._rechecked >= SENTINEL_RECHECK_S:
            self._rechecked = now
            try:
                await self.get_master_address()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                pass
        return await super().get_connection(*args, **kwargs)


def connect(url: str, **redis_options: Any) -> redis.Redis:
    """A redis-py client for any URL form above. ``redis_options`` are redis-py's
    (``socket_connect_timeout=2``, ``ssl_ca_certs=...``, ``health_check_interval=30``); options
    written in the URL win, as in ``redis.Redis.from_url``. Connects lazily."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **redis_options)
    target = parse_sentinel(url)
    manager = redis.sentinel.Sentinel(
        list(target.sentinels),
        min_other_sentinels=target.min_other_sentinels,
        sentinel_kwargs=target.sentinel_options(redis_options),
    )
    r = manager.master_for(
        target.service,
        redis_class=_SentinelRedis,
        connection_pool_class=_RecheckingPool,
        **{**redis_options, **target.redis_options()},
    )
    assert isinstance(r, _SentinelRedis)
    r.sentinel_manager = manager
    return r


def connect_async(url: str, **redis_options: Any) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect` (``redis.asyncio``); close it with ``aclose()``."""
    if not is_sentinel(url):
        return redis.asyncio.Redis.from_url(url, **redis_options)
    target = parse_sentinel(url)
    manager = redis.asyncio.sentinel.Sentinel(
        list(target.sentinels),
        min_other_sentinels=target.min_other_sentinels,
        sentinel_kwargs=target.sentinel_options(redis_options),
    )
    r = manager.master_for(
        target.service,
        redis_class=_AsyncSentinelRedis,
        connection_pool_class=_AsyncRecheckingPool,
        **{**redis_options, **target.redis_options()},
    )
    assert isinstance(r, _AsyncSentinelRedis)
    r.sentinel_manager = manager
    return r


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's ``broker_url`` and the ``broker_transport_options`` to merge in, for a URL.

    Other URLs pass through unchanged. A Sentinel URL becomes kombu's ``sentinel://`` transport:
    one ``sentinel://[user:password@]host:port/db`` per sentinel, joined by ``;`` (the password
    is the primary's), with ``master_name`` and ``sentinel_kwargs`` (the sentinels' credentials
    and timeouts) as transport options. For ``rediss+sentinel`` also set Celery's
    ``broker_use_ssl`` (:func:`celery_ssl`): kombu then speaks TLS to the primary.
    """
    if not is_sentinel(url):
        return url, {}
    target = parse_sentinel(url)
    auth = ""
    if target.username is not None or target.password is not None:
        auth = quote(target.username or "", safe="")
        if target.password is not None:
            auth += ":" + quote(target.password, safe="")
        auth += "@"
    hosts = [f"[{h}]" if ":" in h else h for h, _ in target.sentinels]
    broker = ";".join(f"sentinel://{auth}{h}:{p}/{target.db}" for h, (_, p) in zip(hosts, target.sentinels))
    options: dict[str, Any] = {"master_name": target.service, **target.timeouts}
    sentinel_kwargs = target.sentinel_options({})
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    if target.min_other_sentinels:
        options["min_other_sentinels"] = target.min_other_sentinels
    return broker, options


# -- failures of one-off commands (the CLI)


def redis_failure(exc: BaseException, what: str, needs: str = "") -> IcowError:
    """The ICOW error for a Redis failure while ``what`` (``"cannot read the fleet's state"``):
    :class:`~icow.errors.PermissionDenied` for an ACL refusal (``NOPERM``; ``needs`` says which
    user the command takes), else BrokerUnavailable."""
    text = str(exc)
    if isinstance(exc, redis.exceptions.NoPermissionError) or text.startswith("NOPERM") or "no permissions" in text:
        return PermissionDenied(f"{what}: the Redis ACL user may not do this ({text}){'; ' + needs if needs else ''}")
    return BrokerUnavailable(f"{what}: {text}")


# -- durable writes


def wait_replicas(r: Any, replicas: int = 1, timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS) -> Any:
    """Redis ``WAIT replicas timeout_ms``: how many replicas hold this connection's writes.

    ``WAIT`` counts the writes of the connection it runs on, so send it on the connection that
    wrote: in the same pipeline as the writes (``r`` a pipeline: the command is queued and its
    count is that pipeline's last result), or on a client with ``single_connection_client=True``.
    On a pooled client it may run on another connection and prove nothing. With a
    ``redis.asyncio`` client (not a pipeline) the result is awaitable.
    """
    if replicas < 1 or timeout_ms < 0:
        raise InvalidInput("wait_replicas needs replicas >= 1 and timeout_ms >= 0 (0 waits forever)")
    return r.execute_command("WAIT", replicas, timeout_ms)


def require_replicas(acknowledged: Any, replicas: int = 1, job_ids: list[str] | None = None) -> int:
    """The count ``WAIT`` returned, or :class:`~icow.errors.NotDurable` (a BrokerUnavailable)
    when fewer replicas acknowledged: the write happened on the primary but would not survive
    its death. ``job_ids``: the jobs those writes queued (they will run: re-attach, do not
    resubmit); the error carries them."""
    got = int(acknowledged)
    if got < replicas:
        raise not_durable(got, replicas, list(job_ids or []))
    return got


def not_durable(acknowledged: int, replicas: int, job_ids: list[str], jobs: list[Any] | None = None) -> NotDurable:
    """The NotDurable error for jobs queued on the primary that ``acknowledged`` (< ``replicas``)
    replicas hold; ``jobs``: the caller's handles of them."""
    text = (
        f"only {acknowledged} of {replicas} Redis replica(s) acknowledged the write in time: it is on the "
        "primary but not yet durable (no replica, or replication lagging)"
    )
    if job_ids:
        shown = ", ".join(job_ids[:3]) + (f" and {len(job_ids) - 3} more" if len(job_ids) > 3 else "")
        text += f"; the job(s) ARE queued and will run ({shown}): re-attach to them (.jobs), do not resubmit"
    return NotDurable(text, job_ids=job_ids, jobs=jobs, acknowledged=acknowledged, replicas=replicas)
