"""Small ONNX models built with onnx.helper, for the demo, the tests and the benchmarks.

Nothing is downloaded: every model is made here from a seed, so runs are reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17


def _save(model: Any, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _model(graph: Any) -> Any:
    from onnx import helper

    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="icow")
    m.ir_version = 8
    return m


def mlp(path: Path, sizes: tuple[int, ...] = (4, 8, 3), *, seed: int = 0) -> Path:
    """FP32 ``x`` [N, sizes[0]] -> dense+relu layers -> ``y`` [N, sizes[-1]] (dynamic batch)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(sizes) - 2
        mm, out = f"mm{i}", ("y" if last else f"h{i}")
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [mm]))
        if last:
            nodes.append(helper.make_node("Add", [mm, f"b{i}"], [out]))
        else:
            nodes.append(helper.make_node("Add", [mm, f"b{i}"], [f"a{i}"]))
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    return _save(_model(graph), path)


def mlp_reference(x: np.ndarray, sizes: tuple[int, ...] = (4, 8, 3), *, seed: int = 0) -> np.ndarray:
    """What :func:`mlp` computes, in numpy (to check results without onnxruntime)."""
    rng = np.random.default_rng(seed)
    h = x.astype(np.float32)
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        h = h @ w + bias
        if i < len(sizes) - 2:
            h = np.maximum(h, 0)
    return h


def multi_io(path: Path) -> Path:
    """Several inputs and outputs of different datatypes, dynamic batch::

    x FP32 [N, 3], ids INT64 [N, 2], mask BOOL [N]
    -> total FP32 [N] (sum of x over axis 1), doubled INT64 [N, 2] (ids * 2),
       flipped BOOL [N] (not mask), half FP16 [N, 3] (x as float16 / 2)
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "two"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float16), "half_c"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
        helper.make_node("Mul", ["ids", "two"], ["doubled"]),
        helper.make_node("Not", ["mask"], ["flipped"]),
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["x16", "half_c"], ["half"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 2]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N"]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("doubled", TensorProto.INT64, ["N", 2]),
            helper.make_tensor_value_info("flipped", TensorProto.BOOL, ["N"]),
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N", 3]),
        ],
        inits,
    )
    return _save(_model(graph), path)


def identity(path: Path, datatype: int | None = None, rank: int = 1) -> Path:
    """``x`` -> ``y`` unchanged (FP32 by default), every dimension dynamic."""
    from onnx import TensorProto, helper

    dt = TensorProto.FLOAT if datatype is None else datatype
    dims: list[Any] = [f"d{i}" for i in range(rank)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", dt, dims)],
        [helper.make_tensor_value_info("y", dt, dims)],
    )
    return _save(_model(graph), path)


def scale(path: Path, factor: float) -> Path:
    """FP32 ``x`` [N, 2] -> ``y`` = x * factor; versions of a model that differ by factor."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")],
    )
    return _save(_model(graph), path)


def sample_repository(root: Path) -> Path:
    """The demo's repository: ``mlp`` (v1) and ``scale`` (v1 x2, v2 x3)."""
    mlp(root / "mlp" / "1" / "model.onnx")
    scale(root / "scale" / "1" / "model.onnx", 2.0)
    scale(root / "scale" / "2" / "model.onnx", 3.0)
    return root


def slow(path: Path, width: int = 1024, layers: int = 64) -> Path:
    """FP32 ``x`` [N, width] -> ``y`` [N, width] through ``layers`` square MatMuls: compute time
    grows with N, so tests can make a job last as long as they need."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.eye(width, dtype=np.float32)
    nodes, prev = [], "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "w"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(_model(graph), path)


def resnet18(path: Path, *, seed: int = 0, classes: int = 1000) -> Path:
    """A ResNet-18-shaped CNN (random weights, batch norm folded into the convolutions):
    FP32 ``x`` [N, 3, 224, 224] -> ``y`` [N, classes]; about 1.8 GFLOPs per image."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    count = [0]

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        count[0] += 1
        i = count[0]
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits.extend([numpy_helper.from_array(w, f"cw{i}"), numpy_helper.from_array(b, f"cb{i}")])
        out = f"c{i}"
        nodes.append(
            helper.make_node(
                "Conv", [x, f"cw{i}", f"cb{i}"], [out], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4
            )
        )
        if relu:
            nodes.append(helper.make_node("Relu", [out], [out + "r"]))
            out += "r"
        return out

    h = conv("x", 3, 64, 7, 2, True)
    nodes.append(helper.make_node("MaxPool", [h], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    h, cin = "pool", 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            a = conv(h, cin, cout, 3, stride, True)
            b = conv(a, cout, cout, 3, 1, False)
            skip = conv(h, cin, cout, 1, stride, False) if (stride != 1 or cin != cout) else h
            out = f"add{stage}{block}"
            nodes.append(helper.make_node("Add", [b, skip], [out]))
            nodes.append(helper.make_node("Relu", [out], [out + "r"]))
            h, cin = out + "r", cout
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    fw = (rng.standard_normal((512, classes)) * 0.01).astype(np.float32)
    inits.extend([numpy_helper.from_array(fw, "fw"), numpy_helper.from_array(np.zeros(classes, np.float32), "fb")])
    nodes.append(helper.make_node("MatMul", ["flat", "fw"], ["fc"]))
    nodes.append(helper.make_node("Add", ["fc", "fb"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "resnet18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(_model(graph), path)
