"""The BatchNorm reference contract: layers read from a graph, the statistics graph's moments,
the drift measure and the threshold calibration (onnx + onnxruntime, no torch)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnserve.repository.batchnorm import (
    BatchNormGraphError,
    batchnorm_layers,
    moments_mean_var,
    row_moments,
    statistics_graph,
    unshare_statistics,
)
from bnserve.repository.drift import calibrate_threshold, gaussian_kl, layer_drift

CHANNELS = 3


def two_batchnorm_graph(shared: bool = False) -> onnx.ModelProto:
    """x (N, 3, 4) -> BN a -> Relu -> BN b -> y; with ``shared`` both BNs use one mean/var."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=CHANNELS).astype(np.float32), n)
             for n in ("a.weight", "a.bias", "b.weight", "b.bias")]
    inits += [numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "a.running_mean"),
              numpy_helper.from_array(np.array([1.0, 4.0, 0.25], np.float32), "a.running_var")]
    second = ("a.running_mean", "a.running_var") if shared else ("b.running_mean", "b.running_var")
    if not shared:
        inits += [numpy_helper.from_array(np.zeros(CHANNELS, np.float32), "b.running_mean"),
                  numpy_helper.from_array(np.ones(CHANNELS, np.float32), "b.running_var")]
    nodes = [
        helper.make_node("BatchNormalization", ["x", "a.weight", "a.bias", "a.running_mean",
                                                "a.running_var"], ["h"], name="bn_a"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "b.weight", "b.bias", *second], ["y"],
                         name="bn_b", epsilon=1e-3),
    ]
    graph = helper.make_graph(
        nodes, "two_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_layers_are_read_in_graph_order_with_readable_names():
    layers = batchnorm_layers(two_batchnorm_graph())
    assert [(layer.name, layer.input, layer.channels) for layer in layers] == \
        [("a", "x", 3), ("b", "r", 3)]
    assert layers[1].epsilon == pytest.approx(1e-3)
    np.testing.assert_array_equal(layers[0].var, [1.0, 4.0, 0.25])


def test_moments_of_the_statistics_graph_are_those_of_the_layer_inputs():
    model = two_batchnorm_graph()
    layers = batchnorm_layers(model)
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(7, 3, 4)).astype(np.float32)
    moments = row_moments(run(statistics_graph(model, layers), {"x": x}), layers)
    assert moments[0].sum.shape == (7, 3) and moments[0].positions == 4
    mean, var, count = moments_mean_var([moments[0]])
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=(0, 2), ddof=1), rtol=1e-9)
    assert count == 28
    # Rows add up: two halves give what the whole batch gives.
    halves = [row_moments(run(statistics_graph(model, layers), {"x": part}), layers)[1]
              for part in (x[:3], x[3:])]
    np.testing.assert_allclose(moments_mean_var(halves)[1], moments_mean_var([moments[1]])[1])


def test_statistics_as_inputs_lets_a_caller_feed_new_statistics():
    model = two_batchnorm_graph()
    layers = batchnorm_layers(model)
    graph = statistics_graph(model, layers, statistics_as_inputs=True)
    x = np.ones((2, 3, 4), np.float32)
    before = run(graph, {"x": x})["bnserve_bn1_sum"]
    after = run(graph, {"x": x, "a.running_mean": np.full(3, 5.0, np.float32)})["bnserve_bn1_sum"]
    assert not np.allclose(before, after)


def test_shared_statistics_are_unshared_before_one_layer_changes():
    model = two_batchnorm_graph(shared=True)
    unshared = unshare_statistics(model)
    layers = batchnorm_layers(unshared)
    assert layers[0].mean_name != layers[1].mean_name
    np.testing.assert_array_equal(layers[0].mean, layers[1].mean)
    x = np.random.default_rng(2).normal(size=(5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(model, {"x": x})["y"], run(unshared, {"x": x})["y"])


def test_a_batchnorm_fed_by_a_computed_statistic_is_refused():
    model = two_batchnorm_graph()
    model.graph.node[0].input[3] = "r"  # the mean would come from another node
    with pytest.raises(BatchNormGraphError, match="its mean is not a constant initializer"):
        batchnorm_layers(model)


def test_the_drift_measure_is_zero_at_the_reference_and_grows_with_mean_and_scale():
    ref_mean, ref_var = np.zeros(4), np.ones(4)
    assert gaussian_kl(ref_mean, ref_var, ref_mean, ref_var) == pytest.approx(np.zeros(4))
    shifted = gaussian_kl(ref_mean + 1.0, ref_var, ref_mean, ref_var)
    np.testing.assert_allclose(shifted, 0.5)  # (1 sd)^2 / 2
    wider = gaussian_kl(ref_mean, ref_var * 4, ref_mean, ref_var)
    np.testing.assert_allclose(wider, 0.5 * (4 - 1 - np.log(4)))


def test_the_calibrated_threshold_flags_shifted_windows_and_few_clean_ones():
    model = two_batchnorm_graph()
    layers = batchnorm_layers(model)
    rng = np.random.default_rng(3)
    reference_like = lambda n, shift=0.0: (  # noqa: E731
        rng.normal(0.0, 1.0, size=(n, 3, 4)) * np.sqrt(layers[0].var)[None, :, None]
        + layers[0].mean[None, :, None] + shift).astype(np.float32)
    graph = statistics_graph(model, layers[:1])
    moments = lambda x: row_moments(run(graph, {"x": x}), layers[:1])  # noqa: E731
    calibration = calibrate_threshold(layers[:1], moments(reference_like(400)), window_rows=64,
                                      false_alarm_rate=0.05, windows=400)
    assert calibration.clean_median < calibration.threshold < 0.1
    clean = [layer_drift(layers[0], moments(reference_like(64))).score for _ in range(40)]
    assert np.mean(np.array(clean) > calibration.threshold) <= 0.2
    shifted = layer_drift(layers[0], moments(reference_like(64, shift=1.0))).score
    assert shifted > 5 * calibration.threshold


def test_a_reference_estimated_from_few_rows_raises_the_clean_threshold():
    """After recalibration from n rows, the reference is an estimate too: clean traffic of the
    new distribution scores higher against it, the more so the fewer rows it came from."""
    model = two_batchnorm_graph()
    layers = batchnorm_layers(model)[:1]
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(600, 3, 4)) * np.sqrt(layers[0].var)[None, :, None]
         + layers[0].mean[None, :, None]).astype(np.float32)
    moments = row_moments(run(statistics_graph(model, layers), {"x": x}), layers)
    thresholds = [calibrate_threshold(layers, moments, window_rows=64, windows=300,
                                      reference_rows=n).threshold for n in (16, 256)]
    exact = calibrate_threshold(layers, moments, window_rows=64, windows=300).threshold
    assert thresholds[0] > thresholds[1] > exact
