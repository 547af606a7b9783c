"""Hostile input against the one intake: raw messages LPUSHed into the queues (what the client
ACL user may do), with valid jobs in between, thrown at a live ``icow worker``.

The corpus (seeded, so a failure replays): random bytes; non-JSON text holding a delivery-tag
and an id; JSON that is not an object; envelopes nested 100,000 deep; msgpack and JSON bodies
nested 100,000 deep; every content type (msgpack, JSON, application/data, application/text,
pickle, YAML, none) and compression header, including a real bz2 bomb (2.5 KB inflating to
2 GiB) and a gzip bomb (2 MB inflating to 2 GiB); Celery's built-in task names; envelopes
without an id, without a delivery tag, without properties; bodies decoding to ``{}``,
``[1, 2]`` and ``"hello"``; Celery ``expires`` and ``eta`` in the past and the future; mutated
valid jobs (wrong types, huge shapes, path-like model names, ...); jobs for another model's
queue; and 100 MB messages.

What must hold: the worker never exits; every valid job is answered with the right output
(``scale``: y = 2x, a distinct x per job); every message with a usable id is answered with the
expected outcome (``expires`` past: ``JobExpired``; ``eta`` future: ``InvalidJob``; ...); every
message without one leaves a dead letter, and every failure other than ``JobExpired`` one too;
nothing stays in flight (``icow:runs:<w>`` empty, no ``icow:run:*`` list); and the worker's
peak RSS (``VmHWM``) stays under ``RSS_BOUND_MIB`` with ``--max-message-bytes`` 16 MiB.
Measured on the 2-core development machine: peak 163 MiB (VmHWM, model loading included) after
the 10,000-message run (11,250 messages with the valid jobs, four of them 16-100 MB, and 500
compressed bodies, a third of them bombs), in 39 s.
"""

from __future__ import annotations

import base64
import bz2
import functools
import gzip
import json
import math
import os
import pickle
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icow import keys
from icow.celery_message import CONTENT_TYPE, decode_message
from icow.cli.fleet import LocalRedis
from icow.codec import packb, unpackb
from icow.result import failure_of
from icow.workers import samples

from . import rawjobs
from .conftest import WorkerProcess

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RSS_BOUND_MIB = 400  # the worker's peak RSS (VmHWM); a worker that decompressed a bomb would pass 2 GiB
N_MESSAGES = int(os.environ.get("ICOW_FUZZ_MESSAGES", "10000"))  # about 40 s on 2 cores
VALID_EVERY = 8  # a valid job between every few hostile messages
LISTS = [
    keys.queue_list(keys.queue("scale")),
    keys.queue_list(keys.queue("scale"), 3),
    keys.queue_list(keys.queue("scale"), 9),
    keys.queue_list(keys.queue("scale", 1)),
    keys.queue_list(keys.queue("mlp")),
]
REFUSALS = frozenset({"InvalidJob", "ModelNotFound", "PayloadTooLarge", "JobExpired"})
CELERY_BUILTINS = [
    "celery.accumulate",
    "celery.chord_unlock",
    "celery.backend_cleanup",
    "celery.group",
    "celery.chain",
    "celery.chord",
    "celery.map",
    "celery.starmap",
    "celery.chunks",
    "celery.ping",
]
CONTENT_TYPES = [
    "application/data",
    "application/text",
    "application/x-python-serialize",
    "application/x-yaml",
    "text/plain",
    "",
    None,  # no content-type at all
]
COMPRESSIONS = ["application/x-bz2", "application/x-gzip", "zlib", "application/x-lzma", "zstd", "brotli"]


@dataclass
class Case:
    """One raw message and what the worker must do with it."""

    kind: str
    data: bytes
    queue_list: str
    job_id: str | None  # answered under this id; None: unusable, a dead letter only
    expect: frozenset[str] = REFUSALS  # allowed outcomes: "SUCCESS" or error types
    x: np.ndarray | None = field(default=None, repr=False)  # valid jobs: y must be 2x


# -- building blocks


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@functools.cache
def bz2_bomb() -> bytes:
    """2.5 KB of bz2 that inflates to 2 GiB of zeros (32 concatenated streams of 64 MiB)."""
    return bz2.compress(b"\0" * (64 << 20), 9) * 32


