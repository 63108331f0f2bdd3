"""Class folders of images, read as the model takes them: the CLI's layout, ROOT/<class>/*.

Images are read in the model's channel mode (one channel is grayscale, three RGB), brought
to its input size (shorter side resized, centre cropped; for an image of the right aspect a
plain resize) and decoded once into one uint8 tensor, which the device normalises with the
format's mean and std. That costs N·C·H·W bytes: 1.5 GB for 10,000 RGB images at 224 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from instil.checkpoint import IMAGENET_MEAN, IMAGENET_STD, Checkpoint
from instil.data.export import folder_name
from instil.data.folder import check_images, read_image, scan_class_folders
from instil.errors import DataError, InstilError, ModelError
from instil.promotion.labelled import Labelled


@dataclass(frozen=True)
class ImageFormat:
    """How images in class folders are read for a model: `channels` 1 (grayscale) or 3
    (RGB), `size` (height, width) or one side for square images, and the per-channel `mean`
    and `std` that normalise pixels scaled to [0, 1]. The default is torchvision's ImageNet
    preprocessing: RGB, 224 pixels, ImageNet statistics."""

    channels: int = 3
    size: int | tuple[int, int] = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"ImageFormat(channels={self.channels}): images are read as 1 "
                            "(grayscale) or 3 (RGB) channels")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"ImageFormat: mean {self.mean} and std {self.std} need one value "
                            f"per channel ({self.channels})")
        if min(self.input_shape[1:]) < 1:
            raise DataError(f"ImageFormat(size={self.size}): sizes must be positive")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        height, width = (self.size, self.size) if isinstance(self.size, int) else self.size
        return self.channels, int(height), int(width)

    @classmethod
    def of_checkpoint(cls, ckpt: Checkpoint, where: Path | str) -> ImageFormat:
        """What the instil checkpoint at `where` says its model takes; refuses models that
        do not take images."""
        shape = ckpt.input_shape
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ModelError(f"{where}: a {ckpt.model} with input shape {shape}; promote needs "
                             "an image model (1 or 3 channels)")
        return cls(shape[0], (shape[1], shape[2]), tuple(ckpt.mean), tuple(ckpt.std))


def folder_classes(root: Path) -> list[str]:
    """The class folders under `root`, sorted by name: torchvision ImageFolder's order."""
    try:
        found, _, _ = scan_class_folders(Path(root))
    except InstilError as e:
        raise DataError(str(e)) from None
    return found


def match_folders(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The images under root/<class>/ and their class indices in the model's order. Every
    folder must be a class of the model; classes may lack a folder."""
    try:
        found, paths, labels = scan_class_folders(root)
    except InstilError as e:
        raise DataError(str(e)) from None
    index = {folder_name(c): i for i, c in enumerate(classes)}
    unknown = [name for name in found if name not in index]
    if unknown:
        missing = [c for c in classes if folder_name(c) not in found]
        raise DataError(
            f"{root}: folders that are not classes of the model: "
            f"{', '.join(unknown)}; the model's classes missing from {root}: "
            f"{', '.join(missing) or 'none'} (folders are named by class, '/' written as '_')")
    return paths, [index[found[label]] for label in labels]


def read_images(paths: list[Path], input_shape: tuple[int, ...]) -> torch.Tensor:
    """Decodes `paths` to uint8 N×C×H×W in the model's channel mode and input size."""
    channels, height, width = input_shape
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in paths:
        image = read_image(path, mode)
        if image.size != (width, height):  # PIL sizes are (width, height)
            image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image))
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked.unsqueeze(1) if channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()


def load_folder(root: Path, classes: list[str], image_format: ImageFormat) -> Labelled:
    """Every image of `root`'s class folders, labelled in the order of `classes`."""
    root = Path(root)
    paths, labels = match_folders(root, classes)
    if not paths:
        raise DataError(f"{root}: no images in its class folders")
    try:
        check_images(paths)  # a corrupt file fails here, before any training
        tensor = read_images(paths, image_format.input_shape)
    except InstilError as e:
        raise DataError(str(e)) from None
    return Labelled(tensor, torch.tensor(labels, dtype=torch.int64), [str(p) for p in paths],
                    str(root))
