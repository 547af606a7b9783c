"""Open Inference Protocol tensors <-> numpy arrays, without I/O (the HTTP and gRPC fronts share it).

An HTTP request body is JSON, or JSON followed by binary tensor data (Triton's binary tensor
data extension): ``Inference-Header-Content-Length`` gives the JSON's length, and each input
with ``parameters.binary_data_size`` takes that many bytes of the tail, in input order. Raw
bytes are little-endian, row-major; a BYTES element is a 4-byte little-endian length and its
bytes. Every malformed request raises :class:`BadRequest` (an ``InvalidInput``: a 400 or
INVALID_ARGUMENT naming what is wrong); nothing here can raise anything else on bad input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icow import tensor
from icow.errors import InvalidInput

MAX_PRIORITY = 9


class BadRequest(InvalidInput):
    """The request is malformed (JSON, shapes, byte counts, parameters)."""


@dataclass
class Request:
    """One inference request, decoded: what the ICOW client is asked to run."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None  # None: every output
    binary_outputs: set[str] = field(default_factory=set)  # outputs to answer as binary data
    binary_all: bool = False  # binary_data_output: every output binary
    request_id: str = ""
    priority: int = 0
    timeout_s: float | None = None  # how long the gateway waits for the result
    deadline_s: float | None = None  # how long the job may wait in the queue (default: timeout_s)


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape {shape} has a negative dimension")
    if len(shape) > tensor.MAX_RANK:
        raise BadRequest(f"input {name!r}: rank {len(shape)}; at most {tensor.MAX_RANK} is allowed")
    return shape


def from_raw(name: str, datatype: str, shape: list[int], data: bytes | memoryview, max_bytes: int) -> np.ndarray:
    """An input from raw bytes; BadRequest when the byte count does not fit shape and datatype."""
    try:
        return tensor.decode({"name": name, "datatype": datatype, "shape": shape, "data": data}, max_bytes=max_bytes)
    except BadRequest:
        raise
    except InvalidInput as exc:
        raise BadRequest(f"input {name!r}: {exc}") from exc


def from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """An input from JSON ``data`` (flat or nested row-major lists; BYTES as strings)."""
    count = math.prod(shape)
    if datatype == tensor.BYTES:
        flat = list(_flatten(name, data))
        if not all(isinstance(x, str) for x in flat):
            raise BadRequest(f"input {name!r}: BYTES data in JSON must be strings")
        items: list[Any] = [x.encode("utf-8") for x in flat]
        if len(items) != count:
            raise BadRequest(f"input {name!r}: {len(items)} elements given, shape {shape} needs {count}")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = tensor.DATATYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(tensor.ALL_DATATYPES)}")
    flat = list(_flatten(name, data))
    if len(flat) != count:
        raise BadRequest(f"input {name!r}: {len(flat)} elements given, shape {shape} needs {count}")
    if datatype == "BOOL":
        if not all(isinstance(x, bool) for x in flat):
            raise BadRequest(f"input {name!r}: BOOL data must be true or false")
    elif not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers")
    elif dtype.kind in "iu" and not all(isinstance(x, int) for x in flat):
        raise BadRequest(f"input {name!r}: {datatype} data must be integers")
    try:
        arr = np.array(flat, dtype=dtype)
    except OverflowError as exc:
        raise BadRequest(f"input {name!r}: a value does not fit {datatype}") from exc
    return arr.reshape(shape)


def _flatten(name: str, data: Any) -> Any:
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list")
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                if len(stack) > tensor.MAX_RANK:
                    raise BadRequest(f"input {name!r}: data nested deeper than rank {tensor.MAX_RANK}")
                stack.append(iter(x))
                break
            yield x
        else:
            stack.pop()


