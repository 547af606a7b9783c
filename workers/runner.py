"""Runs jobs: decode and validate (never trusting the queue), run the model, answer every job.

Every job handed to :meth:`JobRunner.handle_many` gets exactly one answer: a success, or a
structured failure naming the problem. Nothing a job contains can crash the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from icow import keys, protocol, tensor
from icow.errors import IcowError, InvalidInput, JobExpired, RemoteError
from icow.workers.models import ModelManager
from icow.workers.observer import JobObserver, outcome_of
from icow.workers.results import ResultWriter

log = logging.getLogger("icow.runner")


@dataclass
class _Job:
    task_id: str
    raw: Any
    received: float
    ttl_s: int = keys.DEFAULT_RESULT_TTL_S
    reply_to: str | None = None
    job: dict[str, Any] | None = None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    datatypes: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] | None = None
    blobs: dict[str, Any] = field(default_factory=dict)


def _error_type(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, RemoteError):
        return exc.remote_type, exc.message
    if isinstance(exc, InvalidInput):
        return "InvalidJob", str(exc)
    if type(exc).__name__ in ("InvalidArgument", "InvalidGraph"):  # onnxruntime's input errors
        return "InvalidJob", str(exc)
    return "InternalError", f"{type(exc).__name__}: {exc}"


def _salvage(raw: Any) -> tuple[int, str | None]:
    """TTL and reply list of a job that failed validation, if they themselves are valid."""
    ttl, reply = keys.DEFAULT_RESULT_TTL_S, None
    if isinstance(raw, Mapping):
        t = raw.get("ttl")
        if isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= keys.MAX_RESULT_TTL_S:
            ttl = t
        r = raw.get("reply_to")
        if isinstance(r, str) and r.startswith(keys.reply("")) and len(r) < 200:
            reply = r
    return ttl, reply


class JobRunner:
    def __init__(
        self,
        manager: ModelManager,
        r: redis.Redis,
        *,
        worker: str,
        max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES,
        inline_max_bytes: int = protocol.DEFAULT_INLINE_MAX_BYTES,
        observer: JobObserver | None = None,
    ):
        self.manager = manager
        self.observer = observer  # told about every answered job (metrics, heartbeat stats)
        self.r = r
        self.worker = worker
        self.max_tensor_bytes = max_tensor_bytes
        self.inline_max_bytes = inline_max_bytes
        self.writer = ResultWriter(r)
        self.jobs = 0
        self.failures = 0
        self.last_error: str | None = None

    def stats(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "failures": self.failures, "last_error": self.last_error}

    def fail_now(self, task_id: str, error_type: str, message: str) -> None:
        """Answer a message that never reached the task (e.g. an undecodable body)."""
        meta = protocol.failure_meta(task_id, error_type=error_type, message=message, worker=self.worker)
        self.failures += 1
        self.last_error = f"{error_type}: {message}"[:500]
        self.writer.write(task_id, meta, ttl_s=keys.DEFAULT_RESULT_TTL_S, reply_to=None)

    def handle(self, task_id: str, raw: Any) -> None:
        self.handle_many([(task_id, raw)])

    def handle_many(self, items: Sequence[tuple[str, Any]]) -> None:
        now = time.time()
        jobs = [_Job(task_id, raw, now) for task_id, raw in items]
        try:
            self._parse(jobs)
            self._fetch(jobs)
            self._run(jobs)
        except Exception as exc:  # a bug or Redis trouble mid-way: still answer every job
            log.exception("unexpected error while running jobs")
            for j in jobs:
                if j.meta is None:
                    self._fail(j, exc)
        self._write(jobs)
        if self.observer is not None:
            self._observe(jobs)

    # -- steps

    def _fail(self, j: _Job, exc: BaseException) -> None:
        error_type, message = _error_type(exc)
        job = j.job or {}
        j.meta = protocol.failure_meta(
            j.task_id,
            error_type=error_type,
            message=message,
            model=job.get("model"),
            version=job.get("version"),
            worker=self.worker,
        )
        j.blobs = {}
        self.failures += 1
        self.last_error = f"{error_type}: {message}"[:500]
        log.info("job %s failed: %s: %s", j.task_id, error_type, message)

    def _parse(self, jobs: list[_Job]) -> None:
        for j in jobs:
            j.ttl_s, j.reply_to = _salvage(j.raw)
            try:
                j.job = protocol.parse_job(j.raw, task_id=j.task_id, max_tensor_bytes=self.max_tensor_bytes)
            except IcowError as exc:
                self._fail(j, exc)

    def _fetch(self, jobs: list[_Job]) -> None:
        """One round trip: claim-checked inputs, and mark every job running."""
        live = [j for j in jobs if j.meta is None and j.job is not None]
        if not live:
            return
        pipe = self.r.pipeline(transaction=False)
        wanted: list[tuple[_Job, int]] = []
        for j in live:
            assert j.job is not None
            pipe.set(keys.state(j.task_id), b"running", xx=True, keepttl=True)
            for i, t in enumerate(j.job["inputs"]):
                if "ref" in t:
                    pipe.get(t["ref"])
                    wanted.append((j, i))
        replies = iter(pipe.execute())
        for j in live:
            assert j.job is not None
            next(replies)  # the SET
            for i, t in enumerate(j.job["inputs"]):
                if "ref" in t:
                    data = next(replies)
                    if data is None:
                        if j.meta is None:
                            self._fail(j, InvalidInput(f"input {t['name']!r}: its claim-checked data has expired"))
                        continue
                    j.job["inputs"][i] = {**t, "data": data}

    def _run(self, jobs: list[_Job]) -> None:
        for j in jobs:
            if j.meta is not None or j.job is None:
                continue
            try:
                self._run_one(j)
            except Exception as exc:
                self._fail(j, exc)

    def _run_one(self, j: _Job) -> None:
        job = j.job
        assert job is not None
        deadline = job["deadline"]
        if deadline is not None and time.time() > deadline:
            raise JobExpired(f"the job's deadline passed {time.time() - deadline:.3f} s before it could run")
        model = self.manager.get(job["model"], job["version"])
        inputs: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for t in job["inputs"]:
            inputs[t["name"]] = tensor.decode(t, max_bytes=self.max_tensor_bytes)
            datatypes[t["name"]] = t["datatype"]
        model.check_inputs(inputs, datatypes)
        model.check_outputs(job["outputs"])
        t0 = time.perf_counter()
        outputs = model.run(inputs, job["outputs"])
        compute_s = time.perf_counter() - t0
        wire = []
        for i, (name, arr) in enumerate(outputs.items()):
            t = tensor.encode(name, arr, max_bytes=1 << 62)
            if len(t["data"]) > self.inline_max_bytes:
                ref = keys.blob(j.task_id, "out", i)
                j.blobs[ref] = t.pop("data")
                t["ref"] = ref
            wire.append(t)
        j.meta = protocol.success_meta(
            j.task_id,
            model=model.name,
            version=model.version,
            outputs=wire,
            worker=self.worker,
            timing={"queued_s": max(0.0, j.received - job["created"]), "compute_s": compute_s},
        )

    def _write(self, jobs: list[_Job]) -> None:
        items = [(j.task_id, j.meta, j.ttl_s, j.reply_to, j.blobs) for j in jobs if j.meta is not None]
        self.jobs += len(items)
        refs = [
            keys.blob(j.task_id, "in", i)
            for j in jobs
            if isinstance(j.raw, Mapping) and isinstance(j.raw.get("inputs"), list)
            for i, t in enumerate(j.raw["inputs"])
            if isinstance(t, Mapping) and "ref" in t
        ]
        written = self.writer.write_many(items, delete=refs)  # type: ignore[arg-type]
        for (job_id, *_), ok in zip(items, written):
            if not ok:
                log.warning("job %s already had a result; this run's result was dropped", job_id)

    # -- observer hook (workers/observer.py): metrics and heartbeat stats, never fails a job

    def _observe(self, jobs: Sequence[_Job]) -> None:
        assert self.observer is not None
        done = time.time()
        try:
            self.observer.jobs_done(
                [outcome_of(j.task_id, j.meta, j.job, j.received, done) for j in jobs if j.meta is not None]
            )
        except Exception:
            log.exception("a job observer failed")
