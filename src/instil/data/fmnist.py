"""Fashion-MNIST from its original IDX files (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from instil.data.base import DataBundle, Samples
from instil.errors import InstilError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX magic numbers: 0x0000 then type 0x08 (unsigned byte) then the number of dimensions.
_MAGIC = {1: 0x00000801, 3: 0x00000803}
# Computed once over the 60,000 training images.
MEAN, STD = (0.2860,), (0.3530,)


def candidate_dirs(root: Path | None) -> list[Path]:
    """Where the files are looked for, in order: the configured root, $INSTIL_DATA, Debian's."""
    dirs: list[Path] = []
    if root is not None:
        dirs += [Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"]
    if os.environ.get("INSTIL_DATA"):
        env = Path(os.environ["INSTIL_DATA"])
        dirs += [env, env / "fashion-mnist", env / "FashionMNIST" / "raw"]
    dirs.append(SYSTEM_DIR)
    return dirs


def find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def locate(root: Path | None) -> Path:
    for d in candidate_dirs(root):
        if all(find_file(d, stem) for stem in FILES.values()):
            return d
    looked = ", ".join(str(d) for d in candidate_dirs(root))
    raise InstilError(
        f"Fashion-MNIST IDX files not found (looked in {looked}); install them with "
        "'apt-get install -y dataset-fashion-mnist' or set data.root / $INSTIL_DATA to their folder"
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Reads one IDX file; any truncation or header mismatch is a one-line error."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InstilError(f"{path}: cannot read ({e}); download the file again") from None
    if len(raw) < 4 + 4 * ndim:
        raise InstilError(f"{path}: truncated IDX header; download the file again")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        raise InstilError(f"{path}: not a {ndim}-d uint8 IDX file (magic {magic:#010x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    expected = int(np.prod(dims))
    if len(body) != expected:
        raise InstilError(
            f"{path}: truncated or padded IDX file ({len(body)} bytes of data, header says "
            f"{expected}); download the file again"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_split(directory: Path, prefix: str) -> Samples:
    images_path = find_file(directory, FILES[f"{prefix}_images"])
    labels_path = find_file(directory, FILES[f"{prefix}_labels"])
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise InstilError(f"{images_path}: {len(images)} images but {len(labels)} labels in "
                          f"{labels_path}; download the files again")
    if labels.max(initial=0) >= len(CLASSES):
        raise InstilError(f"{labels_path}: label {labels.max()} outside 0..{len(CLASSES) - 1}")
    return Samples(labels=torch.from_numpy(labels.astype(np.int64)),
                   tensor=torch.from_numpy(images.copy()).unsqueeze(1))


def load_fmnist(root: Path | None = None) -> DataBundle:
    directory = locate(root)
    return DataBundle(name="fmnist", classes=list(CLASSES), train=read_split(directory, "train"),
                      test=read_split(directory, "test"), input_shape=(1, 28, 28),
                      mean=MEAN, std=STD)
