"""Writes a `cifar-100-python` folder in the official format (Python 2 pickles, protocol 2,
`data` as N×3072 uint8 rows, `fine_labels`, `meta`'s `fine_label_names`) with random
images, for timing the CIFAR-100 protocol on a machine without the real files. Its
accuracies mean nothing; its speed is CIFAR-100's.
    python bench/cifar100-folder.py OUT [--train 50000] [--test 10000]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np


def split(rng: np.random.Generator, n: int) -> dict[str, object]:
    # Every class equally often, as in the real set (500 / 100 images per class).
    labels = np.tile(np.arange(100), n // 100 + 1)[:n]
    rng.shuffle(labels)
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=50000)
    parser.add_argument("--test", type=int, default=10000)
    args = parser.parse_args()
    folder = args.out / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    contents = {"train": split(rng, args.train), "test": split(rng, args.test),
                "meta": {"fine_label_names": [f"class{i:03d}" for i in range(100)],
                         "coarse_label_names": [f"super{i:02d}" for i in range(20)]}}
    for name, content in contents.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    print(f"wrote {folder} ({args.train} + {args.test} random images)")


if __name__ == "__main__":
    main()
