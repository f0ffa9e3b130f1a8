"""Model builders keyed by ``--model``; every model normalizes with BatchNorm.

Adding a model is one function that turns a ``ModelSpec`` into an ``nn.Module`` mapping
(B, *spec.sample_shape) standardized inputs to (B, spec.num_classes) logits::

    @register_model("mine")
    def build_mine(spec: ModelSpec) -> nn.Module:
        ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnserve.training.config import BatchNormOptions, ModelSpec
from bnserve.training.errors import RegistryError, RunningStatisticsError

ModelBuilder = Callable[[ModelSpec], nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder under ``name`` (the value of ``--model``)."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return decorator


def build_model(spec: ModelSpec) -> nn.Module:
    try:
        builder = MODELS[spec.kind]
    except KeyError:
        raise RegistryError(
            f"unknown model {spec.kind!r}; known: {', '.join(sorted(MODELS))}"
        ) from None
    return builder(spec)


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm1d/2d/3d (and subclass) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def require_running_statistics(module: nn.Module) -> None:
    """Raise ``RunningStatisticsError`` unless every BatchNorm layer has running statistics.

    Without them BatchNorm normalizes each batch by its own statistics even in eval mode,
    so a row's answer would depend on the other rows sent with it.
    """
    missing = [
        name for name, m in module.named_modules()
        if isinstance(m, _BatchNorm)
        and (not m.track_running_stats or m.running_mean is None or m.running_var is None)
    ]
    if missing:
        raise RunningStatisticsError(
            f"{len(missing)} BatchNorm layer(s) have no running statistics "
            f"(track_running_stats=False): {', '.join(missing)}; their eval output would "
            "depend on the batch, so there is nothing to freeze into the graph"
        )


def _bn2d(channels: int, opts: BatchNormOptions) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=opts.eps, momentum=opts.momentum, affine=opts.affine,
                          track_running_stats=opts.track_running_stats)


class ConvBN(nn.Sequential):
    """Conv without bias, then BatchNorm2d: the pair the exporter folds into one Conv."""

    def __init__(self, cin: int, cout: int, opts: BatchNormOptions, *, kernel_size: int = 3,
                 stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2, bias=False),
            _bn2d(cout, opts),
        )


class ResidualBlock(nn.Module):
    """Two ConvBN layers and a shortcut (a strided 1x1 ConvBN when the shape changes)."""

    def __init__(self, cin: int, cout: int, opts: BatchNormOptions, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, cout, opts, stride=stride)
        self.conv2 = ConvBN(cout, cout, opts)
        self.shortcut: nn.Module = (
            nn.Identity() if cin == cout and stride == 1
            else ConvBN(cin, cout, opts, kernel_size=1, stride=stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W)
        out = torch.relu(self.conv1(x))  # (B, Cout, H/s, W/s)
        return torch.relu(self.conv2(out) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A stem, two residual stages (the second halves H and W), then a BatchNorm1d head."""

    def __init__(self, in_channels: int, num_classes: int, width: int,
                 opts: BatchNormOptions, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.stem = ConvBN(in_channels, width, opts)
        self.stage1 = ResidualBlock(width, width, opts)
        self.stage2 = ResidualBlock(width, 2 * width, opts, stride=2)
        self.head = nn.Sequential(
            nn.Linear(2 * width, 2 * width, bias=False),
            nn.BatchNorm1d(2 * width, eps=opts.eps, momentum=opts.momentum, affine=opts.affine,
                           track_running_stats=opts.track_running_stats),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = torch.relu(self.stem(x))  # (B, W, H, W)
        x = self.stage2(self.stage1(x))  # (B, 2W, H/2, W/2)
        x = x.mean(dim=(2, 3))  # (B, 2W): global average pool
        return self.head(x)  # (B, num_classes) logits


@register_model("cnn")
def build_cnn(spec: ModelSpec) -> nn.Module:
    if len(spec.sample_shape) != 3:
        raise ValueError(f"cnn needs (C, H, W) samples, got shape {spec.sample_shape}")
    return SmallResNet(spec.sample_shape[0], spec.num_classes, spec.width, spec.batchnorm)
