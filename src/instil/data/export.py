"""Writing a data set's images to class folders (PNG), the input of `instil promote`.

The folders are an image folder as `instil promote --new-data` and the `imagefolder` loader
read it: DIR/<class>/<split>-<index>.png, with <index> the image's position in its split,
so that a file can be traced back to the data set it came from.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instil.data.base import DataBundle
from instil.errors import InstilError

SPLITS = ("train", "test")


def folder_name(class_name: str) -> str:
    """A class's folder: its name with path separators written as '_' (Fashion-MNIST's
    'T-shirt/top' is the folder 'T-shirt_top'); promote matches folders the same way."""
    return class_name.replace("/", "_").replace("\\", "_")


def class_folders(classes: list[str]) -> list[str]:
    """The folder of every class, refusing names that would share a folder or be hidden."""
    names = [folder_name(c) for c in classes]
    clash = [c for c, n in zip(classes, names) if names.count(n) > 1 or n.startswith(".")]
    if clash:
        raise InstilError(f"class names {clash[:3]} cannot each have their own visible folder "
                          "(a '/' is written as '_', and names starting with '.' are hidden)")
    return names


def pick(n: int, count: int, seed: int) -> np.ndarray:
    """`count` of `n` indices drawn at random by `seed`, in increasing order."""
    if not 0 < count <= n:
        raise InstilError(f"--count {count}: choose between 1 and {n}, the images of the split")
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def to_pil(image: torch.Tensor) -> Image.Image:
    """A uint8 image C×H×W (one channel or three) as a PIL image."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 image of 1 or 3 channels, got {tuple(image.shape)}")
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def write_class_folders(out: Path, bundle: DataBundle, split: str, count: int,
                        seed: int = 0) -> Counter[str]:
    """Writes `count` random images of `split` (train or test) of a tensor data set as PNGs
    under out/<class>/; refuses a non-empty `out`, so that sets never mix by accident.
    Returns the number of images written per class."""
    if split not in SPLITS:
        raise InstilError(f"--split {split}: choose train or test")
    samples = getattr(bundle, split)
    if samples.tensor is None or samples.tensor.ndim != 4:
        raise InstilError(f"{bundle.name}: its images are files already; use them as they are")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InstilError(f"{out}: exists and is not an empty folder; choose another --out")
    folders = class_folders(bundle.classes)
    written: Counter[str] = Counter()
    for index in pick(len(samples), count, seed).tolist():
        label = int(samples.labels[index])
        folder = out / folders[label]
        folder.mkdir(parents=True, exist_ok=True)
        to_pil(samples.tensor[index]).save(folder / f"{split}-{index:05d}.png", format="PNG")
        written[bundle.classes[label]] += 1
    return written
