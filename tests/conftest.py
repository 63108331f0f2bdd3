"""Shared fixtures: tiny data sets written in their real on-disk formats, and tiny configs."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as Fashion-MNIST ships it: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fmnist(root: Path, n_train: int = 240, n_test: int = 120, gz: bool = True,
                 seed: int = 0) -> Path:
    """Writes a tiny Fashion-MNIST look-alike: class k is a bright bar at row 2k, plus noise,
    so that a small network can learn it within a few epochs."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4: 2 * k + 7, 4:24] = 250
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    return write_fmnist(tmp_path / "fmnist")


TOY_SETS = [
    "data.name=toy2d",
    "methods=[finetune, joint]",
    "data.options={n_train: 600, n_test: 300}",
    "model.name=mlp",
    "device=cpu",
    "n_phases=3",
    "order_seeds=[0, 1]",
    "base.epochs=3",
    "base.batch_size=64",
    "phase.epochs=2",
    "phase.batch_size=64",
    "eval_batch_size=256",
]


@pytest.fixture
def toy_args(tmp_path: Path) -> list[str]:
    """CLI arguments of a whole toy protocol that runs in about a second."""
    args = []
    for item in TOY_SETS + [f"cache_dir={tmp_path / 'cache'}"]:
        args += ["--set", item]
    return args


def write_image_folder(root: Path, n_train: int, n_val: int, noise: int, lift: int) -> Path:
    """PNG class folders `root/{train,val}/{red,green}`: noisy 20x20 images whose class
    channel is lifted by `lift`, so that the classes can be learnt."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, cls in enumerate(("red", "green")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, noise, (20, 20, 3), dtype=np.uint8)
                pixels[..., k] += lift
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def weights_hash(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer: equal exactly when the weights are."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
