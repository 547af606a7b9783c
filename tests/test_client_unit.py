"""The client's I/O-free core: the public surface, what an import pulls in, validation before
anything reaches Redis, the submit call's layout, statuses, how Redis failures surface, the
wait generators step by step, and the reply routers (threads and coroutines) that never strand
a reply. Nothing here needs a Redis server; tests/test_client.py runs the same client against
a real one."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import threading
import time
from typing import Any

import numpy as np
import pytest
import redis.exceptions

import icow.client
from icow import keys
from icow.client import Client, _core, _wait
from icow.client._wait import ReadKeys, ReadReplies, ReplyBox
from icow.codec import packb, unpackb
from icow.envelope import job_id_for_token
from icow.errors import (
    BrokerFull,
    BrokerUnavailable,
    InvalidInput,
    JobNotFound,
    JobTimeout,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from icow.result import Result, failure_meta, success_meta
from icow.result import of as result_of

from .conftest import run_python

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens: any I/O would fail


def meta(job_id: str, status: str = "SUCCESS") -> dict[str, Any]:
    if status == "SUCCESS":
        return success_meta(job_id, model="m", version=1, outputs=[], worker="w", timing={})
    return failure_meta(job_id, error_type="JobCancelled", message="cancelled")


def packed(job_id: str, status: str = "SUCCESS") -> bytes:
    return packb(meta(job_id, status))


# -- surface and imports


def test_public_surface_is_locked() -> None:
    assert sorted(icow.client.__all__) == [
        "AsyncBulk",
        "AsyncClient",
        "AsyncJob",
        "Bulk",
        "Client",
        "IcowError",
        "Job",
        "JobInfo",
        "JobStatus",
        "ModelInfo",
        "TensorSpec",
    ]
    for name in icow.client.__all__:
        assert getattr(icow.client, name) is not None


def test_importing_the_client_pulls_in_no_celery_no_onnxruntime_and_not_the_async_client() -> None:
    proc = run_python(
        "import sys\n"
        "import redis\n"
        "redis_brings_asyncio = 'asyncio' in sys.modules\n"  # redis-py >= 4.2 imports redis.asyncio itself
        "import icow.client\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'onnxruntime', 'onnx')]\n"
        "assert not heavy, heavy\n"
        "assert 'icow.client.aio' not in sys.modules\n"
        "assert redis_brings_asyncio or 'asyncio' not in sys.modules\n"
        "icow.client.AsyncClient\n"
        "assert 'icow.client.aio' in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- validation: refused before any I/O (the client below points at a closed port)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "../../etc/passwd"}, InvalidInput, "invalid model name"),
        ({"model": "mlp\n"}, InvalidInput, "invalid model name"),
        ({"inputs": {"x": [1.0, 2.0]}}, InvalidInput, "numpy.ndarray"),
        ({"inputs": {"x": np.array([object()])}}, InvalidInput, "object arrays"),
        ({"inputs": {"x": np.array([1j])}}, InvalidInput, "not supported"),
        ({"inputs": {}}, InvalidInput, "non-empty mapping"),
        ({"version": 0}, InvalidInput, "version"),
        ({"version": True}, InvalidInput, "version"),
        ({"priority": 11}, InvalidInput, "priority"),
        ({"outputs": []}, InvalidInput, "non-empty sequence of output names"),
        ({"outputs": "y"}, InvalidInput, "non-empty sequence of output names"),
        ({"deadline_s": 0}, InvalidInput, "deadline_s"),
        ({"result_ttl_s": 0}, InvalidInput, "result_ttl_s"),
        ({"job_id": "bad id"}, InvalidInput, "invalid job id"),
        ({"job_id": "ok\n"}, InvalidInput, "invalid job id"),
    ],
)
def test_bad_input_is_refused_before_anything_reaches_redis(kwargs: dict, error: type, message: str) -> None:
    args: dict[str, Any] = {"model": "mlp", "inputs": {"x": np.zeros((1, 4), np.float32)}}
    args.update(kwargs)
    with Client(CLOSED, connect_timeout_s=0.2, timeout_s=0.5) as c, pytest.raises(error, match=message):
        c.submit(**args)


def test_a_tensor_over_the_cap_is_payload_too_large() -> None:
    with Client(CLOSED, max_tensor_bytes=1000) as c, pytest.raises(PayloadTooLarge, match="limit"):
        c.submit("mlp", {"x": np.zeros(1000, np.float64)})


@pytest.mark.parametrize(
    ("option", "value"),
    [("timeout_s", 0), ("timeout_s", "1"), ("connect_timeout_s", -1), ("result_ttl_s", 0), ("inline_max_bytes", -1)],
)
def test_client_options_are_checked(option: str, value: object) -> None:
    with pytest.raises(InvalidInput, match=option):
        Client(CLOSED, **{option: value})


def test_from_env_reads_the_icow_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICOW_REDIS_URL", "redis://example.invalid:6379/0")
    monkeypatch.setenv("ICOW_RESULT_TTL_S", "60")
    monkeypatch.setenv("ICOW_INLINE_MAX_BYTES", "1024")
    monkeypatch.setenv("ICOW_MAX_TENSOR_BYTES", "2048")
    url, kwargs = _core.env_arguments({"result_ttl_s": 30})
    assert url == "redis://example.invalid:6379/0"
    assert kwargs == {"result_ttl_s": 30, "inline_max_bytes": 1024, "max_tensor_bytes": 2048}
    monkeypatch.delenv("ICOW_REDIS_URL")
    with pytest.raises(InvalidInput, match="ICOW_REDIS_URL"):
        _core.env_arguments({})


# -- what a submission sends


def options(**kw: Any) -> _core.Options:
    return _core.Options(url=CLOSED, **kw)


def test_a_job_gets_an_id_made_from_its_cancel_token_and_names_our_reply_list() -> None:
    reply = keys.reply("ab" * 16)
    job = _core.prepare(_core.Target("mlp"), {"x": np.zeros((1, 4), np.float32)}, options=options(), reply_to=reply)
    assert job.cancel_token is not None and job_id_for_token(job.cancel_token) == job.job_id
    envelope = json.loads(job.message)
    [[sent], _, _] = unpackb(base64.b64decode(envelope["body"]))
    assert envelope["headers"]["id"] == sent["id"] == job.job_id and sent["reply_to"] == reply
    assert envelope["properties"]["delivery_info"]["routing_key"] == "icow:q:mlp"
    custom = _core.prepare(
        _core.Target("mlp"), {"x": np.zeros(1, np.float32)}, options=options(), reply_to=reply, job_id="mine-1"
    )
    assert custom.job_id == "mine-1" and custom.cancel_token is None


def test_the_submit_call_follows_the_contract() -> None:
    target = _core.Target("mlp", version=2, priority=5)
    reply = keys.reply("cd" * 16)
    small = _core.prepare(target, {"x": np.zeros(4, np.float32)}, options=options(), reply_to=reply)
    big = _core.prepare(target, {"x": np.zeros(100_000, np.float32)}, options=options(), reply_to=reply)
    fkeys, args = _core.submit_call(target, [small, big], require_published=True)
    q = "icow:q:mlp@2"
    assert fkeys[:7] == [
        keys.LIMITS,
        "icow:live:mlp",
        "icow:wake:" + q,
        q,
        q + "\x06\x163",
        q + "\x06\x166",
        q + "\x06\x169",
    ]
    [input_key] = big.inputs
    assert keys.is_input_blob(input_key)
    assert fkeys[7:] == [q + "\x06\x163", q + "\x06\x163", input_key]
    assert args == ["mlp", "2", "1", "2", small.message, "0", big.message, "1"]  # counts in decimal ASCII
    latest = _core.Target("mlp")
    _, args = _core.submit_call(latest, [small], require_published=False)
    assert args[:4] == ["mlp", "", "0", "1"]


def test_large_inputs_travel_under_random_input_keys_and_bulk_chunks_always_do() -> None:
    reply = keys.reply("ef" * 16)
    target = _core.Target("mlp")
    big = np.arange(300_000, dtype=np.float32)  # 1.2 MB > the 256 KiB inline limit
    job = _core.prepare(target, {"x": big}, options=options(), reply_to=reply)
    [(key, data)] = job.inputs.items()
    assert keys.is_input_blob(key) and bytes(data) == big.tobytes() and len(job.message) < 2000
    small = {"x": np.zeros(4, np.float32)}
    assert not _core.prepare(target, small, options=options(), reply_to=reply).inputs
    assert len(_core.prepare(target, small, options=options(), reply_to=reply, inline_max_bytes=0).inputs) == 1
    again = _core.prepare(target, {"x": big}, options=options(), reply_to=reply)
    assert set(again.inputs) != set(job.inputs)  # 128 random bits each time


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [([1, 1, -1, 1], (1, 1, -1)), ([0, 5, 5, 1], (0, 5, 5)), ([0, 0, -1, 0], ModelNotFound)],
)
def test_the_submit_reply(reply: list[int], outcome: Any) -> None:
    target = _core.Target("mlp", version=3)
    if outcome is ModelNotFound:
        with pytest.raises(ModelNotFound, match="no live worker serves model 'mlp' version 3"):
            _core.submit_outcome(target, reply)
    else:
        assert _core.submit_outcome(target, reply) == outcome


# -- statuses and results


@pytest.mark.parametrize(
    ("result", "state", "status"),
    [
        (packed("j"), b"done", "succeeded"),
        (packed("j", "FAILURE"), b"done", "failed"),
        (None, b"running", "running"),
        (None, None, "queued"),  # no record yet: queued, or an id nobody submitted
        (None, b"done", JobNotFound),  # answered, and the result has expired
        (packed("other"), b"running", "running"),  # a result that is not this job's does not count
    ],
)
def test_status_from_the_result_and_state_keys(result: Any, state: Any, status: Any) -> None:
    if status is JobNotFound:
        with pytest.raises(JobNotFound, match="expired"):
            _core.status_of("j", result, state)
    else:
        assert _core.status_of("j", result, state) == status


def test_reply_entries_are_routed_by_task_id_and_garbage_is_dropped() -> None:
    box = ReplyBox(keys.reply("01" * 16), stash_max=3)
    cancel = packb({"status": "CANCEL", "task_id": "cancel:j1", "result": 1})
    got = box.deliver([packed("j1"), cancel, b"\xc1 not msgpack", packb({"status": "SUCCESS"})])
    assert got == {"j1", _core.cancel_key("j1")}  # a cancel answer is routed by its status
    assert list(box.take({_core.cancel_key("j1")})) == [_core.cancel_key("j1")]
    assert _core.cancel_outcome(meta_of(cancel))
    custom = packed("cancel:j1")  # a job whose custom id reads like a cancel answer: its own entry
    assert box.deliver([custom, cancel]) == {"cancel:j1", _core.cancel_key("j1")}
    assert box.take({"cancel:j1"})["cancel:j1"].status == "SUCCESS"
    assert box.take({_core.cancel_key("j1")})[_core.cancel_key("j1")].status == "CANCEL"
    box.deliver([packed(f"k{i}") for i in range(5)])  # over the cap: the oldest go (their keys keep them)
    assert box.take({"j1", "k0", "k1", "k2", "k3", "k4"}).keys() == {"k2", "k3", "k4"}


def meta_of(raw: bytes) -> Result:
    entry = _core.parse_entry(raw)
    assert entry is not None
    return entry[1]


def test_a_read_watches_the_reply_list_and_at_most_64_bells() -> None:
    box = ReplyBox(keys.reply("02" * 16))
    box.watch([keys.bell(f"j{i}") for i in range(100)])
    box.watch([keys.bell("j0")])
    read = box.read_keys()
    assert read[0] == box.reply_key and len(read) == 1 + _core.BELLS_MAX and read[1] == "icow:bell:j0"
    box.unwatch([keys.bell(f"j{i}") for i in range(100)])
    assert box.read_keys() == [box.reply_key, "icow:bell:j0"]  # j0 had two waiters


# -- Redis failures surface as ICOW errors


@pytest.mark.parametrize(
    ("exc", "error", "message"),
    [
        (
            redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
            BrokerFull,
            "out of memory",
        ),
        (redis.exceptions.ResponseError("OOM command not allowed"), BrokerFull, "out of memory"),
        (
            redis.exceptions.NoPermissionError("User c has no permissions to run the 'eval' command"),
            PermissionDenied,
            "ACL",
        ),
        (redis.exceptions.ResponseError("ERR Function not found"), BrokerUnavailable, "not installed"),
        (redis.exceptions.ConnectionError("Connection refused"), BrokerUnavailable, "unavailable"),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), BrokerUnavailable, "did not answer in time"),
        (TimeoutError(), BrokerUnavailable, "did not answer in time"),
        (ConnectionResetError(104, "reset"), BrokerUnavailable, "unavailable"),
        (
            redis.exceptions.ResponseError("READONLY You can't write against a read only replica."),
            BrokerUnavailable,
            "READONLY",
        ),
    ],
)
def test_redis_failures_map_to_icow_errors(exc: Exception, error: type, message: str) -> None:
    mapped = _core.broker_error(exc, "submitting jobs")
    assert type(mapped) is error and message in str(mapped)


def test_icow_errors_and_other_bugs_pass_through_unmapped() -> None:
    assert _core.broker_error(JobTimeout("late"), "waiting") is None  # a TimeoutError, but ours
    assert _core.broker_error(KeyError("x"), "waiting") is None


def test_no_redis_command_outlives_its_calls_deadline_by_more_than_the_margin() -> None:
    now = time.monotonic()
    assert _core.io_limit(now + 1.0, 0.0, 10.0) <= 1.0 + _core.MARGIN_S
    assert _core.io_limit(now + 1.0, 1.0, 10.0) <= 1.0 + _core.MARGIN_S  # a BLPOP of the whole second
    assert _core.io_limit(now - 5.0, 0.0, 10.0) == _core.MARGIN_S  # past the deadline: the margin only
    assert _core.io_limit(None, 2.0, 10.0) == 2.0 + 10.0 + _core.MARGIN_S  # no deadline: the client's bound


# -- the wait generators, step by step


def drive(steps: _wait.Steps, replies: list[Any]) -> tuple[list[Any], Any]:
    """Run a wait with scripted replies; (its operations, its result or raised error)."""
    ops: list[Any] = []
    reply: Any = None
    try:
        while True:
            op = steps.send(reply)
            ops.append(op)
            reply = replies.pop(0) if not isinstance(op, _wait.Finished) else None
    except StopIteration as stop:
        return ops, stop.value
    except Exception as exc:
        return ops, exc


def test_wait_own_reads_the_reply_list_and_the_bell_then_the_keys_between_slices() -> None:
    ops, result = drive(_wait.wait_own("j", None, None), [{}, [None, None], {"j": result_of(meta("j"))}])
    read, check, read2 = ops
    assert isinstance(read, ReadReplies) and read.wanted == {"j"} and read.bells == ("icow:bell:j",)
    assert check == ReadKeys(["celery-task-meta-j", "icow:state:j"]) and isinstance(read2, ReadReplies)
    assert result.job_id == "j"


def test_wait_own_finds_the_result_in_its_key_and_an_expired_one_is_job_not_found() -> None:
    assert drive(_wait.wait_own("j", None, None), [{}, [packed("j"), b"done"]])[1].job_id == "j"
    assert isinstance(drive(_wait.wait_own("j", None, None), [{}, [None, b"done"]])[1], JobNotFound)


def test_wait_own_stops_at_its_deadline_with_job_timeout() -> None:
    deadline = time.monotonic() - 0.01  # already past
    replies: list[Any] = [{}, [None, None]] * 1000
    steps = _wait.wait_own("j", deadline, 0.05)
    ops, result = drive(steps, replies)
    assert isinstance(result, JobTimeout) and ops == []


def test_wait_other_subscribes_before_reading_the_keys() -> None:
    ops, result = drive(_wait.wait_other("j", None, None), [None, [None, None], None, [None, None], packed("j")])
    assert ops[0] == _wait.Subscribe(["celery-task-meta-j"])
    assert isinstance(ops[1], ReadKeys) and isinstance(ops[2], _wait.Listen) and isinstance(ops[3], ReadKeys)
    assert result.job_id == "j"


def test_cancel_asks_the_fleet_then_waits_for_its_answer_on_our_reply_list() -> None:
    token = "ab" * 16
    job_id = job_id_for_token(token)
    reply = keys.reply("03" * 16)
    answer = {"status": "CANCEL", "task_id": f"cancel:{job_id}", "result": -1}
    ops, result = drive(
        _wait.cancel(job_id, token, reply, None, None), [1, {}, {_core.cancel_key(job_id): result_of(answer)}]
    )
    assert ops[0] == _wait.Call("icow_cancel_request", [keys.CANCELS], [token, reply])
    assert ops[1].wanted == {_core.cancel_key(job_id)} and result is False
    assert isinstance(drive(_wait.cancel(job_id, None, reply, None, None), [])[1], InvalidInput)


def test_as_completed_reads_replies_and_checks_the_keys_after_an_empty_slice() -> None:
    ops, _ = drive(
        _wait.as_completed(["a", "b", "c"], [], None, None),
        [{"a": result_of(meta("a"))}, {}, [None, b"done", packed("c"), b"done"]],
    )
    finished = [op for op in ops if isinstance(op, _wait.Finished)]
    assert [(f.job_id, type(f.error).__name__ if f.error else f.meta.job_id) for f in finished] == [
        ("a", "a"),
        ("b", "JobNotFound"),
        ("c", "c"),
    ]
    check = next(op for op in ops if isinstance(op, ReadKeys))
    assert check.keys == [f"{k}{j}" for j in ("b", "c") for k in ("celery-task-meta-", "icow:state:")]


def test_as_completed_checks_the_keys_every_slice_even_while_replies_keep_arriving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/PROTOCOL.md §10: the keys check is time-based. Replies for some jobs arrive in every
    read, yet once SLICE_S has passed since the last check the keys of the rest are read (an
    entry of theirs may have been taken by another reader or trimmed)."""
    clock = [1000.0]
    monkeypatch.setattr(_wait.time, "monotonic", lambda: clock[0])

    def arrives(job_id: str, after_s: float) -> dict[str, Any]:
        clock[0] += after_s
        return {job_id: meta(job_id)}

    steps = _wait.as_completed(["a", "b", "c", "lost"], [], None, None)
    op = steps.send(None)
    assert isinstance(op, ReadReplies) and op.slice_s == _core.SLICE_S
    op = steps.send(arrives("a", 1.5))  # 1.5 s in: no check yet
    assert isinstance(op, _wait.Finished) and op.job_id == "a"
    op = steps.send(None)
    assert isinstance(op, ReadReplies) and op.slice_s == pytest.approx(_core.SLICE_S - 1.5)  # up to the check
    op = steps.send(arrives("b", 0.6))  # 2.1 s since the start: the check is due
    assert isinstance(op, _wait.Finished) and op.job_id == "b"
    op = steps.send(None)
    assert op == ReadKeys([f"{k}{j}" for j in ("c", "lost") for k in ("celery-task-meta-", "icow:state:")])
    op = steps.send([None, None, packed("lost"), b"done"])
    assert isinstance(op, _wait.Finished) and op.job_id == "lost" and op.meta is not None


