"""Data sets by name, each read from its official on-disk format, and the IIL split."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from instil.config import DataConfig
from instil.data.base import DataBundle, Samples
from instil.errors import InstilError

Loader = Callable[[DataConfig], DataBundle]
DATASETS: dict[str, tuple[Loader, str]] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    def add(loader: Loader) -> Loader:
        DATASETS[name] = (loader, description)
        return loader
    return add


def load_dataset(config: DataConfig) -> DataBundle:
    if config.name not in DATASETS:
        raise InstilError(f"unknown data set '{config.name}' (data.name); known: "
                          f"{', '.join(sorted(DATASETS))}")
    loader, _ = DATASETS[config.name]
    return loader(config)


def call_with_options(func: Callable[..., DataBundle], config: DataConfig, *args: Any,
                      **kwargs: Any) -> DataBundle:
    """Calls a loader with data.options, refusing a misspelt option before anything runs."""
    kwargs = {**kwargs, **config.options}
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError as e:
        raise InstilError(f"data.options for '{config.name}': {e}") from None
    return func(*args, **kwargs)


def _root(config: DataConfig) -> Path | None:
    return Path(config.root).expanduser() if config.root else None


def _required_root(config: DataConfig) -> Path:
    if not config.root:
        raise InstilError(f"data set '{config.name}' needs its folder: set data.root "
                          "(e.g. --set data.root=/path/to/data)")
    return Path(config.root).expanduser()


@register_dataset("fmnist", "Fashion-MNIST, IDX files (gz or raw), 28x28 grayscale, 10 classes")
def _fmnist(config: DataConfig) -> DataBundle:
    from instil.data.fmnist import load_fmnist
    return call_with_options(load_fmnist, config, _root(config))


@register_dataset("cifar100", "CIFAR-100, the cifar-100-python pickles, 32x32, 100 classes")
def _cifar100(config: DataConfig) -> DataBundle:
    from instil.data.cifar import load_cifar100
    return call_with_options(load_cifar100, config, _required_root(config))


@register_dataset("imagenet100", "ImageNet-100 (PODNet's 100 wnids) from train/ and val/ trees")
def _imagenet100(config: DataConfig) -> DataBundle:
    from instil.data.folder import load_imagenet100
    return call_with_options(load_imagenet100, config, _required_root(config),
                             image_size=config.image_size)


@register_dataset("imagefolder", "your own images: one folder per class")
def _imagefolder(config: DataConfig) -> DataBundle:
    from instil.data.folder import load_image_folder
    return call_with_options(load_image_folder, config, _required_root(config),
                             image_size=config.image_size)


@register_dataset("synthetic", "random uint8 images of a given shape, for speed benchmarks")
def _synthetic(config: DataConfig) -> DataBundle:
    from instil.data.synthetic import load_synthetic
    return call_with_options(load_synthetic, config)


@register_dataset("toy2d", "synthetic 2-D blobs with a controllable concept drift")
def _toy2d(config: DataConfig) -> DataBundle:
    from instil.data.toy import load_toy2d
    return call_with_options(load_toy2d, config)


__all__ = ["DATASETS", "DataBundle", "Samples", "load_dataset", "register_dataset"]
