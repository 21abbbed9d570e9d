"""A small convolutional classifier that also exposes its penultimate embedding.

Three conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool) halve the resolution each time,
global average pooling makes the net size-agnostic (28x28 up to ~96x96 work unchanged), then
a linear layer with ReLU gives the embedding and a last linear layer the logits. Inputs must
be at least 8x8 (three 2x2 pools).

Cost: about 29k parameters (at embedding_dim=64, 3 classes), about 2 MFLOPs per 28x28 image and
about 25 MFLOPs at 96x96, so a few hundred images train in seconds on two CPU cores.

`forward(x)` returns `(logits [N, num_classes], embedding [N, embedding_dim])`: the device
scores uncertainty from the logits and novelty from the embedding, from one forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (16, 32, 64)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: BatchNorm's shift makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Conv blocks -> global average pool -> embedding (ReLU) -> logits."""

    def __init__(self, num_classes: int, in_channels: int, embedding_dim: int = 64):
        super().__init__()
        for value, what in ((num_classes, "num_classes"), (in_channels, "in_channels"), (embedding_dim, "embedding_dim")):
            if int(value) < 1:
                raise ValueError(f"{what} must be >= 1, got {value}")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.embedding_dim = int(embedding_dim)
        blocks = []
        channels = self.in_channels
        for width in WIDTHS:
            blocks.append(_conv_block(channels, width))
            channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(channels, self.embedding_dim), nn.ReLU())
        self.head = nn.Linear(self.embedding_dim, self.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(self.features(x))
        return self.head(embedding), embedding
