"""Runs jobs: decode and validate (never trusting the queue), run the model, answer every job.

Every job handed to :meth:`JobRunner.handle_many` gets exactly one answer: a success, or a
structured failure naming the problem. Nothing a job contains can crash the worker.

:meth:`JobRunner.serve` is the Celery task's body: it runs the job Celery delivered together
with the jobs already waiting behind it (taken straight from Redis by workers/intake.py and
batched by workers/batching.py), then lingers a few milliseconds for the next job before
handing control back to Celery's event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from icow import keys, protocol, tensor
from icow.errors import IcowError, InternalError, InvalidInput, JobExpired, RemoteError
from icow.workers import batching
from icow.workers.intake import Delivery, Intake
from icow.workers.models import ModelManager
from icow.workers.observer import JobObserver, outcome_of
from icow.workers.results import ResultWriter

log = logging.getLogger("icow.runner")

MAX_TRIES = 3  # deliveries of one job before it is dead-lettered as a poison job
RETRY_BACKOFF_S = (0.05, 0.25)  # in-process retries of an unexpected (possibly transient) failure


@dataclass
class Incoming:
    """A job as it arrived: its id, raw job map, delivery tag, or why it could not be read."""

    task_id: str | None
    raw: Any
    tag: str | None = None
    error: str | None = None
    redelivered: bool = False  # restored after a lease ran out: check for poison before running


@dataclass
class _Job:
    task_id: str
    raw: Any
    received: float
    tag: str | None = None
    ttl_s: int = keys.DEFAULT_RESULT_TTL_S
    reply_to: str | None = None
    job: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    blobs: dict[str, Any] = field(default_factory=dict)
    skip: bool = False  # already answered (cancelled, or a redelivered duplicate)
    tries: int = 1
    redelivered: bool = False


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


def incoming_from(d: Delivery) -> Incoming:
    """Decode a message the runner took from a queue itself (as Celery would have)."""
    if d.envelope is None:
        return Incoming(None, None, d.tag, d.error)
    task_id = d.task_id
    headers = d.envelope.get("headers")
    task = headers.get("task") if isinstance(headers, dict) else None
    if task != protocol.TASK_NAME:
        return Incoming(task_id, None, d.tag, f"unknown task {task!r}; ICOW workers run {protocol.TASK_NAME!r}")
    try:
        _, job = protocol.decode_celery_message(d.envelope)
    except InvalidInput as exc:
        return Incoming(task_id, None, d.tag, str(exc))
    redelivered = bool(headers.get("redelivered")) if isinstance(headers, dict) else False
    return Incoming(task_id, job, d.tag, redelivered=redelivered)


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
        linger_s: float = 0.02,
        slice_s: float = 1.0,
    ):
        self.manager = manager
        self.observer = observer  # told about every answered job (metrics, heartbeat stats)
        self.r = r
        self.worker = worker
        self.max_tensor_bytes = max_tensor_bytes
        self.inline_max_bytes = inline_max_bytes
        self.writer = ResultWriter(r)
        self.intake = Intake(r)
        self.linger_s = linger_s  # how long to wait for the next job before returning to Celery
        self.slice_s = slice_s  # longest stretch spent outside Celery's event loop
        self.jobs = 0
        self.failures = 0
        self.last_error: str | None = None
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Lock()
        self._bursts = 0

    def stats(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "failures": self.failures, "last_error": self.last_error}

    def inflight_tags(self) -> list[str]:
        """Delivery tags of the messages being worked on (their leases are renewed)."""
        with self._inflight_lock:
            return list(self._inflight)

    def fail_now(self, task_id: str, error_type: str, message: str) -> None:
        """Answer a message that never reached the task (e.g. an undecodable body)."""
        meta = protocol.failure_meta(task_id, error_type=error_type, message=message, worker=self.worker)
        self.failures += 1
        self.last_error = f"{error_type}: {message}"[:500]
        self.writer.write(task_id, meta, ttl_s=keys.DEFAULT_RESULT_TTL_S, reply_to=None)

    # -- the burst loop (the Celery task's body)

    def _lists(self, model: str) -> list[str]:
        lists = keys.queue_lists(model)
        # Higher priority first, but every 8th drain starts from the lowest: no starvation.
        return list(reversed(lists)) if self._bursts % 8 == 7 else lists

    def _all_lists(self) -> list[str]:
        names = sorted(self.manager.entries)
        lists = [keys.queue_list(m, step) for step in keys.KOMBU_PRIORITY_STEPS for m in names]
        return list(reversed(lists)) if self._bursts % 8 == 7 else lists

    def _max_batch(self, model: str | None) -> int:
        entry = self.manager.entries.get(model or "")
        return entry.config.max_batch if entry is not None else 1

    def serve(self, first: Incoming, queue: str | None) -> None:
        """Run ``first`` and the jobs waiting behind it; linger briefly for more."""
        end = time.monotonic() + self.slice_s
        items = [first]
        model = keys.model_of_queue(queue or "")
        cap = self._max_batch(model)
        if cap > 1 and model is not None:
            items += [incoming_from(d) for d in self.intake.pop(self._lists(model), cap - 1)]
        while items:
            self._bursts += 1
            if model is not None and 1 < len(items) < cap and self._max_wait_ms(model) > 0:
                time.sleep(self._max_wait_ms(model) / 1000)  # jobs are arriving: let the batch fill
                items += [incoming_from(d) for d in self.intake.pop(self._lists(model), cap - len(items))]
            self.handle_many(items)
            if time.monotonic() >= end or self.linger_s <= 0:
                return
            try:
                watch = keys.queue(model) if model is not None else keys.queue(min(self.manager.entries))
                burst = self.intake.wait_burst(self._all_lists(), watch, self._linger_cap(), self.linger_s)
            except redis.exceptions.RedisError:
                return
            items = [incoming_from(d) for d in burst]
            if burst:
                rk = ((burst[0].envelope or {}).get("properties") or {}).get("delivery_info") or {}
                model = keys.model_of_queue(rk.get("routing_key", "") if isinstance(rk, dict) else "")
                cap = self._max_batch(model)

    def _linger_cap(self) -> int:
        return max([e.config.max_batch for e in self.manager.entries.values()] or [1])

    def _max_wait_ms(self, model: str) -> float:
        entry = self.manager.entries.get(model)
        return entry.config.max_wait_ms if entry is not None else 0.0

    # -- one batch of jobs

    def handle_many(self, items: Sequence[Incoming]) -> None:
        now = time.time()
        jobs: list[_Job] = []
        unanswerable: list[str] = []
        for it in items:
            if it.task_id is None or not keys.JOB_ID_RE.match(it.task_id):
                log.error("dropped a message without a usable job id (%r): %s", it.task_id, it.error)
                if it.tag:
                    unanswerable.append(it.tag)
                continue
            j = _Job(it.task_id, it.raw, now, tag=it.tag, redelivered=it.redelivered)
            if it.error is not None:
                self._fail(j, InvalidInput(it.error))
            jobs.append(j)
        with self._inflight_lock:
            self._inflight.update(j.tag for j in jobs if j.tag)
        try:
            try:
                self._parse(jobs)
                finish = self._fetch(jobs)
                try:
                    self._run(jobs)
                finally:
                    if finish is not None:  # always read the overlapped reply (frees its connection)
                        finish()
            except Exception as exc:  # a bug or Redis trouble mid-way: still answer every job
                log.exception("unexpected error while running jobs")
                for j in jobs:
                    if j.meta is None and not j.skip:
                        self._fail(j, exc)
            self._write(jobs, unanswerable)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(j.tag for j in jobs if j.tag)
        if self.observer is not None:
            self._observe(jobs)

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
            if j.meta is not None:
                continue
            try:
                j.job = protocol.parse_job(j.raw, task_id=j.task_id, max_tensor_bytes=self.max_tensor_bytes)
            except IcowError as exc:
                self._fail(j, exc)

    def _fetch(self, jobs: list[_Job]) -> Callable[[], None] | None:
        """One round trip: is it answered already, count the delivery, mark it running, and
        read its claim-checked inputs.

        For fresh jobs whose inputs are all inline nothing in the reply is needed before
        running them, so the commands are sent and the reply is read only after the model ran
        (the round trip overlaps the compute); the returned function reads it. Redelivered jobs
        (possible poison) and claim-checked inputs wait for the reply first.
        """
        live = [j for j in jobs if j.meta is None and j.job is not None]
        if not live:
            return None
        claim_keys, claim_args = self.intake.claim_call([(j.task_id, j.redelivered) for j in live])
        refs = [t["ref"] for j in live for t in (j.job or {}).get("inputs", ()) if "ref" in t]
        overlap = not refs and not any(j.redelivered for j in live)
        if not overlap:
            pipe = self.r.pipeline(transaction=False)
            script = self.intake.claim_script
            pipe.evalsha(script.sha, len(claim_keys), *claim_keys, *claim_args)
            for ref in refs:
                pipe.get(ref)
            claimed, *blobs = pipe.execute(raise_on_error=False)
            if isinstance(claimed, redis.exceptions.NoScriptError):  # Redis restarted or flushed
                claimed = script(keys=claim_keys, args=claim_args)
            for x in (claimed, *blobs):
                if isinstance(x, Exception):
                    raise x
            self._apply_fetch(live, claimed, blobs)
            return None
        script = self.intake.claim_script
        command = ("EVALSHA", script.sha, len(claim_keys), *claim_keys, *claim_args)
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_command(*command))
        except BaseException:
            pool.release(conn)
            raise

        def finish() -> None:
            try:
                claimed = conn.read_response()
            except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts
                claimed = script(keys=claim_keys, args=claim_args)
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
            self._apply_fetch(live, claimed, [])

        return finish

    def _apply_fetch(self, live: list[_Job], claimed: list[Any], blobs: list[Any]) -> None:
        fetched = iter(blobs)
        for n, j in enumerate(live):
            assert j.job is not None
            j.skip = bool(claimed[2 * n])
            j.tries = int(claimed[2 * n + 1])
            for i, t in enumerate(j.job["inputs"]):
                if "ref" in t:
                    data = next(fetched)
                    if data is None:
                        if j.meta is None and not j.skip:
                            self._fail(j, InvalidInput(f"input {t['name']!r}: its claim-checked data has expired"))
                        continue
                    j.job["inputs"][i] = {**t, "data": data}
            if not j.skip and j.meta is None and j.tries > MAX_TRIES:
                self._fail(
                    j, InternalError(f"given up after {j.tries - 1} deliveries that never finished (poison job)")
                )

    def _run(self, jobs: list[_Job]) -> None:
        ready: dict[tuple[str, int], list[batching.Item]] = {}
        models = {}
        for j in jobs:
            if j.meta is not None or j.job is None or j.skip:
                continue
            try:
                item, model = self._prepare(j)
            except Exception as exc:
                self._fail(j, exc)
                continue
            ready.setdefault((model.name, model.version), []).append(item)
            models[(model.name, model.version)] = model
        for key, items in ready.items():
            model = models[key]
            cap = self._max_batch(model.name) if model.batchable else 1
            for group in batching.plan(items, max(cap, 1)):
                t0 = time.perf_counter()
                results = batching.run_group(model.run, group)
                compute_s = time.perf_counter() - t0
                n_samples = sum(it.samples for it in group)  # in this session call
                for item, res in zip(group, results):
                    j = item.key
                    if isinstance(res, BaseException):
                        res = self._retry(model, item, res)
                    if isinstance(res, BaseException):
                        self._fail(j, res)
                    else:
                        self._succeed(j, model, res, compute_s, len(group), n_samples)

    def _prepare(self, j: _Job) -> tuple[batching.Item, Any]:
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
        return batching.Item(j, inputs, job["outputs"]), model

    def _retry(self, model: Any, item: batching.Item, exc: BaseException) -> batching.Outputs | BaseException:
        """Retry an unexpected failure (e.g. a transient device error) with backoff."""
        if _error_type(exc)[0] != "InternalError":
            return exc
        for delay in RETRY_BACKOFF_S:
            time.sleep(delay)
            try:
                return batching.run_one(model.run, item)
            except Exception as again:
                exc = again
                if _error_type(again)[0] != "InternalError":
                    break
        return exc

    def _succeed(
        self, j: _Job, model: Any, outputs: batching.Outputs, compute_s: float, batch: int, samples: int
    ) -> None:
        job = j.job
        assert job is not None
        wire = []
        for i, (name, arr) in enumerate(outputs.items()):
            t = tensor.encode(name, np.ascontiguousarray(arr), max_bytes=1 << 62)
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
            timing={
                "queued_s": max(0.0, j.received - job["created"]),
                "compute_s": compute_s,
                "batch": batch,  # jobs that shared the session call
                "batch_samples": samples,  # samples in that call (at most max_batch, or one sliced job)
            },
        )

    def _write(self, jobs: list[_Job], unanswerable: list[str]) -> None:
        answer = [j for j in jobs if j.meta is not None and not j.skip]
        items: list[tuple[str, Mapping[str, Any], int, str | None, Mapping[str, Any]]] = [
            (j.task_id, j.meta, j.ttl_s, j.reply_to, j.blobs) for j in answer if j.meta is not None
        ]
        self.jobs += len(items)
        refs = [
            keys.blob(j.task_id, "in", i)
            for j in jobs
            if isinstance(j.raw, Mapping) and isinstance(j.raw.get("inputs"), list)
            for i, t in enumerate(j.raw["inputs"])
            if isinstance(t, Mapping) and "ref" in t
        ]
        dead: list[tuple[str, Mapping[str, Any], int]] = [
            (j.task_id, j.meta, j.tries)
            for j in answer
            if j.meta is not None
            and protocol.failure_of(j.meta)[0] not in ("JobCancelled", "JobExpired")
            and j.meta.get("status") == "FAILURE"
        ]
        tags = [j.tag for j in jobs if j.tag] + unanswerable
        written = self.writer.write_many(items, delete=refs, ack=tags, dead=dead)
        for (job_id, *_), ok in zip(items, written):
            if not ok:
                log.warning("job %s already had a result; this run's result was dropped", job_id)

    # -- observer hook (workers/observer.py): metrics and heartbeat stats, never fails a job

    def _observe(self, jobs: Sequence[_Job]) -> None:
        assert self.observer is not None
        done = time.time()
        try:
            self.observer.jobs_done(
                [
                    outcome_of(j.task_id, j.meta, j.job, j.received, done)
                    for j in jobs
                    if j.meta is not None and not j.skip
                ]
            )
        except Exception:
            log.exception("a job observer failed")
