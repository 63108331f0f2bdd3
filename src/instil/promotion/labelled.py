"""Labelled samples as a promotion reads them: one tensor, int64 labels, a name per sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instil.data.base import Samples


@dataclass(frozen=True)
class Labelled:
    """Samples N×... with their labels. uint8 images (read from class folders) are scaled
    and normalised on the device with the image format's mean and std; floating-point
    tensors (a user's Dataset, DataLoader or tensors) are what the model takes, as they are.
    `names` say where each sample came from (its file, or `new_data[17]`), for the report's
    lists of flips; `source` says where all of them came from."""

    tensor: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape[1:])

    def subset(self, indices: np.ndarray) -> Labelled:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return Labelled(self.tensor[index], self.labels[index],
                        [self.names[i] for i in indices.tolist()], self.source)

    def samples(self) -> Samples:
        return Samples(labels=self.labels, tensor=self.tensor)


def split_holdout(labels: torch.Tensor, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) indices: a seeded `fraction` of every class held out, as the
    imagefolder loader does, so that no class with two or more samples misses either side."""
    rng = np.random.default_rng(seed)
    array = labels.numpy()
    held = np.zeros(len(array), dtype=bool)
    for label in np.unique(array):
        members = np.flatnonzero(array == label)
        n_held = min(max(1, round(fraction * len(members))), len(members) - 1)
        held[rng.choice(members, size=n_held, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
