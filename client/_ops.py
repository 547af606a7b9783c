"""The Redis operations a plan of the sans-I/O core asks a client shell for, and the loop that
carries a plan out.

A *plan* is a generator (httpx's model, as icow.functions writes its fallback): it yields an
operation, receives the operation's reply (or has the error it raised thrown back in), and
returns the call's outcome. Every decision lives in the plans (icow.client._submit,
icow.client._wait, icow.client._models, ...); :mod:`icow.client.sync` and
:mod:`icow.client.aio` answer each operation with its Redis I/O and nothing else, under the
call's description (``what``, for its errors) and deadline.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from icow.errors import IcowError
from icow.result import Result

if TYPE_CHECKING:
    from icow.client._prepare import PreparedJob, Target

Steps: TypeAlias = Generator[Any, Any, Any]  # a plan

# -- waiting (icow.client._wait)


@dataclass(frozen=True)
class ReadReplies:
    """Wait on the client's reply list (and ``bells``) until a reply for one of ``wanted``
    arrives or ``slice_s`` passes. Reply: ``{task id: result}`` of those that arrived (maybe
    {}). ``deadline``: the whole wait's, which bounds the read's socket time."""

    wanted: Collection[str]
    bells: tuple[str, ...]
    slice_s: float
    deadline: float | None


@dataclass(frozen=True)
class ReadKeys:
    """``MGET keys``. Reply: the values, in order."""

    keys: list[str]


@dataclass(frozen=True)
class Subscribe:
    """``SUBSCRIBE channels`` on the wait's own pub/sub connection, and wait until Redis has
    confirmed every one. Reply: None."""

    channels: list[str]


@dataclass(frozen=True)
class Listen:
    """The next message on the wait's pub/sub connection. Reply: its data, or None when
    ``slice_s`` passes first."""

    slice_s: float


@dataclass(frozen=True)
class Call:
    """``FCALL name`` (installing the library when missing and allowed). Reply: its reply."""

    name: str
    keys: list[str]
    args: list[Any]


# -- one command, a pipeline, and submitting


@dataclass(frozen=True)
class Command:
    """One redis-py command: ``r.<name>(*args, **kwargs)``. Reply: its reply."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pipeline:
    """``commands`` in one round trip (a pipeline without MULTI). Reply: their replies, in
    order; with ``errors_as_values`` an error is a reply (an exception object), else raised."""

    commands: tuple[Command, ...]
    errors_as_values: bool = False


@dataclass(frozen=True)
class CallAlone:
    """On one connection of its own: the reply of an FCALL that rode in a pipeline, made again
    there when the library was missing (icow.functions.reply_of: the one fallback), then, if
    ``wait_ms``, ``WAIT 1 wait_ms`` (it counts that connection's writes). Reply: (the FCALL's
    reply, WAIT's count or 0)."""

    reply: Any
    name: str
    keys: list[str]
    args: list[Any]
    wait_ms: int


@dataclass(frozen=True)
class QueueJobs:
    """Queue ``jobs`` in one ``icow_submit`` round trip by the plan
    :func:`icow.client._submit.queue` (run under ``what`` and ``deadline``). ``coalesce``: one
    job that the asyncio client may send in one call with other coroutines' jobs of the same
    target. Reply: (queued, depth, limit)."""

    target: Target
    jobs: list[PreparedJob]
    deadline: float | None
    coalesce: bool = False

    @property
    def what(self) -> str:
        return "submitting a job" if len(self.jobs) == 1 else "submitting jobs"


@dataclass(frozen=True)
class Within:
    """Carry out the plan ``steps`` under its own description and deadline (a call made of
    parts, such as ``result()``: the wait, then the large outputs). Reply: the plan's result."""

    steps: Steps
    what: str
    deadline: float | None


Operation: TypeAlias = (
    ReadReplies | ReadKeys | Subscribe | Listen | Call | Command | Pipeline | CallAlone | QueueJobs | Within
)

# -- events: not operations, what a plan reports to the shell's caller (the reply is None)


@dataclass(frozen=True)
class Finished:
    """``_wait.as_completed`` reports a job as finished, with its result or the error its
    ``result()`` raises (JobNotFound when its result has expired)."""

    job_id: str
    meta: Result | None = None
    error: IcowError | None = None


@dataclass(frozen=True)
class Ready:
    """``as_completed`` hands these job handles (settled) to its caller."""

    jobs: tuple[Any, ...]


class Run:
    """One plan being carried out. Iterating it gives the plan's operations (and events); the
    shell answers each by setting :attr:`reply`, or :attr:`error` to what the I/O raised (it is
    thrown into the plan). :attr:`result` is the plan's return value once iteration ends."""

    def __init__(self, steps: Steps):
        self._steps = steps
        self.reply: Any = None
        self.error: Exception | None = None
        self.result: Any = None

    def __iter__(self) -> Iterator[Any]:
        while True:
            reply, error = self.reply, self.error
            self.reply = self.error = None
            try:
                op = self._steps.send(reply) if error is None else self._steps.throw(error)
            except StopIteration as stop:
                self.result = stop.value
                return
            yield op


def fill(pipe: Any, op: Pipeline) -> Any:
    """Buffer ``op``'s commands on a redis-py pipeline (sync or asyncio: no I/O until it runs)."""
    for command in op.commands:
        getattr(pipe, command.name)(*command.args, **command.kwargs)
    return pipe


def one(op: Any) -> Steps:
    """The plan of a single operation (for :class:`Within`)."""
    return (yield op)
