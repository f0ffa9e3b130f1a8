"""The input standardization contract: found in a graph, re-estimated as training computes it,
and made the Sub/Div pair's own before it changes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bnserve.repository.standardization import (
    estimate_standardization,
    input_standardization,
    unshare_standardization,
)


def standardizing_graph(shared: bool = False):
    """x (N, 2, 3) -> (x - mean) / std -> Mul by a constant; with ``shared`` the Mul uses the
    std initializer too (as the exporter's deduplication may arrange)."""
    inits = [numpy_helper.from_array(np.array([[1.0], [-2.0]], np.float32), "mean"),
             numpy_helper.from_array(np.array([[2.0], [0.5]], np.float32), "std")]
    if not shared:
        inits.append(numpy_helper.from_array(np.array([[2.0], [0.5]], np.float32), "scale"))
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["z"]),
             helper.make_node("Mul", ["z", "std" if shared else "scale"], ["y"])]
    graph = helper.make_graph(nodes, "standardize",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_pair_is_found_with_its_constants():
    (found,) = input_standardization(standardizing_graph())
    assert (found.input, found.mean_name, found.std_name) == ("x", "mean", "std")
    np.testing.assert_array_equal(found.std, [[2.0], [0.5]])


def test_estimates_are_per_channel_over_rows_and_positions_with_the_population_std():
    (found,) = input_standardization(standardizing_graph())
    x = np.random.default_rng(0).normal([[3.0], [-1.0]], [[2.0], [0.1]], size=(500, 2, 3))
    x[:, 1] = 5.0  # a constant channel is left unscaled, as training leaves it
    mean, std = estimate_standardization(x, found)
    assert mean.shape == std.shape == (2, 1)
    np.testing.assert_allclose(mean[:, 0], [x[:, 0].mean(), 5.0])
    np.testing.assert_allclose(std[:, 0], [x[:, 0].std(ddof=0), 1.0])


def test_a_shared_constant_is_copied_so_only_the_standardization_changes():
    model = standardizing_graph(shared=True)
    unshared = unshare_standardization(model)
    (found,) = input_standardization(unshared)
    assert found.std_name != "std"
    x = np.random.default_rng(1).normal(size=(4, 2, 3)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(),  # noqa: E731
                                         providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run(model), run(unshared))
