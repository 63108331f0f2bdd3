"""Random uint8 images of any shape: for speed benchmarks on machines without the real data
(bench/gpu.sh runs CIFAR-100-shaped batches on a GPU machine with no internet)."""

from __future__ import annotations

import torch

from instil.data.base import DataBundle, Samples


def load_synthetic(channels: int = 3, size: int = 32, num_classes: int = 100,
                   n_train: int = 50000, n_test: int = 10000, seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)

    def samples(n: int) -> Samples:
        images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
        return Samples(labels=torch.randint(0, num_classes, (n,), generator=g), tensor=images)

    return DataBundle(name="synthetic", classes=[f"class{k}" for k in range(num_classes)],
                      train=samples(n_train), test=samples(n_test),
                      input_shape=(channels, size, size),
                      mean=(0.5,) * channels, std=(0.25,) * channels)