def test_wait_other_reads_the_keys_every_slice_even_while_messages_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_wait.time, "monotonic", lambda: clock[0])
    steps = _wait.wait_other("j", None, None)
    assert isinstance(steps.send(None), _wait.Subscribe)
    assert isinstance(steps.send(None), ReadKeys)
    assert isinstance(steps.send([None, None]), _wait.Listen)
    clock[0] += 2.5
    assert isinstance(steps.send(packed("not-j")), ReadKeys)  # a message, but not the answer, and due


# -- the routers: a reply popped by one waiter reaches another without a lost wakeup


class FakeReplyList:
    """An event-driven reply list: a read blocks until an entry is pushed (whatever its
    timeout: the slices here are an hour) or the list is closed; it notes who read."""

    def __init__(self) -> None:
        self.items: collections.deque[bytes] = collections.deque()
        self.cond = threading.Condition()
        self.readers: list[str] = []
        self.closed = False

    def push(self, raw: bytes) -> None:
        with self.cond:
            self.items.append(raw)
            self.cond.notify_all()

    def blpop(self, read_keys: list[str], timeout: float, deadline: float | None) -> bytes | None:
        with self.cond:
            self.readers.append(threading.current_thread().name)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.items or self.closed)
            return self.items.popleft() if self.items else None

    def drain(self, deadline: float | None) -> list[bytes]:
        with self.cond:
            out = list(self.items)
            self.items.clear()
            return out

    def has_read(self, name: str, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: name in self.readers, timeout_s)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def test_the_thread_router_files_a_reply_before_it_wakes_the_other_waiters() -> None:
    """Thread A reads and pops B's reply, then takes the rest of the list (LPOP) before filing.
    That LPOP is held until B has started a read of its own (at most 1 s): a router that woke
    B before filing (issue 11: "wakes the others, then stashes") lets B start an hour-long read
    while its reply is on its way to the box, and B never returns. A correct router has
    filed B's reply before anyone can wake, so B finds it and never reads."""
    from icow.client._reader_sync import Router as _Router

    fake = FakeReplyList()

    def held_drain(deadline: float | None) -> list[bytes]:
        fake.has_read("waiter-b", 1.0)
        return fake.drain(deadline)

    router = _Router(ReplyBox(keys.reply("04" * 16)), fake.blpop, held_drain)
    got: dict[str, Any] = {}

    def waiter(job_id: str) -> None:
        got[job_id] = router.wait({job_id}, (), 3600.0, None)

    a = threading.Thread(target=waiter, args=("a",), name="waiter-a")
    b = threading.Thread(target=waiter, args=("b",), name="waiter-b")
    try:
        a.start()
        assert fake.has_read("waiter-a", 10)
        b.start()
        time.sleep(0.1)  # let B wait on the router (either way, the assertions below hold)
        fake.push(packed("b"))
        b.join(30)
        assert not b.is_alive(), "B slept through a read with its reply in the box (lost wakeup)"
        assert got["b"]["b"].job_id == "b" and "waiter-b" not in fake.readers
        fake.push(packed("a"))
        a.join(30)
        assert got["a"]["a"].job_id == "a"
    finally:
        fake.close()
        a.join(5)
        b.join(5)


