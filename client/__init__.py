"""The ICOW client: submit tensor jobs to the fleet and read results by job id.

Needs only redis, msgpack and numpy; never imports celery or onnxruntime. The asyncio client
(``AsyncClient``, ``AsyncJob``, ``AsyncBulk``) is imported on first use.
"""

from typing import TYPE_CHECKING, Any

from icow.client._core import JobStatus, ModelInfo, TensorSpec
from icow.client._info import JobInfo
from icow.client.bulk import Bulk
from icow.client.sync import Client, Job
from icow.errors import IcowError

if TYPE_CHECKING:
    from icow.client.aio import AsyncClient, AsyncJob
    from icow.client.bulk import AsyncBulk

__all__ = [
    "AsyncBulk",
    "AsyncClient",
    "AsyncJob",
    "Bulk",
    "Client",
    "IcowError",
    "Job",
    "JobInfo",
    "JobStatus",
    "ModelInfo",
    "TensorSpec",
]

_LAZY = {"AsyncClient": "icow.client.aio", "AsyncJob": "icow.client.aio", "AsyncBulk": "icow.client.bulk"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'icow.client' has no attribute {name!r}")
