"""The tensor codec: every Open Inference Protocol datatype round-trips as raw bytes."""

import numpy as np
import pytest

from icow import tensor
from icow.errors import InvalidInput, PayloadTooLarge

CASES = [
    ("BOOL", np.array([True, False, True])),
    ("UINT8", np.arange(6, dtype=np.uint8).reshape(2, 3)),
    ("UINT16", np.arange(4, dtype=np.uint16)),
    ("UINT32", np.arange(4, dtype=np.uint32)),
    ("UINT64", np.array([2**63], dtype=np.uint64)),
    ("INT8", np.array([-1, 2], dtype=np.int8)),
    ("INT16", np.array([-300], dtype=np.int16)),
    ("INT32", np.array([[-1], [7]], dtype=np.int32)),
    ("INT64", np.array([-(2**62)], dtype=np.int64)),
    ("FP16", np.array([0.5, -2], dtype=np.float16)),
    ("FP32", np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)),
    ("FP64", np.array([np.pi])),
]


@pytest.mark.parametrize(("datatype", "array"), CASES)
def test_roundtrip_every_datatype(datatype: str, array: np.ndarray) -> None:
    wire = tensor.encode("t", array)
    assert wire["datatype"] == datatype
    assert wire["shape"] == list(array.shape)
    assert bytes(wire["data"]) == array.astype(array.dtype.newbyteorder("<")).tobytes()
    back = tensor.decode({**wire, "data": bytes(wire["data"])})
    assert back.dtype == array.dtype.newbyteorder("<") or back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_big_endian_and_non_contiguous_arrays_are_sent_little_endian_c_order() -> None:
    a = np.arange(6, dtype=">i4").reshape(2, 3).T
    wire = tensor.encode("t", a)
    assert bytes(wire["data"]) == np.ascontiguousarray(a, dtype="<i4").tobytes()
    np.testing.assert_array_equal(tensor.decode({**wire, "data": bytes(wire["data"])}), a)


def test_bytes_tensors_use_length_prefixes() -> None:
    a = np.array(["héllo", "", "ok"], dtype=object)
    wire = tensor.encode("s", a)
    assert wire["datatype"] == "BYTES"
    assert wire["data"] == b"\x06\x00\x00\x00h\xc3\xa9llo" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00ok"
    assert list(tensor.decode(wire)) == ["héllo".encode(), b"", b"ok"]
    assert tensor.encode("s", np.array([b"a", b"bc"]))["datatype"] == "BYTES"


def test_empty_tensor() -> None:
    wire = tensor.encode("e", np.zeros((0, 3), np.float32))
    assert wire["data"] == b"" and wire["shape"] == [0, 3]
    assert tensor.decode(wire).shape == (0, 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1.0, 2.0], "must be a numpy.ndarray"),
        (np.array([1 + 2j]), "not supported"),
        (np.array([{"a": 1}], dtype=object), "object arrays"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "not supported"),
    ],
)
def test_bad_inputs_raise_invalid_input(value: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensor.encode("x", value)


def test_size_cap() -> None:
    with pytest.raises(PayloadTooLarge):
        tensor.encode("x", np.zeros(1000, np.float32), max_bytes=100)
    assert issubclass(PayloadTooLarge, ValueError)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": b"\x00" * 7}, "needs 8"),
        ({"name": "x", "datatype": "FP99", "shape": [1], "data": b""}, "unknown datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": b""}, "shape"),
        ({"name": "x", "datatype": "FP32", "shape": "2", "data": b""}, "shape"),
        ({"name": "", "datatype": "FP32", "shape": [0], "data": b""}, "name"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}, "raw bytes"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": b"\x05\x00\x00\x00ab"}, "past the end"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": b"\x01\x00\x00\x00ab"}, "trailing"),
        ({"name": "x", "datatype": "FP32", "shape": [10**12], "data": b""}, "exceeds"),
    ],
)
def test_decode_validates_everything(wire: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensor.decode(wire)
