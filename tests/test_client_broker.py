"""The client against a Redis that misbehaves: frozen (SIGSTOP: TCP connects, nothing answers),
gone, out of memory, refusing by ACL, or without ICOW's functions; and the least-privilege
client user (icow.keys.CLIENT_ACL_RULES) doing everything a caller does. Every case, for both
clients, ends in an ICOW error within the caller's timeout plus the documented margin."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from icow import functions, keys
from icow.cli.fleet import LocalRedis
from icow.client import _core
from icow.codec import packb
from icow.errors import BrokerFull, BrokerUnavailable, JobCancelled, JobTimeout, PermissionDenied
from icow.result import failure_meta

from .clients import KINDS, make_client
from .simfleet import SimWorker

X = np.ones((1, 4), np.float32)
BIG = np.ones(100_000, np.float32)  # over the inline limit: an input key
SLACK_S = 5.0  # what these tests allow past timeout + margin on a loaded CI machine (not a benchmark)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    srv = LocalRedis()
    yield srv
    os.kill(srv.proc.pid, signal.SIGCONT)
    srv.stop()


def publish(url: str, model: str) -> None:
    """A live version of ``model``, as a worker's heartbeat would leave it."""
    sim = SimWorker(url, model)
    sim.publish()
    sim.r.close()


def timed(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


FROZEN_CASES = {
    "infer, warm client": lambda c, fresh: c.infer("m", {"x": X}, timeout_s=1),
    "infer, fresh client": lambda c, fresh: fresh().infer("m", {"x": X}, timeout_s=1),
    "submit with a large input, fresh client": lambda c, fresh: fresh(timeout_s=1).submit("m", {"x": BIG}),
    "result of a re-attached job": lambda c, fresh: c.job(str(uuid.uuid4())).result(timeout_s=1),
    "status": lambda c, fresh: fresh(timeout_s=1).job(str(uuid.uuid4())).status(),
    "models": lambda c, fresh: fresh(timeout_s=1).models(),
}


@pytest.mark.parametrize("case", list(FROZEN_CASES))
def test_a_frozen_redis_ends_every_call_within_its_timeout(kind: str, server: LocalRedis, case: str) -> None:
    made: list[Any] = []

    def fresh(**options: Any) -> Any:
        made.append(make_client(kind, server.url, **options))
        return made[-1]

    warm = fresh()
    publish(server.url, "m")
    warm.ping()
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        error, elapsed = timed(lambda: FROZEN_CASES[case](warm, fresh))
        assert isinstance(error, (BrokerUnavailable, JobTimeout)), error
        assert elapsed < 1.0 + _core.MARGIN_S + SLACK_S
        closing, closed_in = timed(lambda: [c.close() for c in made])
        assert closing is None and closed_in < len(made) * (1.0 + _core.MARGIN_S) + SLACK_S
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_a_redis_nobody_listens_on_is_broker_unavailable(kind: str) -> None:
    with make_client(kind, "redis://127.0.0.1:1/0", connect_timeout_s=0.5, timeout_s=1) as c:
        for call in (lambda: c.infer("m", {"x": X}, timeout_s=2), c.models, lambda: c.job("j1").status()):
            with pytest.raises(BrokerUnavailable, match="unavailable"):
                call()


def test_a_full_redis_is_broker_full_and_leaves_nothing_behind(kind: str, server: LocalRedis) -> None:
    publish(server.url, "m")
    admin = redis.Redis.from_url(server.url)
    admin.config_set("maxmemory", "1")  # noeviction (LocalRedis's policy): every write is refused
    try:
        with make_client(kind, server.url) as c:
            for call in (
                lambda: c.submit("m", {"x": X}),
                lambda: c.submit("m", {"x": BIG}),
                lambda: c.submit_bulk("m", {"x": np.ones((10, 4), np.float32)}),
            ):
                with pytest.raises(BrokerFull, match="out of memory") as info:
                    call()
                assert isinstance(info.value, BrokerUnavailable)
        assert admin.keys("icow:in:*") == [] and admin.llen(keys.queue("m")) == 0
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()


def test_an_acl_refusal_is_permission_denied_naming_the_acl(kind: str, server: LocalRedis) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "nofcall", "on", ">pw", "~*", "&*", "+@all", "-fcall")
    admin.close()
    with make_client(kind, f"redis://nofcall:pw@127.0.0.1:{server.port}/0") as c:
        with pytest.raises(PermissionDenied, match="ACL user lacks a permission") as info:
            c.submit("m", {"x": X})
        assert not isinstance(info.value, BrokerUnavailable)  # retrying will not help


