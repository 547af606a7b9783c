"""ONNX models shaped as real users have them, built with onnx.helper: outputs that are not
tensors (sklearn-onnx's ZipMap, sequences), scalars, a batch axis that is not axis 0,
symbolic dimensions, integer, boolean and string tensors, and a file that is not a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
ML_OPSET = 3


def _save(nodes: list[Any], inputs: list[Any], outputs: list[Any], path: Path, inits: list[Any] | None = None) -> Path:
    import onnx
    from onnx import helper

    ml = any(n.domain == "ai.onnx.ml" for n in nodes)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if ml else [])
    model = helper.make_model(
        helper.make_graph(nodes, path.parent.parent.name, inputs, outputs, inits or []), opset_imports=opsets
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def zipmap_classifier(path: Path) -> Path:
    """What sklearn-onnx makes of a classifier by default: FP32 ``x`` [N, 3] -> ``label`` INT64
    [N] (argmax) and ``probabilities``, a seq(map(int64, float)) (ZipMap), not a tensor."""
    from onnx import TensorProto, helper

    probabilities = helper.make_value_info(
        "probabilities",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        ),
    )
    return _save(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=1),
            helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0),
            helper.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]), probabilities],
        path,
    )


def sequence_output(path: Path) -> Path:
    """FP32 ``x`` [N, 2] -> ``y`` = x and ``parts``, a seq(tensor(float)) of two copies."""
    from onnx import TensorProto, helper

    return _save(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["parts"]), helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, None),
        ],
        path,
    )


def sequence_only(path: Path) -> Path:
    """A model whose only output is a sequence: FP32 ``x`` [N, 2] -> ``parts``, seq(tensor(float))."""
    from onnx import TensorProto, helper

    return _save(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["parts"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, None)],
        path,
    )


def zipmap_only(path: Path) -> Path:
    """A classifier whose only output is ZipMap's seq(map(string, float)): FP32 ``x`` [N, 2]."""
    from onnx import TensorProto, helper

    probabilities = helper.make_value_info(
        "probabilities",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        ),
    )
    return _save(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=1),
            helper.make_node(
                "ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_strings=["no", "yes"]
            ),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [probabilities],
        path,
    )


def scalar(path: Path) -> Path:
    """Scalars in and out: FP32 ``x`` [] and INT64 ``n`` [] -> ``y`` = x * n (FP32 [])."""
    from onnx import TensorProto, helper

    return _save(
        [helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "nf"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        path,
    )


def batch_last(path: Path) -> Path:
    """A batch axis that is not axis 0: FP32 ``x`` [3, N] -> ``y`` [3, N] = x * [[1], [10], [100]]
    (a per-row weight, so a wrong concatenation or split along axis 0 shows)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1.0], [10.0], [100.0]], np.float32)
    return _save(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "N"])],
        path,
        [numpy_helper.from_array(w, "w")],
    )


def symbolic(path: Path) -> Path:
    """Symbolic dims as exporters write them: FP32 ``tokens`` [batch, seq_len, 4] -> ``pooled``
    [batch, 4] (mean over seq_len) and ``lengths`` INT64 [batch] (seq_len, per row)."""
    from onnx import TensorProto, helper, numpy_helper

    return _save(
        [
            helper.make_node(
                "ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0
            ),  # opset 17: axes is an attribute
            helper.make_node("Shape", ["tokens"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
            helper.make_node("Shape", ["tokens"], ["batch"], start=0, end=1),
            helper.make_node("Expand", ["seq", "batch"], ["lengths"]),
        ],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq_len", 4])],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        path,
        [numpy_helper.from_array(np.array(1, np.int64), "one")],
    )


def int32_ops(path: Path) -> Path:
    """INT32 ``x`` [N, 2] -> ``y`` INT32 = x + 1 and ``positive`` BOOL = x > 0."""
    from onnx import TensorProto, helper, numpy_helper

    return _save(
        [helper.make_node("Add", ["x", "one"], ["y"]), helper.make_node("Greater", ["x", "zero"], ["positive"])],
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 2])],
        [
            helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 2]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["N", 2]),
        ],
        path,
        [
            numpy_helper.from_array(np.array(1, np.int32), "one"),
            numpy_helper.from_array(np.array(0, np.int32), "zero"),
        ],
    )


LABELS = ["cat", "dog", "eel"]


def labels(path: Path) -> Path:
    """Strings both ways (ai.onnx.ml LabelEncoder): INT64 ``ids`` [N] -> ``names`` STRING [N]
    ('?' for unknown ids), and STRING ``words`` [N] -> ``codes`` INT64 [N] (-1 for unknown)."""
    from onnx import TensorProto, helper

    return _save(
        [
            helper.make_node(
                "LabelEncoder",
                ["ids"],
                ["names"],
                domain="ai.onnx.ml",
                keys_int64s=[0, 1, 2],
                values_strings=LABELS,
                default_string="?",
            ),
            helper.make_node(
                "LabelEncoder",
                ["words"],
                ["codes"],
                domain="ai.onnx.ml",
                keys_strings=LABELS,
                values_int64s=[0, 1, 2],
                default_int64=-1,
            ),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("words", TensorProto.STRING, ["N"]),
        ],
        [
            helper.make_tensor_value_info("names", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("codes", TensorProto.INT64, ["N"]),
        ],
        path,
    )


def garbage(path: Path) -> Path:
    """A model.onnx that is not a model (a truncated download, a wrong file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x08\x07garbage, not an ONNX model" * 10)
    return path