@functools.cache
def gzip_bomb() -> bytes:
    """2 MB of gzip that inflates to 2 GiB of zeros (32 members of 64 MiB)."""
    return gzip.compress(b"\0" * (64 << 20), 9) * 32


def valid_envelope(x: np.ndarray, job_id: str, *, version: int | None = None) -> dict[str, Any]:
    _, message = rawjobs.job_message("scale", x, job_id=job_id, version=version)
    env: dict[str, Any] = json.loads(message)
    return env


def with_body(env: dict[str, Any], body: bytes, content_type: str | None = CONTENT_TYPE) -> dict[str, Any]:
    env["body"] = base64.b64encode(body).decode()
    if content_type is None:
        env.pop("content-type", None)
    else:
        env["content-type"] = content_type
    return env


def job_of(env: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = msgpack.unpackb(base64.b64decode(env["body"]), raw=False)[0][0]
    return job


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=repr).encode()


def utc_iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "+00:00"


BAD_VALUES: list[Any] = [
    None,
    True,
    -1,
    2**64 - 1,
    1.5,
    math.inf,
    "",
    "x" * 300,
    b"\xff",
    [],
    {},
    [[[]]],
    {"a": {"b": {}}},
]
BAD_MODELS = ["../x", "..", "scale/../../etc", "/etc/passwd", "", "a" * 200, "sca le", "scale\x00", ".hidden", "mlp"]
BAD_SHAPES: list[Any] = [[2**40, 2**40], [2**64 - 1], [2**32] * 16, [1] * 17, [-1, 2], [1.5, 2], [True, 2], "1,2"]
JOB_FIELDS = ["v", "id", "model", "version", "created", "inputs", "outputs", "ttl", "reply_to", "deadline"]
TENSOR_FIELDS = ["name", "datatype", "shape", "data", "ref"]


def mutated_job(rng: random.Random, job: dict[str, Any]) -> dict[str, Any]:
    for _ in range(rng.randint(1, 3)):
        what = rng.randrange(6)
        inputs = job.get("inputs")
        first = inputs[0] if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else None
        if what == 0:
            job[rng.choice(JOB_FIELDS)] = rng.choice(BAD_VALUES)
        elif what == 1:
            job.pop(rng.choice(JOB_FIELDS), None)
        elif what == 2:
            job["model"] = rng.choice(BAD_MODELS)
        elif first is None:
            continue
        elif what == 3:
            first["shape"] = rng.choice(BAD_SHAPES)
        elif what == 4:
            first[rng.choice(TENSOR_FIELDS)] = rng.choice([*BAD_VALUES, "icow:in:" + "0" * 32, "FP64"])
        else:
            job["inputs"] = rng.choice([[first, first], [], [first] * 40, {"x": first}, 7])
    return job


# -- the corpus


