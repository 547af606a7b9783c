"""Waiting, I/O-free: generators that say which Redis call to make next, and the reply box.

A wait is a generator that yields an *operation* (icow.client._ops), receives the
operation's reply, and returns the result (or raises JobTimeout / JobNotFound).
``as_completed`` also yields :class:`Finished` events, which the driver hands to its caller.
The sync and asyncio clients run the same generators; only how an operation is carried out
differs (threads sharing one reply list, or one reader task per event loop: the reply readers
of icow.client._reader_sync and icow.client._reader_aio).

Where a client learns of a result (docs/PROTOCOL.md §10):

* its own jobs (it submitted them, ``reply_to`` is its reply list): ``BLPOP`` on the reply list
  and on the bell keys of the jobs being waited for (a cancel rings the bell, so a waiter in any
  process wakes at once); between slices, the job's result and state keys, the source of truth;
* re-attached jobs (by id, from any process): ``SUBSCRIBE`` to the result channel, then read
  the keys (a result written before the subscription is found there), then wait for a message.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from icow import keys
from icow.client._cancel import cancel_key, cancel_outcome, cancel_request
from icow.client._deadlines import SLICE_S, remaining, slice_for
from icow.client._ops import Call, Finished, Listen, ReadKeys, ReadReplies, Ready, Run, Steps, Subscribe
from icow.client._results import parse_entry, settled
from icow.errors import JobNotFound, JobTimeout
from icow.result import Result

MGET_MAX = 10_000  # keys per MGET
SUBSCRIBE_MAX = 1_000  # channels per SUBSCRIBE
BELLS_MAX = 64  # bell keys watched in one read, besides the reply list
STASH_MAX = 10_000  # replies kept for waiters that have not asked yet (the keys keep them all)
DRAIN_MAX = 1000  # replies taken in one round trip once one has arrived


def _timeout(what: str, timeout_s: float | None) -> JobTimeout:
    return JobTimeout(f"{what} within {timeout_s} s (it may still finish: wait again, or re-attach by id)")


# -- one job


def wait_own(job_id: str, deadline: float | None, timeout_s: float | None) -> Steps:
    """The result meta of a job this client submitted (its replies come to our list)."""
    bells = (keys.bell(job_id),)
    while True:
        if deadline is not None and remaining(deadline) == 0:
            raise _timeout(f"job {job_id} not finished", timeout_s)
        got = yield ReadReplies({job_id}, bells, slice_for(deadline), deadline)
        if job_id in got:
            return got[job_id]
        # A slice passed: the keys are the source of truth (a reply taken by another process's
        # reader, a lost connection, or a cancel whose bell another waiter took).
        raw, state = yield ReadKeys([keys.result(job_id), keys.state(job_id)])
        meta = settled(job_id, raw, state)
        if meta is not None:
            return meta


def wait_other(job_id: str, deadline: float | None, timeout_s: float | None) -> Steps:
    """The result meta of a job re-attached by id: subscribe, then read, then listen; the keys
    again after every :data:`~icow.client._deadlines.SLICE_S` without the answer."""
    yield Subscribe([keys.result_channel(job_id)])
    while True:
        raw, state = yield ReadKeys([keys.result(job_id), keys.state(job_id)])
        meta = settled(job_id, raw, state)
        if meta is not None:
            return meta
        due = _Due()
        while True:
            if deadline is not None and remaining(deadline) == 0:
                raise _timeout(f"job {job_id} not finished", timeout_s)
            data = yield Listen(due.slice(deadline))
            entry = None if data is None else parse_entry(data)
            if entry is not None and entry[0] == job_id:
                return entry[1]
            if data is None or due.now():
                break  # a slice passed without the answer: read the keys again


class _Due:
    """When the keys are next read: :data:`~icow.client._deadlines.SLICE_S` after the last read,
    however many replies (for other jobs) arrive meanwhile (docs/PROTOCOL.md §10). A read is
    bounded by it, so an empty read means it has come, too."""

    def __init__(self) -> None:
        self.at = time.monotonic() + SLICE_S

    def now(self) -> bool:
        return time.monotonic() >= self.at

    def slice(self, deadline: float | None) -> float:
        """The next blocking read: up to the check, and within the deadline."""
        return max(0.0, min(slice_for(deadline), self.at - time.monotonic()))


def cancel(
    job_id: str,
    token: str | None,
    reply_key: str,
    deadline: float | None,
    timeout_s: float | None,
    ttl_s: int | None = None,
) -> Steps:
    """Ask the fleet to cancel a job and wait for its answer on our reply list."""
    fkeys, args = cancel_request(job_id, token, reply_key, ttl_s)
    yield Call("icow_cancel_request", fkeys, args)
    answer = cancel_key(job_id)
    while True:
        if deadline is not None and remaining(deadline) == 0:
            raise JobTimeout(
                f"no worker answered the request to cancel job {job_id} within {timeout_s} s "
                "(is a worker serving its model alive?)"
            )
        got = yield ReadReplies({answer}, (), slice_for(deadline), deadline)
        if answer in got:
            return cancel_outcome(got[answer])


# -- many jobs


def as_completed(own: Sequence[str], other: Sequence[str], deadline: float | None, timeout_s: float | None) -> Steps:
    """Report each job as :class:`Finished` as soon as it is. ``own``: jobs this client
    submitted; ``other``: jobs re-attached by id. The keys of every job still waited for are
    read every :data:`~icow.client._deadlines.SLICE_S` (time-based: also while replies for some of
    them keep arriving). Raises JobTimeout at the deadline."""
    waiting_own, waiting_other = set(own), set(other)
    for i in range(0, len(other), SUBSCRIBE_MAX):
        yield Subscribe([keys.result_channel(j) for j in other[i : i + SUBSCRIBE_MAX]])
    check = bool(other)  # re-attached jobs may have finished long ago: read their keys first
    due = _Due()
    while waiting_own or waiting_other:
        if check:
            for ids in _chunks(sorted(waiting_own | waiting_other), MGET_MAX // 2):
                values = yield ReadKeys([k for j in ids for k in (keys.result(j), keys.state(j))])
                for n, job_id in enumerate(ids):
                    try:
                        meta = settled(job_id, values[2 * n], values[2 * n + 1])
                    except JobNotFound as gone:
                        yield Finished(job_id, error=gone)
                    else:
                        if meta is None:
                            continue
                        yield Finished(job_id, meta)
                    waiting_own.discard(job_id)
                    waiting_other.discard(job_id)
            check = False
            due = _Due()
            continue
        if deadline is not None and remaining(deadline) == 0:
            raise _timeout(f"{len(waiting_own) + len(waiting_other)} jobs not finished", timeout_s)
        if waiting_other:
            data = yield Listen(due.slice(deadline))
            entry = None if data is None else parse_entry(data)
            if entry is not None and entry[0] in waiting_other:
                job_id, meta = entry
                waiting_other.discard(job_id)
                yield Finished(job_id, meta)
            check = data is None or due.now()
        else:
            got = yield ReadReplies(waiting_own, (), due.slice(deadline), deadline)
            for job_id, meta in got.items():
                waiting_own.discard(job_id)
                yield Finished(job_id, meta)
            check = not got or due.now()


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- the reply box


class ReplyBox:
    """What a client's readers popped from its reply list, by task id, until a waiter takes
    it; and which bell keys the waiters want watched. Not thread-safe: the sync client holds
    its lock around every call, the asyncio client calls it between awaits."""

    def __init__(self, reply_key: str, *, stash_max: int = STASH_MAX, bells_max: int = BELLS_MAX):
        self.reply_key = reply_key
        self._stash: dict[str, Result] = {}
        self._bells: dict[str, int] = {}
        self._stash_max = stash_max
        self._bells_max = bells_max

    def watch(self, bells: Iterable[str]) -> None:
        for b in bells:
            self._bells[b] = self._bells.get(b, 0) + 1

    def unwatch(self, bells: Iterable[str]) -> None:
        for b in bells:
            n = self._bells.get(b, 0) - 1
            if n > 0:
                self._bells[b] = n
            else:
                self._bells.pop(b, None)

    def read_keys(self) -> list[str]:
        """The keys of the next BLPOP: the reply list, then up to ``bells_max`` bells."""
        bells = list(self._bells)[: self._bells_max]
        return [self.reply_key, *bells]

    def deliver(self, raws: Iterable[Any]) -> set[str]:
        """Keep every entry by its task id; return those ids. Oldest entries beyond the cap
        are dropped (their results stay in their keys)."""
        got = set()
        for raw in raws:
            entry = parse_entry(raw)
            if entry is None:
                continue
            self._stash[entry[0]] = entry[1]
            got.add(entry[0])
        while len(self._stash) > self._stash_max:
            self._stash.pop(next(iter(self._stash)))
        return got

    def take(self, wanted: Collection[str]) -> dict[str, Result]:
        """Remove and return the entries of ``wanted`` that have arrived."""
        if len(self._stash) <= len(wanted):
            hits = [k for k in self._stash if k in wanted]
        else:
            hits = [k for k in wanted if k in self._stash]
        return {k: self._stash.pop(k) for k in hits}


def completed(jobs: Iterable[Any], deadline: float | None, timeout_s: float | None) -> Steps:
    """``client.as_completed``: the handles of ``jobs``, reported :class:`Ready` (settled) as
    they finish; those already settled at once. Handles sharing an id are waited for once."""
    handles: dict[str, list[Any]] = {}
    own: list[str] = []
    other: list[str] = []
    for job in jobs:
        if job._meta is not None or job._error is not None:
            yield Ready((job,))
        elif job.id in handles:
            handles[job.id].append(job)
        else:
            handles[job.id] = [job]
            (own if job._own else other).append(job.id)
    run = Run(as_completed(own, other, deadline, timeout_s))
    for op in run:
        if isinstance(op, Finished):
            found = handles.pop(op.job_id, [])
            for job in found:
                job._settle(op.meta, op.error)
            yield Ready(tuple(found))
            continue
        try:
            run.reply = yield op
        except Exception as exc:
            run.error = exc
