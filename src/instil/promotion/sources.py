"""The data a promotion learns from or scores on, from whatever the caller holds, checked
against the model before any training.

Accepted: a torch Dataset of (image tensor, int label), a DataLoader of (images, labels)
batches, a pair (images, labels) of tensors, or a folder in the CLI's layout (`folders`).
Tensors are what the model takes, as they are (floating point, already normalised); they are
read once, into one tensor held in memory (and on the device while training). The class
count is the model's output width, found by running it on two samples, which also shows that
it takes their shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from instil.errors import DataError, ModelError
from instil.promotion.folders import ImageFormat, folder_classes, load_folder
from instil.promotion.labelled import Labelled

# What `instil.promote` and `Learner.learn` accept as data.
Data: TypeAlias = Dataset | DataLoader | tuple[torch.Tensor, torch.Tensor] | str | os.PathLike
ACCEPTED = ("a Dataset of (image tensor, int label), a DataLoader of such batches, a pair "
            "(images, labels) of tensors, or a folder of class sub-folders")


def is_folder(data: Any) -> bool:
    return isinstance(data, (str, os.PathLike))


def is_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))


def first_folder(sources: Iterable[Any]) -> Path | None:
    return next((Path(data) for data in sources if is_folder(data)), None)


def known_classes(classes: Sequence[str] | None, sources: Iterable[Any]
                  ) -> tuple[list[str] | None, str]:
    """The class names to read folders with, and where they came from (for errors): the
    caller's `classes`, else the first folder's sorted sub-folder names (torchvision
    ImageFolder's order), else None (the data has labels only)."""
    if classes is not None:
        return list(classes), "classes"
    folder = first_folder(sources)
    if folder is None:
        return None, "the data"
    return folder_classes(folder), f"{folder} (its class folders)"


def read_data(data: Any, what: str, classes: list[str] | None,
              image_format: ImageFormat) -> Labelled:
    """`data` as one labelled tensor; `what` names it in errors ("new_data", "holdout")."""
    if is_folder(data):
        if classes is None:
            raise DataError(f"{what}: a folder needs the class names (classes=...)")
        return load_folder(Path(data), classes, image_format)
    if isinstance(data, DataLoader):
        return from_batches(data, what)
    if is_pair(data):
        return from_pair(data[0], data[1], what)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return from_items((data[i] for i in range(len(data))), what)
    if isinstance(data, Iterable):  # an IterableDataset
        return from_items(data, what)
    raise DataError(f"{what}: a {type(data).__name__} is not data promote reads; give "
                    f"{ACCEPTED}")


def check_images(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what}: a {type(x).__name__}, not an image tensor; give {ACCEPTED} "
                        "(e.g. add torchvision's v2.ToImage() and v2.ToDtype(torch.float32, "
                        "scale=True) to the Dataset's transform)")
    if not x.is_floating_point():
        raise DataError(f"{what}: a tensor of {x.dtype}; give images as the model takes them, "
                        "floating point and normalised (e.g. v2.ToDtype(torch.float32, "
                        "scale=True) and your v2.Normalize)")
    return x.detach().cpu()


def check_label(y: Any, what: str) -> int:
    """An int label: a Python or numpy int, or an integer tensor of one element."""
    if isinstance(y, torch.Tensor) and y.numel() == 1 and not y.is_floating_point() \
            and y.dtype != torch.bool:
        return int(y)
    if isinstance(y, (int, np.integer)) and not isinstance(y, (bool, np.bool_)):
        return int(y)
    raise DataError(f"{what}: the label is {y!r} ({type(y).__name__}); labels must be ints, "
                    "the index of the class in the model's outputs")


def from_items(items: Iterable[Any], what: str) -> Labelled:
    """A Dataset's (image, label) items, each checked, stacked into one tensor."""
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for i, item in enumerate(items):
        where = f"{what}[{i}]"
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"{where}: a {type(item).__name__}, not an (image, label) pair; "
                            f"give {ACCEPTED}")
        x = check_images(item[0], where)
        if images and x.shape != images[0].shape:
            raise DataError(f"{where}: an image of shape {tuple(x.shape)}, {what}[0] has "
                            f"{tuple(images[0].shape)}; images must share one shape (resize "
                            "them in the Dataset's transform)")
        images.append(x)
        labels.append(check_label(item[1], where))
    if not images:
        raise DataError(f"{what} is empty: no samples to learn from or score")
    return Labelled(torch.stack(images), torch.tensor(labels, dtype=torch.int64),
                    [f"{what}[{i}]" for i in range(len(images))], describe(what, "Dataset"))


