"""Server-side scripts (icow.functions, icow/lua/icow.lua): every script is in the one library,
every key a function touches is passed in as a key, and the "library missing: install it and
retry" fallback is the one helper every caller uses (a pipelined FCALL too), on a real Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio

from icow import functions, keys
from icow.celery_message import created_from_message
from icow.cli.fleet import LocalRedis
from icow.codec import unpackb
from icow.errors import BrokerUnavailable
from icow.result import failure_meta
from icow.workers.broker import Answer, Broker
from icow.workers.queues import queue_states
from tests.rawjobs import job_message, submit

ROOT = Path(__file__).resolve().parent.parent
WORKER = "scripts-test@local"


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    srv = LocalRedis()
    yield srv
    srv.stop()


@pytest.fixture
def r(server: LocalRedis) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(server.url)
    conn.flushall()
    conn.execute_command("ACL", "SETUSER", "client", "reset", "on", ">pw", *keys.CLIENT_ACL_RULES)
    yield conn
    conn.close()


def lost(r: redis.Redis) -> None:
    """A Redis that lost its data (restarted without persistence): no library."""
    if r.function_list(library=functions.LIBRARY_NAME):
        r.function_delete(functions.LIBRARY_NAME)


def test_no_lua_outside_the_library() -> None:
    sources = [p for d in ("icow", "client", "workers") for p in (ROOT / d).rglob("*.py")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "redis.call(" not in text and ".eval(" not in text and "register_script" not in text, path


def test_the_library_builds_no_key_name() -> None:
    """Every key is passed in (KEYS): no key prefix appears in the code of the library."""
    code = [line.split("--", 1)[0] for line in functions.LIBRARY.splitlines()]
    prefixes = (keys.PREFIX, keys.RESULT_PREFIX)
    for n, line in enumerate(code, 1):
        for literal in re.findall(r"'([^']*)'|\"([^\"]*)\"", line):
            text = "".join(literal)
            assert not any(text.startswith(p) for p in prefixes), f"icow.lua line {n}: {line.strip()}"


def test_a_pipelined_call_reloads_a_lost_library_and_is_made_again(r: redis.Redis) -> None:
    lost(r)
    pipe = r.pipeline(transaction=False)
    pipe.fcall(functions.VERSION, 0)
    [reply] = pipe.execute(raise_on_error=False)
    assert functions.is_missing(reply)
    assert functions.reply_of(r, reply, functions.VERSION, [], []) == functions.LIBRARY_SHA.encode()
    assert r.function_list(library=functions.LIBRARY_NAME)
    assert functions.reply_of(r, b"as is", functions.VERSION, [], []) == b"as is"  # a reply passes through


def test_a_pipelined_call_passes_other_errors_on(r: redis.Redis) -> None:
    functions.install(r)
    pipe = r.pipeline(transaction=False)
    pipe.fcall(functions.CANCEL_REQUEST, 1, keys.CANCELS, "not-a-token", "x")
    [reply] = pipe.execute(raise_on_error=False)
    with pytest.raises(redis.exceptions.ResponseError, match="ICOW_INVALID"):
        functions.reply_of(r, reply, functions.CANCEL_REQUEST, [keys.CANCELS], ["not-a-token", "x"])


def test_a_user_that_may_not_load_code_gets_broker_unavailable(r: redis.Redis, server: LocalRedis) -> None:
    lost(r)
    client = redis.Redis.from_url(f"redis://client:pw@127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(BrokerUnavailable, match="functions are not installed"):
            functions.call(client, functions.VERSION, [], [])
        missing = redis.exceptions.ResponseError("ERR Function not found")
        with pytest.raises(BrokerUnavailable, match="functions are not installed"):
            functions.reply_of(client, missing, functions.VERSION, [], [])
    finally:
        client.close()
    assert not r.function_list(library=functions.LIBRARY_NAME)


async def test_the_async_twins_reload_a_lost_library(r: redis.Redis, server: LocalRedis) -> None:
    lost(r)
    ar = redis.asyncio.Redis.from_url(server.url)
    try:
        missing = redis.exceptions.ResponseError("ERR Function not found")
        got = await functions.reply_of_async(ar, missing, functions.VERSION, [], [])
        assert got == functions.LIBRARY_SHA.encode()
        lost(r)
        assert await functions.call_async(ar, functions.VERSION, [], []) == functions.LIBRARY_SHA.encode()
    finally:
        await ar.aclose()


def test_the_worker_reloads_a_lost_library_at_take_claim_and_answer(r: redis.Redis) -> None:
    """Each of the worker's pipelined calls survives a Redis that lost its functions."""
    functions.install(r)
    job_id, message = job_message("m", np.ones(2, np.float32))
    assert submit(r, "m", [message]) == 1
    broker = Broker(r, WORKER)
    lists = [(lst, keys.wake(keys.queue("m")), 4) for lst in keys.queue_lists(keys.queue("m"))]

    lost(r)
    take, _ = broker.take(lists)
    assert take is not None and take.messages == [message]  # the take only moves: no claim
    assert not r.exists(keys.state(job_id)) and not r.exists(keys.tries(job_id))

    lost(r)
    claimed, _ = broker.claim([(job_id, 600)])
    assert claimed == [(False, 1)]
    assert r.get(keys.state(job_id)) == b"running"

    lost(r)
    meta = failure_meta(job_id, error_type="InternalError", message="test", worker=WORKER)
    assert broker.answer([Answer(job_id, meta, 600)], acks=take.runs) == [True]
    assert unpackb(r.get(keys.result(job_id)))["status"] == "FAILURE"
    assert not r.exists(take.run)


def test_queue_states_peek_with_the_library(r: redis.Redis) -> None:
    functions.install(r)
    _, message = job_message("m", np.ones(2, np.float32))
    assert submit(r, "m", [message, message]) == 2
    r.sadd(keys.MODELS, "m")
    lost(r)  # icow_peek is in the library: a worker user reloads it
    [state] = queue_states(r, ["m"], now=created_from_message(message) + 5)
    assert state.backlog == 2
    assert state.oldest_age_s == pytest.approx(5, abs=0.01)