def test_the_thread_router_returns_empty_when_the_slice_passes() -> None:
    from icow.client._reader_sync import Router as _Router

    box = ReplyBox(keys.reply("05" * 16))
    router = _Router(box, lambda keys_, timeout, deadline: time.sleep(timeout), lambda deadline: [])
    assert router.wait({"x"}, ("icow:bell:x",), 0.05, None) == {}
    assert box.read_keys() == [box.reply_key]  # the bell is no longer watched


async def test_the_coroutine_router_has_one_reader_and_wakes_each_waiter_with_its_reply() -> None:
    from icow.client._reader_aio import AsyncRouter as _AsyncRouter

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    reads = 0

    async def blpop(read_keys: list[str], timeout: float) -> bytes:
        nonlocal reads
        reads += 1
        return await queue.get()  # an hour-long slice: only a reply ends it

    async def drain() -> list[bytes]:
        out = []
        while not queue.empty():
            out.append(queue.get_nowait())
        return out

    router = _AsyncRouter(ReplyBox(keys.reply("06" * 16)), blpop, drain)
    try:
        a = asyncio.ensure_future(router.wait({"a"}, (), 3600.0))
        b = asyncio.ensure_future(router.wait({"b"}, ("icow:bell:b",), 3600.0))
        while reads == 0:  # the one reader task has started its read
            await asyncio.sleep(0)
        queue.put_nowait(packed("b"))
        assert (await asyncio.wait_for(b, 10))["b"].job_id == "b"
        assert not a.done()
        queue.put_nowait(packed("a"))
        assert (await asyncio.wait_for(a, 10))["a"].job_id == "a"
        assert reads <= 3  # one reader task, whatever the number of waiters
    finally:
        await router.close()
