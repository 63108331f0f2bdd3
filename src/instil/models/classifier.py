"""The common shape of every model: features, then a linear head.

Methods that distil or extend features (PODNet, DER) rely on this split, so every backbone,
torchvision's included, is wrapped into it rather than used as it comes.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, features: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
