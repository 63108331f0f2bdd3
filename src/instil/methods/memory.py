"""Exemplar memories under a fixed budget, for the baselines that replay old samples.

An exemplar is a training-set index, not a copy of the image: the data already sits on the
device (or on disk), so a memory costs a few bytes per exemplar and replaying it is a matter
of adding its indices to a phase's training indices. The budget is `per_class` × classes
(the usual 20 per class of CIFAR-100 work); in IIL every class is old, so each class keeps
`per_class` exemplars chosen from its old exemplars and its new samples.

Each old exemplar stands for all the samples of its class seen so far (it carries the weight
seen / kept), so the memory keeps representing everything seen rather than leaning towards
the latest part: random selection then behaves like reservoir sampling, and herding aims at
the mean of every sample seen.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instil.errors import InstilError
from instil.methods.base import PhaseData

# (candidate indices of one class, how many to keep, each candidate's weight) -> kept indices
Selector = Callable[[np.ndarray, int, np.ndarray], np.ndarray]


class ExemplarMemory:
    def __init__(self, per_class: int, num_classes: int) -> None:
        if per_class < 1:
            raise InstilError(f"exemplars per class = {per_class}: must be at least 1")
        self.per_class = per_class
        self.num_classes = num_classes
        self.by_class: dict[int, np.ndarray] = {}
        self.seen: dict[int, int] = {}  # samples of each class offered so far

    @property
    def budget(self) -> int:
        return self.per_class * self.num_classes

    def indices(self) -> np.ndarray:
        """Every exemplar, class by class."""
        if not self.by_class:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.by_class[c] for c in sorted(self.by_class)])

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_class.values())

    def update(self, new: np.ndarray, labels: torch.Tensor, select: Selector) -> None:
        """Re-selects every class's exemplars from its old exemplars and the `new` indices
        (whose labels are `labels`, in the same order)."""
        labels_np = labels.cpu().numpy()
        for c in range(self.num_classes):
            old = self.by_class.get(c, np.zeros(0, dtype=np.int64))
            fresh = new[labels_np == c]
            candidates = np.concatenate([old, fresh])
            if len(candidates) == 0:
                continue
            seen = self.seen.get(c, 0)
            weights = np.concatenate([np.full(len(old), seen / max(len(old), 1)),
                                      np.ones(len(fresh))])
            self.seen[c] = seen + len(fresh)
            kept = candidates if len(candidates) <= self.per_class else \
                select(candidates, self.per_class, weights)
            self.by_class[c] = np.asarray(kept, dtype=np.int64)
        if len(self) > self.budget:  # a selector that returned too many is a bug, not data
            raise InstilError(f"exemplar memory holds {len(self)} > budget {self.budget}")

    def share_of(self, part: np.ndarray) -> float:
        """The exemplars' share of the training set `with_part(part)`."""
        return len(self) / (len(self) + len(part))

    def with_part(self, part: np.ndarray) -> np.ndarray:
        """A phase's training indices: its part D(t), then the exemplars (disjoint, as the
        exemplars come from earlier parts)."""
        return np.concatenate([part, self.indices()])


def random_selector(generator: np.random.Generator) -> Selector:
    """A uniform sample of everything seen, as a reservoir keeps: candidates of equal weight
    form a group standing for round(sum of its weights) samples; how many each group keeps
    is drawn from the multivariate hypergeometric law over those samples, and which of its
    candidates, uniformly. The old exemplars being a uniform sample of the old samples, the
    result is a uniform sample of old and new together."""
    def select(candidates: np.ndarray, m: int, weights: np.ndarray) -> np.ndarray:
        groups = np.unique(weights)
        members = [candidates[weights == w] for w in groups]
        stands_for = [max(len(g), int(round(w * len(g)))) for w, g in zip(groups, members)]
        counts = generator.multivariate_hypergeometric(stands_for, m)
        return np.concatenate([generator.choice(g, size=min(k, len(g)), replace=False)
                               for g, k in zip(members, counts)])
    return select


@torch.no_grad()
def embed(features: nn.Module, data: PhaseData, indices: np.ndarray) -> torch.Tensor:
    """L2-normalised feature vectors of `indices`, in order (eval mode, mode restored)."""
    was_training = features.training
    features.eval()
    out = [F.normalize(features(x).flatten(1), dim=1) for x, _ in data.batches(indices).epoch(0)]
    features.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def herding(vectors: torch.Tensor, m: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """iCaRL's herding: positions of m vectors chosen one by one so that the mean of the
    chosen ones stays as close as possible to the (weighted) mean of all."""
    if weights is None:
        target = vectors.mean(0)
    else:
        weights = weights.to(vectors)
        target = (weights[:, None] * vectors).sum(0) / weights.sum()
    chosen: list[int] = []
    running = torch.zeros_like(target)
    available = torch.ones(len(vectors), dtype=torch.bool, device=vectors.device)
    for k in range(1, min(m, len(vectors)) + 1):
        gap = (target - (running + vectors) / k).norm(dim=1)
        gap[~available] = float("inf")
        i = int(gap.argmin())
        chosen.append(i)
        available[i] = False
        running += vectors[i]
    return torch.tensor(chosen, dtype=torch.long)


def herding_selector(features: nn.Module, data: PhaseData) -> Selector:
    def select(candidates: np.ndarray, m: int, weights: np.ndarray) -> np.ndarray:
        vectors = embed(features, data, candidates)
        positions = herding(vectors, m, torch.from_numpy(weights)).numpy()
        return candidates[positions]
    return select
