"""A stand-in for the worker side of the contract, for client tests that must not depend on a
real worker: it keeps a model version live, takes the client's messages off their queue,
validates them with the worker's own parser, and answers through the Redis Functions the real
workers use (``icow_claim``, ``icow_answer``, ``icow_cancel``), exactly as docs/PROTOCOL.md says
a worker does. Every step is a method, so a test can also drive it by hand.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from icow import functions, keys, tensor
from icow.codec import packb, unpackb
from icow.envelope import DEFAULT_INLINE_MAX_BYTES, job_id_for_token, parse_job
from icow.result import failure_meta, success_meta

Handler = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def doubled(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sample model: y = 2 x."""
    return {"y": inputs["x"] * 2}


class SimWorker:
    """Serves ``model`` (``version``) from a thread with ``handler``; answers cancel requests."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        version: int = 1,
        handler: Handler = doubled,
        inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
        name: str = "sim@test",
    ):
        self.r = redis.Redis.from_url(url)
        functions.install(self.r)
        self.model = model
        self.version = version
        self.handler = handler
        self.inline_max_bytes = inline_max_bytes
        self.name = name
        self.taken: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the fleet's records

    def publish(self, live_ms: int = 60_000) -> None:
        """Mark the version live (as heartbeats do) and publish its metadata."""
        seconds, micros = self.r.time()
        now_ms = seconds * 1000 + micros // 1000
        self.r.zadd(keys.live(self.model), {str(self.version): now_ms + live_ms})
        self.r.sadd(keys.MODELS, self.model)
        meta = {
            "name": self.model,
            "version": self.version,
            "platform": "onnxruntime",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
            "providers": ["CPUExecutionProvider"],
        }
        self.r.hset(keys.model(self.model), str(self.version), packb(meta))

    def withdraw(self) -> None:
        self.r.delete(keys.live(self.model), keys.model(self.model))
        self.r.srem(keys.MODELS, self.model)

    # -- one job at a time

    def queue_lists(self, pinned: bool = False) -> list[str]:
        return keys.queue_lists(keys.queue(self.model, self.version if pinned else None))

    def take(self, timeout_s: float = 5.0, pinned: bool = False) -> dict[str, Any] | None:
        """Pop the next message (lowest priority step first) and parse its job as a worker would."""
        popped = self.r.brpop(self.queue_lists(pinned), timeout=timeout_s)
        if popped is None:
            return None
        envelope = json.loads(popped[1])
        args, _kwargs, _embed = unpackb(base64.b64decode(envelope["body"]))
        job = parse_job(args[0], task_id=envelope["headers"]["id"])
        job["_queue_list"] = popped[0].decode()
        job["_priority"] = envelope["properties"]["priority"]
        job["_headers"], job["_raw"] = envelope["headers"], bytes(popped[1])
        self.taken.append(job)
        return job

    def claim(self, job: dict[str, Any]) -> bool:
        """icow_claim: False if the job was already answered (cancelled), else mark it running."""
        j = job["id"]
        answered, _tries = functions.call(
            self.r, functions.CLAIM, [keys.result(j), keys.state(j), keys.tries(j)], [1, 600, job["ttl"]]
        )
        return not answered

    def inputs_of(self, job: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for t in job["inputs"]:
            if "ref" in t:
                data = self.r.get(t["ref"])
                assert data is not None, f"input {t['ref']} is gone"
                self.r.delete(t["ref"])
                t = {**t, "data": data}
            out[t["name"]] = tensor.decode(t)
        return out

    def answer(self, job: dict[str, Any], meta: dict[str, Any]) -> bool:
        """icow_answer: store the result once, publish it, push it to the job's reply list."""
        j = job["id"]
        [written] = functions.call(
            self.r,
            functions.ANSWER,
            [keys.runs(self.name), keys.result(j), keys.state(j), job["reply_to"] or ""],
            [0, 1, keys.DONE_EXTRA_TTL_S, packb(meta), job["ttl"]],
        )
        return bool(written)

    def success(self, job: dict[str, Any], outputs: dict[str, np.ndarray]) -> bool:
        wire = []
        for i, (name, array) in enumerate(outputs.items()):
            t = tensor.encode(name, array)
            t["data"] = bytes(t["data"])
            if len(t["data"]) > self.inline_max_bytes:
                ref = keys.output_blob(job["id"], i)
                self.r.set(ref, t.pop("data"), ex=job["ttl"])
                t["ref"] = ref
            wire.append(t)
        meta = success_meta(
            job["id"],
            model=job["model"],
            version=self.version,
            outputs=wire,
            worker=self.name,
            timing={"queued_s": 0.0, "compute_s": 0.0},
        )
        return self.answer(job, meta)

    def failure(self, job: dict[str, Any], error_type: str, message: str) -> bool:
        meta = failure_meta(job["id"], error_type=error_type, message=message, model=job["model"], worker=self.name)
        return self.answer(job, meta)

    def run(self, job: dict[str, Any]) -> None:
        if self.claim(job):
            self.success(job, self.handler(self.inputs_of(job)))

    def serve_cancels(self) -> int:
        """Answer every pending cancel request (icow_cancel, then the outcome entry); how many."""
        n = 0
        while True:
            popped = self.r.zpopmin(keys.CANCELS)
            if not popped:
                return n
            token, reply_to, *ttl = popped[0][0].decode().split(" ")  # <token> <reply list> [<ttl>]
            job_id = job_id_for_token(token)
            meta = failure_meta(
                job_id, error_type="JobCancelled", message="the job was cancelled before it ran", worker=self.name
            )
            code = functions.call(
                self.r,
                functions.CANCEL,
                [keys.result(job_id), keys.state(job_id), keys.bell(job_id)],
                [
                    packb(meta),
                    int(ttl[0]) if ttl else keys.DEFAULT_RESULT_TTL_S,
                    keys.DONE_EXTRA_TTL_S,
                    keys.BELL_TTL_S,
                ],
            )
            if keys.is_reply(reply_to):
                self.r.rpush(reply_to, packb({"status": "CANCEL", "task_id": f"cancel:{job_id}", "result": code}))
                self.r.expire(reply_to, keys.DEFAULT_RESULT_TTL_S)
            n += 1

    # -- as a thread

    def start(self, *, run_jobs: bool = True) -> SimWorker:
        """Publish, then serve from a thread: cancel requests, and jobs unless ``run_jobs`` is
        False (they then wait in the queue for the test to take them by hand)."""
        self.publish()
        self._thread = threading.Thread(target=self._loop, args=(run_jobs,), name=f"sim-{self.model}", daemon=True)
        self._thread.start()
        return self

    def _loop(self, run_jobs: bool) -> None:
        while not self._stop.is_set():
            self.serve_cancels()
            job = self.take(timeout_s=0.05) if run_jobs else None
            if job is not None:
                self.run(job)
            elif not run_jobs:
                self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.r.close()
