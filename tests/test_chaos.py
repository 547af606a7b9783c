"""Workers killed at random instants, and a frozen worker: no job is lost, none is answered
twice.

The chaos test runs 3 workers (``--lease 4``) under a steady backlog of small ``scale`` jobs
(y = 2x after some busywork, a distinct x per job, so an answer given to the wrong job
shows) while a loop SIGKILLs a random ready worker after a random delay and starts a
replacement, half of them under the dead worker's name (a StatefulSet pod, a fixed
``--name``), half under a new one. Right after each kill it records what the dead worker held
in flight (``icow:runs:<w>``): those messages must come back, through the reaper once the
lease runs out, or at once when a worker starts under the same name.

Figures (printed): jobs, kills (and how many hit a worker holding jobs, and how many of those
held jobs taken but not yet claimed, the window where the old intake lost messages), lost (no
answer: must be 0), wrong, duplicate answers (a job answered twice on its reply list: must be
0), runs started twice (``icow:tries:<id>`` > 1: claimed, killed, claimed again), redelivered
(messages that were in a killed worker's in-flight list).

Every answered job's reply must be on its caller's reply list exactly once. The jobs come from
one caller per :data:`JOBS_PER_CALLER` jobs, each with its own reply list, so that no list
reaches the reply list bound (``keys.REPLY_MAX`` newest entries, docs/PROTOCOL.md §11.2): every
push stays countable at the end (a trimmed entry is no loss, its result stays under its key,
but a trimmed list could hide a duplicate).

CI runs ``ICOW_CHAOS_KILLS`` (default 25) kills; the 200-kill run is marked slow.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from icow import keys
from icow.celery_message import decode_message
from icow.cli.fleet import LocalRedis, start_worker, stop_process
from icow.result import failure_of, parse_meta
from icow.workers import samples
from icow.workers.heartbeat import live_workers

from . import rawjobs
from .conftest import WorkerProcess

LEASE_S = 4
KILLS_CI = int(os.environ.get("ICOW_CHAOS_KILLS", "25"))
KILLS_SLOW = 200
WORKERS = 3
BACKLOG = 60  # jobs kept waiting in the queue while the kills go on
CHUNK = 20
JOBS_PER_CALLER = 1000  # a new reply list every 1000 jobs: far under keys.REPLY_MAX, never trimmed
assert JOBS_PER_CALLER % CHUNK == 0 and JOBS_PER_CALLER < keys.REPLY_MAX


def busy_scale(path: Path, width: int = 512, layers: int = 64) -> Path:
    """FP32 ``x`` [N, 2] -> ``y`` = 2x, after ``layers`` [N, width] x [width, width] products
    that depend on x (onnxruntime cannot fold them away): a few ms a job."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.eye(width, dtype=np.float32), "eye"),
        numpy_helper.from_array(np.array([1, width // 2], dtype=np.int64), "reps"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [helper.make_node("Tile", ["x", "reps"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]) for i in range(layers)]
    nodes += [
        helper.make_node("ReduceSum", [f"h{layers}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "busy_scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", samples.OPSET)], producer_name="icow")
    model.ir_version = 8
    return samples._save(model, path)


@pytest.fixture(scope="module")
def chaos_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chaos-repo")
    busy_scale(root / "scale" / "1" / "model.onnx")
    (root / "scale" / "config.toml").write_text("max_batch = 4\nproviders = ['cpu']\n")
    samples.slow(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.toml").write_text("max_batch = 4\nproviders = ['cpu']\n")
    return root


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    s = LocalRedis()
    yield s
    s.stop()


@dataclass
class Figures:
    jobs: int = 0
    kills: int = 0
    kills_holding_jobs: int = 0
    kills_holding_unclaimed: int = 0  # held jobs taken but not yet claimed (take phase)
    lost: int = 0
    wrong: int = 0
    duplicate_answers: int = 0
    runs_started_twice: int = 0
    redelivered: int = 0
    same_name_restarts: int = 0
    elapsed_s: float = 0.0
    examples: list[str] = field(default_factory=list)


class Fleet:
    """Worker processes in slots; a killed worker's slot gets a replacement at once."""

    def __init__(self, repo: Path, url: str, n: int):
        self.repo, self.url = repo, url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.generation = 0
        for slot in range(n):
            self.start(f"chaos{slot}-0@local")

    def start(self, name: str) -> None:
        extra = ["--name", name, "--threads", "1", "--lease", str(LEASE_S)]
        self.procs[name] = start_worker(self.repo, self.url, extra=extra, quiet=not os.environ.get("ICOW_TEST_VERBOSE"))

    def ready(self, r: redis.Redis) -> list[str]:
        beats = {w["name"] for w in live_workers(r) if w.get("ready")}
        return [n for n, p in self.procs.items() if n in beats and p.poll() is None]

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop(self) -> None:
        for p in self.procs.values():
            stop_process(p)


def held_by(r: redis.Redis, name: str) -> list[str]:
    """Job ids of the messages in a (dead) worker's in-flight lists."""
    ids = []
    for run in r.hkeys(keys.runs(name)):
        for raw in r.lrange(run, 0, -1):
            msg = decode_message(raw)
            assert msg.job_id is not None
            ids.append(msg.job_id)
    return ids


def feed(url: str, stop: threading.Event, sent: dict[str, float], reply_of: dict[str, str]) -> None:
    """Keep about BACKLOG jobs waiting until ``stop``; job n has x = [n, -n/2] and the reply
    list of caller n // JOBS_PER_CALLER (``reply_of``: job id -> its reply list)."""
    r = redis.Redis.from_url(url)
    q = keys.queue("scale")
    n = 0
    reply_to = rawjobs.new_reply_list()
    while not stop.is_set():
        if r.llen(q) >= BACKLOG:
            time.sleep(0.005)
            continue
        if n and n % JOBS_PER_CALLER == 0:
            reply_to = rawjobs.new_reply_list()  # the next caller
        messages = []
        for _ in range(CHUNK):
            x = np.array([[n, -n / 2]], np.float32)
            job_id, m = rawjobs.job_message("scale", x, reply_to=reply_to)
            sent[job_id] = float(n)
            reply_of[job_id] = reply_to
            messages.append(m)
            n += 1
        assert rawjobs.submit(r, "scale", messages) == CHUNK
    r.close()


def chaos(repo: Path, url: str, kills: int, seed: int) -> Figures:
    rng = random.Random(seed)
    fig = Figures()
    r = redis.Redis.from_url(url)
    sent: dict[str, float] = {}
    reply_of: dict[str, str] = {}
    redelivered: set[str] = set()
    fleet = Fleet(repo, url, WORKERS)
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(url, stop, sent, reply_of), daemon=True)
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 120
        while len(fleet.ready(r)) < WORKERS:
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.05)
        feeder.start()
        while fig.kills < kills:
            ready = fleet.ready(r)
            if not ready:
                time.sleep(0.02)
                continue
            victim = rng.choice(ready)
            time.sleep(rng.uniform(0.0, 0.8))  # a random instant in its take, run or write
            fleet.kill(victim)
            fig.kills += 1
            held = held_by(r, victim)  # frozen now: what it held must come back
            if held:
                fig.kills_holding_jobs += 1
                tries = r.mget([keys.tries(j) for j in held])
                fig.kills_holding_unclaimed += any(t is None for t in tries)
            redelivered.update(held)
            fleet.generation += 1
            if rng.random() < 0.5:
                fig.same_name_restarts += 1
                fleet.start(victim)  # a restart under the same name: it puts back what it held
            else:
                fleet.start(f"chaos{victim[5]}-{fleet.generation}@local")
        stop.set()
        feeder.join()
        fig.jobs = len(sent)
        ids = list(sent)
        answers: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 120
        while len(answers) < len(ids) and time.monotonic() < deadline:
            answers.update(rawjobs.results(r, [i for i in ids if i not in answers]))
            time.sleep(0.2)
        held_at_end = rawjobs.wait_in_flight_empty(r, fleet.procs.values(), timeout_s=30)
        assert held_at_end == ({}, []), f"left in flight: {held_at_end}"
        fig.lost = len(ids) - len(answers)
        fig.examples += [f"lost {i} (x={sent[i]})" for i in ids if i not in answers][:5]
        for job_id, meta in answers.items():
            if meta["status"] != "SUCCESS":
                fig.wrong += 1
                fig.examples.append(f"failed {job_id}: {failure_of(meta)}")
                continue
            x = sent[job_id]
            y = rawjobs.output(r, meta)
            if y.tolist() != [[2 * x, -x]]:
                fig.wrong += 1
                fig.examples.append(f"wrong {job_id}: x={x} y={y.tolist()}")
        replies: dict[str, int] = {}
        for reply_to in sorted(set(reply_of.values())):
            entries = r.lrange(reply_to, 0, -1)
            assert len(entries) < keys.REPLY_MAX  # never trimmed: every push is counted here
            for raw in entries:
                task_id = parse_meta(raw)["task_id"]
                assert reply_of.get(task_id) == reply_to, f"{task_id}'s reply reached another caller"
                replies[task_id] = replies.get(task_id, 0) + 1
        fig.duplicate_answers = sum(n - 1 for n in replies.values() if n > 1)
        assert set(replies) == set(answers), "an answered job's reply never reached its caller"
        tries = [int(t) for t in r.mget([keys.tries(i) for i in ids]) if t is not None]
        fig.runs_started_twice = sum(1 for t in tries if t > 1)
        fig.redelivered = len(redelivered)
        deadline = time.monotonic() + LEASE_S + 10  # dead workers' leases are dropped once they run out
        while {i.decode() for i in r.zrange(keys.LEASES, 0, -1)} - set(fleet.procs):
            assert time.monotonic() < deadline, "a dead worker's lease stays"
            time.sleep(0.2)
    finally:
        stop.set()
        fleet.stop()
        r.close()
    fig.elapsed_s = round(time.monotonic() - t0, 1)
    fig.examples = fig.examples[:10]
    print(fig)
    return fig


def check(fig: Figures, kills: int) -> None:
    assert fig.kills == kills
    assert fig.lost == 0, fig.examples
    assert fig.wrong == 0, fig.examples
    assert fig.duplicate_answers == 0
    assert fig.kills_holding_jobs > 0  # the kills hit workers under load


def test_random_kills_lose_no_job_and_answer_each_once(chaos_repo: Path, server: LocalRedis) -> None:
    check(chaos(chaos_repo, server.url, KILLS_CI, seed=1), KILLS_CI)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_hundred_random_kills(chaos_repo: Path, server: LocalRedis) -> None:
    check(chaos(chaos_repo, server.url, KILLS_SLOW, seed=2), KILLS_SLOW)


# -- a frozen worker


def heartbeat_of(r: redis.Redis, name: str) -> dict[str, Any]:
    return next((w for w in live_workers(r) if w["name"] == name), {})


def test_a_frozen_workers_jobs_are_answered_by_another_once(chaos_repo: Path, server: LocalRedis) -> None:
    """SIGSTOP a worker holding jobs: its lease runs out, another worker answers them; after
    SIGCONT it finishes its run, but its answers are dropped (results are SET NX): the caller
    gets one answer per job, and nothing stays in flight."""
    r = redis.Redis.from_url(server.url)
    reply_to = rawjobs.new_reply_list()
    a = WorkerProcess(chaos_repo, server.url, f"frozen-a-{os.getpid()}@local", extra=["--lease", str(LEASE_S)])
    b = None
    try:
        xs = [np.full((400, 1024), i + 1, np.float32) for i in range(4)]  # each job runs alone, ~0.5 s
        messages = [rawjobs.job_message("slow", x, reply_to=reply_to) for x in xs]
        ids = [i for i, _ in messages]
        rawjobs.submit(r, "slow", [m for _, m in messages])
        deadline = time.monotonic() + 30
        while r.get(keys.state(ids[0])) != b"running":  # a holds the take and runs its first job
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.005)
        a.proc.send_signal(signal.SIGSTOP)
        held = held_by(r, a.name)
        assert set(held) == set(ids), held
        assert not rawjobs.results(r, ids)

        b = WorkerProcess(chaos_repo, server.url, f"frozen-b-{os.getpid()}@local", extra=["--lease", str(LEASE_S)])
        deadline = time.monotonic() + 60
        while len(found := rawjobs.results(r, ids)) < len(ids):
            assert time.monotonic() < deadline, "the frozen worker's jobs were never answered"
            time.sleep(0.1)
        assert {m["result"]["worker"] for m in found.values()} == {b.name}

        a.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while heartbeat_of(r, a.name).get("jobs", 0) < len(ids):  # a wrote its (dropped) answers
            assert a.proc.poll() is None
            assert time.monotonic() < deadline, "the thawed worker never finished its take"
            time.sleep(0.1)
        assert rawjobs.results(r, ids) == found  # the first answers stand
        replies = [parse_meta(m)["task_id"] for m in r.lrange(reply_to, 0, -1)]
        assert sorted(replies) == sorted(ids)  # one answer per job reached the caller
        for job_id, x in zip(ids, xs):
            np.testing.assert_allclose(rawjobs.output(r, found[job_id]), x, rtol=1e-4)
        assert int(r.get(keys.tries(ids[0]))) == 2  # claimed by a, then by b
        assert rawjobs.wait_in_flight_empty(r, [a.proc, b.proc], timeout_s=10) == ({}, [])
        # The thawed worker serves again.
        job_id, m = rawjobs.job_message("slow", np.ones((2, 1024), np.float32))
        b.stop()
        rawjobs.submit(r, "slow", [m])
        deadline = time.monotonic() + 30
        while not rawjobs.results(r, [job_id]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rawjobs.results(r, [job_id])[job_id]["result"]["worker"] == a.name
    finally:
        if a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
            a.stop()
        if b is not None and b.proc.poll() is None:
            b.stop()
        r.close()
