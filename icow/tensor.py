"""The tensor codec: numpy arrays <-> wire tensors (Open Inference Protocol datatypes).

A wire tensor is a msgpack map::

    {"name": str, "datatype": "FP32", "shape": [2, 3], "data": <raw bytes>}

``data`` is the C-order, little-endian bytes of the array. ``BYTES`` tensors (strings) are
encoded as in the Open Inference Protocol's binary extension: each element as a 4-byte
little-endian length followed by its bytes. A large tensor may instead carry
``"ref": <redis key>`` and ``"nbytes": int`` (the claim check, see icow.envelope); this module
only deals with inline bytes.

Nothing here does I/O; both the client and the workers validate through these functions.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from icow.errors import InvalidInput, PayloadTooLarge
from icow.settings import DEFAULT_MAX_TENSOR_BYTES as DEFAULT_MAX_TENSOR_BYTES  # ICOW_MAX_TENSOR_BYTES

# Open Inference Protocol datatype name -> little-endian numpy dtype.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
ALL_DATATYPES = (*DATATYPES, BYTES)

_BY_KIND_SIZE = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items()}

MAX_RANK = 16
_LEN = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    """The wire datatype of a numpy array, or InvalidInput if it has none."""
    kind = array.dtype.kind
    if kind in "SU":
        return BYTES
    if kind == "O":
        if all(isinstance(x, (bytes, str)) for x in array.flat):
            return BYTES
        raise InvalidInput("object arrays are only accepted when every element is str or bytes (BYTES)")
    name = _BY_KIND_SIZE.get((kind, array.dtype.itemsize))
    if name is None:
        raise InvalidInput(f"dtype {array.dtype} is not supported; use one of {', '.join(ALL_DATATYPES)}")
    return name


def encode(name: str, array: Any, *, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> dict[str, Any]:
    """Encode one named numpy array as a wire tensor."""
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"input {name!r} must be a numpy.ndarray, got {type(array).__name__}")
    if array.ndim > MAX_RANK:
        raise InvalidInput(f"input {name!r} has rank {array.ndim}; at most {MAX_RANK} is allowed")
    datatype = datatype_of(array)
    data: bytes | memoryview
    if datatype == BYTES:
        data = _pack_bytes(array)
    else:
        wanted = DATATYPES[datatype]
        if array.dtype != wanted or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=wanted)
        # A memoryview avoids copying large arrays; msgpack and redis-py both take it.
        data = memoryview(array.reshape(-1)).cast("B") if array.size else b""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"input {name!r} is {len(data)} bytes; the limit is {max_bytes} bytes")
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _pack_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def unpack_bytes(data: bytes, count: int) -> list[bytes]:
    """Split BYTES tensor data into ``count`` elements, checking every length prefix."""
    out: list[bytes] = []
    view = memoryview(data)
    pos = 0
    for _ in range(count):
        if pos + 4 > len(view):
            raise InvalidInput("BYTES tensor data ends inside a length prefix")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise InvalidInput("BYTES tensor element runs past the end of the data")
        out.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != len(view):
        raise InvalidInput(f"BYTES tensor has {len(view) - pos} trailing bytes after {count} elements")
    return out


def check_header(tensor: Any, *, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> tuple[str, str, list[int]]:
    """Validate a wire tensor's name, datatype and shape; return them."""
    if not isinstance(tensor, Mapping):
        raise InvalidInput(f"a tensor must be a map, got {type(tensor).__name__}")
    name = tensor.get("name")
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise InvalidInput("tensor name must be a non-empty string of at most 256 characters")
    if datatype not in ALL_DATATYPES:
        raise InvalidInput(f"tensor {name!r}: unknown datatype {datatype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} non-negative ints")
    count = 1
    for d in shape:
        count *= d
    if datatype != BYTES and count * DATATYPES[datatype].itemsize > max_bytes:
        raise PayloadTooLarge(f"tensor {name!r}: {shape} {datatype} exceeds {max_bytes} bytes")
    return name, datatype, shape


def decode(tensor: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> np.ndarray:
    """Decode a wire tensor with inline ``data`` to a numpy array (zero-copy where possible).

    BYTES tensors decode to an object array of ``bytes``.
    """
    name, datatype, shape = check_header(tensor, max_bytes=max_bytes)
    data = tensor.get("data")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"tensor {name!r}: data must be raw bytes (msgpack bin)")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"tensor {name!r}: {len(data)} bytes exceeds {max_bytes} bytes")
    count = 1
    for d in shape:
        count *= d
    if datatype == BYTES:
        items = unpack_bytes(bytes(data), count)
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"tensor {name!r}: {len(data)} bytes of data but shape {shape} x {datatype} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def as_str(array: Any) -> np.ndarray:
    """A BYTES output (an object array of ``bytes``) as an object array of ``str``, same shape,
    each element decoded as UTF-8 (what string models put out). ``str`` elements pass through;
    InvalidInput for anything else, or for bytes that are not valid UTF-8 (naming the element)."""
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise InvalidInput("as_str takes a BYTES tensor: an object array of bytes (as results hold them)")
    out = np.empty(array.shape, dtype=object)
    flat, target = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            target[i] = item
        elif isinstance(item, (bytes, bytearray)):
            try:
                target[i] = bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"as_str: element {i} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                ) from exc
        else:
            raise InvalidInput(f"as_str: element {i} is {type(item).__name__}, not bytes or str")
    return out
