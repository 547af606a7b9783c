"""How many jobs/s one Redis core carries for ICOW's round trips.

Simulated clients and workers make exactly the Redis calls of a real job and nothing else (no
model runs): the client ``FCALL icow_submit`` and waits on its reply list (``BLPOP``, then
``LPOP`` of the rest); the worker ``FCALL icow_take`` (``BZPOPMIN`` on the wake key when idle),
``FCALL icow_claim``, ``FCALL icow_answer`` (result ``SET NX``, state, ``PUBLISH``, reply
``RPUSH``, ack). Redis's own CPU time (``INFO cpu``) over the run, divided into the jobs
answered, gives the Redis CPU per job, hence the jobs/s one fully busy Redis core carries,
whatever the load generators on the same machine cost.

    .venv/bin/python bench/capacity.py                  # embedded Redis, bursts of 1 and 32
    .venv/bin/python bench/capacity.py --redis URL --duration 10 --clients 4 --workers 4
    .venv/bin/python bench/capacity.py --durable        # + WAIT 1 after each submit (starts a replica)
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icow import connection, functions, keys, tensor
from icow.celery_message import celery_message
from icow.codec import packb, unpackb
from icow.envelope import job_envelope, new_job
from icow.result import success_meta

MODEL = "bench"
LEASE_MS = 15_000


def _redis_cpu_s(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def client_loop(url: str, burst: int, durable: bool, stop: Any, counts: Any, slot: int) -> None:
    """Submit ``burst`` jobs in one FCALL, wait for their answers, again until stopped."""
    r = connection.connect(url, socket_connect_timeout=5, socket_timeout=30)
    reply = keys.reply(uuid.uuid4().hex)
    q = keys.queue(MODEL)
    x = tensor.encode("x", np.ones((1, 4), np.float32))
    x["data"] = bytes(x["data"])
    fixed = [keys.LIMITS, keys.live(MODEL), keys.wake(q), *keys.queue_lists(q)]
    done = 0
    while not stop.is_set():
        messages = []
        for _ in range(burst):
            job_id, _token = new_job()
            job = job_envelope(job_id=job_id, model=MODEL, version=None, inputs=[x], reply_to=reply)
            messages.append(celery_message(job, queue=q))
        args: list[Any] = [MODEL, "", "0", burst]
        for m in messages:
            args += [m, 0]
        if durable:
            pipe = r.pipeline(transaction=False)
            functions.call(pipe, functions.SUBMIT, [*fixed, *([q] * burst)], args)
            connection.wait_replicas(pipe, 1, 1000)
            _, acked = pipe.execute()
            connection.require_replicas(acked, 1)
        else:
            functions.call(r, functions.SUBMIT, [*fixed, *([q] * burst)], args)
        got = 0
        while got < burst and not stop.is_set():
            popped = r.blpop([reply], timeout=1)
            if popped is None:
                continue
            got += 1
            if got < burst:
                got += len(r.lpop(reply, burst - got) or [])
        done += got
    counts[slot] = done
    r.close()


def _job_of(message: bytes) -> dict[str, Any]:
    """The job inside a queue message (this bench's own messages: no validation needed)."""
    envelope = json.loads(message)
    args = unpackb(base64.b64decode(envelope["body"]))[0]
    return dict(args[0])


def worker_loop(url: str, burst: int, stop: Any, counts: Any, slot: int) -> None:
    """Take up to ``burst`` messages, claim them, answer them (a model that costs nothing)."""
    r = connection.connect(url, socket_connect_timeout=5, socket_timeout=30)
    name = f"capacity-{os.getpid()}"
    q = keys.queue(MODEL)
    lists = keys.queue_lists(q)
    y = tensor.encode("y", np.ones((1, 2), np.float32))
    outputs = [{**y, "data": bytes(y["data"])}]
    n = answered = 0
    while not stop.is_set():
        n += 1
        run = keys.run(name, n)
        took = functions.call(
            r,
            functions.TAKE,
            [keys.runs(name), keys.LEASES, run, *lists, *([keys.wake(q)] * len(lists))],
            [name, LEASE_MS, len(lists), 1 << 20, *([burst] * len(lists))],
        )
        if not took or int(took[0]) == 0:
            r.bzpopmin([keys.wake(q)], timeout=0.2)
            continue
        jobs = [_job_of(m) for m in took[1:]]
        ids = [j["id"] for j in jobs]
        claim_keys = [k for i in ids for k in (keys.result(i), keys.state(i), keys.tries(i))]
        functions.call(r, functions.CLAIM, claim_keys, [len(ids), keys.TRIES_TTL_S, *([600] * len(ids))])
        answer_keys: list[str] = [keys.runs(name), run]
        answer_args: list[Any] = [1, len(ids), keys.DONE_EXTRA_TTL_S]
        for job in jobs:
            meta = success_meta(
                job["id"], model=MODEL, version=1, outputs=outputs, worker=name, timing={"compute_s": 0.0}
            )
            answer_keys += [keys.result(job["id"]), keys.state(job["id"]), job["reply_to"] or ""]
            answer_args += [packb(meta), 600]
        functions.call(r, functions.ANSWER, answer_keys, answer_args)
        answered += len(ids)
    counts[slot] = answered
    r.close()


def measure(url: str, burst: int, clients: int, workers: int, duration_s: float, durable: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    counts = ctx.Array("q", clients + workers)
    procs = [ctx.Process(target=client_loop, args=(url, burst, durable, stop, counts, i)) for i in range(clients)]
    procs += [ctx.Process(target=worker_loop, args=(url, burst, stop, counts, clients + i)) for i in range(workers)]
    r = connection.connect(url)
    for p in procs:
        p.start()
    time.sleep(2.0)  # spawn + imports; jobs answered during warm-up are not counted below
    stats0 = r.info("commandstats")
    cpu0, t0 = _redis_cpu_s(r), time.monotonic()
    time.sleep(duration_s)
    cpu1, t1 = _redis_cpu_s(r), time.monotonic()
    stats1 = r.info("commandstats")
    stop.set()
    for p in procs:
        p.join(30)
    # Jobs answered inside the window: icow_answer's calls count FCALLs, not jobs, so count
    # the reply-list pushes made by those calls (one per job).
    calls = {k: stats1[k]["calls"] - stats0.get(k, {"calls": 0})["calls"] for k in stats1}
    jobs = calls.get("cmdstat_rpush", 0)
    elapsed, cpu = t1 - t0, cpu1 - cpu0
    r.close()
    return {
        "burst": burst,
        "clients": clients,
        "workers": workers,
        "durable": durable,
        "jobs": jobs,
        "jobs_per_s": jobs / elapsed,
        "redis_cpu": cpu / elapsed,
        "redis_us_per_job": 1e6 * cpu / max(jobs, 1),
        "jobs_per_redis_core_s": jobs / cpu if cpu > 0 else 0.0,
        "commands_per_job": sum(calls.values()) / max(jobs, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="Redis URL (any icow.connection form); default: an embedded Redis")
    parser.add_argument("--bursts", default="1,32", help="jobs per submit and per take, comma separated")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--durable", action="store_true", help="also measure WAIT 1 after each submit")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args(argv)
    from icow.cli.fleet import LocalRedis

    servers: list[Any] = []
    url = a.redis
    if url is None:
        servers.append(LocalRedis())
        url = servers[0].url
    if a.durable and a.redis is None:
        replica = LocalRedis()
        servers.append(replica)
        connection.connect(replica.url).replicaof("127.0.0.1", servers[0].port)
    try:
        r = connection.connect(url)
        functions.install(r)
        r.close()
        rows = []
        for durable in (False, True) if a.durable else (False,):
            for burst in (int(b) for b in a.bursts.split(",")):
                rows.append(measure(url, burst, a.clients, a.workers, a.duration, durable))
    finally:
        for s in reversed(servers):
            s.stop()
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"Redis {connection.redact(url)}: {a.clients} clients, {a.workers} workers, {a.duration:g} s a row")
    print(f"({os.cpu_count()} cores; Redis CPU from INFO cpu; commands counted inside functions too)")
    print(
        "| jobs per submit/take | durable | jobs/s | Redis CPU | Redis us/job | jobs/s per Redis core | commands/job |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['burst']} | {'WAIT 1' if row['durable'] else 'no'} | {row['jobs_per_s']:,.0f} | "
            f"{100 * row['redis_cpu']:.0f}% | {row['redis_us_per_job']:.1f} | {row['jobs_per_redis_core_s']:,.0f} | "
            f"{row['commands_per_job']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
