"""Predictions of a model over a part of a data set."""

from __future__ import annotations

import torch
from torch import nn

from instil.data.loaders import Batches
from instil.engine.precision import autocast


def predict(model: nn.Module, batches: Batches, precision: str = "fp32") -> torch.Tensor:
    """Arg-max predictions in data order, on the CPU; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # A with-block rather than @torch.no_grad(): mutmut skips decorated functions.
    with torch.no_grad(), autocast(device, precision):
        preds = [model(x).argmax(1) for x, _ in batches.epoch(0)]
    model.train(was_training)
    return torch.cat(preds).cpu()
