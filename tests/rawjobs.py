"""Jobs built and read the raw way, as docs/PROTOCOL.md describes them: a kombu envelope made by
icow.envelope and icow.celery_message, queued with ``FCALL icow_submit`` (or a plain ``LPUSH``, as a hostile producer
would), answered under ``celery-task-meta-<id>`` and on the caller's reply list. The intake
tests use this instead of icow.client so that they exercise only the worker side.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from icow import functions, keys, tensor
from icow.celery_message import celery_message
from icow.envelope import job_envelope, new_job
from icow.result import failure_of, parse_meta


def job_message(
    model: str,
    x: np.ndarray,
    *,
    job_id: str | None = None,
    version: int | None = None,
    reply_to: str | None = None,
    priority: int = 0,
    deadline: float | None = None,
) -> tuple[str, bytes]:
    """(job id, message) of a valid job with one input ``x``."""
    job_id = job_id or new_job()[0]
    job = job_envelope(
        job_id=job_id,
        model=model,
        version=version,
        inputs=[tensor.encode("x", np.ascontiguousarray(x))],
        reply_to=reply_to,
        result_ttl_s=3600,
        deadline=deadline,
    )
    return job_id, celery_message(job, queue=keys.queue(model, version), priority=priority)


def submit(r: redis.Redis, model: str, messages: Sequence[bytes], version: int | None = None) -> int:
    """Queue messages with ``icow_submit`` (no live check, no blobs). Returns how many were queued."""
    q = keys.queue(model, version)
    fkeys: list[str] = [keys.LIMITS, keys.live(model), keys.wake(q), *keys.queue_lists(q)]
    args: list[Any] = [model, "" if version is None else str(version), "0", len(messages)]
    for m in messages:
        fkeys.append(keys.queue_list(q))
        args += [m, 0]
    return int(functions.call(r, functions.SUBMIT, fkeys, args)[0])


def push_raw(r: redis.Redis, queue_list: str, messages: Iterable[bytes]) -> None:
    """LPUSH raw bytes (what the client ACL user may do) and wake the queue's workers."""
    pipe = r.pipeline(transaction=False)
    for m in messages:
        pipe.lpush(queue_list, m)
    parsed = keys.parse_queue(queue_list)
    if parsed is not None:
        pipe.zadd(keys.wake(keys.queue(parsed[0], parsed[1])), {"1": 0})
    pipe.execute()


def results(r: redis.Redis, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The result metas that exist among ``job_ids``."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(job_ids), 1000):
        chunk = job_ids[start : start + 1000]
        for job_id, data in zip(chunk, r.mget([keys.result(i) for i in chunk])):
            if data is not None:
                found[job_id] = parse_meta(data)
    return found


def output(r: redis.Redis, meta: Mapping[str, Any], name: str = "y") -> np.ndarray:
    """One output tensor of a SUCCESS meta (inline or claim-checked)."""
    assert meta["status"] == "SUCCESS", failure_of(meta)
    for t in meta["result"]["outputs"]:
        if t["name"] == name:
            if "ref" in t:
                t = {**t, "data": r.get(t["ref"])}
            return tensor.decode(t)
    raise KeyError(name)


def new_reply_list() -> str:
    return keys.reply(secrets.token_hex(16))


def in_flight(r: redis.Redis) -> tuple[dict[str, int], list[str]]:
    """What every worker holds: ``icow:runs:<w>`` hash sizes and the ``icow:run:*`` lists."""
    runs = {k.decode(): int(r.hlen(k)) for k in r.scan_iter(match=keys.runs("*"), count=1000)}
    lists = sorted(k.decode() for k in r.scan_iter(match=keys.run("*", 0)[:-1] + "*", count=1000))
    return {k: n for k, n in runs.items() if n}, lists


def wait_in_flight_empty(
    r: redis.Redis, alive: Iterable[Any], timeout_s: float = 60
) -> tuple[dict[str, int], list[str]]:
    """Wait until no worker holds a message (or the timeout); ``alive``: processes to check."""
    deadline = time.monotonic() + timeout_s
    while True:
        for p in alive:
            assert p.poll() is None, f"a worker exited with {p.returncode}"
        held = in_flight(r)
        if (not held[0] and not held[1]) or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status (VmHWM: its peak RSS)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