def test_a_missing_function_library_is_installed_when_the_user_may(kind: str, server: LocalRedis) -> None:
    publish(server.url, "m")
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "client", "reset", "on", ">pw", *keys.CLIENT_ACL_RULES)
    admin.function_delete(functions.LIBRARY_NAME)  # a Redis that lost its data, no worker yet
    try:
        with make_client(kind, f"redis://client:pw@127.0.0.1:{server.port}/0") as c:
            with pytest.raises(BrokerUnavailable, match="functions are not installed"):
                c.submit("m", {"x": X})
        with make_client(kind, server.url) as c:  # the default user may load it
            c.submit("m", {"x": X})
        assert admin.function_list(library=functions.LIBRARY_NAME)
    finally:
        admin.close()


def test_a_cancel_no_worker_answers_is_job_timeout(kind: str, server: LocalRedis) -> None:
    """Any live worker answers cancel requests, whatever the model: here there is none."""
    with make_client(kind, server.url, require_published=False) as c:
        job = c.submit("m", {"x": X})
        with pytest.raises(JobTimeout, match="no worker answered"):
            job.cancel(timeout_s=0.3)


# -- the least-privilege client user


@pytest.fixture(scope="module")
def acl_server() -> Iterator[tuple[LocalRedis, str]]:
    srv = LocalRedis()
    admin = redis.Redis.from_url(srv.url)
    admin.execute_command("ACL", "SETUSER", "icow-client", "reset", "on", ">client-pw", *keys.CLIENT_ACL_RULES)
    admin.close()
    yield srv, f"redis://icow-client:client-pw@127.0.0.1:{srv.port}/0"
    srv.stop()


def test_the_client_user_can_do_everything_a_caller_does(kind: str, acl_server: tuple[LocalRedis, str]) -> None:
    srv, url = acl_server
    sim = SimWorker(srv.url, f"acl-{kind}").start()
    try:
        with make_client(kind, url) as c:
            np.testing.assert_array_equal(c.infer(sim.model, {"x": X}, timeout_s=10)["y"], X * 2)
            job = c.submit(sim.model, {"x": BIG})
            np.testing.assert_array_equal(c.job(job.id).result(timeout_s=10)["y"], BIG * 2)
            assert job.status() == "succeeded" and c.models()[sim.model] == [1]
            bulk = c.submit_bulk(sim.model, {"x": np.ones((10, 4), np.float32)}, samples_per_job=4)
            assert bulk.result(timeout_s=10)["y"].shape == (10, 4) and c.bulk(bulk.id).progress() == (3, 3)
            assert len(list(c.as_completed([c.job(j.id) for j in bulk.jobs], timeout_s=10))) == 3
            reply_key = c.reply_key
        assert not redis.Redis.from_url(srv.url).exists(reply_key)  # closed: its reply list is gone
        idle = SimWorker(srv.url, f"acl-idle-{kind}").start(run_jobs=False)
        try:
            with make_client(kind, url) as c:
                queued = c.submit(idle.model, {"x": X})
                assert queued.cancel(timeout_s=10) is True
                with pytest.raises(JobCancelled):
                    queued.result(timeout_s=10)
        finally:
            idle.stop()
    finally:
        sim.stop()


def test_the_client_user_cannot_forge_what_another_caller_receives(acl_server: tuple[LocalRedis, str]) -> None:
    _, url = acl_server
    attacker = redis.Redis.from_url(url)
    victim_reply = keys.reply(uuid.uuid4().hex)
    forged = packb(failure_meta("j1", error_type="InvalidJob", message="forged"))
    try:
        for write in (
            lambda: attacker.rpush(victim_reply, forged),
            lambda: attacker.rpush(keys.bell("j1"), forged),
            lambda: attacker.set(keys.result("j1"), forged),
            lambda: attacker.set(keys.state("j1"), "done"),
            lambda: attacker.set(keys.output_blob("j1", 0), b"x"),
            lambda: attacker.eval("return 1", 0),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                write()
    finally:
        attacker.close()
