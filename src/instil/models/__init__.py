"""Models by name. instil's own are each a `Classifier` (a feature extractor and a linear
head); "torchvision" is any torchvision classifier as it comes (models.zoo)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from instil.errors import InstilError
from instil.models.classifier import Classifier

Builder = Callable[..., Classifier]
MODELS: dict[str, tuple[Builder, str]] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        MODELS[name] = (builder, description)
        return builder
    return add


def create_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                 **options: Any) -> nn.Module:
    """Builds a model whose input channels and class count come from the data."""
    if name not in MODELS:
        known = ", ".join(sorted(MODELS))
        raise InstilError(f"unknown model '{name}' (model.name); known: {known}")
    builder, _ = MODELS[name]
    kwargs = {"input_shape": tuple(input_shape), "num_classes": num_classes, **options}
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as e:
        raise InstilError(f"model.options for '{name}': {e}") from None
    return builder(**kwargs)


# Importing the modules registers their models.
from instil.models import mlp, resnet, zoo  # noqa: E402,F401

__all__ = ["MODELS", "Classifier", "create_model", "register_model"]
