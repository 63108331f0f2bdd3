"""The in-memory description of a data set that every loader returns."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Samples:
    """One split of a data set (train or test).

    Exactly one of `tensor` and `paths` is set. Small data sets are held whole as a tensor
    (uint8 images N×C×H×W, or float features N×D for the toy set) so that batches are cut
    and augmented on the device; large ones keep file paths and stream through workers.
    `base_eligible`, when set, marks the samples that may go into the base set D(0): a data
    set with a built-in concept drift keeps its drifted samples for the incremental half.
    """

    labels: torch.Tensor
    tensor: torch.Tensor | None = None
    paths: list[Path] | None = None
    base_eligible: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.tensor is None) == (self.paths is None):
            raise ValueError("Samples needs exactly one of tensor and paths")
        n = len(self.tensor) if self.tensor is not None else len(self.paths)
        if len(self.labels) != n:
            raise ValueError(f"{n} samples but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def resident(self) -> bool:
        return self.tensor is not None


@dataclass
class DataBundle:
    """A data set as the protocol needs it: train and test samples plus how to read them."""

    name: str
    classes: list[str]
    train: Samples
    test: Samples
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    fingerprint: str = field(default="")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self)


def fingerprint(bundle: DataBundle) -> str:
    """A hash of the training data, so that a saved split is never applied to other data.

    Resident sets hash every byte (a second for Fashion-MNIST); file sets hash their
    relative paths and sizes, which changes whenever files are added, removed or replaced.
    """
    h = hashlib.sha256()
    h.update(bundle.name.encode())
    h.update("\n".join(bundle.classes).encode())
    train = bundle.train
    h.update(train.labels.to(torch.int64).numpy().tobytes())
    if train.tensor is not None:
        h.update(str(tuple(train.tensor.shape)).encode())
        h.update(train.tensor.contiguous().numpy().tobytes())
    else:
        root = Path(os.path.commonpath(train.paths)) if train.paths else Path(".")
        for p in train.paths:
            h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]

