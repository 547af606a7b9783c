"""The one owner of ICOW's queues in Redis: take, lease, claim, answer with the ack, cancel,
renew, and put back what a dead worker held. Nothing else in the worker touches the queue
lists, the in-flight lists or the leases (icow/keys.py lists them; icow/lua/icow.lua holds
the functions called here).

A message is always in exactly one place: its queue list, or this worker's in-flight list of
the take that moved it (``LMOVE`` inside ``icow_take``, atomic, O(1) whatever its size). The
worker's lease (``icow:leases``) is renewed by its heartbeat; when it runs out (the worker was
killed or frozen) any live worker's reaper moves the in-flight messages back to their queues.
An answer and the ack of its take are one ``icow_answer`` call, and results are written
``SET NX``: a redelivered job that already has an answer is acked without running again.

Idle workers block on the wake-up markers of all their queues at once (``BZPOPMIN``) plus
the cancel requests; the take runs in the same round trip.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.exceptions

from icow import functions, keys, records, result
from icow.celery_message import DEFAULT_MAX_MESSAGE_BYTES
from icow.codec import packb
from icow.envelope import job_id_for_token, new_job_id

log = logging.getLogger("icow.broker")

IDLE_BLOCK_S = 1.0  # longest idle wait: messages pushed without a marker (stock Celery) wait this long
CANCELS_PER_ROUND = 16


@dataclass(frozen=True)
class Oversize:
    """A message too large to read whole: its length and first bytes."""

    length: int
    prefix: bytes


@dataclass
class Take:
    """Messages moved from one queue list into this worker's in-flight list ``run``."""

    run: str
    source: str
    messages: list[bytes | Oversize]
    more_runs: list[str] = field(default_factory=list)  # later takes from the same list, merged

    def merge(self, other: Take) -> None:
        """Add a later take from the same list (a batch that waited ``max_wait_ms`` to fill)."""
        self.messages += other.messages
        self.more_runs += [other.run, *other.more_runs]

    @property
    def runs(self) -> list[str]:
        return [self.run, *self.more_runs]


@dataclass
class CancelRequest:
    token: str
    reply_to: str | None
    ttl_s: int = keys.DEFAULT_RESULT_TTL_S  # the job's result TTL, when the canceller sent it


@dataclass
class Answer:
    """One job's result, ready to write."""

    job_id: str
    meta: Mapping[str, Any]
    ttl_s: int
    reply_to: str | None = None
    blobs: Mapping[str, bytes] = field(default_factory=dict)  # claim-checked outputs
    dead: int = 0  # deliveries, when the failure goes to the dead letters too


@dataclass
class DeadLetter:
    """A message that could not be answered (no usable id): recorded with why."""

    raw_id: str | None
    reason: str
    sample: bytes


