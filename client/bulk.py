"""Bulk jobs: many samples, few round trips, collected later by id from any process.

``client.submit_bulk(model, {"x": array_of_n_samples})`` cuts the arrays along their first
axis into jobs of ``samples_per_job`` samples (the worker runs each in ``max_batch``-sized
session calls), queues them in a few pipelined round trips at batch priority, every chunk under
its own input key (never base64 inside a message), and records the bulk under
``icow:bulk:<id>`` so any process can re-attach with ``client.bulk(id)``. The record holds the
job ids only, never their cancel tokens: a bulk re-attached by id cannot be cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from icow import keys, records
from icow.client._deadlines import deadline_of
from icow.client._ops import Command, Steps, Within, one
from icow.client._prepare import Target
from icow.client._submit import SUBMIT_CHUNK, chunked
from icow.client._wait import MGET_MAX
from icow.envelope import new_job_id
from icow.errors import InvalidInput, JobNotFound

if TYPE_CHECKING:
    from icow.client._base import ClientBase
    from icow.client.aio import AsyncClient, AsyncJob
    from icow.client.sync import Client, Job

PRIORITY_BATCH = 6  # kombu priority step 6: served after interactive (0) jobs, never starved


def split(inputs: Mapping[str, Any], samples_per_job: int) -> list[dict[str, np.ndarray]]:
    """Cut every input along axis 0 into chunks of ``samples_per_job`` samples."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput("inputs must be a non-empty mapping of input name -> numpy array")
    if isinstance(samples_per_job, bool) or not isinstance(samples_per_job, int) or samples_per_job < 1:
        raise InvalidInput("samples_per_job must be a positive integer")
    sizes = set()
    for name, a in inputs.items():
        if not isinstance(a, np.ndarray) or a.ndim < 1:
            raise InvalidInput(f"bulk input {name!r} must be a numpy array with a leading sample axis")
        sizes.add(a.shape[0])
    if len(sizes) != 1:
        raise InvalidInput(f"bulk inputs disagree on the number of samples: {sorted(sizes)}")
    n = sizes.pop()
    return [{k: v[i : i + samples_per_job] for k, v in inputs.items()} for i in range(0, n, samples_per_job)]


@dataclass(frozen=True)
class Plan:
    """A bulk submission before any I/O: its id, chunks, sample count and record TTL."""

    bulk_id: str
    chunks: list[dict[str, np.ndarray]]
    samples: int
    ttl_s: int

    @staticmethod
    def of(inputs: Mapping[str, Any], samples_per_job: int, ttl_s: int) -> Plan:
        chunks = split(inputs, samples_per_job)
        samples = sum(next(iter(c.values())).shape[0] for c in chunks)
        return Plan(new_job_id(), chunks, samples, ttl_s)

    def record(self, model: str, jobs: Sequence[Any]) -> bytes:
        return records.bulk(self.bulk_id, model, [j.id for j in jobs], self.samples)


def parse_record(bulk_id: str, raw: Any) -> tuple[str, list[str], int]:
    if raw is None:
        raise JobNotFound(f"bulk {bulk_id} is unknown or has expired")
    return records.parse_bulk(raw)


# -- plans (the clients run them)


def submitting(
    client: ClientBase,
    bulk_class: type,
    target: Target,
    inputs: Mapping[str, Any],
    samples_per_job: int,
    outputs: Sequence[str] | None,
    result_ttl_s: int | None,
) -> Steps:
    """``client.submit_bulk``: the chunks queued as jobs (every chunk under its own key), then
    the bulk's record; its handle."""
    plan = Plan.of(inputs, samples_per_job, result_ttl_s or client.options.result_ttl_s)
    jobs = yield from client._many_plan(target, plan.chunks, outputs, None, result_ttl_s, SUBMIT_CHUNK, 0)
    record = Command("set", (keys.bulk(plan.bulk_id), plan.record(target.model, jobs)), {"ex": plan.ttl_s})
    yield Within(one(record), "recording a bulk", client._deadline())
    return bulk_class(client, plan.bulk_id, target.model, jobs, plan.samples)


def attaching(client: ClientBase, bulk_class: type, bulk_id: str) -> Steps:
    """``client.bulk(id)``: a bulk re-attached by id, from its record."""
    keys.check_job_id(bulk_id)
    raw = yield Command("get", (keys.bulk(bulk_id),))
    model, job_ids, samples = parse_record(bulk_id, raw)
    return bulk_class(client, bulk_id, model, [client._Job(client, i, model) for i in job_ids], samples)


def counting(client: Any, job_ids: list[str]) -> Steps:
    """How many of ``job_ids`` have a result: one EXISTS per 10,000 jobs."""
    done = 0
    for part in chunked(iter(job_ids), MGET_MAX):
        exists = one(Command("exists", tuple(keys.result(j) for j in part)))
        done += int((yield Within(exists, "counting finished jobs", deadline_of(client.options.timeout_s))))
    return done


def concatenate(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output of the jobs' results, concatenated in sample order."""
    if not parts:
        return {}
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@dataclass
class Bulk:
    """A handle on a bulk submission: its jobs in sample order."""

    client: Client
    id: str
    model: str
    jobs: list[Job]
    samples: int

    def progress(self) -> tuple[int, int]:
        """(jobs finished, jobs in all), in one round trip per 10,000 jobs."""
        return self.client._run(counting(self.client, [j.id for j in self.jobs])), len(self.jobs)

    def as_completed(self, timeout_s: float | None = None) -> Iterator[Job]:
        """Yield the bulk's jobs as they finish."""
        return self.client.as_completed(self.jobs, timeout_s=timeout_s)

    def result(self, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Every output, concatenated in sample order (raises the first job failure)."""
        for _ in self.as_completed(timeout_s):
            pass
        return concatenate([j.result() for j in self.jobs])


@dataclass
class AsyncBulk:
    """:class:`Bulk` for the asyncio client."""

    client: AsyncClient
    id: str
    model: str
    jobs: list[AsyncJob]
    samples: int

    async def progress(self) -> tuple[int, int]:
        return await self.client._run(counting(self.client, [j.id for j in self.jobs])), len(self.jobs)

    def as_completed(self, timeout_s: float | None = None) -> AsyncIterator[AsyncJob]:
        return self.client.as_completed(self.jobs, timeout_s=timeout_s)

    async def result(self, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        async for _ in self.as_completed(timeout_s):
            pass
        return concatenate([await j.result() for j in self.jobs])