def hostile(rng: random.Random, n: int) -> Case:
    """The n-th hostile message: kinds in turn, details drawn from ``rng``."""
    job_id = f"fuzz-{n}-{uuid.UUID(int=rng.getrandbits(128))}"
    x = np.array([[n, -n]], np.float32)
    lst = rng.choice(LISTS)
    kind = KINDS[n % len(KINDS)]
    env = valid_envelope(x, job_id)
    if kind == "random bytes":
        return Case(kind, rng.randbytes(rng.randint(0, 2048)), lst, None)
    if kind == "tag-like text":
        text = rng.choice(
            [
                f'not json at all "delivery_tag":"poison-{n}"',
                f'{{"body": "x", "headers": {{"id": "{job_id}", "delivery_tag": "t-{n}"',  # cut short
                f'"delivery_tag":"{n}" "id":"{job_id}" \x00\xff',
            ]
        )
        return Case(kind, text.encode("utf-8", "surrogateescape"), lst, None)
    if kind == "JSON not an object":
        return Case(kind, dumps(rng.choice([[1, 2], "hello", 42, None, True, [], [[job_id]], 1e308])), lst, None)
    if kind == "deep envelope":
        depth = rng.choice([2_000, 100_000])
        data = rng.choice(
            [
                deep_json(depth),
                '{"headers": {"id": "' + job_id + '", "x": ' + deep_json(depth) + "}}",
                '{"a":' * depth + "1" + "}" * depth,
            ]
        )
        return Case(kind, data.encode(), lst, None)
    if kind == "deep id":  # parses (under the recursion limit) but the id is not a string
        env["headers"]["id"] = json.loads(deep_json(rng.choice([10, 500])))
        env["properties"]["correlation_id"] = env["headers"]["id"]
        return Case(kind, dumps(env), lst, None)
    if kind == "deep body":
        depth = rng.choice([500, 100_000])
        if rng.random() < 0.5:
            body, ct = b"\x91" * depth + b"\xc0", CONTENT_TYPE
        else:
            body, ct = deep_json(depth).encode(), "application/json"
        return Case(kind, dumps(with_body(env, body, ct)), lst, job_id, frozenset({"InvalidJob"}))
    if kind == "content type":
        ct = rng.choice(CONTENT_TYPES)
        body = pickle.dumps([[job_of(env)], {}, {}]) if ct == "application/x-python-serialize" else b"- 1\n- 2\n"
        return Case(kind, dumps(with_body(env, body, ct)), lst, job_id, frozenset({"InvalidJob"}))
    if kind == "compression":
        compression = rng.choice(COMPRESSIONS)
        body = {"application/x-bz2": bz2_bomb(), "application/x-gzip": gzip_bomb()}.get(compression, rng.randbytes(64))
        env = with_body(env, body)
        env["headers"]["compression"] = compression
        return Case(kind, dumps(env), lst, job_id, frozenset({"InvalidJob"}))
    if kind == "celery task":
        env["headers"]["task"] = rng.choice([*CELERY_BUILTINS, "", None, 5, "icow.other"])
        return Case(kind, dumps(env), lst, job_id, frozenset({"InvalidJob"}))
    if kind == "no id":
        del env["headers"]["id"]
        env["properties"].pop("correlation_id")
        if rng.random() < 0.5:
            env["properties"].pop("delivery_tag")
        return Case(kind, dumps(env), lst, None)
    if kind == "bad id":
        bad = rng.choice(["", "../x", "a" * 300, 123, "id with spaces", "-lead", "ünïcode", None, ["x"]])
        env["headers"]["id"] = bad
        env["properties"]["correlation_id"] = bad
        return Case(kind, dumps(env), lst, None)
    if kind == "odd body":
        value = rng.choice([{}, [1, 2], "hello", [[], {}], [[1, 2], {}, {}], [[], {"job": 5, "x": 1}, {}]])
        if rng.random() < 0.5:
            env = with_body(env, msgpack.packb(value))
        else:
            env = with_body(env, json.dumps(value).encode(), "application/json")
        return Case(kind, dumps(env), lst, job_id, frozenset({"InvalidJob"}))
    if kind == "expires past":
        env["headers"]["expires"] = rng.choice([utc_iso(time.time() - 3600), time.time() - 60])
        return Case(kind, dumps(env), rng.choice(LISTS[:4]), job_id, frozenset({"JobExpired"}))
    if kind == "eta future":
        env["headers"]["eta"] = rng.choice([utc_iso(time.time() + 365 * 86400), time.time() + 3600])
        return Case(kind, dumps(env), lst, job_id, frozenset({"InvalidJob"}))
    if kind == "bad eta":
        env["headers"][rng.choice(["eta", "expires"])] = rng.choice(["not a date", [], {"a": 1}, "9" * 80, math.nan])
        return Case(kind, dumps(env), lst, job_id, frozenset({"InvalidJob"}))
    if kind == "wrong queue":  # a valid scale job on mlp's queue, or pinned to another version
        if rng.random() < 0.5:
            return Case(kind, dumps(env), LISTS[4], job_id, frozenset({"InvalidJob"}))
        env = valid_envelope(x, job_id, version=2)
        return Case(kind, dumps(env), LISTS[3], job_id, frozenset({"InvalidJob"}))
    assert kind == "mutated job"
    env = with_body(env, packb([[mutated_job(rng, job_of(env))], {}, {}]))
    return Case(kind, dumps(env), lst, job_id, REFUSALS | {"SUCCESS"})


