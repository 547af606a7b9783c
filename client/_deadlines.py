"""Deadlines, I/O-free: when a call must be over, how long its next blocking read may last, and
how long one Redis command may take so that no call outlives its ``timeout_s`` by more than
:data:`MARGIN_S`, whatever state Redis is in."""

from __future__ import annotations

import time

SLICE_S = 2.0  # the longest one blocking read lasts: a dead connection is noticed, keys re-read
MARGIN_S = 1.0  # every call returns within its timeout_s plus this, a frozen Redis included


def deadline_of(timeout_s: float | None) -> float | None:
    """The monotonic time a call with ``timeout_s`` must be over by (None: no deadline)."""
    return None if timeout_s is None else time.monotonic() + timeout_s


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def slice_for(deadline: float | None) -> float:
    """How long the next blocking read may last."""
    left = remaining(deadline)
    return SLICE_S if left is None else min(left, SLICE_S)


def io_limit(deadline: float | None, blocking_s: float, cap_s: float) -> float:
    """Seconds one Redis command (or pipeline) may take in all: the time it blocks on purpose
    (a BLPOP's timeout), then what is left of the call's deadline (at most ``cap_s``), then
    :data:`MARGIN_S`. So no call outlives its deadline by more than the margin, and a frozen
    Redis (TCP up, no answer) is given up on in time."""
    left = remaining(deadline)
    allowance = cap_s if left is None else min(cap_s, max(left - blocking_s, 0.0))
    return blocking_s + allowance + MARGIN_S