class Broker:
    def __init__(
        self,
        r: redis.Redis,
        worker: str,
        *,
        lease_s: float = keys.DEFAULT_LEASE_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.r = r
        self.worker = worker
        self.lease_ms = int(lease_s * 1000)
        self.max_message_bytes = max_message_bytes
        # Take numbers start at a random point in each process: a worker restarted under the
        # same name (a fixed --name, a StatefulSet pod) must never take into, then ack (DEL), a
        # run list that still holds its previous life's messages (tests/test_chaos.py).
        self._seq = secrets.randbits(40) << 20
        self._restored = False
        self._runs_key = keys.runs(worker)
        # Run lists this process may hold right now (named before the take that makes them):
        # any other run list under this worker's name is stale and is put back (restore_stale).
        self._in_hand: set[str] = set()
        self._hand_lock = threading.Lock()

    def install(self) -> bool:
        """Load ICOW's Redis Functions unless this version is there (idempotent)."""
        return functions.install(self.r)

    def _call(self, name: str, fkeys: Sequence[Any], args: Sequence[Any]) -> Any:
        return functions.call(self.r, name, fkeys, args)

    # -- take

    def take(
        self,
        lists: Sequence[tuple[str, str, int]],
        *,
        block_s: float = 0.0,
    ) -> tuple[Take | None, list[CancelRequest]]:
        """Wait up to ``block_s`` for a wake-up marker (or a cancel request), then move up to
        the given number of messages from the first non-empty list into a new in-flight list,
        in one round trip. ``lists``: (queue list, its wake key, most messages) in the order to
        serve them. Returns the take (None if nothing waited) and cancel requests seen."""
        if not self._restored:
            self.restore_own()
        self._seq += 1
        run = keys.run(self.worker, self._seq)
        with self._hand_lock:
            self._in_hand.add(run)
        wakes = list(dict.fromkeys(w for _, w, _ in lists))
        fkeys = [self._runs_key, keys.LEASES, run, *[lst for lst, _, _ in lists], *[w for _, w, _ in lists]]
        args = [
            self.worker,
            self.lease_ms,
            len(lists),
            self.max_message_bytes,
            *[n for _, _, n in lists],
        ]
        pipe = self.r.pipeline(transaction=False)
        if block_s > 0:
            pipe.bzpopmin(wakes, timeout=block_s)
        pipe.fcall(functions.TAKE, len(fkeys), *fkeys, *args)
        *waited, reply = pipe.execute(raise_on_error=False)
        reply = functions.reply_of(self.r, reply, functions.TAKE, fkeys, args)  # reloads lost functions
        for w in waited:
            if isinstance(w, Exception):
                raise w
        cancels: list[CancelRequest] = []  # answered by the cancel listener (wait_cancels)
        index = int(reply[0])
        if index == 0:
            self._drop_hand([run])
            return None, cancels
        messages = [Oversize(int(m[0]), bytes(m[1])) if isinstance(m, list) else bytes(m) for m in reply[1:]]
        return Take(run, lists[index - 1][0], messages), cancels

    def wait_cancels(self, block_s: float) -> list[CancelRequest]:
        """Cancel requests, waiting up to ``block_s`` for the first (the worker's cancel listener
        thread: a request is answered at once even while the intake runs a long batch)."""
        got: Any = self.r.bzpopmin([keys.CANCELS], timeout=block_s)
        if not got:
            return []
        more: Any = self.r.zpopmin(keys.CANCELS, CANCELS_PER_ROUND - 1)
        members = [got[1], *[m for m, _ in more]]
        out = []
        for m in members:
            token, reply_to, *rest = [*_text(m).split(" "), ""][:3]
            out.append(CancelRequest(token, reply_to if keys.is_reply(reply_to) else None, _ttl(rest)))
        return out

    # -- claim and inputs

    def claim(
        self, jobs: Sequence[tuple[str, int]], refs: Sequence[str] = ()
    ) -> tuple[list[tuple[bool, int]], list[bytes | None]]:
        """Before running: per (job id, state TTL) whether it is answered already and how many
        deliveries it has had (this one included); it is marked ``running``. The claim-checked
        inputs ``refs`` are read in the same round trip."""
        fkeys: list[str] = []
        args: list[Any] = [len(jobs), keys.TRIES_TTL_S]
        for job_id, ttl in jobs:
            fkeys += [keys.result(job_id), keys.state(job_id), keys.tries(job_id)]
            args.append(ttl)
        pipe = self.r.pipeline(transaction=False)
        pipe.fcall(functions.CLAIM, len(fkeys), *fkeys, *args)
        for ref in refs:
            pipe.get(ref)
        claimed, *blobs = pipe.execute(raise_on_error=False)
        claimed = functions.reply_of(self.r, claimed, functions.CLAIM, fkeys, args)
        for b in blobs:
            if isinstance(b, Exception):
                raise b
        out = [(bool(claimed[2 * i]), int(claimed[2 * i + 1])) for i in range(len(jobs))]
        return out, list(blobs)

    # -- answer

    def answer(
        self,
        answers: Sequence[Answer],
        *,
        acks: Sequence[str] = (),
        delete: Sequence[str] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> list[bool]:
        """Write results (the first answer per job wins), ack the takes ``acks``, record dead
        letters and recent failures, and drop consumed inputs: one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for a in answers:
            for key, data in a.blobs.items():
                pipe.set(key, data, ex=a.ttl_s)
        fkeys: list[str] = [self._runs_key, *acks]
        args: list[Any] = [len(acks), len(answers), keys.DONE_EXTRA_TTL_S]
        for a in answers:
            fkeys += [keys.result(a.job_id), keys.state(a.job_id), a.reply_to or ""]
            args += [packb(a.meta), a.ttl_s]
        at = len(pipe)
        pipe.fcall(functions.ANSWER, len(fkeys), *fkeys, *args)
        failures = [f for f in (records.recent_failure(a.meta) for a in answers) if f is not None]
        if failures:  # "recent failures" for `icow status` (a capped list, not the dead letters)
            pipe.lpush(keys.RECENT_FAILURES, *failures)
            pipe.ltrim(keys.RECENT_FAILURES, 0, keys.RECENT_FAILURES_MAX - 1)
        dead = [(a.job_id, records.dead_letter(a.job_id, a.meta, a.dead)) for a in answers if a.dead]
        dead += [(_dead_id(d), records.bad_message(d.raw_id, d.reason, d.sample)) for d in dead_letters]
        for job_id, record in dead:
            pipe.set(keys.dead(job_id), record, ex=keys.DEAD_TTL_S)
            pipe.lpush(keys.DEAD, job_id)
        if dead:
            pipe.ltrim(keys.DEAD, 0, keys.DEAD_MAX - 1)
        if delete:
            pipe.delete(*delete)
        out = pipe.execute(raise_on_error=False)
        out[at] = functions.reply_of(self.r, out[at], functions.ANSWER, fkeys, args)
        for x in out:
            if isinstance(x, Exception):
                raise x
        self._drop_hand(acks)
        return [bool(x) for x in out[at]]

    def _drop_hand(self, runs: Sequence[str]) -> None:
        with self._hand_lock:
            self._in_hand.difference_update(runs)

    # -- cancel

    def cancel(self, request: CancelRequest) -> int | None:
        """Answer a cancel request: 1 cancelled, 0 finished already, -1 running; None when the
        token is not a valid cancel token (ignored)."""
        try:
            job_id = job_id_for_token(request.token)
        except Exception:
            log.warning("ignored a cancel request with a malformed token")
            return None
        meta = result.failure_meta(
            job_id, error_type="JobCancelled", message="the job was cancelled before it ran", worker=self.worker
        )
        fkeys = [keys.result(job_id), keys.state(job_id), keys.bell(job_id)]
        args = [packb(meta), request.ttl_s, keys.DONE_EXTRA_TTL_S, keys.BELL_TTL_S]
        code = int(self._call(functions.CANCEL, fkeys, args))
        if request.reply_to:
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(request.reply_to, result.cancel_outcome(job_id, code))
            pipe.ltrim(request.reply_to, -keys.REPLY_MAX, -1)
            pipe.expire(request.reply_to, keys.DEFAULT_RESULT_TTL_S, nx=True)
            pipe.execute()
        return code

    # -- leases

    def renew(self, versions: Mapping[str, Sequence[int]], offers: Mapping[str, int], live_ttl_s: float) -> int:
        """Renew this worker's lease and the liveness of the versions it serves (``offers``:
        the version of each model it runs unpinned jobs on). An empty ``versions`` for a model
        withdraws this worker from it at once. Returns the server's time in ms."""
        fkeys = [keys.LEASES, *[keys.live(m) for m in versions]]
        args: list[Any] = [self.worker, self.lease_ms, int(live_ttl_s * 1000)]
        for m, vs in versions.items():
            args += [len(vs), *vs, offers.get(m, 0)]
        return int(self._call(functions.RENEW, fkeys, args))

    def live_versions(self, models: Sequence[str], now_ms: int) -> tuple[dict[str, list[int]], dict[str, int]]:
        """Versions of each model that some live worker serves, and the highest version a live
        worker offers to unpinned jobs (the fleet's "latest")."""
        pipe = self.r.pipeline(transaction=False)
        for m in models:
            pipe.zrange(keys.live(m), now_ms, "+inf", byscore=True)
        served: dict[str, list[int]] = {}
        latest: dict[str, int] = {}
        for m, members in zip(models, pipe.execute()):
            vs: set[int] = set()
            for member in members:
                version, _, rest = _text(member).partition(":")
                if not version.isdigit():
                    continue
                vs.add(int(version))
                if rest.endswith(":latest") or not rest:
                    latest[m] = max(latest.get(m, 0), int(version))
            served[m] = sorted(vs)
        return served, latest

    def reap(self, lock_s: float = 1.0) -> int:
        """Put back the in-flight messages of workers whose lease ran out (one reaper at a time
        fleet-wide). Returns the number of messages put back."""
        if not self.r.set(keys.REAPER_LOCK, self.worker, nx=True, px=int(lock_s * 1000)):
            return 0
        moved = 0
        for w in self._call(functions.EXPIRED, [keys.LEASES], []):
            name = _text(w)
            moved += self._requeue_all(name)
            self._call(functions.FORGET, [keys.LEASES, keys.runs(name)], [name])
        return moved

    def restore_own(self) -> int:
        """Before the first take: put back what a previous process under this worker's name
        left in flight. Its lease is this process's now and is renewed, so no reaper would
        ever see it run out and those messages would wait for this process to die."""
        moved = self._requeue_all(self.worker)
        self._restored = True
        return moved

    def restore_stale(self) -> int:
        """Every heartbeat: put back run lists under this worker's name that this process does
        not hold. They appear when Redis failed over after an answer was confirmed by the old
        primary but before it reached the replica: the new primary still has the take in flight,
        and this worker's lease, renewed, would keep it there for ever."""
        runs = self.r.hgetall(self._runs_key)
        with self._hand_lock:
            held = set(self._in_hand)
        return self._requeue_all(self.worker, runs={k: v for k, v in runs.items() if _text(k) not in held})

    def _requeue_all(self, name: str, runs: Mapping[Any, Any] | None = None) -> int:
        """Move every in-flight list of worker ``name`` (or just ``runs``) back to its queue."""
        moved = 0
        runs_key = keys.runs(name)
        for run, source in (self.r.hgetall(runs_key) if runs is None else runs).items():
            run_s, source_s = _text(run), _text(source)
            parsed = keys.parse_queue(source_s)
            queue = keys.queue(parsed[0], parsed[1]) if parsed else source_s
            n = int(self._call(functions.REQUEUE, [runs_key, run_s, source_s, keys.wake(queue)], []))
            if n:
                log.warning("worker %s is gone: %d of its messages were put back on %s", name, n, queue)
            moved += n
        return moved

    def put_back(self, take: Take) -> int:
        """Return a take this worker could not finish (Redis went away mid-way) to its queue;
        it runs again (an answer already written makes the rerun a no-op ack)."""
        parsed = keys.parse_queue(take.source)
        queue = keys.queue(parsed[0], parsed[1]) if parsed else take.source
        moved = sum(
            int(self._call(functions.REQUEUE, [self._runs_key, run, take.source, keys.wake(queue)], []))
            for run in take.runs
        )
        self._drop_hand(take.runs)
        return moved

    def release(self) -> None:
        """On a clean stop: nothing is in flight; drop the lease."""
        self._call(functions.FORGET, [keys.LEASES, self._runs_key], [self.worker])


def _ttl(rest: Sequence[str]) -> int:
    """The result TTL a cancel request carries (its third field), else the default one day."""
    text = rest[0] if rest else ""
    if text.isdigit() and 1 <= int(text) <= keys.MAX_RESULT_TTL_S:
        return int(text)
    return keys.DEFAULT_RESULT_TTL_S


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _dead_id(d: DeadLetter) -> str:
    if d.raw_id is not None:
        try:
            return "bad:" + keys.check_job_id(d.raw_id[:120])
        except Exception:
            pass
    return f"bad:{new_job_id()}"
