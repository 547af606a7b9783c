"""What the worker does with a job after its answer is written: shadow runs (workers/shadow.py)
and kept inputs for replay (workers/kept.py).

The runner calls :meth:`FollowUps.jobs_answered` once per take, right after the answers and
the ack went to Redis, with one :class:`Answered` per job it answered. Nothing here can change
or delay an answer: a follow-up that raises is logged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from icow import result

log = logging.getLogger("icow.followup")


@dataclass(frozen=True)
class Answered:
    """One answered job: its parsed envelope (claim-checked inputs read in, ``version`` the
    one that ran), the result meta written, and the claim-checked outputs written with it."""

    job_id: str
    job: Mapping[str, Any]
    meta: Mapping[str, Any]
    blobs: Mapping[str, bytes]

    @property
    def ok(self) -> bool:
        return result.of(self.meta).ok

    @property
    def model(self) -> str:
        return str(self.job["model"])

    @property
    def version(self) -> int | None:
        v = self.job["version"]
        return v if isinstance(v, int) else None


class FollowUp(Protocol):
    def jobs_answered(self, answered: Sequence[Answered]) -> None: ...


class FollowUps:
    """Several follow-ups behind one; each one's failure is logged, never raised."""

    def __init__(self, *followups: FollowUp):
        self.followups = list(followups)

    def jobs_answered(self, answered: Sequence[Answered]) -> None:
        if not answered:
            return
        for f in self.followups:
            try:
                f.jobs_answered(answered)
            except Exception:
                log.exception("a follow-up of answered jobs failed (the answers stand)")
