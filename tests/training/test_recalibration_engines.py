"""The onnxruntime engine re-estimates what PyTorch's BatchNorm re-estimation gives.

PyTorch (``recalibrate_batchnorm``) runs the BatchNorm layers in train mode with
``momentum=None``. With one batch of all N rows (``batch_size=len(x)``) every layer's
running statistics are exactly the population statistics of its input, and each layer
normalizes with the batch's statistics on the way through, so layer k sees its input
with the layers before it already recalibrated: what the onnxruntime engine computes
layer by layer. (With several batches torch would average per-batch statistics, each
computed under per-batch normalization upstream: close, but not the same estimator.)

The one remaining difference is the variance the layers upstream normalize with: torch's
train mode divides by sqrt(biased var + eps) while its running_var (and the engine's) is
the unbiased var, m / (m - 1) times larger for m values per channel. The input to a
downstream layer is therefore scaled by about 1 - 1/(2m): its mean moves by ~1/(2m) of its
size and spread, its variance by ~1/m, relative (digits, N = 300: 1e-4; the MLP, N = 400:
2.7e-3 on the second layer). A layer with nothing upstream agrees to float32
rounding; the others within 2/m for the smallest m upstream (m = N for a BatchNorm1d).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from bnserve.repository.batchnorm import moments_mean_var
from bnserve.server.reestimate import Reestimator
from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.config import ModelSpec
from bnserve.training.datasets import InputStatistics
from bnserve.training.export import InferenceModel, export_onnx_variants
from bnserve.training.models import build_model
from bnserve.training.recalibrate import recalibrate_batchnorm

FLOAT32_RTOL = 1e-5


def digits_cnn(digits_repository: Path):
    ckpt = load_checkpoint(digits_repository / "digits" / "1")
    rng = np.random.default_rng(0)
    x = np.clip(0.5 * rng.uniform(0, 16, size=(300, 1, 8, 8)) + 6, 0, 16)  # shifted, raw
    # smallest m upstream of any layer: stage2's 4x4 maps, 16 values per row
    return ckpt.build(), ckpt.statistics, x.astype(np.float32), 16 * len(x)


def mlp_bn1d():
    """An MLP with two BatchNorm1d layers, running statistics and gamma/beta made up."""
    torch.manual_seed(0)
    net = build_model(ModelSpec(kind="mlp", sample_shape=(13,), num_classes=3, width=32))
    for bn in (m for m in net.modules() if isinstance(m, _BatchNorm)):
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.3)
    x = (np.random.default_rng(1).normal(size=(400, 13)) * 3 + 1).astype(np.float32)
    return net.eval(), InputStatistics.from_data(x), x, len(x)


@pytest.mark.parametrize("case", ["digits cnn (BatchNorm2d)", "mlp (BatchNorm1d)"])
def test_onnxruntime_layer_by_layer_equals_pytorch_one_batch(case, digits_repository):
    net, statistics, x, smallest_m = (digits_cnn(digits_repository) if case.startswith("digits")
                                      else mlp_bn1d())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unfolded.onnx"
        export_onnx_variants(InferenceModel(net, statistics).eval(), {"unfolded": path},
                             tuple(x.shape[1:]))
        reestimator = Reestimator(onnx.load(str(path)))
    # torch keeps the input statistics, and has no prior
    estimate = reestimator.reestimate({"input": x}, prior_strength=0, input_statistics=False)

    recalibrate_batchnorm(net, statistics.standardize(x), batch_size=len(x))
    torch_layers = [(name, m) for name, m in net.named_modules() if isinstance(m, _BatchNorm)]
    assert [layer.name for layer in estimate.new.layers] == [name for name, _ in torch_layers]
    tolerance = 2.0 / smallest_m
    for k, (layer, (name, bn)) in enumerate(zip(estimate.new.layers, torch_layers, strict=True)):
        mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
        std = np.sqrt(var + bn.eps)
        first = k in reestimator.levels[0]
        bound = FLOAT32_RTOL if first else tolerance
        # scaled by 1 - 1/(2m) upstream: the mean moves by that share of its size and spread
        assert (np.abs(layer.mean - mean) <= bound * (np.abs(mean) + std)).all(), name
        np.testing.assert_allclose(layer.var + bn.eps, var + bn.eps, rtol=bound, err_msg=name)

    # The whole difference is the upstream variance: normalize upstream with the biased
    # variance, as torch's train mode does, and every layer agrees to float32 rounding.
    base = reestimator.base
    values = [len(x) * m[0].positions for m in reestimator.moments({"input": x[:2]}, base)]
    layers, done = list(base.layers), set()
    for level in reestimator.levels:
        upstream = [replace(layer, var=layer.var * (m - 1) / m) if i in done else layer
                    for i, (layer, m) in enumerate(zip(layers, values, strict=True))]
        seen = reestimator.moments({"input": x}, replace(base, layers=tuple(upstream)))
        for index in level:
            mean, var, _ = moments_mean_var(seen[index])
            layers[index] = replace(layers[index], mean=mean, var=var)
        done.update(level)
    for layer, (name, bn) in zip(layers, torch_layers, strict=True):
        np.testing.assert_allclose(layer.var, bn.running_var.double().numpy(),
                                   rtol=10 * FLOAT32_RTOL, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(layer.mean, bn.running_mean.double().numpy(),
                                   rtol=10 * FLOAT32_RTOL, atol=1e-6, err_msg=name)