KINDS = [
    "random bytes",
    "tag-like text",
    "JSON not an object",
    "deep envelope",
    "deep id",
    "deep body",
    "content type",
    "compression",
    "celery task",
    "no id",
    "bad id",
    "odd body",
    "expires past",
    "eta future",
    "bad eta",
    "wrong queue",
    *["mutated job"] * 4,
]


def valid(rng: random.Random, n: int) -> Case:
    """A valid job (y = 2x), in one of the forms the intake must accept."""
    job_id = f"valid-{n}-{uuid.UUID(int=rng.getrandbits(128))}"
    x = np.array([[n, 0.5 - n]], np.float32)
    form = n % 7
    lst = LISTS[n % 4]
    env = valid_envelope(x, job_id, version=1 if lst == LISTS[3] else None)
    if form == 1:  # no delivery tag
        env["properties"].pop("delivery_tag")
    elif form == 2:  # no properties at all
        del env["properties"]
    elif form == 3:  # expires in the future, eta in the past
        env["headers"]["expires"] = utc_iso(time.time() + 3600)
        env["headers"]["eta"] = time.time() - 5
    elif form == 4:  # the JSON form: tensor data as base64 strings
        job = job_of(env)
        job["inputs"] = [{**t, "data": base64.b64encode(t["data"]).decode()} for t in job["inputs"]]
        env = with_body(env, json.dumps([[job], {}, {}]).encode(), "application/json")
    elif form == 5:  # the job as the keyword argument ``job``
        env = with_body(env, packb([[], {"job": job_of(env)}, {}]))
    return Case("valid", dumps(env), lst, job_id, frozenset({"SUCCESS"}), x)


def big(rng: random.Random, n: int, size: int) -> Case:
    """A message of ``size`` bytes: past the cap it is refused unread (answered when its id is
    in its first bytes); under the cap it is read and refused (its tensor is all wrong)."""
    job_id = f"big-{n}-{uuid.UUID(int=rng.getrandbits(128))}"
    env = valid_envelope(np.zeros((1, 2), np.float32), job_id)
    filler = size - len(dumps(env))
    if n % 2 == 0:  # headers first: the id is in the prefix the worker reads
        env = {"headers": env["headers"], **{k: v for k, v in env.items() if k != "headers"}}
        env["x-filler"] = "x" * filler
        # Over the cap: refused unread; under it: read whole, a valid job with a junk field.
        return Case("big", dumps(env), rng.choice(LISTS[:4]), job_id, frozenset({"InvalidJob", "SUCCESS"}))
    job = job_of(env)
    job["inputs"][0]["data"] = b"\0" * (filler * 3 // 4 - 64)  # body first: no id in the prefix
    env = with_body(env, packb([[job], {}, {}]))
    answered = None if len(dumps(env)) > MAX_MESSAGE_BYTES else job_id
    return Case("big", dumps(env), rng.choice(LISTS), answered, frozenset({"InvalidJob"}))


def corpus(n_hostile: int, *, seed: int, n_big: int) -> Iterator[Case]:
    rng = random.Random(seed)
    sizes = [100 << 20, MAX_MESSAGE_BYTES - 4096, 100 << 20, MAX_MESSAGE_BYTES + 1]
    bigs = {n_hostile * (i + 1) // (n_big + 1): sizes[i % len(sizes)] for i in range(n_big)}
    for n in range(n_hostile):
        if n % VALID_EVERY == 0:
            yield valid(rng, n)
        yield big(rng, n, bigs[n]) if n in bigs else hostile(rng, n)


# -- unit: the decoder never raises


envelopes = st.fixed_dictionaries(
    {},
    optional={
        "body": st.text(max_size=40) | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        "content-type": st.sampled_from([CONTENT_TYPE, "application/json", *map(str, CONTENT_TYPES)]),
        "headers": st.dictionaries(
            st.sampled_from(["id", "task", "eta", "expires", "compression", "x"]),
            st.none() | st.text(max_size=20) | st.integers() | st.floats() | st.lists(st.integers(), max_size=3),
        ),
        "properties": st.dictionaries(
            st.sampled_from(["correlation_id", "priority", "body_encoding", "delivery_tag"]),
            st.none() | st.text(max_size=20) | st.integers(),
        ),
    },
)


@settings(max_examples=400, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300) | envelopes.map(lambda e: json.dumps(e).encode()))
def test_decode_message_never_raises(raw: bytes) -> None:
    msg = decode_message(raw, max_bytes=1024)
    assert msg.job_id is None or keys.JOB_ID_RE.match(msg.job_id)
    assert msg.job_id is None or msg.error is not None or msg.job is not None


def test_the_corpus_decodes_without_raising_and_as_expected() -> None:
    """The decoder alone, on every kind of the corpus: the id is usable exactly when the test
    below expects an answer, and only valid jobs decode without an error."""
    for case in corpus(len(KINDS) * 12, seed=7, n_big=0):
        msg = decode_message(case.data, max_bytes=MAX_MESSAGE_BYTES)
        assert msg.job_id == case.job_id, case
        if case.kind == "valid":
            assert msg.error is None, (case, msg.error)
        elif case.kind not in ("mutated job", "wrong queue", "expires past"):
            assert msg.error is not None, case


# -- end to end


@pytest.fixture(scope="module")
def fuzz_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRedis, WorkerProcess]]:
    root = tmp_path_factory.mktemp("fuzz-repo")
    samples.mlp(root / "mlp" / "1" / "model.onnx")
    samples.scale(root / "scale" / "1" / "model.onnx", 2.0)
    server = LocalRedis()
    w = WorkerProcess(
        root, server.url, f"fuzz-{os.getpid()}@local", extra=["--max-message-bytes", str(MAX_MESSAGE_BYTES)]
    )
    yield server, w
    assert w.proc.poll() is None, "the worker exited"
    w.stop()
    server.stop()


