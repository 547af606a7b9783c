"""The baseline most teams write first: one Celery task per request, a warm ONNX Runtime session
per worker process, Redis as broker and result backend. Two payload styles:

* ``naive.infer_json``: the tensor as nested JSON lists (the tutorial way);
* ``naive.infer_msgpack``: raw bytes inside a msgpack body.

Run by bench/compare.py as ``celery -A naive_celery worker -P solo``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from celery import Celery

app = Celery("naive", broker=os.environ["NAIVE_REDIS_URL"], backend=os.environ["NAIVE_REDIS_URL"])
app.conf.update(
    accept_content=["json", "msgpack"],
    result_accept_content=["json", "msgpack"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="naive",
    broker_connection_retry_on_startup=True,
)
_sessions: dict[str, Any] = {}


def _session(model: str) -> Any:
    if model not in _sessions:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)
        _sessions[model] = ort.InferenceSession(
            os.path.join(os.environ["NAIVE_MODELS"], model, "1", "model.onnx"),
            providers=os.environ.get("NAIVE_PROVIDERS", "CPUExecutionProvider").split(","),  # compare.py --provider
        )
    return _sessions[model]


@app.task(name="naive.infer_json", serializer="json")
def infer_json(model: str, x: list[Any]) -> list[Any]:
    y = _session(model).run(None, {"x": np.asarray(x, dtype=np.float32)})[0]
    return y.tolist()


@app.task(name="naive.infer_msgpack", serializer="msgpack")
def infer_msgpack(model: str, data: bytes, shape: list[int]) -> dict[str, Any]:
    x = np.frombuffer(data, dtype=np.float32).reshape(shape)
    y = _session(model).run(None, {"x": x})[0]
    return {"data": y.tobytes(), "shape": list(y.shape)}
