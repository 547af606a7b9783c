"""Issue 16, findings 5-8 (client side): ``job.info()``, a custom job id reused with other
inputs (``JobIdConflict``; the same inputs stay idempotent), BYTES back as ``str``
(``icow.tensor.as_str``), and a client used after ``close()`` (``ClientClosed``).

The digest rule and its vectors are tests/golden (``digests.json``) and docs/PROTOCOL.md §8.4;
both clients are run against the simulated fleet (tests/simfleet.py) and a real worker."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from icow import digest, functions, keys, tensor
from icow.client import AsyncClient, Client, JobInfo
from icow.errors import (
    ClientClosed,
    IcowError,
    InvalidInput,
    InvalidJob,
    JobIdConflict,
    NoResultYet,
    remote_error,
)

from .clients import KINDS, make_client
from .conftest import WorkerProcess
from .simfleet import SimWorker

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(kind: str, redis_url: str) -> Iterator[Any]:
    c = make_client(kind, redis_url)
    yield c
    c.close()


def _model() -> str:
    return f"sim-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sim(redis_url: str) -> Iterator[SimWorker]:
    w = SimWorker(redis_url, _model()).start()
    yield w
    w.stop()


@pytest.fixture
def idle(redis_url: str) -> Iterator[SimWorker]:
    """Live, but leaves jobs queued for the test to take."""
    w = SimWorker(redis_url, _model()).start(run_jobs=False)
    yield w
    w.stop()


def _queued(r: redis.Redis, model: str) -> int:
    return sum(int(r.llen(q)) for q in keys.queue_lists(keys.queue(model, None)))


# -- finding 5: job.info()


def test_info_says_which_version_and_worker_ran_and_the_timings(client: Any, sim: SimWorker) -> None:
    job = client.submit(sim.model, {"x": X})
    with pytest.raises(NoResultYet, match="result"):
        job.info()
    job.result(timeout_s=10)
    info = job.info()
    assert isinstance(info, JobInfo)
    assert (info.job_id, info.status, info.model, info.version, info.worker) == (
        job.id,
        "succeeded",
        sim.model,
        1,
        "sim@test",
    )
    assert info.queued_s == 0.0 and info.compute_s == 0.0  # what the simulated worker wrote
    assert info.batch is None and info.batch_samples is None  # not in its timing map
    assert info.finished is not None
    with pytest.raises(AttributeError):
        info.version = 2  # type: ignore[misc]  # frozen


def test_info_of_a_failed_job_after_its_error(client: Any, idle: SimWorker) -> None:
    job = client.submit(idle.model, {"x": X})
    taken = idle.take()
    assert taken is not None and idle.claim(taken)
    idle.failure(taken, "InvalidJob", "input 'x': wrong shape")
    with pytest.raises(InvalidJob):
        job.result(timeout_s=10)
    info = job.info()
    assert info.status == "failed" and info.worker == "sim@test" and info.compute_s is None


def test_info_after_status_and_as_completed(client: Any, sim: SimWorker) -> None:
    jobs = [client.submit(sim.model, {"x": X}) for _ in range(3)]
    assert {j.info().status for j in client.as_completed(jobs, timeout_s=10)} == {"succeeded"}
    again = client.job(jobs[0].id)
    assert again.status() == "succeeded" and again.info().version == 1


def test_info_on_a_real_worker_names_the_version_that_ran(redis_url: str, worker: WorkerProcess) -> None:
    with Client(redis_url) as c:
        job = c.submit("scale", {"x": np.ones((3, 2), np.float32)})  # versions 1 and 2: latest runs
        assert float(job.result(timeout_s=30)["y"][0, 0]) == 3.0
        info = job.info()
        assert info.version == 2 and info.worker == worker.name and info.model == "scale"
        assert info.compute_s is not None and info.compute_s > 0 and info.queued_s is not None
        assert info.batch == 1 and info.batch_samples == 3
        pinned = c.submit("scale", {"x": np.ones((1, 2), np.float32)}, version=1)
        pinned.result(timeout_s=30)
        assert pinned.info().version == 1


# -- finding 6: a custom job id reused with other inputs


def test_a_custom_id_reused_with_other_inputs_is_refused_at_submit(client: Any, sim: SimWorker) -> None:
    job_id = f"dup-{uuid.uuid4().hex[:8]}"
    first = client.submit(sim.model, {"x": np.ones((1, 4), np.float32)}, job_id=job_id)
    np.testing.assert_array_equal(first.result(timeout_s=10)["y"], np.full((1, 4), 2, np.float32))
    with pytest.raises(JobIdConflict, match=job_id) as caught:
        client.submit(sim.model, {"x": np.full((1, 4), 100, np.float32)}, job_id=job_id)
    assert isinstance(caught.value, InvalidJob) and caught.value.job_id == job_id
    # the first answer is untouched, and still read by id
    np.testing.assert_array_equal(client.job(job_id).result(timeout_s=5)["y"], np.full((1, 4), 2, np.float32))


def test_a_conflict_is_refused_even_while_the_first_job_is_still_queued(
    client: Any, idle: SimWorker, r: redis.Redis
) -> None:
    job_id = f"dup-{uuid.uuid4().hex[:8]}"
    big = np.ones(100_000, np.float32)  # claim-checked: its input key must go with the refusal
    client.submit(idle.model, {"x": X}, job_id=job_id)
    inputs_before = set(r.scan_iter("icow:in:*"))
    with pytest.raises(JobIdConflict):
        client.submit(idle.model, {"x": big}, job_id=job_id)
    assert _queued(r, idle.model) == 1  # only the first
    assert set(r.scan_iter("icow:in:*")) == inputs_before
    # another model, version or outputs under the same id is another job too
    with pytest.raises(JobIdConflict):
        client.submit(idle.model, {"x": X}, job_id=job_id, outputs=["y"])
    with pytest.raises(JobIdConflict):
        client.submit(idle.model, {"x": X}, job_id=job_id, version=1)


def test_the_same_id_with_the_same_inputs_is_idempotent(client: Any, idle: SimWorker, r: redis.Redis) -> None:
    job_id = f"again-{uuid.uuid4().hex[:8]}"
    a = client.submit(idle.model, {"x": X, "z": X + 1}, job_id=job_id, result_ttl_s=60)
    b = client.submit(idle.model, {"z": X + 1, "x": X}, job_id=job_id, result_ttl_s=120)  # order, TTL: same job
    assert a.id == b.id == job_id and _queued(r, idle.model) == 2
    assert r.get(keys.digest(job_id)) is not None and r.ttl(keys.digest(job_id)) > 60
    first = idle.take()
    assert first is not None and idle.claim(first)
    idle.success(first, {"y": idle.inputs_of(first)["x"] * 2})
    second = idle.take()
    assert second is not None and not idle.claim(second)  # answered already: dropped, nothing pushed
    # a handle of a caller-chosen id waits as a re-attached job: the answer is found by id
    np.testing.assert_array_equal(b.result(timeout_s=10)["y"], X * 2)
    np.testing.assert_array_equal(a.result(timeout_s=10)["y"], X * 2)


def test_ids_of_icows_making_carry_no_digest(client: Any, idle: SimWorker, r: redis.Redis) -> None:
    job = client.submit(idle.model, {"x": X})
    taken = idle.take()
    assert taken is not None and "icow_digest" not in taken["_headers"]
    assert r.exists(keys.digest(job.id)) == 0


def test_the_digest_rides_in_the_header_right_after_the_id(client: Any, idle: SimWorker) -> None:
    job_id = f"hdr-{uuid.uuid4().hex[:8]}"
    client.submit(idle.model, {"x": X}, job_id=job_id)
    taken = idle.take()
    assert taken is not None
    expected = digest.job_digest(idle.model, None, None, [("x", "FP32", [2, 4], X.tobytes())])
    assert taken["_raw"].startswith(f'{{"headers":{{"id":"{job_id}","icow_digest":"{expected}",'.encode())


def test_icow_submit_refuses_malformed_digest_arguments(r: redis.Redis) -> None:
    functions.install(r)
    q = keys.queue("nobody", None)
    base = [keys.LIMITS, keys.live("nobody"), keys.wake(q), *keys.queue_lists(q), keys.queue_list(q, 0)]
    args = ["nobody", "", "0", "1", "{}", "0"]
    for digest_arg, ttl in (("xyz", "60"), ("a" * 64, "0"), ("A" * 64, "60"), ("a" * 64, "9" * 12)):
        with pytest.raises(redis.ResponseError, match="ICOW_INVALID"):
            functions.call(r, functions.SUBMIT, [*base, keys.digest("d1")], [*args, digest_arg, ttl])
    with pytest.raises(redis.ResponseError, match="ICOW_INVALID"):  # a key without its arguments
        functions.call(r, functions.SUBMIT, [*base, keys.digest("d1")], [*args, "a" * 64])
    assert r.llen(q) == 0 and r.exists(keys.digest("d1")) == 0
    # without digests the reply is the four numbers it always was (older clients)
    reply = functions.call(r, functions.SUBMIT, base, args)
    assert len(reply) == 4 and reply[0] == 1 and reply[3] == 1
    r.delete(q, keys.wake(q))


def test_the_digest_is_order_free_and_covers_every_part_of_the_job() -> None:
    x, z = ("x", "FP32", [1], b"\x00\x00\x80?"), ("z", "INT64", [1], b"\x01" + b"\x00" * 7)
    d = digest.job_digest("m", None, None, [x, z])
    assert digest.is_digest(d) and d == digest.job_digest("m", None, None, [z, x])
    others = {
        digest.job_digest("n", None, None, [x, z]),
        digest.job_digest("m", 1, None, [x, z]),
        digest.job_digest("m", None, ["y"], [x, z]),
        digest.job_digest("m", None, None, [x]),
        digest.job_digest("m", None, None, [("x", "FP32", [1, 1], x[3]), z]),
        digest.job_digest("m", None, None, [("x", "INT32", [1], x[3]), z]),
        digest.job_digest("m", None, None, [("x", "FP32", [1], b"\x00\x00\x80\xbf"), z]),
    }
    assert d not in others and len(others) == 7


def test_a_jobidconflict_failure_on_the_wire_maps_to_its_class() -> None:
    err = remote_error("JobIdConflict", "taken", job_id="j")
    assert isinstance(err, JobIdConflict) and isinstance(err, InvalidJob) and err.job_id == "j"


# -- finding 7: BYTES come back as bytes; as_str gives str


def test_bytes_outputs_come_back_as_bytes_and_as_str_decodes_them(redis_url: str, worker: WorkerProcess) -> None:
    with Client(redis_url) as c:
        out = c.infer("text", {"x": np.array(["hello", "wörld"], dtype=object)}, timeout_s=30)
        [y] = out.values()
        assert y.dtype == object and all(isinstance(v, bytes) for v in y.flat)
        assert tensor.as_str(y).tolist() == ["hello", "wörld"]
        with pytest.raises(InvalidJob, match="not valid UTF-8"):  # the rule the README states
            c.infer("text", {"x": np.array([b"\xff\xfe"], dtype=object)}, timeout_s=30)


def test_as_str_refuses_what_is_not_utf8_bytes() -> None:
    bad = np.empty(2, dtype=object)
    bad[:] = [b"ok", b"\xff"]
    with pytest.raises(InvalidInput, match="element 1 is not valid UTF-8"):
        tensor.as_str(bad)
    with pytest.raises(InvalidInput, match="BYTES"):
        tensor.as_str(np.zeros(2, np.float32))
    grid = np.empty((2, 1), dtype=object)
    grid[:, 0] = [b"a", "b"]
    assert tensor.as_str(grid).tolist() == [["a"], ["b"]]


# -- finding 8: a closed client refuses every call


def test_every_call_after_close_raises_client_closed(redis_url: str, sim: SimWorker) -> None:
    c = Client(redis_url)
    job = c.submit(sim.model, {"x": X})
    job.result(timeout_s=10)
    pending = c.job(job.id)
    c.close()
    c.close()  # closing again does nothing
    calls = [
        lambda: c.submit(sim.model, {"x": X}),
        lambda: c.infer(sim.model, {"x": X}, timeout_s=5),
        lambda: c.submit_many(sim.model, [{"x": X}]),
        lambda: c.models(),
        lambda: c.model(sim.model),
        lambda: c.ping(),
        lambda: pending.status(),
        lambda: pending.result(timeout_s=1),
        lambda: c.job(job.id).status(),
    ]
    for call in calls:
        with pytest.raises(ClientClosed, match="closed"):
            call()
    assert issubclass(ClientClosed, RuntimeError) and issubclass(ClientClosed, IcowError)
    assert job.info().status == "succeeded"  # what a handle already holds needs no Redis


async def test_every_call_of_an_async_client_after_close_raises_client_closed(redis_url: str, sim: SimWorker) -> None:
    c = AsyncClient(redis_url)
    job = await c.submit(sim.model, {"x": X})
    await job.result(timeout_s=10)
    pending = c.job(job.id)
    await c.close()
    await c.close()
    calls = [
        c.submit(sim.model, {"x": X}),
        c.infer(sim.model, {"x": X}, timeout_s=5),
        c.submit_many(sim.model, [{"x": X}]),
        c.models(),
        c.ping(),
        pending.status(),
        pending.result(timeout_s=1),
    ]
    for call in calls:
        with pytest.raises(ClientClosed, match="closed"):
            await call
    assert job.info().status == "succeeded"


# -- the golden vectors of §8.4 (clients/node/test/ids.test.js checks the same files)

GOLDEN = __import__("pathlib").Path(__file__).resolve().parent / "golden"


def _golden(name: str) -> Any:
    import json

    return json.loads((GOLDEN / name).read_text())


def test_the_digest_vectors_are_reproduced() -> None:
    for case in _golden("digests.json")["cases"]:
        tensors = [(t["name"], t["datatype"], t["shape"], bytes.fromhex(t["data_hex"])) for t in case["inputs"]]
        assert digest.job_digest(case["model"], case["version"], case["outputs"], tensors) == case["digest"]
        assert digest.job_digest(case["model"], case["version"], case["outputs"], tensors[::-1]) == case["digest"]


def test_the_custom_id_job_vector_is_what_the_client_sends_and_icow_submit_answers(redis_url: str) -> None:
    """On a database of its own: the vector's keys (``mlp``'s live set, limits, queues) are those
    of the shared worker on database 0, which this test must not touch."""
    from icow.celery_message import celery_message
    from icow.client import _core
    from icow.codec import packb
    from icow.envelope import job_envelope

    r = redis.Redis.from_url(re.sub(r"/\d+$", "", redis_url) + "/9")  # the URL names db 0
    r.flushdb()
    v = _golden("job_custom_id.json")
    message = (GOLDEN / v["files"]["message"]).read_bytes()
    job = v["job"]
    [t] = job["inputs"]
    wire = {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"], "data": bytes.fromhex(t["data_hex"])}
    envelope = job_envelope(
        job_id=job["id"], model=job["model"], version=None, inputs=[wire], result_ttl_s=job["ttl"],
        reply_to=job["reply_to"], created=job["created"],
    )  # fmt: skip
    assert packb(envelope) == (GOLDEN / v["files"]["job"]).read_bytes()
    assert message == celery_message(envelope, queue=v["queue"], delivery_tag=v["delivery_tag"], digest=v["digest"])
    prepared = _core.PreparedJob(job["id"], None, message, {}, job["ttl"], v["digest"])
    fkeys, args = _core.submit_call(_core.Target(job["model"]), [prepared], True)
    want = [message if isinstance(a, dict) else a for a in v["submit"]["args"]]
    assert fkeys == v["submit"]["keys"] and args == want
    functions.install(r)
    r.delete(*fkeys)
    seconds, _ = r.time()
    r.zadd(keys.live("mlp"), {"1:golden@test": (seconds + 60) * 1000})
    try:
        replies = v["submit"]["replies"]
        assert functions.call(r, functions.SUBMIT, fkeys, want) == replies["first"]
        assert functions.call(r, functions.SUBMIT, fkeys, want) == replies["again_with_the_same_inputs"]
        other = [*want[:-2], "0" * 64, want[-1]]
        assert functions.call(r, functions.SUBMIT, fkeys, other) == replies["again_with_other_inputs"]
    finally:
        r.flushdb()
        r.close()
