"""Batches for training and evaluation, on the device, normalised.

Tensor data sets (Fashion-MNIST, CIFAR, the toy set) are moved to the device once and cut
and augmented there in whole batches. File data sets (ImageNet, image folders) stream
through a DataLoader with workers that decode and resize to uint8; the device normalises.
Either way a batch arrives as (float images normalised, int64 labels) on the device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from instil.config import DataConfig
from instil.data.augment import random_crop, random_flip
from instil.data.base import DataBundle, Samples

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches(Protocol):
    def __len__(self) -> int: ...
    def epoch(self, epoch: int) -> Iterator[Batch]: ...


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    train: bool
    seed: int = 0
    # Data-parallel training: this process takes shard `rank` of `world` of every epoch.
    rank: int = 0
    world: int = 1

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's disjoint, equal share of an epoch's order (all of it alone)."""
        if self.world == 1:
            return order
        n = len(order) // self.world
        return order[self.rank * n:(self.rank + 1) * n]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator per (seed, epoch): an epoch's order and augmentation never depend on how
    many random numbers earlier epochs drew, so a resumed run repeats them exactly."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def epoch_seed(seed: int, epoch: int) -> int:
    # A golden-ratio multiplier spreads consecutive epochs over the whole 63-bit range.
    return (seed ^ ((epoch + 1) * 0x9E3779B97F4A7C15)) & (2**63 - 1)


class Normaliser:
    def __init__(self, bundle: DataBundle, device: torch.device, channels_last: bool) -> None:
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(bundle.mean, device=device).view(shape) if bundle.mean else None
        self.std = torch.tensor(bundle.std, device=device).view(shape) if bundle.std else None
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images are scaled and normalised; floating-point data (features, or images
        a user already prepared for the model) is taken as it is."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
            if self.mean is not None:
                x = x.sub_(self.mean).div_(self.std)
        else:
            x = x.float()
        return in_memory_format(x, torch.channels_last if self.channels_last
                                else torch.contiguous_format)


def in_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """`x` with exactly the strides of `memory_format`.

    Every batch must have the session's format: a convolution follows its input's, so a
    model kept contiguous (engine.memory_format) would otherwise meet oneDNN's faulty
    channels_last kernel. `contiguous()` is not enough: augmentation's crop returns
    channels_last strides, and with one channel those already count as contiguous.
    """
    if x.dim() != 4:
        return x.contiguous()
    canonical = torch.empty(x.shape, device="meta", memory_format=memory_format).stride()
    return x if x.stride() == canonical else x.clone(memory_format=memory_format)


