"""What both fronts do with the ICOW client: readiness, model metadata, inference and jobs.

One :class:`Gateway` per process wraps the one shared ``AsyncClient``. Errors are ICOW's own
(``icow.errors``); :func:`classify` maps each to its HTTP status and gRPC status code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from icow import __version__
from icow.client import AsyncClient
from icow.errors import (
    BrokerUnavailable,
    ClientClosed,
    IcowError,
    InvalidInput,
    InvalidJob,
    JobCancelled,
    JobExpired,
    JobTimeout,
    NotFound,
    PermissionDenied,
    QueueFull,
)
from icow.gateway.tensors import BadRequest, Request

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "icow_async_jobs"]
DEFAULT_TIMEOUT_S = 30.0


def classify(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, gRPC status code name) of an error."""
    if isinstance(exc, NotFound):  # ModelNotFound, JobNotFound
        return 404, "NOT_FOUND"
    if isinstance(exc, (InvalidInput, InvalidJob)):
        return 400, "INVALID_ARGUMENT"
    if isinstance(exc, (QueueFull, BrokerUnavailable, ClientClosed)):
        return 503, "UNAVAILABLE"
    if isinstance(exc, (JobTimeout, JobExpired)):
        return 504, "DEADLINE_EXCEEDED"
    if isinstance(exc, JobCancelled):
        return 409, "CANCELLED"
    if isinstance(exc, PermissionDenied):
        return 403, "PERMISSION_DENIED"
    return 500, "INTERNAL"


def config_type(datatype: str) -> str:
    """Triton's model-config DataType name of an Open Inference Protocol datatype."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def version_of(text: str | None) -> int | None:
    """A model version from a URL or request: empty is the latest; BadRequest if not a number."""
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise BadRequest(f"model version must be a positive integer, got {text!r}")
    return int(text)


@dataclass
class Answer:
    """A finished inference: outputs, the version that ran and the ICOW job id."""

    outputs: dict[str, np.ndarray]
    version: int | None
    job_id: str
    model: str


class Gateway:
    def __init__(self, client: AsyncClient, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.client = client
        self.timeout_s = timeout_s

    async def ready(self) -> bool:
        try:
            await self.client.ping()
        except IcowError:
            return False
        return True

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "icow", "version": __version__, "extensions": list(EXTENSIONS)}

    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        info = await self.client.model(name, version_of(version))
        return {
            "name": info.name,
            "versions": [str(v) for v in (info.versions or (info.version,))],
            "platform": PLATFORM,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in info.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in info.outputs],
        }

    async def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration (its model_config.proto fields, JSON names) of the tensors."""
        meta = await self.model_metadata(name, version)

        def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"name": t["name"], "data_type": config_type(t["datatype"]), "dims": t["shape"]} for t in items]

        return {
            "name": meta["name"],
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": tensors(meta["inputs"]),
            "output": tensors(meta["outputs"]),
        }

    async def model_ready(self, name: str, version: str | None) -> bool:
        """Published (for that version): NotFound propagates for a model nobody serves."""
        await self.client.model(name, version_of(version))
        return True

    async def infer(self, model: str, version: str | None, req: Request) -> Answer:
        timeout = req.timeout_s or self.timeout_s
        job = await self.client.submit(
            model,
            req.inputs,
            version=version_of(version),
            outputs=req.outputs,
            priority=req.priority,
            deadline_s=req.deadline_s or timeout,
        )
        outputs = await job.result(timeout)
        ran = job.info().version
        return Answer(outputs, ran, job.id, model)

    async def submit(self, model: str, version: str | None, req: Request) -> Any:
        """An asynchronous job: its handle (id, cancel_token) at once."""
        return await self.client.submit(
            model,
            req.inputs,
            version=version_of(version),
            outputs=req.outputs,
            priority=req.priority,
            deadline_s=req.deadline_s,
        )

    async def job(self, job_id: str) -> tuple[str, Answer | None]:
        """A job's status, and its answer once it succeeded (its error raised once it failed)."""
        job = self.client.job(job_id)
        status = await job.status()
        if status not in ("succeeded", "failed"):
            return status, None
        outputs = await job.result(0)  # settled: no wait; a failure raises its RemoteError
        info = job.info()
        return status, Answer(outputs, info.version, job_id, info.model or "")

    async def cancel(self, job_id: str, token: str | None) -> bool:
        if not token:
            raise BadRequest("cancelling a job needs its cancel token (ICOW-Cancel-Token header or cancel_token)")
        return bool(await self.client.job(job_id, token).cancel())
