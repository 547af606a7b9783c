"""The model runtime interface (load, describe, run a batch, unload) and its ONNX Runtime
implementation. Sessions are created once per worker process, never per job."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from icow.errors import InvalidInput

log = logging.getLogger("icow.runtime")

# onnxruntime element type -> Open Inference Protocol datatype
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_ORT_PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class ModelRuntime(Protocol):
    """What the worker needs from a loaded model."""

    name: str
    version: int
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    providers: tuple[str, ...]

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]: ...

    def unload(self) -> None: ...


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (shape or ()))


def _import_ort() -> Any:
    import onnxruntime as ort

    # onnxruntime-gpu logs an error line for every CUDA load attempt on a host without CUDA;
    # the worker checks and reports the provider that really runs instead.
    if not os.environ.get("ICOW_ORT_VERBOSE"):
        ort.set_default_logger_severity(4)
    return ort


class OnnxModel:
    """One ONNX Runtime InferenceSession, with its signature and the provider that really runs."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        *,
        providers: tuple[str, ...] = ("cuda", "cpu"),
        device: int = 0,
        threads: int = 0,
    ):
        ort = _import_ort()
        self.name = name
        self.version = version
        self.path = path
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        requested: list[Any] = []
        for p in providers:
            ort_name = _ORT_PROVIDERS[p]
            if p in ("cuda", "tensorrt"):
                requested.append((ort_name, {"device_id": device}))
            else:
                requested.append(ort_name)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=requested)
        self.providers = tuple(self.session.get_providers())
        self.requested = tuple(_ORT_PROVIDERS[p] for p in providers)
        if self.providers[0] != self.requested[0]:
            log.warning(
                "model %s v%s: %s was requested but %s runs (onnxruntime fell back)",
                name,
                version,
                self.requested[0],
                self.providers[0],
            )
        self.inputs = tuple(
            TensorMeta(i.name, ORT_TYPES.get(i.type, i.type), _dims(i.shape)) for i in self.session.get_inputs()
        )
        self.outputs = tuple(
            TensorMeta(o.name, ORT_TYPES.get(o.type, o.type), _dims(o.shape)) for o in self.session.get_outputs()
        )
        self._output_names = [o.name for o in self.outputs]

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "platform": "onnxruntime",
            "inputs": [t.wire() for t in self.inputs],
            "outputs": [t.wire() for t in self.outputs],
            "providers": list(self.providers),
        }

    def check_inputs(self, inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> None:
        """Names, datatypes, ranks and fixed dimensions against the model's signature."""
        want = {t.name: t for t in self.inputs}
        missing = sorted(set(want) - set(inputs))
        extra = sorted(set(inputs) - set(want))
        if missing or extra:
            raise InvalidInput(
                f"model {self.name} v{self.version} takes inputs {sorted(want)}; missing {missing}, unexpected {extra}"
            )
        for name, arr in inputs.items():
            meta = want[name]
            if datatypes[name] != meta.datatype:
                raise InvalidInput(f"input {name!r} must be {meta.datatype}, got {datatypes[name]}")
            if len(arr.shape) != len(meta.shape) or any(d != -1 and d != s for d, s in zip(meta.shape, arr.shape)):
                raise InvalidInput(
                    f"input {name!r} has shape {list(arr.shape)}; the model expects {list(meta.shape)} (-1: any)"
                )

    def check_outputs(self, names: list[str] | None) -> None:
        if names is not None:
            unknown = sorted(set(names) - set(self._output_names))
            if unknown:
                raise InvalidInput(f"model {self.name} has no outputs {unknown}; it has {self._output_names}")

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self._output_names
        feed = {}
        for k, v in inputs.items():
            if v.dtype == object:  # BYTES -> onnxruntime string tensors
                feed[k] = _to_str(k, v)
            else:
                feed[k] = v
        results = self.session.run(names, feed)
        return {n: np.asarray(r) for n, r in zip(names, results)}

    def unload(self) -> None:
        del self.session


def _to_str(name: str, arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    try:
        out.reshape(-1)[:] = [x.decode("utf-8") if isinstance(x, bytes) else x for x in arr.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {name!r}: BYTES element is not valid UTF-8 ({exc})") from exc
    return out
