"""Redis under Sentinel: one URL form for every component, failover found by itself, durable
writes with WAIT. Real servers: a primary, a replica and three sentinels (tests/sentinel.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from icow import connection
from icow.errors import BrokerUnavailable, InvalidInput
from tests.sentinel import SERVICE, SentinelSet


@pytest.fixture(scope="module")
def shared_set() -> Iterator[SentinelSet]:
    """For tests that leave the set as they found it."""
    s = SentinelSet()
    yield s
    s.stop()


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    """A set of its own, for tests that kill a node."""
    s = SentinelSet()
    yield s
    s.stop()


# -- the URL form (no servers)


def test_sentinel_url_is_parsed() -> None:
    t = connection.parse_sentinel(
        "rediss+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/icow/2"
        "?sentinel_password=spw&socket_timeout=1.5&ssl_ca_certs=/ca.pem&sentinel_ssl=false"
    )
    assert t.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (t.service, t.db, t.username, t.password) == ("icow", 2, "app", "p@ss")
    assert t.tls and not t.sentinel_tls
    assert t.redis_options() == {
        "db": 2,
        "socket_timeout": 1.5,
        "username": "app",
        "password": "p@ss",
        "ssl": True,
        "ssl_ca_certs": "/ca.pem",
    }
    assert t.sentinel_options({"socket_connect_timeout": 2, "health_check_interval": 30}) == {
        "socket_connect_timeout": 2,
        "socket_timeout": 1.5,
        "password": "spw",
    }


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h1:26379",  # no service
        "redis+sentinel:///icow",  # no sentinel
        "redis+sentinel://h1/icow/zero",
        "redis+sentinel://h1:port/icow",
        "redis+sentinel://h1/icow?sentinel_pasword=typo",
        "redis+sentinel://h1/icow?socket_timeout=soon",
    ],
)
def test_bad_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        connection.connect(url)


def test_passwords_are_redacted() -> None:
    shown = connection.redact("redis+sentinel://u:secret@h1,h2/icow?sentinel_password=also")
    assert "secret" not in shown and "also" not in shown and "h1,h2/icow" in shown


def test_celery_broker_uses_kombus_sentinel_transport() -> None:
    url, options = connection.celery_broker("redis+sentinel://:pw@h1:26379,h2:26380/icow/3?sentinel_password=s")
    assert url == "sentinel://:pw@h1:26379/3;sentinel://:pw@h2:26380/3"
    assert options == {"master_name": "icow", "sentinel_kwargs": {"password": "s"}}
    assert connection.celery_broker("redis://h:6379/0") == ("redis://h:6379/0", {})


def test_plain_urls_pass_through(redis_url: str) -> None:
    r = connection.connect(redis_url, socket_connect_timeout=2)
    try:
        assert r.ping()
    finally:
        r.close()


# -- against a real Sentinel set


def test_connect_through_sentinels_writes_and_reads(shared_set: SentinelSet) -> None:
    r = connection.connect(shared_set.url, socket_connect_timeout=2)
    try:
        r.set("k", "v")
        assert r.get("k") == b"v"
        host, port = r.connection_pool.get_master_address()  # type: ignore[attr-defined]
        assert (host, port) == ("127.0.0.1", shared_set.primary.port)
    finally:
        r.close()


async def test_connect_async_through_sentinels(shared_set: SentinelSet) -> None:
    r = connection.connect_async(shared_set.url, socket_connect_timeout=2)
    try:
        await r.set("k", "async")
        assert await r.get("k") == b"async"
    finally:
        await r.aclose()


def test_wait_replicas_counts_the_replica(shared_set: SentinelSet) -> None:
    r = connection.connect(shared_set.url, socket_connect_timeout=2)
    try:
        pipe = r.pipeline(transaction=False)
        pipe.set("job", "queued")
        connection.wait_replicas(pipe, 1, timeout_ms=5000)
        *_, acked = pipe.execute()
        assert connection.require_replicas(acked, 1) == 1
        with shared_set.replica.conn() as replica:
            assert replica.get("job") == b"queued"
    finally:
        r.close()


def test_without_a_replica_a_durable_write_is_refused(sentinel_set: SentinelSet) -> None:
    sentinel_set.replica.kill()
    r = connection.connect(sentinel_set.primary_url)
    try:
        pipe = r.pipeline(transaction=False)
        pipe.set("job", "queued")
        connection.wait_replicas(pipe, 1, timeout_ms=200)
        *_, acked = pipe.execute()
        assert acked == 0
        with pytest.raises(BrokerUnavailable, match="0 of 1"):
            connection.require_replicas(acked, 1)
    finally:
        r.close()


def test_after_the_primary_dies_the_same_url_reaches_the_promoted_replica(sentinel_set: SentinelSet) -> None:
    old_port, replica_port = sentinel_set.primary.port, sentinel_set.replica.port
    r = connection.connect(sentinel_set.url, socket_connect_timeout=1, socket_timeout=2)
    try:
        pipe = r.pipeline(transaction=False)
        pipe.set("before", "1")
        connection.wait_replicas(pipe, 1, timeout_ms=5000)
        assert pipe.execute()[-1] == 1
        sentinel_set.fail_primary()
        assert sentinel_set.primary_addr() == {("127.0.0.1", replica_port)}
        # The long-lived client finds the new primary by itself: its pooled connection to the
        # dead primary fails once (BrokerUnavailable for a caller), then it asks the sentinels.
        value = None
        for _ in range(3):
            try:
                value = r.get("before")
                break
            except redis.exceptions.ConnectionError:
                continue
        assert value == b"1"
        r.set("after", "2")
        fresh = connection.connect(sentinel_set.url, socket_connect_timeout=1)
        try:
            assert fresh.get("after") == b"2"
            assert fresh.connection_pool.get_master_address() == ("127.0.0.1", replica_port)  # type: ignore[attr-defined]
            assert old_port != replica_port
        finally:
            fresh.close()
    finally:
        r.close()


def test_a_service_the_sentinels_do_not_know_is_a_connection_error(shared_set: SentinelSet) -> None:
    url = shared_set.url.replace(f"/{SERVICE}/", f"/nope-{uuid.uuid4().hex[:6]}/")
    r = connection.connect(url, socket_connect_timeout=1)
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="No master found"):
            r.ping()
    finally:
        r.close()


def test_kombu_reaches_the_primary_through_celery_broker(shared_set: SentinelSet) -> None:
    import kombu

    url, options = connection.celery_broker(shared_set.url)
    with kombu.Connection(url, transport_options=options) as conn:
        queue = conn.SimpleQueue(f"icow-test-{uuid.uuid4().hex[:8]}")
        queue.put({"hello": "sentinel"}, serializer="json")
        message = queue.get(timeout=5)
        assert message.payload == {"hello": "sentinel"}
        message.ack()
        queue.close()


def test_rediss_sentinel_urls_verify_the_server_like_rediss() -> None:
    """TLS under Sentinel takes its CA like rediss:// (URL, else ICOW_REDIS_CA), and kombu gets
    CERT_REQUIRED. (Not run against a TLS Sentinel: the embedded server has no TLS.)"""
    import ssl

    from icow import settings

    url = "rediss+sentinel://:pw@s1,s2/icow/0?ssl_ca_certs=/ca.pem"
    env = settings.Settings(redis_ca="/env-ca.pem")
    assert connection.celery_ssl(url, None) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    assert connection.celery_ssl(url, env) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    assert connection.tls_options("rediss+sentinel://s1/icow", env) == {"ssl_ca_certs": "/env-ca.pem"}
    target = connection.parse_sentinel(url)
    assert target.redis_options()["ssl"] is True
    assert target.sentinel_options({})["ssl_ca_certs"] == "/ca.pem"


def test_the_cli_takes_sentinel_urls(shared_set: SentinelSet) -> None:
    """`icow status`, `icow failures` and `icow admin install` reach the primary through the
    sentinels, like the client, the worker and the exporter."""
    import json
    import subprocess
    import sys

    def icow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "icow.cli", *args, "--redis", shared_set.url], capture_output=True, text=True
        )

    installed = icow("admin", "install")
    assert installed.returncode == 0, installed.stderr
    status = icow("status", "--json")
    assert status.returncode == 0, status.stderr
    assert "workers" in json.loads(status.stdout)
    failures = icow("failures", "--json")
    assert failures.returncode == 0 and json.loads(failures.stdout) == [], failures.stderr
