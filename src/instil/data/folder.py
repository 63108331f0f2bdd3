"""Image data sets kept on disk as one folder per class: the user's own images and ImageNet-100.

Only file paths and labels are held in memory; images are decoded by `read_image` in the data
loader's workers. Every failure to find or read an image is an `InstilError` naming the file.
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instil.data.base import DataBundle, Samples
from instil.errors import InstilError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TEST_FOLDERS = ("val", "test")

# What PIL raises for a file it cannot decode: UnidentifiedImageError and truncated data are
# OSErrors, a broken PNG chunk is a SyntaxError, and some plug-ins raise ValueError.
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def scan_class_folders(
    root: Path, classes: list[str] | None = None
) -> tuple[list[str], list[Path], list[int]]:
    """Find the images under `root`, one sub-folder per class, in a reproducible order.

    Without `classes`, every sub-folder is a class and classes are sorted by name (as in
    torchvision's ImageFolder); with `classes`, only those folders are read, and class i is
    `classes[i]`. Returns the classes, the image paths and each path's class index.
    """
    root = Path(root)
    if not root.is_dir():
        raise InstilError(
            f"{root}: image folder not found; pass a folder with one sub-folder of images per class"
        )
    found = _class_folder_names(root)
    if classes is None:
        classes = found
    if not classes:
        raise InstilError(f"{root}: no class folders; put each class's images in a sub-folder")
    missing = sorted(set(classes) - set(found), key=classes.index)
    if missing:
        raise InstilError(
            f"{root}: {len(missing)} of {len(classes)} class folders missing "
            f"({_preview(missing)}); each class needs a sub-folder of images"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        images = _images_in(root / name)
        paths += images
        labels += [label] * len(images)
    return list(classes), paths, labels


def read_image(path: Path, mode: str) -> Image.Image:
    """Decode the whole image at `path`, converted to `mode` ("RGB" or "L")."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    try:
        with Image.open(path) as image:
            # convert() decodes every pixel, so a truncated file fails here, not in a transform.
            return image.convert(mode)
    except _UNREADABLE as e:
        raise _unreadable(path, e) from e


def check_images(paths: list[Path]) -> None:
    """Check each file's header, so that a bad image fails before training rather than hours in.

    `verify()` reads the structure without decoding pixels: it is fast but can miss some
    damage (a JPEG cut short), which `read_image` still reports when the file is used.
    """
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except _UNREADABLE as e:
            raise _unreadable(path, e) from e


def load_image_folder(
    root: Path,
    image_size: int = 224,
    test_root: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    verify: bool = True,
) -> DataBundle:
    """Load the user's own images: `root` holds one folder per class.

    The test set is, in order of precedence: `root/train` with `root/val` (or `root/test`),
    the folder `test_root`, or a seeded random `test_fraction` of each class held out.
    """
    root = Path(root)
    split = _split_folders(root, test_root)
    if split is None:
        classes, paths, labels = scan_class_folders(root)
        _check_class_count(root, classes)
        train, test = _holdout(paths, labels, test_fraction, seed)
    else:
        train_dir, test_dir = split
        classes, paths, labels = scan_class_folders(train_dir)
        _check_class_count(train_dir, classes)
        test_classes, test_paths, test_labels = scan_class_folders(test_dir)
        _check_same_classes(train_dir, classes, test_dir, test_classes)
        train = _samples(paths, labels)
        test = _samples(test_paths, test_labels)
    if verify:
        check_images(train.paths + test.paths)
    return _rgb_bundle("imagefolder", classes, train, test, image_size)


def imagenet100_wnids(wnids_file: Path | None = None) -> list[str]:
    """The ImageNet-100 classes, one wnid per line; by default the list shipped with instil."""
    source = wnids_file or "instil's imagenet100_wnids.txt"
    if wnids_file is None:
        text = resources.files("instil.data").joinpath("imagenet100_wnids.txt").read_text()
    else:
        try:
            text = Path(wnids_file).read_text()
        except OSError as e:
            raise InstilError(f"{wnids_file}: cannot read the wnid list ({e})") from e
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    repeated = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if not wnids or repeated:
        raise InstilError(
            f"{source}: a wnid list needs one distinct wnid per line "
            f"(repeated: {_preview(repeated)})"
        )
    return wnids


def load_imagenet100(
    root: Path, image_size: int = 224, wnids_file: Path | None = None
) -> DataBundle:
    """Load ImageNet-100 from `root/train` and `root/val`, each with one folder per wnid.

    Class n is line n of the wnid list; folders of other wnids are ignored, so a full
    ImageNet tree can be used as is. Images are not checked up front (130 000 files).
    """
    root = Path(root)
    wnids = imagenet100_wnids(wnids_file)
    splits = []
    for name in ("train", "val"):
        folder = root / name
        if not folder.is_dir():
            raise InstilError(
                f"{folder}: not found; ImageNet-100 needs {root}/train and {root}/val, each "
                "with one folder of images per wnid (val sorted into wnid folders like train)"
            )
        _, paths, labels = scan_class_folders(folder, wnids)
        splits.append(_samples(paths, labels))
    train, test = splits
    return _rgb_bundle("imagenet100", wnids, train, test, image_size)


def _rgb_bundle(name: str, classes: list[str], train: Samples, test: Samples,
                image_size: int) -> DataBundle:
    """File-based RGB images, resized to image_size and normalised with ImageNet statistics."""
    return DataBundle(name=name, classes=classes, train=train, test=test,
                      input_shape=(3, image_size, image_size), mean=IMAGENET_MEAN,
                      std=IMAGENET_STD)


def _unreadable(path: Path, error: Exception) -> InstilError:
    reason = str(error) or type(error).__name__
    return InstilError(f"{path}: unreadable image ({reason}); remove or replace it")


def _class_folder_names(root: Path) -> list[str]:
    # Hidden folders are tool droppings (.ipynb_checkpoints, .git), never classes.
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    # macOS leaves `._name.jpg` resource forks beside copied images; they are not images.
    images = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not images:
        raise InstilError(
            f"{folder}: no images (files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "add images or remove the folder"
        )
    return images


def _split_folders(root: Path, test_root: Path | None) -> tuple[Path, Path] | None:
    tests = [root / name for name in _TEST_FOLDERS if (root / name).is_dir()]
    if (root / "train").is_dir() and tests:
        if test_root is not None:
            raise InstilError(
                f"{root}: has train/ and {tests[0].name}/ sub-folders and test_root "
                f"{test_root} is also given; use one or the other"
            )
        return root / "train", tests[0]
    if test_root is not None:
        return root, Path(test_root)
    return None


def _check_class_count(root: Path, classes: list[str]) -> None:
    # A lone folder is usually a layout mistake, e.g. root/train without root/val.
    if len(classes) < 2:
        raise InstilError(
            f"{root}: found one class folder ({classes[0]}); a data set needs at least two "
            "classes, each in its own sub-folder"
        )


def _check_same_classes(
    train_root: Path, classes: list[str], test_root: Path, test_classes: list[str]
) -> None:
    only_train = sorted(set(classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(classes))
    if only_train or only_test:
        raise InstilError(
            f"{test_root}: test classes differ from those of {train_root} (missing from test: "
            f"{_preview(only_train)}; not in train: {_preview(only_test)}); "
            "give both the same class folders"
        )


def _holdout(
    paths: list[Path], labels: list[int], test_fraction: float, seed: int
) -> tuple[Samples, Samples]:
    """Hold out `test_fraction` of every class at random.

    Per class, so that no class is left out of either side by chance: a class of two or more
    images gives at least one to test and keeps at least one to train on.
    """
    if not 0 < test_fraction < 1:
        raise InstilError(f"test_fraction must be between 0 and 1 (exclusive), not {test_fraction}")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    test_mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(label_array):
        members = np.flatnonzero(label_array == label)
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test_mask[rng.choice(members, size=n_test, replace=False)] = True
    if not test_mask.any():
        raise InstilError(
            f"{paths[0].parent.parent}: every class has a single image, so none can be held "
            "out for testing; add images or pass a test folder"
        )
    return _subset(paths, labels, ~test_mask), _subset(paths, labels, test_mask)


def _subset(paths: list[Path], labels: list[int], mask: np.ndarray) -> Samples:
    keep = np.flatnonzero(mask)
    return _samples([paths[i] for i in keep], [labels[i] for i in keep])


def _samples(paths: list[Path], labels: list[int]) -> Samples:
    return Samples(labels=torch.tensor(labels, dtype=torch.int64), paths=paths)


def _preview(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
