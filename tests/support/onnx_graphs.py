"""Tiny hand-built ONNX graphs for server tests: deterministic, no training needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path, opset: int = OPSET) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def linear_softmax(path: Path, in_features: int = 4, classes: int = 3, seed: int = 0) -> Path:
    """input FP32 [N, in_features] -> softmax(x @ W + b) FP32 [N, classes]."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(in_features, classes)).astype(np.float32)
    bias = rng.normal(size=(classes,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "linear_softmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, path)


def identity(path: Path, elem_type: int, width: int = 3) -> Path:
    """x [N, width] -> y = x, for any element type."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, ["batch", width])],
        [helper.make_tensor_value_info("y", elem_type, ["batch", width])],
    )
    return _save(graph, path)


def two_inputs(path: Path) -> Path:
    """a FP32 [N, 2], b INT64 [N, 2] -> sum FP32 [N, 2] = a + float(b)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_float"], ["sum"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2])],
    )
    return _save(graph, path)


def batchnorm(path: Path, *, training_mode: bool, channels: int = 3) -> Path:
    """x [N, C] -> BatchNormalization; training_mode=1 normalizes with the batch's statistics."""
    params = [
        numpy_helper.from_array(np.ones(channels, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "bias"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "mean"),
        numpy_helper.from_array(np.ones(channels, np.float32), "var"),
    ]
    outputs = ["y", "running_mean", "running_var"] if training_mode else ["y"]
    node = helper.make_node(
        "BatchNormalization", ["x", "scale", "bias", "mean", "var"], outputs,
        name="bn0", training_mode=int(training_mode),
    )
    graph = helper.make_graph(
        [node],
        "batchnorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels])],
        params,
    )
    return _save(graph, path, opset=15)


def embedding_lookup(path: Path, vocab: int = 5, dim: int = 2) -> Path:
    """ids INT64 [N, L] -> Gather from a [vocab, dim] table -> FP32 [N, L, dim]."""
    table = np.arange(vocab * dim, dtype=np.float32).reshape(vocab, dim)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)],
        "embedding_lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", "length", dim])],
        [numpy_helper.from_array(table, "table")],
    )
    return _save(graph, path)


def batchnorm_in_local_function(path: Path, channels: int = 3) -> Path:
    """x -> a local function holding a training-mode BatchNormalization (as exporters emit)."""
    params = {
        "scale": np.ones(channels, np.float32), "bias": np.zeros(channels, np.float32),
        "mean": np.zeros(channels, np.float32), "var": np.ones(channels, np.float32),
    }
    body = helper.make_node("BatchNormalization", ["x", *params], ["y", "rm", "rv"],
                            name="hidden_bn", training_mode=1)
    function = helper.make_function("bnserve.test", "Norm", ["x", *params], ["y"], [body],
                                    [helper.make_opsetid("", 15)])
    graph = helper.make_graph(
        [helper.make_node("Norm", ["x", *params], ["y"], domain="bnserve.test")],
        "local_function",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels])],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15),
                                                    helper.make_opsetid("bnserve.test", 1)],
                              functions=[function])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def batch_mean(path: Path, width: int = 3) -> Path:
    """x [N, width] -> y = x - mean(x over the batch axis): each row depends on the others."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["y"]),
        ],
        "batch_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
    )
    return _save(graph, path)


def dropout_training(path: Path, width: int = 8) -> Path:
    """x [N, width] -> Dropout(ratio 0.5, training_mode=True): a random answer every run."""
    graph = helper.make_graph(
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"])],
        "dropout_training",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
         numpy_helper.from_array(np.array(True), "training")],
    )
    return _save(graph, path)


def scaled(path: Path, factor: float, width: int = 2) -> Path:
    """x [N, width] -> y = factor * x: versions that answer differently, for swap tests."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "factor"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(np.array([factor] * width, np.float32), "factor")],
    )
    return _save(graph, path)


def with_external_weights(path: Path, data_file: str = "weights.bin") -> Path:
    """linear_softmax with its weights in ``data_file`` (ONNX external data), a location
    relative to the model's folder that may name any path (even one onnx would refuse)."""
    linear_softmax(path)
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    if data_file != "weights.bin":
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data_file
        target = path.parent / data_file
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path.parent / "weights.bin", target)
        path.write_bytes(model.SerializeToString())
    return path


def slow_matmul(path: Path, width: int = 1024, depth: int = 8, seed: int = 0) -> Path:
    """x FP32 [N, width] -> y = x @ W @ W ... (``depth`` MatMuls) FP32 [N, width]: a model
    whose run takes a noticeable time (drain tests). One shared initializer, so the file
    stays ``width**2 * 4`` bytes whatever the depth; W is orthogonal, so values keep their
    scale through the chain and rows stay independent."""
    rng = np.random.default_rng(seed)
    weight, _ = np.linalg.qr(rng.normal(size=(width, width)))
    names = ["x", *(f"h{i}" for i in range(1, depth)), "y"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [names[i], "W"], [names[i + 1]]) for i in range(depth)],
        "slow_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(weight.astype(np.float32), "W")],
    )
    return _save(graph, path)


def fan_out(path: Path, width: int) -> Path:
    """x FP32 [N, 1] -> y FP32 [N, width], each row's value repeated: a small request that
    asks for a large answer (4 * width bytes a row)."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "fan_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(np.array([1, width], np.int64), "shape")],
    )
    return _save(graph, path)
