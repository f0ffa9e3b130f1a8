"""A user's tiny text classifier (token ids in, three labelled topics out), exported with
``export_module``: the session fixture ``topics_export`` publishes it once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnserve.training.export import ExportResult, export_module

TOPICS = ("sports", "weather", "cooking")
TOPICS_VOCAB = 20
TOKENS = np.random.default_rng(1).integers(0, TOPICS_VOCAB, size=(128, 6))  # (N, L) int64


class TinyTextNet(nn.Module):
    """Embedding -> mean over tokens -> BatchNorm1d -> Linear."""

    def __init__(self, vocab: int = TOPICS_VOCAB, classes: int = len(TOPICS)) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) int64
        return self.out(self.bn(self.embed(tokens).mean(dim=1)))  # (B, classes) logits


def topics_net() -> TinyTextNet:
    """The module, its BatchNorm statistics gathered on ``TOKENS``, in eval mode."""
    torch.manual_seed(0)
    net = TinyTextNet()
    with torch.no_grad():  # forward passes in train mode give BatchNorm running statistics
        for start in range(0, len(TOKENS), 32):
            net(torch.from_numpy(TOKENS[start:start + 32]))
    return net.eval()


def export_topics(repository: Path, name: str = "topics") -> ExportResult:
    return export_module(topics_net(), TOKENS[:64], repository, name, labels=TOPICS)
