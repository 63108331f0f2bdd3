"""Sub-populations of a class, found by k-means on pixels, for the sub-population-shift stream.

A class of Fashion-MNIST is not one population: sandals with and without heels, long and short
sleeves. Clustering each class's pixels gives k such groups; holding one out of D(0) gives
the deployed model a kind of image it never saw, which the new observations then bring
(the paper's concept drift, its Entity-30 experiment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instil.data.base import DataBundle
from instil.errors import InstilError


def kmeans(x: torch.Tensor, k: int, seed: int, iterations: int = 30) -> torch.Tensor:
    """Centroids (k × d) of the rows of x: k-means++ seeding, then Lloyd's iterations."""
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centroids).min(1).values.square()
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=g) if d2.sum() > 0 else \
            torch.randint(len(x), (1,), generator=g)
        centroids = torch.cat([centroids, x[pick]])
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(1)
        moved = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centroids[j]
                             for j in range(k)])
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids


@dataclass(frozen=True)
class SubPopulations:
    """Each sample's sub-population (0..k-1) within its class, for train and test."""

    k: int
    train: np.ndarray
    test: np.ndarray


def pixels(samples_tensor: torch.Tensor) -> torch.Tensor:
    return samples_tensor.flatten(1).float() / 255.0


def find_subpopulations(bundle: DataBundle, k: int, seed: int) -> SubPopulations:
    """Clusters each class of the training set into k groups; test images join the group of
    the nearest centroid of their class."""
    if not (bundle.train.resident and bundle.test.resident):
        raise InstilError("split.stream=subpop_shift needs a data set held in memory "
                          f"(fmnist, cifar100, toy), not {bundle.name}'s image files")
    x_train, x_test = pixels(bundle.train.tensor), pixels(bundle.test.tensor)
    y_train, y_test = bundle.train.labels, bundle.test.labels
    train = np.zeros(len(y_train), dtype=np.int64)
    test = np.zeros(len(y_test), dtype=np.int64)
    for c in range(bundle.num_classes):
        members = torch.nonzero(y_train == c).flatten()
        if len(members) < k:
            raise InstilError(f"split.k={k}: class {c} has only {len(members)} training "
                              "samples; lower split.k")
        centroids = kmeans(x_train[members], k, seed + c)
        train[members.numpy()] = torch.cdist(x_train[members], centroids).argmin(1).numpy()
        tests = torch.nonzero(y_test == c).flatten()
        if len(tests):
            test[tests.numpy()] = torch.cdist(x_test[tests], centroids).argmin(1).numpy()
    return SubPopulations(k, train, test)


def held_out_groups(num_classes: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """The sub-population of each class kept out of D(0)."""
    return rng.integers(0, k, size=num_classes)
