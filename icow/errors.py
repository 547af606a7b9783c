"""The one exception tree of ICOW, shared by the client and the workers.

::

    IcowError
    ├── InvalidInput (also ValueError)        bad input caught before anything reaches Redis
    │   └── PayloadTooLarge                   a tensor or job over the size caps
    ├── BrokerUnavailable (also ConnectionError)  Redis unreachable or the connection broke
    │   ├── BrokerFull                        Redis is out of memory and refuses writes
    │   └── NotDurable                        queued on the primary, no replica acknowledged it
    ├── PermissionDenied (also PermissionError)   the Redis ACL user may not do this (NOPERM)
    ├── StoreUnavailable (also ConnectionError)   the model store (S3 endpoint) unreachable or refusing
    ├── QueueFull                             the model's backlog is at its limit
    ├── JobTimeout (also TimeoutError)        no result within the caller's timeout
    ├── NotFound (also KeyError)              unknown model, or nothing published for it
    │   └── JobNotFound                       unknown job id, or its result has expired
    └── RemoteError                           the job ran (or was refused) and failed remotely
        ├── InvalidJob                        the worker rejected the job's inputs or envelope
        ├── ModelNotFound (also NotFound)     no such model or version in the repository
        ├── JobExpired                        the job's deadline passed before it ran
        ├── JobCancelled                      the job was cancelled before it ran
        └── InternalError                     an unexpected failure inside the worker
    ClientClosed (also RuntimeError), under IcowError   a call on a client after its close()
    NoResultYet (also RuntimeError), under IcowError    job.info() before the handle saw a result
    JobIdConflict, under InvalidJob           a job id already used by a job with other inputs

A ``RemoteError`` carries ``remote_type`` (the wire name of the failure, see
docs/PROTOCOL.md) and ``message``. :func:`remote_error` maps a wire failure to its class
through an allowlist; unknown types become a plain ``RemoteError``.
"""

from __future__ import annotations

from typing import Any


class IcowError(Exception):
    """Root of every error ICOW raises."""


class InvalidInput(IcowError, ValueError):
    """The inputs, model name or options are invalid; nothing was sent."""


class PayloadTooLarge(InvalidInput):
    """A tensor or the whole job is larger than the configured cap."""


class BrokerUnavailable(IcowError, ConnectionError):
    """Redis could not be reached, or the connection broke mid-call."""


class BrokerFull(BrokerUnavailable):
    """Redis is out of memory (``maxmemory`` with the ``noeviction`` policy) and refuses writes:
    nothing was queued. Retry once the fleet has drained results or Redis has more memory."""


class NotDurable(BrokerUnavailable):
    """A durable submit was queued on the primary, but no replica acknowledged it within the
    ``WAIT`` (no replica, or replication lagging): it would be lost if the primary died now.

    The jobs ARE queued and will normally run: re-attach to them, never resubmit them under new
    ids (that runs them twice). ``jobs`` holds the handles of every job the call queued (in
    input order; from ``submit``: one), ``job_ids`` their ids, ``acknowledged`` the replicas
    that did acknowledge and ``replicas`` how many were asked for."""

    def __init__(
        self,
        message: str,
        *,
        job_ids: list[str] | None = None,
        jobs: list[Any] | None = None,
        acknowledged: int = 0,
        replicas: int = 1,
    ):
        super().__init__(message)
        self.jobs: list[Any] = [] if jobs is None else jobs
        self.job_ids: list[str] = [] if job_ids is None else job_ids
        self.acknowledged = acknowledged
        self.replicas = replicas


class PermissionDenied(IcowError, PermissionError):
    """Redis refused the command or key for this ACL user (``NOPERM``): nothing was done, and
    retrying will not help; the user needs the rules of ``icow admin acl`` (the client user
    submits, waits and cancels; fleet state such as heartbeats is for the worker or an admin)."""


class StoreUnavailable(IcowError, ConnectionError):
    """The model repository's object store (an S3 endpoint) could not be reached or refused us."""


class QueueFull(IcowError):
    """The model's queue already holds its maximum backlog; the job was not queued.

    ``depth`` and ``limit`` are the backlog seen and the model's limit. From ``submit_many``,
    ``queued`` holds the handles of the jobs queued before the limit was reached (in input
    order); none of the others were queued.
    """

    def __init__(
        self, message: str, *, model: str = "", depth: int = 0, limit: int = 0, queued: list[Any] | None = None
    ):
        super().__init__(message)
        self.model = model
        self.depth = depth
        self.limit = limit
        self.queued: list[Any] = [] if queued is None else queued


class JobTimeout(IcowError, TimeoutError):
    """The job has not finished within the caller's timeout. It may still finish later."""


class NotFound(IcowError, KeyError):
    """The thing asked for is not known (or no longer known)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "not found"


class JobNotFound(NotFound):
    """No job with this id is known: it never existed, or its record and result expired."""


class RemoteError(IcowError):
    """The job got a failure result from a worker."""

    remote_type = "RemoteError"

    def __init__(self, message: str, *, job_id: str | None = None, remote_type: str | None = None):
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        if remote_type is not None:
            self.remote_type = remote_type

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}" if self.remote_type else self.message


class InvalidJob(RemoteError):
    """The worker refused the job: bad envelope, input names, dtypes or shapes."""

    remote_type = "InvalidJob"


class ModelNotFound(RemoteError, NotFound):
    """The model or the requested version is not served. Raised by ``submit`` when no worker
    has published the model, or as the job's failure when a worker lacks the version."""

    remote_type = "ModelNotFound"


class JobExpired(RemoteError):
    """The job's deadline passed before a worker could run it."""

    remote_type = "JobExpired"


class JobCancelled(RemoteError):
    """The job was cancelled before it started."""

    remote_type = "JobCancelled"


class InternalError(RemoteError):
    """An unexpected failure inside the worker (the message says which)."""

    remote_type = "InternalError"


class ClientClosed(IcowError, RuntimeError):
    """A call on a ``Client`` (or ``AsyncClient``) after its ``close()``: make a new client."""


class NoResultYet(IcowError, RuntimeError):
    """``job.info()`` before the handle has seen the job's result: call ``result()`` first."""


class JobIdConflict(InvalidJob):
    """The job id was already used by a job with other inputs (model, version, outputs or
    tensors): refused by ``submit`` (nothing was queued), or the failure a result reads as when
    the fleet could only tell later. The same id with the same inputs is idempotent."""

    remote_type = "JobIdConflict"


REMOTE_ERRORS: dict[str, type[RemoteError]] = {
    cls.remote_type: cls for cls in (InvalidJob, ModelNotFound, JobExpired, JobCancelled, InternalError, JobIdConflict)
}


def remote_error(remote_type: str, message: str, job_id: str | None = None) -> RemoteError:
    """Build the exception for a failure result; unknown types stay a ``RemoteError``."""
    cls = REMOTE_ERRORS.get(remote_type, RemoteError)
    return cls(message, job_id=job_id, remote_type=remote_type)
