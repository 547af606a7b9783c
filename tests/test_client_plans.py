"""The client's submit plans, I/O-free (icow.client._submit): what one ``icow_submit`` round trip
asks its shell for, in order, and what it makes of the replies, errors included: the
library-missing fallback on one connection, durable WAIT, input keys deleted after a failed
call, ModelNotFound's reason, QueueFull and NotDurable carrying the jobs queued, and how the
asyncio client shares one call among coroutines. Each plan is driven here with scripted
replies, as a shell would; tests/test_client.py runs the same plans against a real Redis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis.exceptions

from icow import connection, functions, keys
from icow.client import _core, _ops, _submit
from icow.errors import BrokerFull, BrokerUnavailable, IcowError, ModelNotFound, NotDurable, QueueFull

REPLY = keys.reply("ab" * 16)
MISSING = redis.exceptions.ResponseError("ERR Function not found")


def options(**kw: Any) -> _core.Options:
    return _core.Options(url="redis://127.0.0.1:1/0", **kw)


def job(target: _core.Target, n: int = 4, **kw: Any) -> _core.PreparedJob:
    return _core.prepare(target, {"x": np.zeros(n, np.float32)}, options=options(), reply_to=REPLY, **kw)


def drive(steps: _ops.Steps, answers: list[Any]) -> tuple[list[Any], Any]:
    """Run a plan as a shell does: each operation gets the next answer (an exception is thrown
    in, as the shell's I/O raising it). Returns (operations, result or the error raised)."""
    run = _ops.Run(steps)
    ops: list[Any] = []
    try:
        for op in run:
            ops.append(op)
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                run.error = answer
            else:
                run.reply = answer
    except Exception as exc:
        return ops, exc
    return ops, run.result


def test_one_round_trip_sets_the_inputs_then_calls_icow_submit() -> None:
    target = _core.Target("mlp")
    big = job(target, 100_000)
    [(key, data)] = big.inputs.items()
    ops, outcome = drive(_submit.queue(target, [big], options(), None), [[True, [1, 1, -1, 1]]])
    [pipe] = ops
    assert isinstance(pipe, _ops.Pipeline) and pipe.errors_as_values
    assert pipe.commands[0] == _ops.Command("set", (key, data), {"ex": big.ttl_s})
    fkeys, args = _core.submit_call(target, [big], True)
    assert pipe.commands[1] == _ops.Command("fcall", (functions.SUBMIT, len(fkeys), *fkeys, *args))
    assert len(pipe.commands) == 2 and outcome == (1, 1, -1)


def test_a_missing_library_is_called_again_on_one_connection_with_the_wait() -> None:
    target = _core.Target("mlp", durable=True)
    j = job(target)
    ops, outcome = drive(_submit.queue(target, [j], options(), None), [[MISSING, 0], ([1, 1, -1, 1], 1)])
    pipe, alone = ops
    assert pipe.commands[-1] == _ops.Command("execute_command", ("WAIT", 1, 1000))  # durable: WAIT rides along
    assert isinstance(alone, _ops.CallAlone) and alone.reply is MISSING and alone.wait_ms == 1000
    assert outcome == (1, 1, -1)


def test_a_refused_input_set_deletes_the_inputs_and_raises_the_icow_error() -> None:
    target = _core.Target("mlp")
    big = job(target, 100_000)
    oom = redis.exceptions.OutOfMemoryError("OOM command not allowed")
    ops, error = drive(_submit.queue(target, [big], options(), None), [[oom, [1, 1, -1, 1]], None])
    assert ops[1] == _ops.Command("delete", tuple(big.inputs))
    assert isinstance(error, BrokerFull) and error.__cause__ is oom and "submitting a job" in str(error)


def test_a_failed_round_trip_deletes_the_inputs_even_when_the_delete_fails_too() -> None:
    target = _core.Target("mlp")
    jobs = [job(target, 100_000), job(target, 100_000)]
    down = BrokerUnavailable("Redis is unavailable while submitting jobs")
    ops, error = drive(_submit.queue(target, jobs, options(), None), [down, BrokerUnavailable("still down")])
    assert ops[1] == _ops.Command("delete", tuple(k for j in jobs for k in j.inputs)) and error is down


def test_not_served_reads_why_from_the_failed_hash_and_queues_nothing() -> None:
    target = _core.Target("mlp")
    failed = {b"1:w1": b"bad graph"}
    ops, error = drive(_submit.queue(target, [job(target)], options(), None), [[[0, 0, -1, 0]], failed])
    assert ops[1] == _ops.Command("hgetall", (keys.failed("mlp"),))
    assert isinstance(error, ModelNotFound) and "version 1 failed to load on worker w1: bad graph" in str(error)
    _, error = drive(_submit.queue(target, [job(target)], options(), None), [[[0, 0, -1, 0]], IcowError("no")])
    assert isinstance(error, ModelNotFound)  # the reason unreadable: ModelNotFound all the same


def test_a_durable_submit_no_replica_acknowledged_is_not_durable_naming_the_queued_jobs() -> None:
    target = _core.Target("mlp")
    jobs = [job(target), job(target), job(target)]
    _, error = drive(_submit.queue(target, jobs, options(durable=True), None), [[[2, 2, 2, 1], 0]])
    assert isinstance(error, NotDurable) and error.job_ids == [jobs[0].job_id, jobs[1].job_id]


@dataclass(frozen=True)
class Handle:
    id: str
    own: bool


def handle(j: _core.PreparedJob, own: bool) -> Handle:
    return Handle(j.job_id, own)


def test_submit_many_hands_back_every_queued_job_when_the_limit_or_not_durable_comes() -> None:
    target = _core.Target("mlp")
    jobs = [job(target) for _ in range(5)]
    ops, error = drive(_submit.many(target, jobs, 2, handle, options()), [(2, 2, 3), (1, 3, 3)])
    assert [len(op.jobs) for op in ops] == [2, 2] and all(isinstance(op, _ops.QueueJobs) for op in ops)
    assert isinstance(error, QueueFull) and error.queued == [Handle(j.job_id, True) for j in jobs[:3]]
    lost = connection.not_durable(0, 1, [jobs[2].job_id])
    _, error = drive(_submit.many(target, jobs, 2, handle, options()), [(2, 2, -1), lost])
    assert isinstance(error, NotDurable) and error.job_ids == [j.job_id for j in jobs[:3]]
    assert error.jobs == [Handle(j.job_id, True) for j in jobs[:3]]


def test_one_job_is_coalesced_unless_its_id_is_the_callers() -> None:
    target = _core.Target("mlp")
    ops, made = drive(_submit.one(target, job(target), handle, None), [(1, 1, -1)])
    assert ops[0].coalesce and made.own is True  # own: its answer comes to our reply list
    ops, made = drive(_submit.one(target, job(target, job_id="mine-1"), handle, None), [(1, 1, -1)])
    assert not ops[0].coalesce and made == Handle("mine-1", False)  # waited for like a re-attached job
    _, error = drive(_submit.one(target, job(target), handle, None), [(0, 3, 3)])
    assert isinstance(error, QueueFull) and error.queued == []


def test_a_shared_call_gives_each_coroutine_its_own_outcome() -> None:
    target = _core.Target("mlp")
    assert [_submit.share((2, 5, 5), i) for i in range(3)] == [(1, 5, 5), (1, 5, 5), (0, 5, 5)]
    first, second = job(target), job(target)
    lost = connection.not_durable(0, 1, [first.job_id])
    assert _submit.not_queued_with(lost, first, target) is lost
    assert isinstance(_submit.not_queued_with(lost, second, target), QueueFull)


def test_a_plan_error_thrown_in_reaches_the_caller_and_the_shell_sees_no_more_operations() -> None:
    target = _core.Target("mlp")
    with pytest.raises(BrokerUnavailable):
        run = _ops.Run(_submit.one(target, job(target), handle, None))
        for _op in run:
            run.error = BrokerUnavailable("down")
