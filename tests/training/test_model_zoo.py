"""The model and dataset registries: what is in them, and how a new entry plugs in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnserve.training.config import BatchNormOptions, ModelSpec
from bnserve.training.datasets import InputStatistics, load_dataset
from bnserve.training.errors import RegistryError, RunningStatisticsError
from bnserve.training.models import (
    MODELS,
    batchnorm_layers,
    build_model,
    register_model,
    require_running_statistics,
)

DIGITS_SPEC = ModelSpec(kind="cnn", sample_shape=(1, 8, 8), num_classes=10)


def test_digits_dataset_is_raw_float32_with_labels() -> None:
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == np.int64
    assert ds.labels == tuple(str(i) for i in range(10))
    assert ds.x.min() == 0 and ds.x.max() == 16  # raw pixel values, not rescaled
    assert np.bincount(ds.y).min() > 150  # every class present


def test_unknown_names_list_the_registered_ones() -> None:
    with pytest.raises(RegistryError, match=r"unknown dataset 'nope'; known: .*digits"):
        load_dataset("nope")
    with pytest.raises(RegistryError, match=r"unknown model 'nope'; known: .*cnn"):
        build_model(ModelSpec(kind="nope", sample_shape=(1, 8, 8), num_classes=10))


def test_cnn_has_conv_and_head_batchnorm_and_maps_images_to_logits() -> None:
    model = build_model(DIGITS_SPEC).eval()
    kinds = {type(m) for m in batchnorm_layers(model)}
    assert kinds == {nn.BatchNorm2d, nn.BatchNorm1d}
    assert len(batchnorm_layers(model)) == 7  # stem, 2 + 2 + shortcut in the stages, head
    with torch.no_grad():
        assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)  # (B, num_classes)


def test_batchnorm_options_reach_every_layer() -> None:
    opts = BatchNormOptions(eps=1e-3, momentum=0.05, affine=False)
    spec = ModelSpec(kind="cnn", sample_shape=(1, 8, 8), num_classes=10, batchnorm=opts)
    for bn in batchnorm_layers(build_model(spec)):
        assert (bn.eps, bn.momentum, bn.affine) == (1e-3, 0.05, False)


def test_a_new_model_is_one_registered_function() -> None:
    @register_model("test-linear")
    def build_linear(spec: ModelSpec) -> nn.Module:
        features = int(np.prod(spec.sample_shape))
        return nn.Sequential(nn.Flatten(), nn.Linear(features, spec.num_classes, bias=False),
                             nn.BatchNorm1d(spec.num_classes))

    try:
        spec = ModelSpec(kind="test-linear", sample_shape=(1, 8, 8), num_classes=10)
        assert build_model(spec)(torch.zeros(4, 1, 8, 8)).shape == (4, 10)
        with pytest.raises(ValueError, match="already registered"):
            register_model("test-linear")(build_linear)
    finally:
        MODELS.pop("test-linear")


def test_model_without_running_statistics_is_refused() -> None:
    spec = ModelSpec(kind="cnn", sample_shape=(1, 8, 8), num_classes=10,
                     batchnorm=BatchNormOptions(track_running_stats=False))
    with pytest.raises(RunningStatisticsError, match=r"7 BatchNorm layer\(s\).*stem\.1"):
        require_running_statistics(build_model(spec))
    require_running_statistics(build_model(DIGITS_SPEC))  # the default model is fine


def test_input_statistics_are_per_channel_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(3.0, 2.0, (500, 1, 4, 4)),
                        np.full((500, 1, 4, 4), 7.0)], axis=1).astype(np.float32)  # (N, 2, 4, 4)
    stats = InputStatistics.from_data(x)
    assert stats.mean.shape == stats.std.shape == (2, 1, 1)
    np.testing.assert_allclose(stats.mean.ravel(), [3.0, 7.0], atol=0.05)
    np.testing.assert_allclose(stats.std.ravel(), [2.0, 1.0], atol=0.05)  # constant: left at 1
    z = stats.standardize(x)
    np.testing.assert_allclose(z[:, 0].mean(), 0.0, atol=1e-4)
    again = InputStatistics.from_dict(stats.to_dict())
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.std, stats.std)
