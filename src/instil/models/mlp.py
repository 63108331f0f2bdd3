"""A small MLP for feature-vector data (the 2-D toy set)."""

from __future__ import annotations

import math

from torch import nn

from instil.models import register_model
from instil.models.classifier import Classifier


@register_model("mlp", "MLP for feature vectors (the toy set)")
def mlp(input_shape: tuple[int, ...], num_classes: int,
        hidden: tuple[int, ...] | list[int] = (64, 64)) -> Classifier:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        width = h
    return Classifier(nn.Sequential(*layers), width, num_classes)
