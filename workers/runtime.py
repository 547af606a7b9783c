"""The model runtime interface (load, describe, run a batch, unload) and its ONNX Runtime
implementation. Sessions are created once per worker process, never per job."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
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


_ARENA_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
_CONV_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


@dataclass(frozen=True)
class GpuOptions:
    """Per-model GPU settings from config.toml, passed to the CUDA and TensorRT providers."""

    gpu_mem_limit: int | None = None  # bytes the CUDA arena may grow to (None: no limit)
    arena_extend_strategy: str | None = None  # "kNextPowerOfTwo" (default) or "kSameAsRequested"
    cudnn_conv_algo_search: str | None = None  # "EXHAUSTIVE" (default), "HEURISTIC" or "DEFAULT"
    tensorrt_fp16: bool = False
    tensorrt_cache_dir: str | None = None  # where TensorRT keeps built engines (None: no cache)

    @staticmethod
    def pop_from(raw: MutableMapping[str, Any], where: str = "config.toml") -> GpuOptions:
        """Take the GPU keys out of a parsed config.toml, validating them."""
        limit = raw.pop("gpu_mem_limit", None)
        if limit is not None:
            limit = parse_bytes(limit, f"{where}: gpu_mem_limit")
        arena = raw.pop("arena_extend_strategy", None)
        if arena is not None and arena not in _ARENA_STRATEGIES:
            raise InvalidInput(f"{where}: arena_extend_strategy must be one of {_ARENA_STRATEGIES}")
        conv = raw.pop("cudnn_conv_algo_search", None)
        if conv is not None and conv not in _CONV_SEARCH:
            raise InvalidInput(f"{where}: cudnn_conv_algo_search must be one of {_CONV_SEARCH}")
        fp16 = raw.pop("tensorrt_fp16", False)
        cache = raw.pop("tensorrt_cache_dir", None)
        if not isinstance(fp16, bool) or (cache is not None and not isinstance(cache, str)):
            raise InvalidInput(f"{where}: tensorrt_fp16 must be true/false and tensorrt_cache_dir a path")
        return GpuOptions(limit, arena, conv, fp16, cache)


def parse_bytes(value: object, what: str = "size") -> int:
    """``2147483648``, ``"2GiB"``, ``"512MB"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        digits = text.rstrip("KMGIB")
        unit = text[len(digits) :]
        if digits.replace(".", "", 1).isdigit() and unit in _SIZE_UNITS and float(digits) > 0:
            return int(float(digits) * _SIZE_UNITS[unit])
    raise InvalidInput(f"{what}: give a positive number of bytes or a size such as '4GiB', got {value!r}")


def provider_list(providers: tuple[str, ...], device: int = 0, gpu: GpuOptions | None = None) -> list[Any]:
    """The ``providers`` argument of ``InferenceSession``: names with their options."""
    gpu = gpu or GpuOptions()
    out: list[Any] = []
    for p in providers:
        ort_name = _ORT_PROVIDERS[p]
        if p == "cuda":
            opts: dict[str, Any] = {"device_id": device}
            if gpu.gpu_mem_limit is not None:
                opts["gpu_mem_limit"] = gpu.gpu_mem_limit
            if gpu.arena_extend_strategy is not None:
                opts["arena_extend_strategy"] = gpu.arena_extend_strategy
            if gpu.cudnn_conv_algo_search is not None:
                opts["cudnn_conv_algo_search"] = gpu.cudnn_conv_algo_search
            out.append((ort_name, opts))
        elif p == "tensorrt":
            trt: dict[str, Any] = {"device_id": device}
            if gpu.tensorrt_fp16:
                trt["trt_fp16_enable"] = True
            if gpu.tensorrt_cache_dir:
                trt["trt_engine_cache_enable"] = True
                trt["trt_engine_cache_path"] = gpu.tensorrt_cache_dir
            out.append((ort_name, trt))
        else:
            out.append(ort_name)
    return out


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


def _import_ort(verbose: bool = False) -> Any:
    import onnxruntime as ort

    from icow import ort_build

    ort_build.warn_if_conflict()  # onnxruntime and onnxruntime-gpu side by side: say so, once

    # onnxruntime-gpu logs an error line for every CUDA load attempt on a host without CUDA;
    # the worker checks and reports the provider that really runs instead.
    if not verbose:  # ICOW_ORT_VERBOSE
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
        gpu: GpuOptions | None = None,
        spin: bool = False,  # ICOW_ORT_SPIN: let idle onnxruntime threads spin
        ort_verbose: bool = False,  # ICOW_ORT_VERBOSE: keep onnxruntime's own log lines
    ):
        ort = _import_ort(ort_verbose)
        self.name = name
        self.version = version
        self.path = path
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spin:
            # onnxruntime's idle threads spin by default; on a host shared with Redis and other
            # workers that burns the cores they need (ICOW_ORT_SPIN=1 restores spinning).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        requested = provider_list(providers, device, gpu)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=requested)
        self.providers = tuple(self.session.get_providers())
        self.requested = tuple(_ORT_PROVIDERS[p] for p in providers)
        self.cpu_fallback = self.providers[0] == "CPUExecutionProvider" != self.requested[0]
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
        # Outputs that are not tensors (sequences, maps: e.g. sklearn-onnx's ZipMap) cannot be
        # returned; they are listed apart, left out by default and refused by name when a job
        # asks for them. A model with no tensor output at all is refused here, at load.
        all_outputs = self.session.get_outputs()
        self.unsupported = {o.name: o.type for o in all_outputs if o.type not in ORT_TYPES}
        if len(self.unsupported) == len(all_outputs):
            kinds = ", ".join(f"{n!r} is {t}" for n, t in self.unsupported.items())
            del self.session
            raise InvalidInput(
                f"model {name} v{version} has no tensor output ({kinds}): ICOW returns tensors only; "
                "export the model with tensor outputs (sklearn-onnx: options={'zipmap': False})"
            )
        self.outputs = tuple(
            TensorMeta(o.name, ORT_TYPES[o.type], _dims(o.shape)) for o in all_outputs if o.type in ORT_TYPES
        )
        self._output_names = [o.name for o in self.outputs]
        for out, kind in self.unsupported.items():
            log.warning("model %s v%s: output %r is %s, not a tensor: never returned", name, version, out, kind)

    @property
    def batchable(self) -> bool:
        """Jobs can share a session call: every input and output has a dynamic first dim."""
        from icow.workers.batching import batchable

        return batchable([t.shape for t in self.inputs], [t.shape for t in self.outputs])

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "platform": "onnxruntime",
            "inputs": [t.wire() for t in self.inputs],
            "outputs": [t.wire() for t in self.outputs],
            "unsupported_outputs": [{"name": n, "type": t} for n, t in self.unsupported.items()],
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
        wanted = [] if names is None else [n for n in names if n in self.unsupported]
        if wanted:
            n = wanted[0]
            raise InvalidInput(
                f"output {n!r} of model {self.name} v{self.version} is {self.unsupported[n]}, not a tensor, "
                f"and ICOW cannot return it; ask for the others with outputs={self._output_names}"
            )
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