def throw(fleet: tuple[LocalRedis, WorkerProcess], cases: list[Case], timeout_s: float) -> dict[str, Any]:
    """Push every case raw, wait for every answer and for an empty in-flight record, check
    each outcome. Returns figures for the test to print."""
    server, worker = fleet
    r = redis.Redis.from_url(server.url)
    dead_before = r.llen(keys.DEAD)
    pid = worker.proc.pid
    rss_ready_kib, _ = rawjobs.rss_kib(pid)
    peak_rss_kib = rss_ready_kib
    pipe_bytes = 0
    batch: dict[str, list[bytes]] = {}
    for case in cases:
        batch.setdefault(case.queue_list, []).append(case.data)
        pipe_bytes += len(case.data)
        if pipe_bytes > 8 << 20 or sum(map(len, batch.values())) >= 200:
            for lst, msgs in batch.items():
                rawjobs.push_raw(r, lst, msgs)
            batch, pipe_bytes = {}, 0
            assert worker.proc.poll() is None, "the worker exited"
    for lst, msgs in batch.items():
        rawjobs.push_raw(r, lst, msgs)
    must = [c.job_id for c in cases if c.job_id is not None]
    deadline = time.monotonic() + timeout_s
    answers: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}"
        peak_rss_kib = max(peak_rss_kib, rawjobs.rss_kib(pid)[0])
        answers.update(rawjobs.results(r, [i for i in must if i not in answers]))
        if len(answers) == len(must) and not any(r.llen(lst) for lst in LISTS):
            break
        time.sleep(0.2)
    held = rawjobs.wait_in_flight_empty(r, [worker.proc], timeout_s=30)
    hwm_kib = rawjobs.rss_kib(pid)[1]

    unanswered = [c for c in cases if c.job_id is not None and c.job_id not in answers]
    assert not unanswered, f"{len(unanswered)} of {len(must)} never answered, e.g. {unanswered[:3]}"
    assert held == ({}, []), f"left in flight: {held}"
    assert not any(r.llen(lst) for lst in LISTS), "messages left in the queues"
    outcomes: dict[str, dict[str, int]] = {}
    wrong = []
    for c in cases:
        if c.job_id is None:
            continue
        meta = answers[c.job_id]
        outcome = "SUCCESS" if meta["status"] == "SUCCESS" else failure_of(meta)[0]
        outcomes.setdefault(c.kind, {}).setdefault(outcome, 0)
        outcomes[c.kind][outcome] += 1
        if outcome not in c.expect:
            wrong.append((c.kind, c.job_id, failure_of(meta) if outcome != "SUCCESS" else "SUCCESS"))
        elif c.x is not None:
            y = rawjobs.output(r, meta)
            np.testing.assert_allclose(y, 2 * c.x, err_msg=f"valid job {c.job_id}")
    assert not wrong, f"{len(wrong)} unexpected outcomes, e.g. {wrong[:5]}"

    # Dead letters: one per unusable message, and one per failure other than JobExpired.
    unusable = sum(1 for c in cases if c.job_id is None)
    failed = sum(
        1
        for meta in answers.values()
        if meta["status"] != "SUCCESS" and failure_of(meta)[0] not in ("JobExpired", "JobCancelled")
    )
    assert r.llen(keys.DEAD) == min(keys.DEAD_MAX, dead_before + unusable + failed)
    newest = r.lrange(keys.DEAD, 0, 50)
    for dead_id in newest:
        record = unpackb(r.get(keys.dead(dead_id.decode())))
        assert record["error"] and record["message"], record
    r.close()
    assert hwm_kib < RSS_BOUND_MIB * 1024, f"peak RSS {hwm_kib // 1024} MiB (bound {RSS_BOUND_MIB} MiB)"
    figures = {
        "messages": len(cases),
        "valid": sum(1 for c in cases if c.kind == "valid"),
        "answered": len(answers),
        "dead letters": unusable + failed,
        "rss ready MiB": rss_ready_kib // 1024,
        "rss peak (VmHWM) MiB": hwm_kib // 1024,
        "outcomes": outcomes,
    }
    print(figures)
    return figures


