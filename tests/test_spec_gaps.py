"""The spec gaps a client written from docs/PROTOCOL.md alone found (issue 16, finding 12),
closed against a real Redis and a real worker: cancel requests (§12: malformed arguments
refused at FCALL, a never-submitted token, the cancelled result's TTL, a custom id that reads
like a cancel answer) and the bound of a reply list (§11.2)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import functions, keys
from icow.cli.fleet import LocalRedis
from icow.client import _core, _wait
from icow.codec import packb
from icow.envelope import job_id_for_token
from icow.errors import BrokerUnavailable, InvalidInput, JobCancelled
from icow.result import failure_meta

from .clients import KINDS, make_client
from .conftest import WorkerProcess

X = np.ones((1, 4), np.float32)
GOLDEN = Path(__file__).resolve().parent / "golden"
NOBODY = "nobody-serves-this"  # a model no worker serves: its jobs stay queued, cancels are answered


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(redis_url: str, worker: WorkerProcess) -> Any:
    made: list[Any] = []

    def make(kind: str, **options: Any) -> Any:
        made.append(make_client(kind, redis_url, **options))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_icow_cancel_request_refuses_malformed_arguments_and_queues_nothing(
    r: redis.Redis, worker: WorkerProcess
) -> None:
    """The golden refusals: each FCALL fails with ICOW_INVALID (no worker would act on it, so
    its caller would otherwise wait its whole timeout); the client maps it to InvalidInput."""
    vector = json.loads((GOLDEN / "cancel_request.json").read_text())
    before = r.zcard(keys.CANCELS)
    for case in vector["refused"]:
        with pytest.raises(redis.exceptions.ResponseError) as info:
            r.fcall(functions.CANCEL_REQUEST, 1, keys.CANCELS, *case["args"])
        assert str(info.value).startswith(case["error"]), case["doc"]
        mapped = _core.broker_error(info.value, "cancelling a job")
        assert isinstance(mapped, InvalidInput) and case["error"].split(" ", 1)[1] in str(mapped)
    assert r.zcard(keys.CANCELS) == before


def test_a_refused_cancel_request_raises_invalid_input_through_the_client(connect: Any) -> None:
    """What a client not written in Python must do too: map ICOW_INVALID to InvalidInput at
    once (here the sync client's driver runs a cancel with a reply list no worker answers on)."""
    c = connect("sync")
    token = secrets.token_hex(16)
    deadline = _core.deadline_of(5)
    steps = _wait.cancel(job_id_for_token(token), token, "icow:reply:not-hex", deadline, 5)
    with pytest.raises(InvalidInput, match="reply list"):
        c._run(steps, "cancelling a job", deadline)


def test_a_malformed_token_is_refused_by_the_client_before_anything_is_sent(kind: str, connect: Any) -> None:
    c = connect(kind)
    for bad in ("A" * 32, "0" * 31, "0" * 32 + "\n", "g" * 32):
        with pytest.raises(InvalidInput, match="cancel token"):
            c.job(str(uuid.uuid4()), cancel_token=bad)


def test_cancelling_a_never_submitted_token_pre_empts_its_job(kind: str, connect: Any, r: redis.Redis) -> None:
    """§12: the fleet cannot tell a queued job from one never submitted, so the cancel answers
    True and writes JobCancelled under the id; a job submitted later under that id is dropped
    at its claim (the cancel came first, it wins)."""
    c = connect(kind)
    token = secrets.token_hex(16)
    job_id = job_id_for_token(token)
    assert c.job(job_id, cancel_token=token).cancel(timeout_s=30) is True
    assert c.job(job_id).status() == "failed"
    with pytest.raises(JobCancelled):
        c.job(job_id).result(timeout_s=5)
    assert 0 < r.ttl(keys.result(job_id)) <= keys.DEFAULT_RESULT_TTL_S  # no TTL sent: one day
    late = c.submit("mlp", {"x": X}, job_id=job_id)
    with pytest.raises(JobCancelled):
        late.result(timeout_s=30)


def test_a_cancelled_result_keeps_the_jobs_own_ttl(kind: str, connect: Any, r: redis.Redis) -> None:
    """§11.1/§12: the submitting client sends the job's TTL with its cancel request, so the
    JobCancelled result (and the done state 7 days longer) expire like the job's result would."""
    c = connect(kind, require_published=False)
    job = c.submit(NOBODY, {"x": X}, result_ttl_s=120)
    assert job.cancel(timeout_s=30) is True
    assert 0 < r.ttl(keys.result(job.id)) <= 120
    assert keys.DONE_EXTRA_TTL_S < r.ttl(keys.state(job.id)) <= 120 + keys.DONE_EXTRA_TTL_S
    with pytest.raises(JobCancelled):
        job.result(timeout_s=5)


def test_a_custom_id_that_reads_like_a_cancel_answer_does_not_meet_it(kind: str, connect: Any, r: redis.Redis) -> None:
    """§12: entries on a reply list are routed by status. This client's job ``cancel:<id>`` and
    the cancel answer for its job ``<id>`` share a task_id on the wire, yet each reaches its own
    waiter (the job's SUCCESS entry is not taken for the cancel answer, nor the other way)."""
    c = connect(kind, require_published=False)
    other = c.submit(NOBODY, {"x": X})  # stays queued: nobody serves the model
    twin = c.submit("mlp", {"x": X}, job_id=f"cancel:{other.id}")
    await_result(r, twin.id)  # its entry now waits, unread, on our reply list
    assert other.cancel(timeout_s=30) is True
    assert twin.result(timeout_s=30)["y"].shape == (1, 3)
    with pytest.raises(JobCancelled):
        other.result(timeout_s=5)


def await_result(r: redis.Redis, job_id: str) -> None:
    """Until the job's result key exists (subscribe, then read, then listen: §10)."""
    with r.pubsub() as ps:
        ps.subscribe(keys.result_channel(job_id))
        while (m := ps.get_message(timeout=30)) is None or m["type"] != "subscribe":
            assert m is not None, "no subscription confirmed"
        while not r.exists(keys.result(job_id)):
            m = ps.get_message(timeout=30)
            assert m is not None, f"job {job_id} was never answered"


def test_a_reply_list_keeps_its_newest_entries(r: redis.Redis, worker: WorkerProcess) -> None:
    """§11.2: results pushed to a reply list nobody reads are bounded: the list keeps its newest
    REPLY_MAX entries (and expires after the longest TTL pushed); every result stays in its key."""
    reply = keys.reply(secrets.token_hex(16))
    total, chunk = keys.REPLY_MAX + 25, 1000
    ids = [f"bound-{uuid.uuid4()}" for _ in range(total)]
    for i in range(0, total, chunk):
        part = ids[i : i + chunk]
        fkeys = [keys.runs("bound-test")]
        args: list[Any] = [0, len(part), 60]
        for job_id in part:
            fkeys += [keys.result(job_id), keys.state(job_id), reply]
            meta = failure_meta(job_id, error_type="InternalError", message="x", worker="bound-test")
            args += [packb(meta), 60]
        assert r.fcall(functions.ANSWER, len(fkeys), *fkeys, *args) == [1] * len(part)
    assert r.llen(reply) == keys.REPLY_MAX
    first = _core.parse_entry(r.lindex(reply, 0))
    assert first is not None and first[0] == ids[total - keys.REPLY_MAX]
    assert 0 < r.ttl(reply) <= 60
    assert r.exists(keys.result(ids[0])) == 1  # trimmed from the list, still in its key
    r.delete(reply, *[keys.result(j) for j in ids], *[keys.state(j) for j in ids])


def test_onnx_runtime_refusals_at_run_time_are_named() -> None:
    """§14: what ONNX Runtime itself refuses at run time (an invalid argument) is InvalidJob with
    a prefix saying so, then ORT's own text; any other ORT failure is InternalError."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from icow.workers import runner

    def session(nodes: list[Any], inits: list[Any]) -> Any:
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    ident = session([helper.make_node("Identity", ["a"], ["y"])], [])
    with pytest.raises(Exception) as refused:
        ident.run(None, {"a": np.ones(3, np.float64)})  # ORT's own type check: InvalidArgument
    error_type, message = runner._error_type(refused.value)
    assert error_type == "InvalidJob" and message.startswith(runner.RUN_REFUSAL_PREFIX)
    assert message.removeprefix(runner.RUN_REFUSAL_PREFIX) == str(refused.value)
    shape = numpy_helper.from_array(np.array([2, -1], np.int64), "s")
    reshape = session([helper.make_node("Reshape", ["a", "s"], ["y"])], [shape])
    with pytest.raises(Exception) as failed:
        reshape.run(None, {"a": np.ones(3, np.float32)})  # 3 values cannot be [2, -1]: ORT's Fail
    assert runner._error_type(failed.value) == ("InternalError", f"{type(failed.value).__name__}: {failed.value}")


def test_a_re_attached_wait_against_a_redis_frozen_mid_wait_is_broker_unavailable(kind: str) -> None:
    """§10/§14: after an empty slice a re-attached wait reads the keys again on its command
    connection (once more at the timeout, too), so a Redis frozen after the subscription is
    BrokerUnavailable within the timeout plus the margin, not a JobTimeout that blames the job."""
    server = LocalRedis()
    c = make_client(kind, server.url)
    try:
        job_id = str(uuid.uuid4())
        frozen = []

        def freeze_once_listening(inner: _wait.Steps) -> _wait.Steps:
            reply: Any = None
            while True:
                try:
                    op = inner.send(reply)
                except StopIteration as stop:
                    return stop.value
                if isinstance(op, _wait.Listen) and not frozen:
                    os.kill(server.proc.pid, signal.SIGSTOP)  # subscribed, keys read: now frozen
                    frozen.append(time.monotonic())
                reply = yield op

        timeout_s = 3.0
        deadline = _core.deadline_of(timeout_s)
        with pytest.raises(BrokerUnavailable):
            c._run(freeze_once_listening(_wait.wait_other(job_id, deadline, timeout_s)), "waiting", deadline)
        assert frozen and time.monotonic() - frozen[0] < timeout_s + _core.MARGIN_S + 5.0  # 5 s: CI slack
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        c.close()
        server.stop()
