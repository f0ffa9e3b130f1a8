"""The models the serving benchmark serves, built here (never downloaded) and exported with
bnserve's own path (``export_module``: BatchNorm folded, parity verified).

    digits  the quick digits CNN (``build_digits_repository``, trained for a second)
    resnet  a ResNet-style CNN on 1x28x28: 9 BatchNorm layers, ~71 MFLOP a row
    mlp     64-256-256-10, two BatchNorm1d

resnet and mlp keep their random initial weights; a few forward passes in train mode on
random data give their BatchNorm layers running statistics, which is all a serving
benchmark needs (the answers are never read).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bnserve.training.config import BatchNormOptions
from bnserve.training.export import export_module
from bnserve.training.models import MLP, ConvBN, LinearBN, ResidualBlock
from bnserve.training.quick import build_digits_repository

MODELS = ("digits", "resnet", "mlp")


class ResNet9BN(nn.Module):
    """Stem, three residual blocks (the second halves H and W), a LinearBN head: 9 BatchNorm."""

    def __init__(self, width: int = 30, num_classes: int = 10) -> None:
        super().__init__()
        opts = BatchNormOptions()
        self.stem = ConvBN(1, width, opts)  # BN 1
        self.blocks = nn.Sequential(
            ResidualBlock(width, width, opts),  # BN 2, 3
            ResidualBlock(width, 2 * width, opts, stride=2),  # BN 4, 5, 6 (1x1 shortcut)
            ResidualBlock(2 * width, 2 * width, opts),  # BN 7, 8
        )
        self.head = nn.Sequential(LinearBN(2 * width, 2 * width, opts), nn.ReLU(),  # BN 9
                                  nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28)
        x = self.blocks(torch.relu(self.stem(x)))  # (B, 2W, 14, 14)
        return self.head(x.mean(dim=(2, 3)))  # (B, num_classes)


def conv_flops(module: nn.Module, sample_shape: tuple[int, ...]) -> float:
    """Multiply-adds x 2 of every Conv2d and Linear for one row (hooks on a forward pass)."""
    total = [0.0]

    def hook(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(layer, nn.Conv2d):
            per_out = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total[0] += 2 * per_out * output[0].numel()
        elif isinstance(layer, nn.Linear):
            total[0] += 2 * layer.in_features * layer.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module.eval()(torch.zeros(1, *sample_shape))
    for handle in handles:
        handle.remove()
    return total[0]


def _with_running_statistics(net: nn.Module, sample_shape: tuple[int, ...],
                             steps: int = 5) -> torch.Tensor:
    """A few train-mode forward passes (no backward) so BatchNorm has running stats."""
    generator = torch.Generator().manual_seed(0)
    net.train()
    with torch.no_grad():
        for _ in range(steps):
            net(torch.randn(64, *sample_shape, generator=generator))
    net.eval()
    return torch.randn(64, *sample_shape, generator=generator)  # export samples


def build_model(repository: Path, name: str) -> dict:
    """Export ``name`` into ``repository``; return what the report says about it."""
    torch.manual_seed(0)
    if name == "digits":
        build_digits_repository(repository, name="digits")
        return {"name": name, "description": "quick digits CNN (bnserve.training.quick)"}
    if name == "resnet":
        net, shape = ResNet9BN(), (1, 28, 28)
        description = "ResNet-style CNN, 1x28x28, 9 BatchNorm2d/1d, random init"
    elif name == "mlp":
        net, shape = MLP(64, 10, 256, BatchNormOptions()), (64,)
        description = "MLP 64-256-256-10, 2 BatchNorm1d, random init"
    else:
        raise ValueError(f"unknown bench model {name!r}; known: {', '.join(MODELS)}")
    samples = _with_running_statistics(net, shape)
    flops = conv_flops(net, shape)
    export_module(net, samples, repository, name)
    return {"name": name, "description": description, "mflop_per_row": round(flops / 1e6, 1)}
