"""PhaseData over tensors in memory, so that a method's phase can be driven without a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass
class TensorBatches:
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    shuffle: bool
    seed: int = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = (torch.randperm(len(self.x), generator=torch.Generator().manual_seed(
                     (self.seed * 1_000_003 + epoch) % 2**63))
                 if self.shuffle else torch.arange(len(self.x)))
        for i in range(0, len(order), self.batch_size):
            j = order[i:i + self.batch_size]
            yield self.x[j], self.y[j]


@dataclass
class TensorData:
    """The training set is (x, y); indices index it, as in a run."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    batch_size: int = 16

    def batches(self, indices: np.ndarray, train: bool = False, batch_size: int | None = None,
                seed: int = 0) -> TensorBatches:
        i = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TensorBatches(self.x[i], self.y[i], batch_size or self.batch_size, train, seed)

    def labels(self, indices: np.ndarray) -> torch.Tensor:
        return self.y[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