class TensorBatches:
    """Batches of a device-resident tensor data set; augmentation applies to images (N×C×H×W
    batches, uint8 or floating point), never to feature vectors."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, indices: np.ndarray,
                 plan: BatchPlan, augment: DataConfig, normalise: Normaliser) -> None:
        self.data, self.labels = data, labels
        self.indices = torch.as_tensor(indices, dtype=torch.int64, device=data.device)
        self.plan, self.augment, self.normalise = plan, augment, normalise

    def __len__(self) -> int:
        n, bs = len(self.indices), self.plan.batch_size
        if self.plan.train:
            n //= self.plan.world
        # Training drops the last partial batch (a batch of one breaks BatchNorm), but always
        # keeps at least one batch so that a part smaller than a batch is still learnt.
        return max(1, n // bs) if self.plan.train else -(-n // bs)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        g = epoch_generator(self.plan.seed, epoch)
        order = self.indices
        if self.plan.train:
            order = self.plan.shard(order[torch.randperm(len(order), generator=g)
                                          .to(order.device)])
            if self.plan.world > 1:  # each rank its own crops and flips
                g = epoch_generator(self.plan.seed + self.plan.rank, epoch)
        bs = self.plan.batch_size
        for b in range(len(self)):
            idx = order[b * bs:(b + 1) * bs]
            x = self.data[idx]
            if self.plan.train and x.dim() == 4:
                x = random_crop(x, self.augment.crop_padding, g)
                if self.augment.flip:
                    x = random_flip(x, g)
            yield self.normalise(x), self.labels[idx]


class FileImages(Dataset):
    """Decodes, resizes and (for training) augments one image file to a uint8 tensor.

    A training item is (position, augmentation seed): each image's crop and flip follow
    from its own seed, not from a worker's running random state, so that an epoch's
    augmentation is the same whichever worker loads it and whenever the run resumed.
    """

    def __init__(self, paths: list[Path], labels: torch.Tensor, indices: np.ndarray,
                 image_size: int, train: bool, mode: str) -> None:
        from torchvision.transforms import v2

        self.paths, self.labels, self.indices, self.mode = paths, labels, indices, mode
        if train:
            steps = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps = [v2.Resize(int(round(image_size / 0.875)), antialias=True),
                     v2.CenterCrop(image_size)]
        self.transform = v2.Compose([v2.PILToTensor(), *steps])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]) -> Batch:
        from instil.data.folder import read_image

        i, seed = item if isinstance(item, tuple) else (item, None)
        j = int(self.indices[i])
        image = read_image(self.paths[j], self.mode)
        if seed is None:
            return self.transform(image), self.labels[j]
        # In a worker the global generator is the worker's own; in the main process
        # (workers=0) it is the run's, which the augmentation must not disturb.
        in_worker = torch.utils.data.get_worker_info() is not None
        with contextlib.nullcontext() if in_worker else torch.random.fork_rng():
            torch.manual_seed(seed)
            return self.transform(image), self.labels[j]


class ShardSampler(torch.utils.data.Sampler):
    """An epoch's training items: this rank's shard of an order every rank draws alike (so
    the shards are disjoint: DistributedSampler's idea, keyed by our seeds; alone, the whole
    order), each position with its own augmentation seed (each rank its own)."""

    def __init__(self, n: int, plan: BatchPlan) -> None:
        self.n, self.plan, self.epoch = n, plan, 0

    def __len__(self) -> int:
        return self.n // self.plan.world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=epoch_generator(self.plan.seed, self.epoch))
        seeds = torch.randint(2**62, (self.n,), generator=epoch_generator(
            self.plan.seed + 1 + self.plan.rank, self.epoch))
        mine = self.plan.shard(order)
        return iter(zip(mine.tolist(), seeds[:len(mine)].tolist()))


class FileBatches:
    """Streams a file data set through a DataLoader: persistent workers for training,
    pinned memory and non-blocking copies on CUDA."""

    def __init__(self, samples: Samples, indices: np.ndarray, plan: BatchPlan,
                 config: DataConfig, channels: int, device: torch.device,
                 normalise: Normaliser) -> None:
        mode = "L" if channels == 1 else "RGB"
        images = FileImages(samples.paths, samples.labels, indices, config.image_size,
                            plan.train, mode)
        self.plan, self.device, self.normalise = plan, device, normalise
        self.sampler = ShardSampler(len(images), plan) if plan.train else None
        per_rank = len(images) // plan.world if plan.train else len(images)
        self.loader = DataLoader(
            images, batch_size=plan.batch_size, sampler=self.sampler,
            drop_last=plan.train and per_rank > plan.batch_size, num_workers=config.workers,
            pin_memory=device.type == "cuda",
            # Evaluation loaders are iterated once: keeping their workers alive would only
            # hold processes until garbage collection.
            persistent_workers=plan.train and config.workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if self.sampler is not None:
            self.sampler.epoch = epoch
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield self.normalise(x), y.to(self.device, non_blocking=True)


class DataSource:
    """A data set bound to a device: makes the batches of any part of it."""

    def __init__(self, bundle: DataBundle, config: DataConfig, device: torch.device,
                 channels_last: bool) -> None:
        self.bundle, self.config, self.device = bundle, config, device
        images = len(bundle.input_shape) == 3
        self.normalise = Normaliser(bundle, device, channels_last and images)
        self._resident = {name: self._to_device(s) for name, s in
                          (("train", bundle.train), ("test", bundle.test)) if s.resident}

    def _to_device(self, samples: Samples) -> tuple[torch.Tensor, torch.Tensor]:
        return samples.tensor.to(self.device), samples.labels.to(self.device)

    def batches(self, split: str, indices: np.ndarray | None, plan: BatchPlan) -> Batches:
        samples = getattr(self.bundle, split)
        if indices is None:
            indices = np.arange(len(samples))
        if split in self._resident:
            data, labels = self._resident[split]
            return TensorBatches(data, labels, indices, plan, self.config, self.normalise)
        return FileBatches(samples, indices, plan, self.config, self.bundle.input_shape[0],
                           self.device, self.normalise)

    def labels(self, split: str, indices: np.ndarray | None = None) -> torch.Tensor:
        labels = getattr(self.bundle, split).labels
        return labels if indices is None else labels[torch.as_tensor(indices)]
