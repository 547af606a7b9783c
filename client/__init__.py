"""The ICOW client: submit tensor jobs to the fleet and read results by job id.

Needs only redis, msgpack and numpy; never imports celery or onnxruntime.
"""

from icow.client._core import JobStatus, ModelInfo, TensorSpec
from icow.client.aio import AsyncClient, AsyncJob
from icow.client.sync import Client, Job
from icow.errors import IcowError

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "Client",
    "IcowError",
    "Job",
    "JobStatus",
    "ModelInfo",
    "TensorSpec",
]
