"""CIFAR-100 from the official `cifar-100-python` folder, held whole as one uint8 tensor.

The user downloads and extracts the archive; instil never fetches data itself. The files are
pickles, so they are read with an unpickler that can only rebuild numpy arrays and plain
containers: a replaced or tampered file is refused instead of running code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instil.data.base import DataBundle, Samples
from instil.errors import InstilError

FOLDER = "cifar-100-python"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
NUM_CLASSES = 100
IMAGE_SHAPE = (3, 32, 32)
ROW_LENGTH = 3 * 32 * 32

# Per-channel statistics of the 50 000 training images, as used throughout the CIFAR-100
# literature; recorded here so that nothing is computed at load time.
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)

# The official files (Python 2, protocol 2) need only numpy's array reconstruction;
# `_codecs.encode` and `_frombuffer` are how Python 3 writes bytes and arrays at protocols 2
# and 5, for users who re-saved the files. numpy 2 renamed `numpy.core` to `numpy._core`.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)

# What a damaged pickle raises while it is read: cut short, garbled opcodes, or arguments
# that numpy's array reconstruction rejects.
_CORRUPT_PICKLE = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers, and refuses every other global."""

    def __init__(self, file: Any, path: Path) -> None:
        # Python 2 byte strings must stay bytes: decoding them would corrupt the pixel data.
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise InstilError(
                f"{self.path}: refusing to load `{module}.{name}`, which a CIFAR-100 file "
                f"never contains; replace the file with the official one from {URL}"
            )
        return super().find_class(module, name)


def load_cifar100(root: Path) -> DataBundle:
    """Load CIFAR-100 from `root`, the `cifar-100-python` folder or the folder holding it."""
    folder = _find_folder(Path(root))
    classes = _read_classes(folder / "meta")
    return DataBundle(
        name="cifar100",
        classes=classes,
        train=_read_split(folder / "train"),
        test=_read_split(folder / "test"),
        input_shape=IMAGE_SHAPE,
        mean=MEAN,
        std=STD,
    )


def _find_folder(root: Path) -> Path:
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    expected = [folder / name for name in ("train", "test", "meta")]
    if not any(p.is_file() for p in expected):
        raise InstilError(
            f"CIFAR-100 not found: looked for {root / FOLDER} and for train/test/meta in "
            f"{root}; download the python version from {URL} and extract it there"
        )
    for path in expected:
        if not path.is_file():
            raise _damaged(path, "missing from the CIFAR-100 folder")
    return folder


def _read_classes(path: Path) -> list[str]:
    names = _required(_load_pickle(path), "fine_label_names", path)
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise _damaged(path, f"expected a list of {NUM_CLASSES} fine_label_names")
    return [_text(n) for n in names]


def _read_split(path: Path) -> Samples:
    content = _load_pickle(path)
    data = _required(content, "data", path)
    labels = np.asarray(_required(content, "fine_labels", path))
    _check_shapes(path, data, labels)
    _check_labels(path, labels)
    # Each row holds three 32×32 planes (R, G, B) one after another, row-major within a plane.
    images = np.require(data.reshape(-1, *IMAGE_SHAPE), requirements=["C", "W"])
    return Samples(
        labels=torch.from_numpy(labels.astype(np.int64)),
        tensor=torch.from_numpy(images),
    )


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            content = _ArrayUnpickler(f, path).load()
    except _CORRUPT_PICKLE as e:
        raise _damaged(path, f"truncated or corrupt pickle ({type(e).__name__}: {e})") from e
    if not isinstance(content, dict):
        raise _damaged(path, f"expected a pickled dict, found {type(content).__name__}")
    return {_text(k): v for k, v in content.items()}


def _required(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise _damaged(path, f"has no `{key}` entry, so it is not a CIFAR-100 file")
    return content[key]


def _check_shapes(path: Path, data: Any, labels: np.ndarray) -> None:
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise _damaged(
            path, f"`data` should be a uint8 array N×{ROW_LENGTH}, found {_describe(data)}"
        )
    if data.shape[1] != ROW_LENGTH:
        raise _damaged(
            path, f"`data` rows hold {data.shape[1]} values instead of {ROW_LENGTH} (3×32×32)"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise _damaged(path, f"{len(data)} images but {labels.size} fine_labels")


def _check_labels(path: Path, labels: np.ndarray) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise _damaged(path, f"fine_labels are {labels.dtype}, not integers")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise _damaged(
            path, f"fine label {int(labels[i])} at index {i} is outside 0..{NUM_CLASSES - 1}"
        )


def _damaged(path: Path, problem: str) -> InstilError:
    return InstilError(f"{path}: {problem}; extract the official archive from {URL} again")


def _describe(data: Any) -> str:
    if isinstance(data, np.ndarray):
        return f"a {data.dtype} array of shape {data.shape}"
    return type(data).__name__


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
