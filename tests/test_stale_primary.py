"""A returning old primary that is still a primary (the sentinels have not converted it yet):
does anything write to it? Real servers: a primary, a replica and three sentinels
(tests/sentinel.py); the test, not the sentinels' timing, keeps the old primary a primary
(REPLICAOF and SLAVEOF renamed away or refused by ACL on it), so the window is as long as the
test needs.

Two ways back:

* killed (SIGKILL) and restarted: it returns empty and every connection to it died with it;
  clients and workers that resolve through the sentinels are told the new primary and never
  write to it.
* frozen (SIGSTOP: a hung host, a partition) and resumed: connections opened before the freeze
  are still up, to a node that still says ``role:master``. Without a check a long-lived client
  would keep writing there and lose those jobs when the sentinels convert it (its data is then
  replaced by the new primary's). ICOW's Sentinel connections re-ask the sentinels at most
  every :data:`icow.connection.SENTINEL_RECHECK_S` and drop a connection to a node that is no
  longer the primary before using it (icow/connection.py), so the next command lands on the
  new primary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from icow import connection, functions, keys
from icow.client import AsyncClient, Client
from icow.errors import BrokerUnavailable
from icow.workers import samples
from tests.conftest import WorkerProcess
from tests.sentinel import SentinelSet

X = {"x": np.ones((1, 2), np.float32)}


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    s = SentinelSet()
    with s.primary.conn() as r:
        functions.install(r)  # what the first worker does at start
    yield s
    s.stop()


def _icow_keys(node_conn: object) -> list[bytes]:
    return sorted(node_conn.keys("icow:*") + node_conn.keys("celery-task-meta-*"))  # type: ignore[attr-defined]


def _submit_retrying(client: Client, model: str, tries: int = 3) -> str:
    """A caller's submit: a BrokerUnavailable (the connection to the dead node failing once) is
    retried, as callers do."""
    for i in range(tries):
        try:
            return client.submit(model, X).id
        except BrokerUnavailable:
            if i == tries - 1:
                raise
    raise AssertionError("unreachable")


def test_a_killed_primary_that_returns_as_a_primary_gets_no_writes(sentinel_set: SentinelSet, tmp_path: Path) -> None:
    s = sentinel_set
    samples.scale(tmp_path / "scale" / "1" / "model.onnx", 2.0)
    w = WorkerProcess(tmp_path, s.url, f"stale-{os.getpid()}@local")
    try:
        with Client(s.url, timeout_s=5) as client:
            assert float(client.infer("scale", X, timeout_s=30)["y"][0, 0]) == 2.0
            old = s.primary
            s.fail_primary()
            s.revive(old, as_replica=False)  # back, empty, and a primary for as long as this test runs
            with old.conn() as stale:
                assert stale.execute_command("ROLE")[0] == b"master"
            jobs = [_submit_retrying(client, "scale") for _ in range(10)]
            assert [float(client.job(j).result(timeout_s=30)["y"][0, 0]) for j in jobs] == [2.0] * 10
            with Client(s.url, durable=True, timeout_s=5) as fresh:  # a client made after the return
                pass
            with old.conn() as stale:
                # Nothing reached it: no job, no result, no heartbeat of the worker.
                assert _icow_keys(stale) == []
            with s.primary.conn() as primary:
                assert primary.exists(keys.worker(w.name))
            del fresh
    finally:
        w.stop()


def _freeze_and_fail_over(s: SentinelSet) -> object:
    """SIGSTOP the primary until the sentinels promote the replica, then SIGCONT it: it comes
    back a primary with every connection opened before the freeze still up. The sentinels may
    not convert it (REPLICAOF refused to the default user they use), so it stays one."""
    old = s.primary
    with old.conn() as c:
        c.execute_command("ACL", "SETUSER", "default", "-replicaof", "-slaveof")
    old.proc.send_signal(19)  # SIGSTOP
    try:
        s.wait_promoted(s.replica)
    finally:
        old.proc.send_signal(18)  # SIGCONT
    s.primary, s.replica = s.replica, old
    with old.conn() as c:
        assert c.execute_command("ROLE")[0] == b"master"
    return old


def test_a_frozen_primary_that_returns_gets_no_writes_from_a_client_that_outlived_it(
    sentinel_set: SentinelSet,
) -> None:
    s = sentinel_set
    with Client(s.url, require_published=False, timeout_s=3) as client:
        first = client.submit("m", X).id  # the client's pooled connection: to the primary
        old = _freeze_and_fail_over(s)
        later = [_submit_retrying(client, "m") for _ in range(5)]
        with old.conn() as stale:
            on_stale = [m for m in stale.lrange(keys.queue("m"), 0, -1)]
        with s.primary.conn() as primary:
            on_new = int(primary.llen(keys.queue("m")))
        # The first job was replicated before the freeze; every later one is on the new primary.
        assert len(on_stale) == 1 and on_new == 1 + len(later), (first, later)


async def test_the_async_client_also_leaves_a_returning_frozen_primary_alone(sentinel_set: SentinelSet) -> None:
    s = sentinel_set
    client = AsyncClient(s.url, require_published=False, timeout_s=3)
    try:
        await client.submit("a", X)
        old = _freeze_and_fail_over(s)
        for _ in range(5):
            for attempt in range(3):
                try:
                    await client.submit("a", X)
                    break
                except BrokerUnavailable:
                    if attempt == 2:
                        raise
        with old.conn() as stale:
            assert int(stale.llen(keys.queue("a"))) == 1
        with s.primary.conn() as primary:
            assert int(primary.llen(keys.queue("a"))) == 6
    finally:
        await client.close()


def test_a_raw_connection_of_icow_connection_moves_too(sentinel_set: SentinelSet) -> None:
    """What workers use (icow.connection.connect): the same check."""
    s = sentinel_set
    r = connection.connect(s.url, socket_connect_timeout=1, socket_timeout=2)
    try:
        r.set("before", "1")
        old = _freeze_and_fail_over(s)
        for attempt in range(3):
            try:
                r.set("after", "2")
                break
            except Exception:
                if attempt == 2:
                    raise
        with old.conn() as stale:
            assert stale.get("after") is None
        with s.primary.conn() as primary:
            assert primary.get("after") == b"2"
    finally:
        r.close()
