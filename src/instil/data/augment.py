"""Augmentation of whole batches on the device: no per-sample Python in the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pads a batch N×C×H×W with zeros and cuts a random H×W window from each image.

    Offsets come from a CPU generator so that a run is reproducible on any device.
    """
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Indexing N×H×W positions of the channels-last view yields N×H×W×C in one gather.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirrors a random half of the batch left to right."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    flip = flip.to(images.device)[:, None, None, None]
    return torch.where(flip, images.flip(3), images)
