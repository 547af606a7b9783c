"""Hostile input: thousands of random and mutated task messages thrown at a live worker.

Every message a worker can attribute to a job (a well-formed kombu envelope whose headers
carry a usable id) gets an answer: a failure result naming the problem (or a success, when
a mutation happens to leave a valid job). Nothing a message contains ends the worker process,
and valid jobs sent in between still succeed. The messages are built by hypothesis with a
fixed seed (derandomize) and pushed by hand, as a hostile producer with Redis access would.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icow import keys, protocol
from icow.cli.fleet import LocalRedis
from icow.client import Client
from icow.client import _core as client_core
from icow.errors import InvalidJob
from icow.workers import samples

from .conftest import WorkerProcess

N_MESSAGES = int(os.environ.get("ICOW_FUZZ_MESSAGES", "1500"))
QUEUE = keys.queue("mlp")
ANSWER_TYPES = {"InvalidJob", "ModelNotFound", "JobExpired", "JobCancelled", "PayloadTooLarge"}


@pytest.fixture(scope="module")
def fuzz_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRedis, WorkerProcess]]:
    root = tmp_path_factory.mktemp("fuzz-repo")
    samples.mlp(root / "mlp" / "1" / "model.onnx")
    samples.identity(root / "text" / "1" / "model.onnx", datatype=8, rank=1)  # 8: onnx STRING
    samples.scale(root / "scale" / "1" / "model.onnx", 2.0)
    server = LocalRedis()
    w = WorkerProcess(root, server.url, f"fuzz-{os.getpid()}@local")
    yield server, w
    w.stop()
    server.stop()


# -- what a hostile producer can put on the queue


def valid_job(job_id: str, model: str = "mlp") -> dict[str, Any]:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    prepared = client_core.prepare(model, {"x": x}, job_id=job_id, reply_to=keys.reply("fuzz"), result_ttl_s=600)
    body = json.loads(prepared.message)["body"]
    job: dict[str, Any] = msgpack.unpackb(base64.b64decode(body), raw=False)[0][0]
    return job


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=16)
    | st.binary(max_size=48)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(0, 3), inner, max_size=4)
    ),
    max_leaves=12,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
FULLWIDTH_MLP = "\uff2d\uff2c\uff30"
bad_models = st.sampled_from(
    ["../x", "..", "mlp/../../etc", "/etc/passwd", "", "a" * 200, "ml p", "mlp\x00", FULLWIDTH_MLP, ".hidden", "mlp/1"]
)
HUGE = [[2**40, 2**40], [2**64 - 1], [2**32] * 16, [1] * 17]
bad_shapes = st.sampled_from([*HUGE, [-1, 4], [1.5, 4], [True, 4], "2,4", [], [0, 4], [2, 4, 1], None])
bad_refs = st.sampled_from(
    ["icow:blob:someone-else:in:0", "unacked", "../../etc/passwd", 5, "", "icow:models", "celery-task-meta-x"]
)
job_fields = st.sampled_from(
    ["v", "id", "model", "version", "created", "inputs", "outputs", "ttl", "reply_to", "deadline", "extra"]
)
tensor_fields = st.sampled_from(["name", "datatype", "shape", "data", "ref", "nbytes"])

mutations = st.one_of(
    st.tuples(st.just("set"), job_fields, values),
    st.tuples(st.just("del"), job_fields, st.none()),
    st.tuples(st.just("set"), st.just("model"), bad_models),
    st.tuples(st.just("set"), st.just("v"), st.integers(-3, 1000) | st.text(max_size=3) | st.none()),
    st.tuples(st.just("tensor"), tensor_fields, values),
    st.tuples(st.just("tensor"), st.just("shape"), bad_shapes),
    st.tuples(st.just("tensor"), st.just("ref"), bad_refs),
    st.tuples(st.just("tensor"), st.just("datatype"), st.sampled_from(["BYTES", "FP64", "fp32", "INT4", "", "FP16"])),
    st.tuples(st.just("tensor"), st.just("data"), st.binary(max_size=40)),
    st.tuples(st.just("inputs"), st.sampled_from(["dup", "empty", "many", "dict", "scalar"]), st.none()),
)


@dataclass
class Spec:
    """One hostile message, before it gets its id."""

    kind: str  # "job" (mutated valid job), "body" (random body), "header", "envelope"
    mutations: list[tuple[str, str, Any]]
    layout: str
    content_type: str
    raw_body: Any
    header_id: Any  # None: a fresh usable uuid
    task: str


specs = st.builds(
    Spec,
    kind=st.sampled_from(["job"] * 6 + ["body", "body", "header", "envelope"]),
    mutations=st.lists(mutations, min_size=1, max_size=3),
    layout=st.sampled_from(["normal"] * 6 + ["bare", "kwargs", "two", "flat", "short"]),
    content_type=st.sampled_from(
        ["application/x-msgpack"] * 5 + ["application/json", "application/x-python-serialize", "application/x-yaml"]
    ),
    raw_body=st.one_of(values, st.binary(max_size=64), json_values),
    header_id=st.one_of(st.none(), st.none(), st.sampled_from(["", "../x", "a" * 300, 123, "id with spaces", None])),
    task=st.sampled_from(["icow.infer"] * 8 + ["icow.other", "celery.ping", ""]),
)


def mutate(job: dict[str, Any], muts: list[tuple[str, str, Any]]) -> dict[str, Any]:
    job = copy.deepcopy(job)
    for op, field, value in muts:
        if op == "set":
            job[field] = value
        elif op == "del":
            job.pop(field, None)
        elif op == "tensor" and isinstance(job.get("inputs"), list) and job["inputs"]:
            t = job["inputs"][0]
            if isinstance(t, dict):
                t[field] = value
        elif op == "inputs" and isinstance(job.get("inputs"), list) and job["inputs"]:
            first = job["inputs"][0]
            job["inputs"] = {
                "dup": [first, first],
                "empty": [],
                "many": [first] * 40,
                "dict": {"x": first},
                "scalar": 7,
            }[field]
    return job


def build(spec: Spec, job_id: str) -> tuple[bytes, bool]:
    """The LPUSHed bytes, and whether the worker must answer this message under ``job_id``."""
    hid = job_id if spec.header_id is None else spec.header_id
    usable = spec.header_id is None and spec.task != ""
    if spec.kind == "envelope":  # not a kombu envelope at all: nobody to answer
        garbage = [
            json.dumps(spec.raw_body, default=repr).encode(),
            b"\xff\xfe not json",
            json.dumps({"body": "!!!", "headers": {"id": hid}}).encode(),
        ]
        return garbage[len(spec.mutations) % len(garbage)], False
    job = valid_job(job_id)
    if spec.kind == "job":
        job = mutate(job, spec.mutations)
    args = {
        "normal": [[job], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
        "bare": job,
        "kwargs": [[], {"job": job}, {}],
        "two": [[job, job], {}, {}],
        "flat": [job, {}, {}],
        "short": [[job]],
    }[spec.layout]
    content_type = spec.content_type
    if spec.kind == "body":
        payload: Any = spec.raw_body
        body = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    elif content_type == "application/json":
        body = json.dumps(args if len(spec.mutations) % 2 else spec.raw_body, default=repr).encode()
    elif content_type == "application/x-python-serialize":
        body = pickle.dumps([[{"v": 1}], {}, {}])  # harmless: the worker must refuse it anyway
    else:
        body = protocol.packb(args)
    headers: dict[str, Any] = {"lang": "py", "task": spec.task, "id": hid, "root_id": hid}
    if spec.kind == "header":
        headers.update({"retries": "many", "eta": "not a date", "timelimit": "x", "argsrepr": 5})
        usable = False  # a bad eta may be refused before Celery knows the id is ours
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8" if content_type == "application/json" else "binary",
        "content-type": content_type,
        "headers": headers,
        "properties": {
            "correlation_id": hid,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, default=repr).encode(), usable


def hostile_messages(n: int) -> list[tuple[str, bytes, bool, Spec]]:
    out: list[tuple[str, bytes, bool, Spec]] = []

    @settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(specs)
    def collect(spec: Spec) -> None:
        job_id = f"fuzz-{uuid.uuid4()}"
        data, usable = build(spec, job_id)
        out.append((job_id, data, usable, spec))

    collect()
    return out[:n]


# -- the tests


def wait_for(r: redis.Redis, job_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        missing = [i for i in job_ids if i not in found]
        if not missing:
            break
        for i, data in zip(missing, r.mget([keys.result(i) for i in missing])):
            if data is not None:
                found[i] = protocol.parse_meta(data)
        time.sleep(0.2)
    return found


def test_thousands_of_hostile_messages_are_answered_and_the_worker_survives(
    fuzz_fleet: tuple[LocalRedis, WorkerProcess],
) -> None:
    server, worker = fuzz_fleet
    messages = hostile_messages(N_MESSAGES)
    assert len(messages) >= N_MESSAGES * 0.9
    r = redis.Redis.from_url(server.url)
    with Client(server.url) as c:
        valid = []
        pipe = r.pipeline(transaction=False)
        for n, (_, data, _, _) in enumerate(messages):
            pipe.lpush(QUEUE, data)
            if n % 100 == 99:
                pipe.execute()
                valid.append((n, c.submit("mlp", {"x": np.full((1, 4), n, np.float32)})))
        pipe.execute()
        must_answer = [job_id for job_id, _, usable, _ in messages if usable]
        spec_of = {job_id: spec for job_id, _, _, spec in messages}
        answers = wait_for(r, must_answer, timeout_s=240)
        unanswered = [i for i in must_answer if i not in answers]
        assert not unanswered, (
            f"{len(unanswered)} of {len(must_answer)} messages never got an answer, e.g. "
            + "; ".join(f"{i}: {spec_of[i]}" for i in unanswered[:3])
        )
        for n, job in valid:
            y = job.result(timeout_s=60)["y"]
            want = samples.mlp_reference(np.full((1, 4), n, np.float32))
            assert np.allclose(y, want, atol=1e-4), f"valid job {job.id} (x = {n}) got {y}, expected {want}"
    kinds: dict[str, int] = {}
    internal = []
    for job_id, meta in answers.items():
        kind = "SUCCESS" if meta["status"] == "SUCCESS" else protocol.failure_of(meta)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind not in ANSWER_TYPES | {"SUCCESS"}:
            internal.append((job_id, protocol.failure_of(meta)))
    print(f"{len(messages)} hostile messages, {len(must_answer)} attributable; answers by type: {kinds}")
    assert not internal, f"failures that are not a clean refusal: {internal[:5]}"
    assert worker.proc.poll() is None, "the worker died"
    deadline = time.monotonic() + 30
    while r.llen(QUEUE) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.llen(QUEUE) == 0
    r.close()


def test_pickle_is_never_unpickled(fuzz_fleet: tuple[LocalRedis, WorkerProcess], tmp_path: Path) -> None:
    server, worker = fuzz_fleet
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    job_id = f"pickle-{uuid.uuid4()}"
    spec = Spec("job", [], "normal", "application/x-msgpack", None, None, "icow.infer")
    envelope = json.loads(build(spec, job_id)[0])
    envelope["content-type"] = "application/x-python-serialize"
    envelope["body"] = base64.b64encode(pickle.dumps([[Exploit()], {}, {}])).decode()
    r = redis.Redis.from_url(server.url)
    r.set(keys.state(job_id), b"queued", ex=60)
    r.lpush(QUEUE, json.dumps(envelope))
    with Client(server.url) as c, pytest.raises(InvalidJob, match=r"invalid task message|content"):
        c.job(job_id).result(timeout_s=30)
    assert not marker.exists()
    assert worker.proc.poll() is None
    r.close()


def test_path_traversal_model_names_are_refused(fuzz_fleet: tuple[LocalRedis, WorkerProcess]) -> None:
    server, _ = fuzz_fleet
    r = redis.Redis.from_url(server.url)
    with Client(server.url) as c:
        for name in ("../mlp", "mlp/../mlp", "/etc/passwd", ".."):
            job_id = f"trav-{uuid.uuid4()}"
            spec = Spec("job", [("set", "model", name)], "normal", "application/x-msgpack", None, None, "icow.infer")
            r.set(keys.state(job_id), b"queued", ex=60)
            r.lpush(QUEUE, build(spec, job_id)[0])
            with pytest.raises(InvalidJob, match="invalid model name"):
                c.job(job_id).result(timeout_s=30)
    r.close()
