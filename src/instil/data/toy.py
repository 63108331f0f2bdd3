"""A synthetic 2-D data set with a controllable concept drift.

Each class is a Gaussian blob on a circle. A fraction `drift_fraction` of every class's
samples comes from a drifted sub-population: the same class, rotated by `drift_degrees`
around the origin, so that it lands in a region the base model assigns to a neighbour.
The drifted training samples are kept out of the base set D(0) (they are the new
observations the deployed model fails on); the test set mixes both in the same proportion,
so learning the drift shows as performance promotion.
"""

from __future__ import annotations

import math

import torch

from instil.data.base import DataBundle, Samples


def sample_blobs(n: int, num_classes: int, drift_fraction: float, drift_degrees: float,
                 spread: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    labels = torch.arange(n) % num_classes
    drifted = torch.rand(n, generator=generator) < drift_fraction
    angle = 2 * math.pi * labels.float() / num_classes
    angle = angle + drifted.float() * math.radians(drift_degrees)
    centres = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    points = centres + spread * torch.randn(n, 2, generator=generator)
    return points.float(), labels.long(), drifted


def load_toy2d(n_train: int = 3000, n_test: int = 1500, num_classes: int = 3,
               drift_fraction: float = 0.3, drift_degrees: float = 50.0,
               spread: float = 0.45, seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    x, y, drifted = sample_blobs(n_train, num_classes, drift_fraction, drift_degrees, spread, g)
    xt, yt, _ = sample_blobs(n_test, num_classes, drift_fraction, drift_degrees, spread, g)
    return DataBundle(
        name="toy2d",
        classes=[f"class{k}" for k in range(num_classes)],
        train=Samples(labels=y, tensor=x, base_eligible=~drifted),
        test=Samples(labels=yt, tensor=xt),
        input_shape=(2,),
    )