def from_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> Labelled:
    x = check_images(x, f"{what}[0] (the images)")
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{what}[1]: labels must be a 1-d integer tensor, got {y.dtype} of "
                        f"shape {tuple(y.shape)}")
    if x.dim() < 2 or len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images (shape {tuple(x.shape)}) and {len(y)} "
                        "labels; give one label per image, images stacked on the first axis")
    if len(y) == 0:
        raise DataError(f"{what} is empty: no samples to learn from or score")
    return Labelled(x, y.detach().cpu().to(torch.int64), [f"{what}[{i}]" for i in range(len(y))],
                    describe(what, "tensors"))


def from_batches(loader: DataLoader, what: str) -> Labelled:
    """A DataLoader's (images, labels) batches, read once (a shuffling or augmenting loader
    is read in the order and form of that one pass)."""
    pairs = []
    for b, batch in enumerate(loader):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise DataError(f"{what}: batch {b} is a {type(batch).__name__}, not (images, "
                            "labels)")
        labels = batch[1] if isinstance(batch[1], torch.Tensor) else torch.as_tensor(batch[1])
        pairs.append(from_pair(batch[0], labels, f"{what} batch {b}"))
    if not pairs:
        raise DataError(f"{what} is empty: no samples to learn from or score")
    shapes = {p.sample_shape for p in pairs}
    if len(shapes) > 1:
        raise DataError(f"{what}: batches of images of shapes {sorted(shapes)}; images must "
                        "share one shape")
    n = sum(len(p) for p in pairs)
    return Labelled(torch.cat([p.tensor for p in pairs]), torch.cat([p.labels for p in pairs]),
                    [f"{what}[{i}]" for i in range(n)], describe(what, "DataLoader"))


def describe(what: str, kind: str) -> str:
    return f"{what} ({kind})"


def model_input(x: torch.Tensor, image_format: ImageFormat) -> torch.Tensor:
    """Samples as the model takes them: uint8 images scaled and normalised, as the engine's
    batches are (data.loaders.Normaliser); floating-point ones as they are."""
    if x.dtype != torch.uint8:
        return x.float()
    shape = (1, -1, 1, 1)
    mean = torch.tensor(image_format.mean).view(shape)
    std = torch.tensor(image_format.std).view(shape)
    return (x.float() / 255 - mean) / std


@torch.no_grad()
def output_width(model: nn.Module, data: Labelled, image_format: ImageFormat) -> int:
    """The model's number of outputs, from running it (in eval mode, mode restored) on two
    samples of `data`; a model that cannot take them, or answers other than N×K logits, is
    refused with its own first line."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ModelError(f"a {type(model).__name__} without parameters: nothing to train")
    x = model_input(data.tensor[:2], image_format).to(parameter.device)
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    except Exception as e:  # whatever the user's module raises, as one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the model cannot take {data.source}'s samples of shape "
                         f"{data.sample_shape} ({type(e).__name__}: {first}); give images of "
                         "the channels and size it was trained on") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(x):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model must map a batch of {len(x)} samples to logits of shape "
                         f"({len(x)}, classes); it returned {got}")
    return int(out.shape[1])


def class_names(classes: list[str] | None, width: int, where: str) -> list[str]:
    """The names of the model's `width` outputs: `classes` (which must number `width`), or
    "0", "1", ... when the data has none."""
    if classes is None:
        return [str(k) for k in range(width)]
    if len(classes) != width:
        raise ModelError(f"the model has {width} outputs but {where} names {len(classes)} "
                         "classes; give classes=[...] with one name per output, in output order")
    return list(classes)


def check_labels(data: Labelled, width: int) -> None:
    bad = torch.nonzero((data.labels < 0) | (data.labels >= width)).flatten()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{data.names[i]}: label {int(data.labels[i])} is out of range: the "
                        f"model has {width} outputs, so labels lie in 0..{width - 1} "
                        f"({len(bad)} such labels in {data.source})")


def check_same_shape(new: Labelled, holdout: Labelled) -> None:
    if new.sample_shape != holdout.sample_shape:
        raise DataError(f"{holdout.source}'s samples have shape {holdout.sample_shape}, "
                        f"{new.source}'s {new.sample_shape}; both must be what the model takes")
