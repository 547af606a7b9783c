"""Runs jobs: the intake loop (take, decode, validate, claim, run, answer), one job at a time
failing alone.

The loop (:meth:`JobRunner.run_forever`, in the worker's intake thread) asks the broker for the
next take: the messages waiting on the first non-empty list in priority order across every
queue this worker serves (all its models and versions), at most one batch. Each message is
decoded by icow.celery_message (the only reader of the task message) and icow.envelope (the
only reader of the job envelope), validated (the worker never trusts the queue), claimed before
it runs, run in batches of one model version, and answered. Every step is per job: a message
that cannot be decoded, a job that fails validation, a model that raises, an output that cannot
be encoded fails that job alone, with a structured failure (and a dead-letter record when the
message itself was bad). Nothing a message contains can crash the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from icow import envelope, keys, result, tensor
from icow.celery_message import Message, decode_message, oversize_message
from icow.errors import IcowError, InternalError, InvalidInput, JobExpired, RemoteError
from icow.workers import batching
from icow.workers.broker import Answer, Broker, CancelRequest, DeadLetter, Oversize, Take
from icow.workers.followup import Answered, FollowUp
from icow.workers.models import ModelManager
from icow.workers.observer import JobObserver, outcome_of

log = logging.getLogger("icow.runner")

MAX_TRIES = 3  # deliveries of one job before it is dead-lettered as a poison job
RETRY_BACKOFF_S = (0.05, 0.25)  # in-process retries of an unexpected (possibly transient) failure
BULK_STEP = 6  # priority steps from here on are bulk: taken one job at a time


@dataclass
class _Job:
    job_id: str
    received: float
    message: Message
    ttl_s: int = keys.DEFAULT_RESULT_TTL_S
    reply_to: str | None = None
    job: envelope.Job | None = None
    meta: result.ResultMeta | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)
    skip: bool = False  # answered already (cancelled, or a redelivered duplicate)
    tries: int = 1
    dead: bool = False  # the failure also goes to the dead letters
    claimed: tuple[bool, int] | None = None  # (answered, deliveries) from icow_claim


# A job whose envelope passed every check but which ONNX Runtime refused to run on (docs/PROTOCOL.md §14).
RUN_REFUSAL_PREFIX = "the model refused these inputs at run time (ONNX Runtime): "


def _error_type(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, RemoteError):
        return exc.remote_type, exc.message
    if isinstance(exc, InvalidInput):
        return "InvalidJob", str(exc)
    if type(exc).__name__ in ("InvalidArgument", "InvalidGraph"):  # onnxruntime's input errors
        return "InvalidJob", f"{RUN_REFUSAL_PREFIX}{exc}"
    return "InternalError", f"{type(exc).__name__}: {exc}"


class JobRunner:
    def __init__(
        self,
        manager: ModelManager,
        broker: Broker,
        *,
        worker: str,
        max_tensor_bytes: int = tensor.DEFAULT_MAX_TENSOR_BYTES,
        inline_max_bytes: int = envelope.DEFAULT_INLINE_MAX_BYTES,
        observer: JobObserver | None = None,
        idle_block_s: float = 1.0,
        after_answer: FollowUp | None = None,
    ):
        self.manager = manager
        self.broker = broker
        self.observer = observer  # told about every answered job (metrics, heartbeat stats)
        self.after_answer = after_answer  # shadow runs, kept inputs (workers/followup.py)
        self.worker = worker
        self.max_tensor_bytes = max_tensor_bytes
        self.inline_max_bytes = inline_max_bytes
        self.idle_block_s = idle_block_s
        self.jobs = 0
        self.failures = 0
        self.last_error: str | None = None
        self.fleet_latest: dict[str, int] = {}  # model -> highest version a live worker offers as latest
        self.announced: set[str] = set()  # models whose liveness this worker renews
        self._takes = 0
        self._idle = True
        self._unfinished: list[Take] = []  # takes cut short by a Redis outage: put back first
        self._nested = False  # serving interactive jobs between the slices of a bulk job

    def stats(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "failures": self.failures, "last_error": self.last_error}

    # -- what to take

    def _max_batch(self, model: str) -> int:
        entry = self.manager.entries.get(model)
        return max(1, entry.config.max_batch) if entry is not None else 1

    def queues(self) -> list[tuple[str, str]]:
        """(queue, model) of every queue this worker takes from: each served version's pinned
        queue, and the model's latest queue while this worker serves the fleet's highest live
        version of it (during a rolling update, workers still on an older version stop taking
        unpinned jobs within one heartbeat of a newer version going live elsewhere)."""
        out: list[tuple[str, str]] = []
        for m, entry in sorted(self.manager.entries.items()):
            if not entry.versions:
                continue
            out += [(keys.queue(m, v), m) for v in entry.versions]
            if self.manager.latest(m) >= self.fleet_latest.get(m, 0):
                out.append((keys.queue(m), m))
        return out

    def lists(self) -> list[tuple[str, str, int]]:
        """(list, wake key, most jobs per take) in serving order: lowest priority number first
        across every queue; every 8th take starts from the other end so nothing starves."""
        queues = self.queues()
        out = [
            (keys.queue_list(q, step), keys.wake(q), self._max_batch(m) if step < BULK_STEP else 1)
            for step in keys.PRIORITY_STEPS
            for q, m in queues
        ]
        return list(reversed(out)) if self._takes % 8 == 7 else out

    # -- the loop

    def run_forever(self, stop: threading.Event) -> None:
        """Take and run jobs until ``stop`` is set (the batch in hand is finished first)."""
        backoff = 0.1
        while not stop.is_set():
            try:
                self.step()
                backoff = 0.1
            except redis.exceptions.RedisError as exc:
                log.warning("Redis trouble in the intake (retrying in %.1f s): %s", backoff, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                log.exception("unexpected error in the intake loop (continuing)")
                stop.wait(backoff)

    def step(self) -> bool:
        """One take (blocking briefly when the last one found nothing). True if it took jobs."""
        while self._unfinished:  # Redis is back: what was in hand goes back to its queue
            n = self.broker.put_back(self._unfinished[0])
            log.warning("put back %d messages taken before Redis went away", n)
            self._unfinished.pop(0)
        lists = self.lists()
        if not lists:
            time.sleep(self.idle_block_s)
            return False
        take, cancels = self.broker.take(lists, block_s=self.idle_block_s if self._idle else 0.0)
        self._takes += 1
        for c in cancels:
            self._cancel(c)
        self._idle = take is None
        if take is not None:
            self._fill(take, lists)
            self.handle(take)
        return take is not None

    def _fill(self, take: Take, lists: Sequence[tuple[str, str, int]]) -> None:
        """``max_wait_ms``: a partial batch of an interactive list waits once, that long, for
        more jobs of the same list (only while jobs are arriving: never for a lone job)."""
        parsed = keys.parse_queue(take.source)
        entry = self.manager.entries.get(parsed[0]) if parsed else None
        if entry is None or entry.config.max_wait_ms <= 0 or len(take.messages) < 2:
            return
        want = next((n for lst, _, n in lists if lst == take.source), 1)
        if len(take.messages) >= want:
            return
        time.sleep(entry.config.max_wait_ms / 1000)
        wake = next(w for lst, w, _ in lists if lst == take.source)
        more, cancels = self.broker.take([(take.source, wake, want - len(take.messages))])
        for c in cancels:
            self._cancel(c)
        if more is not None:
            take.merge(more)

    def _cancel(self, request: CancelRequest) -> None:
        try:
            code = self.broker.cancel(request)
            log.info("cancel request answered: %s", code)
        except redis.exceptions.RedisError:
            raise
        except Exception:
            log.exception("a cancel request failed")

    # -- one take

    def handle(self, take: Take) -> None:
        """Answer every message of ``take`` (and ack the take with the answers)."""
        now = time.time()
        source = keys.parse_queue(take.source)
        jobs: list[_Job] = []
        letters: list[DeadLetter] = []
        for raw in take.messages:
            if isinstance(raw, Oversize):
                msg = oversize_message(raw.length, raw.prefix, self.broker.max_message_bytes)
                sample = raw.prefix
            else:
                msg = decode_message(raw, now=now, max_bytes=self.broker.max_message_bytes)
                sample = raw[:256]
            if msg.job_id is None:
                reason = msg.error or "the message has no usable job id"
                log.warning("dead-lettered a message without a usable id (%r): %s", msg.raw_id, reason)
                letters.append(DeadLetter(msg.raw_id, reason, sample))
                continue
            j = _Job(msg.job_id, now, msg)
            j.ttl_s, j.reply_to = envelope.salvage(msg.job)
            if msg.error is not None:
                self._fail(j, InvalidInput(msg.error), dead=True)
            jobs.append(j)
        try:
            try:
                self._parse(jobs, source)
                self._claim(jobs)
                self._run(jobs, source)
            except redis.exceptions.RedisError:
                raise
            except Exception as exc:  # a bug: still answer every job
                log.exception("unexpected error while running jobs")
                for j in jobs:
                    if j.meta is None and not j.skip:
                        self._fail(j, exc)
            self._write(take, jobs, letters)
        except redis.exceptions.RedisError:
            # The take stays in this worker's in-flight list (its lease is alive, so no reaper
            # takes it back): put it back once Redis answers again.
            self._unfinished.append(take)
            raise
        if self.observer is not None:
            self._observe(jobs)
        if self.after_answer is not None:  # the answers are written: nothing here can delay or change them
            done = [Answered(j.job_id, j.job, j.meta, j.blobs) for j in jobs if j.job and j.meta and not j.skip]
            self.after_answer.jobs_answered(done)

    def _fail(self, j: _Job, exc: BaseException, *, dead: bool = False) -> None:
        error_type, message = _error_type(exc)
        j.meta = result.failure_meta(
            j.job_id,
            error_type=error_type,
            message=message,
            model=j.job["model"] if j.job else None,
            version=j.job["version"] if j.job else None,
            worker=self.worker,
        )
        j.blobs = {}
        j.dead = j.dead or dead or error_type not in ("JobCancelled", "JobExpired")
        self.failures += 1
        self.last_error = f"{error_type}: {message}"[:500]
        log.info("job %s failed: %s: %s", j.job_id, error_type, message)

    def _parse(self, jobs: list[_Job], source: tuple[str, int | None, int] | None) -> None:
        for j in jobs:
            if j.meta is not None:
                continue
            try:
                job = envelope.parse_job(
                    j.message.job,
                    task_id=j.job_id,
                    max_tensor_bytes=self.max_tensor_bytes,
                    json_form=j.message.json_form,
                )
                if source is not None and job["model"] != source[0]:
                    raise InvalidInput(f"a job for model {job['model']!r} arrived on the queue of {source[0]!r}")
                pinned = source[1] if source is not None else None
                if pinned is not None and job["version"] not in (None, pinned):
                    raise InvalidInput(f"a job for version {job['version']} arrived on the queue of version {pinned}")
                if pinned is not None:
                    job["version"] = pinned
                if j.message.expires is not None:
                    job["deadline"] = min(job["deadline"] or j.message.expires, j.message.expires)
                j.job = job
            except IcowError as exc:
                self._fail(j, exc, dead=True)

    def _claim(self, jobs: list[_Job]) -> None:
        """Claim before running, always: answered already? deliveries so far; mark running.
        The jobs are claimed, and their claim-checked inputs read, in one round trip."""
        live = [j for j in jobs if j.meta is None and j.job is not None]
        if not live:
            return
        unclaimed = [j for j in live if j.claimed is None]
        refs = [ref for j in live if j.job for ref in envelope.refs(j.job["inputs"])]
        if unclaimed or refs:
            claimed, blobs = self.broker.claim([(j.job_id, j.ttl_s) for j in unclaimed], refs)
            for j, got in zip(unclaimed, claimed):
                j.claimed = got
        else:
            blobs = []
        fetched = dict(zip(refs, blobs))
        for j in live:
            assert j.job is not None and j.claimed is not None
            answered, tries = j.claimed
            j.skip, j.tries = answered, tries
            j.job["inputs"], missing = envelope.join(j.job["inputs"], fetched)
            if missing and not j.skip and j.meta is None:
                self._fail(j, InvalidInput(f"input {missing[-1]!r}: its claim-checked data has expired"))
            if not j.skip and j.meta is None and tries > MAX_TRIES:
                self._fail(j, InternalError(f"given up after {tries - 1} deliveries that never finished (poison job)"))

    def _interactive_lists(self) -> list[tuple[str, str, int]]:
        return [
            (keys.queue_list(q, step), keys.wake(q), self._max_batch(m))
            for step in keys.PRIORITY_STEPS
            if step < BULK_STEP
            for q, m in self.queues()
        ]

    def _probe(self, lists: Sequence[str]) -> Callable[[], bool]:
        """Ask Redis whether interactive jobs wait, without waiting for the answer: the reply
        is read after the next slice has run (the round trip overlaps the compute)."""
        pool = self.broker.r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EXISTS", *lists)  # an empty list does not exist: one command
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise

        def answer() -> bool:
            try:
                return int(conn.read_response()) > 0
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)

        return answer

    def _run_sliced(self, model: Any, item: batching.Item, cap: int) -> batching.Outputs:
        """A job carrying more than ``max_batch`` samples (a bulk chunk) runs in slices of
        ``max_batch``; interactive jobs that arrive meanwhile run between two slices, so they
        wait for one slice, not for the whole job."""
        lists = [lst for lst, _, _ in self._interactive_lists()]
        parts: list[batching.Outputs] = []
        for start in range(0, item.samples, cap):
            waiting = self._probe(lists) if lists and start + cap < item.samples else None
            parts.append(model.run({k: v[start : start + cap] for k, v in item.inputs.items()}, item.outputs))
            if waiting is not None and waiting():
                self._serve_interactive()
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _serve_interactive(self) -> None:
        take, _ = self.broker.take(self._interactive_lists())
        if take is None:
            return
        self._nested = True
        try:
            self.handle(take)
        finally:
            self._nested = False

    def _run(self, jobs: list[_Job], source: tuple[str, int | None, int] | None) -> None:
        ready: dict[tuple[str, int], list[batching.Item]] = {}
        models: dict[tuple[str, int], Any] = {}
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
            for group in batching.plan(items, cap):
                t0 = time.perf_counter()
                bulk = source is not None and source[2] >= BULK_STEP and not self._nested
                if bulk and len(group) == 1 and group[0].samples > cap > 1:
                    try:
                        results: list[batching.Outputs | BaseException] = [self._run_sliced(model, group[0], cap)]
                    except redis.exceptions.RedisError:
                        raise
                    except Exception as exc:
                        results = [exc]
                else:
                    results = batching.run_group(model.run, group)
                compute_s = time.perf_counter() - t0
                n_samples = sum(it.samples for it in group)  # in this session call
                for item, res in zip(group, results):
                    j = item.key
                    if isinstance(res, BaseException):
                        res = self._retry(model, item, res)
                    if isinstance(res, BaseException):
                        self._fail(j, res)
                        continue
                    try:
                        self._succeed(j, model, res, compute_s, len(group), n_samples)
                    except Exception as exc:  # an output that cannot be encoded fails this job only
                        self._fail(j, exc)

    def _prepare(self, j: _Job) -> tuple[batching.Item, Any]:
        job = j.job
        assert job is not None
        deadline = job["deadline"]
        if deadline is not None and time.time() > deadline:
            raise JobExpired(f"the job's deadline passed {time.time() - deadline:.3f} s before it could run")
        model = self.manager.get(job["model"], job["version"])
        job["version"] = model.version
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
        wire = [
            model.encode_output(name, arr) if hasattr(model, "encode_output") else _encode(name, arr)
            for name, arr in outputs.items()
        ]
        j.blobs = envelope.split_outputs(j.job_id, wire, self.inline_max_bytes)
        j.meta = result.success_meta(
            j.job_id,
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

    def _write(self, take: Take, jobs: list[_Job], letters: list[DeadLetter]) -> None:
        answers = [
            Answer(j.job_id, j.meta, j.ttl_s, j.reply_to, j.blobs, j.tries if j.dead else 0)
            for j in jobs
            if j.meta is not None and not j.skip
        ]
        refs = [ref for j in jobs for ref in envelope.input_refs(j.message.job)]
        written = self.broker.answer(answers, acks=take.runs, delete=refs, dead_letters=letters)
        self.jobs += len(answers)
        for a, ok in zip(answers, written):
            if not ok:
                log.warning("job %s already had a result; this run's result was dropped", a.job_id)

    def fail_now(self, job_id: str, error_type: str, message: str) -> None:
        """Answer a job outside a take (e.g. a task Celery handed over by mistake)."""
        meta = result.failure_meta(job_id, error_type=error_type, message=message, worker=self.worker)
        self.broker.answer([Answer(job_id, meta, keys.DEFAULT_RESULT_TTL_S)])

    # -- observer hook (workers/observer.py): metrics and heartbeat stats, never fails a job

    def _observe(self, jobs: Sequence[_Job]) -> None:
        assert self.observer is not None
        done = time.time()
        try:
            self.observer.jobs_done(
                [
                    outcome_of(j.job_id, j.meta, j.job, j.received, done)
                    for j in jobs
                    if j.meta is not None and not j.skip
                ]
            )
        except Exception:
            log.exception("a job observer failed")


def _encode(name: str, arr: Any) -> dict[str, Any]:
    """A model output as a wire tensor; outputs that are not tensors are refused by name."""
    if not isinstance(arr, np.ndarray) or (
        arr.dtype == object and any(not isinstance(x, (str, bytes)) for x in arr.flat)
    ):
        kind = type(arr).__name__ if not isinstance(arr, np.ndarray) else "sequence or map"
        raise InvalidInput(
            f"output {name!r} is a {kind}, not a tensor, and ICOW cannot return it; "
            f"ask for the other outputs with outputs=[...]"
        )
    # np.ascontiguousarray returns at least 1-d: a scalar output would come back as shape [1].
    arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    return tensor.encode(name, arr, max_bytes=1 << 62)


RunnerFactory = Callable[[], JobRunner]