def test_ten_thousand_hostile_messages_between_valid_jobs(fuzz_fleet: tuple[LocalRedis, WorkerProcess]) -> None:
    cases = list(corpus(N_MESSAGES, seed=2, n_big=4))
    assert len({c.kind for c in cases}) == len(set(KINDS)) + 2
    assert sum(1 for c in cases if c.kind != "valid") >= N_MESSAGES
    throw(fuzz_fleet, cases, timeout_s=600)


def test_expires_and_eta(fuzz_fleet: tuple[LocalRedis, WorkerProcess]) -> None:
    """Celery's headers: ``expires`` in the past is JobExpired, never run; ``eta`` in the future
    is refused with InvalidJob (ICOW runs a job as soon as a worker is free); both in the
    other direction run."""
    server, _ = fuzz_fleet
    r = redis.Redis.from_url(server.url)
    x = np.array([[1.5, 2.5]], np.float32)
    outcomes = {}
    for name, header, when in [
        ("expired", "expires", time.time() - 1),
        ("later", "eta", time.time() + 600),
        ("open", "expires", time.time() + 600),
        ("due", "eta", time.time() - 1),
    ]:
        env = valid_envelope(x, f"{name}-{uuid.uuid4()}")
        env["headers"][header] = utc_iso(when)
        rawjobs.push_raw(r, LISTS[0], [dumps(env)])
        outcomes[name] = env["headers"]["id"]
    deadline = time.monotonic() + 30
    while len(found := rawjobs.results(r, list(outcomes.values()))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = {name: found[i] for name, i in outcomes.items()}
    assert failure_of(got["expired"])[0] == "JobExpired"
    error, message = failure_of(got["later"])
    assert error == "InvalidJob" and "eta" in message
    np.testing.assert_allclose(rawjobs.output(r, got["open"]), 2 * x)
    np.testing.assert_allclose(rawjobs.output(r, got["due"]), 2 * x)
    r.close()


def test_pickle_is_never_unpickled(fuzz_fleet: tuple[LocalRedis, WorkerProcess], tmp_path: Path) -> None:
    server, worker = fuzz_fleet
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    job_id = f"pickle-{uuid.uuid4()}"
    env = valid_envelope(np.zeros((1, 2), np.float32), job_id)
    env = with_body(env, pickle.dumps([[Exploit()], {}, {}]), "application/x-python-serialize")
    r = redis.Redis.from_url(server.url)
    r.lpush(LISTS[0], dumps(env))
    r.zadd(keys.wake(keys.queue("scale")), {"1": 0})
    deadline = time.monotonic() + 30
    while not (found := rawjobs.results(r, [job_id])) and time.monotonic() < deadline:
        time.sleep(0.05)
    error, message = failure_of(found[job_id])
    assert error == "InvalidJob" and "content type" in message
    assert not marker.exists()
    assert worker.proc.poll() is None
    r.close()