def parameter(params: Mapping[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = params.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise BadRequest(f"parameter {key!r} must be {what}, got {value!r}")
    return value


def apply_parameters(req: Request, params: Mapping[str, Any]) -> None:
    """ICOW's job options from request parameters: ``priority`` (0-9, ICOW's scale: 0 is
    interactive), ``timeout`` (Triton's, in microseconds) or ``timeout_s``, ``deadline_s``,
    ``binary_data_output``. Other parameters are ignored, as Triton does."""
    priority = parameter(params, "priority", (int,), "an integer 0-9")
    if priority is not None:
        if not 0 <= priority <= MAX_PRIORITY:
            raise BadRequest(f"parameter 'priority' must be 0-{MAX_PRIORITY} (ICOW's scale), got {priority}")
        req.priority = priority
    timeout_us = parameter(params, "timeout", (int,), "an integer number of microseconds")
    timeout_s = parameter(params, "timeout_s", (int, float), "a number of seconds")
    deadline_s = parameter(params, "deadline_s", (int, float), "a number of seconds")
    for key, value in (("timeout", timeout_us), ("timeout_s", timeout_s), ("deadline_s", deadline_s)):
        if value is not None and (value <= 0 or not math.isfinite(value)):
            raise BadRequest(f"parameter {key!r} must be positive, got {value!r}")
    if timeout_us is not None:
        req.timeout_s = timeout_us / 1e6
    if timeout_s is not None:
        req.timeout_s = float(timeout_s)
    if deadline_s is not None:
        req.deadline_s = float(deadline_s)
    req.binary_all = bool(parameter(params, "binary_data_output", (bool,), "true or false"))


def parse_http(body: bytes, header_length: str | None, max_tensor_bytes: int) -> Request:
    """Decode an HTTP infer body (JSON, or JSON + binary tensors)."""
    if header_length is None:
        header, tail = body, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes")
        header, tail = body[:n], memoryview(body)[n:]
    try:
        doc = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("the request needs a non-empty 'inputs' list")
    req = Request(inputs={})
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise BadRequest("'id' must be a string")
    req.request_id = rid
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be an object")
    apply_parameters(req, params)
    pos = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise BadRequest("each input must be an object")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not name:
            raise BadRequest("each input needs a 'name' string")
        if name in req.inputs:
            raise BadRequest(f"input {name!r} is given twice")
        if datatype not in tensor.ALL_DATATYPES:
            raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(tensor.ALL_DATATYPES)}")
        shape = _check_shape(name, item.get("shape"))
        iparams = item.get("parameters") or {}
        if not isinstance(iparams, dict):
            raise BadRequest(f"input {name!r}: 'parameters' must be an object")
        size = parameter(iparams, "binary_data_size", (int,), "an integer")
        if size is not None:
            if "data" in item:
                raise BadRequest(f"input {name!r}: both 'data' and binary_data_size given")
            if size < 0 or pos + size > len(tail):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size} runs past the binary data ({len(tail) - pos} bytes left)"
                )
            req.inputs[name] = from_raw(name, datatype, shape, tail[pos : pos + size], max_tensor_bytes)
            pos += size
        elif "data" in item:
            req.inputs[name] = from_json(name, datatype, shape, item["data"])
        else:
            raise BadRequest(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    if pos != len(tail):
        raise BadRequest(f"{len(tail) - pos} bytes of binary data after the last input")
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("'outputs' must be a list")
        req.outputs = []
        for out in outputs:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise BadRequest("each requested output must be an object with a 'name'")
            oparams = out.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise BadRequest(f"output {out['name']!r}: 'parameters' must be an object")
            if "classification" in oparams:
                raise BadRequest("the classification extension is not supported")
            if parameter(oparams, "binary_data", (bool,), "true or false"):
                req.binary_outputs.add(out["name"])
            req.outputs.append(out["name"])
        if not req.outputs:
            req.outputs = None
    return req


def raw_of(name: str, array: np.ndarray) -> tuple[str, bytes]:
    """An output's datatype and raw bytes (BYTES length-prefixed)."""
    enc = tensor.encode(name, array, max_bytes=1 << 62)
    return str(enc["datatype"]), bytes(enc["data"])


def json_data(datatype: str, array: np.ndarray) -> list[Any] | None:
    """An output's flat JSON data; None for BYTES that are not UTF-8 (they go binary)."""
    flat = array.reshape(-1)
    if datatype == tensor.BYTES:
        try:
            return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in flat]
        except UnicodeDecodeError:
            return None
    if datatype == "FP16":
        flat = flat.astype(np.float32)
    values: list[Any] = flat.tolist()
    if datatype in ("FP16", "FP32", "FP64") and not all(math.isfinite(v) for v in values):
        return None  # NaN and infinities have no JSON form: binary
    return values


def http_response(
    model: str,
    version: int | None,
    outputs: Mapping[str, np.ndarray],
    req: Request,
    extra: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    doc: dict[str, Any] = {"model_name": model, "model_version": "" if version is None else str(version)}
    if req.request_id:
        doc["id"] = req.request_id
    if extra:
        doc["parameters"] = dict(extra)
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    names: Sequence[str] = req.outputs if req.outputs is not None else list(outputs)
    for name in names:
        if name not in outputs:
            continue
        array = outputs[name]
        datatype, raw = raw_of(name, array)
        item: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        data = None if (req.binary_all or name in req.binary_outputs) else json_data(datatype, array)
        if data is None:
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = data
        tensors.append(item)
    doc["outputs"] = tensors
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
