"""CIFAR-100 loading from tiny `cifar-100-python` folders written in the official format."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from instil.data.cifar import load_cifar100
from instil.errors import InstilError

N_TRAIN, N_TEST = 5, 3
TRAIN_LABELS = [3, 0, 99, 42, 7]
TEST_LABELS = [99, 1, 3]
FINE_NAMES = [f"fine{i:02d}" for i in range(100)]


class _Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote the official files.

    All text is a byte string (SHORT_BINSTRING/BINSTRING opcodes), which Python 3 can only
    load as bytes, and numpy is named by its old module `numpy.core`.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def split_dict(data: np.ndarray, labels: list[int], name: str) -> dict[str, Any]:
    return {
        "data": data,
        "fine_labels": labels,
        "coarse_labels": [label // 5 for label in labels],
        "filenames": [f"img_{i}.png" for i in range(len(labels))],
        "batch_label": f"{name} batch 1 of 1",
    }


def meta_dict() -> dict[str, Any]:
    return {"fine_label_names": FINE_NAMES, "coarse_label_names": [f"c{i}" for i in range(20)]}


def write_cifar(
    parent: Path,
    train: dict[str, Any] | None = None,
    dump=py2_pickle,
    skip: tuple[str, ...] = (),
) -> Path:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    contents = {
        "train": train or split_dict(images(N_TRAIN, 0), TRAIN_LABELS, "training"),
        "test": split_dict(images(N_TEST, 1), TEST_LABELS, "testing"),
        "meta": meta_dict(),
    }
    for name, content in contents.items():
        if name not in skip:
            (folder / name).write_bytes(dump(content))
    return folder


def test_the_fixture_is_written_like_the_official_files(tmp_path: Path) -> None:
    blob = (write_cifar(tmp_path) / "train").read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(blob)}
    assert blob.startswith(b"\x80\x02}")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    assert "SHORT_BINSTRING" in ops
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}


def test_loads_python2_files_with_bytes_keys(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    bundle = load_cifar100(tmp_path)
    assert bundle.name == "cifar100"
    assert bundle.classes == FINE_NAMES
    assert bundle.input_shape == (3, 32, 32)
    assert bundle.mean == pytest.approx((0.5071, 0.4865, 0.4409))
    assert bundle.std == pytest.approx((0.2673, 0.2564, 0.2762))
    assert bundle.train.tensor.shape == (N_TRAIN, 3, 32, 32)
    assert bundle.test.tensor.shape == (N_TEST, 3, 32, 32)
    assert bundle.train.tensor.dtype == torch.uint8
    assert bundle.train.labels.dtype == torch.int64
    assert bundle.train.labels.tolist() == TRAIN_LABELS
    assert bundle.test.labels.tolist() == TEST_LABELS


def test_pixels_keep_their_channel_row_and_column(tmp_path: Path) -> None:
    data = np.zeros((N_TRAIN, 3072), dtype=np.uint8)
    channel, row, column = 1, 5, 7
    data[2, channel * 1024 + row * 32 + column] = 200
    data[4, 2 * 1024 + 31 * 32 + 0] = 17
    write_cifar(tmp_path, train=split_dict(data, TRAIN_LABELS, "training"))
    images_ = load_cifar100(tmp_path).train.tensor
    assert images_[2, channel, row, column] == 200
    assert images_[4, 2, 31, 0] == 17
    assert int(images_.sum()) == 217


def test_random_pixels_are_the_three_planes_of_each_row(tmp_path: Path) -> None:
    data = images(N_TRAIN, 5)
    write_cifar(tmp_path, train=split_dict(data, TRAIN_LABELS, "training"))
    loaded = load_cifar100(tmp_path).train.tensor.numpy()
    for c in range(3):
        plane = data[:, c * 1024 : (c + 1) * 1024].reshape(N_TRAIN, 32, 32)
        np.testing.assert_array_equal(loaded[:, c], plane)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_files_with_str_keys_load_the_same(tmp_path: Path, protocol: int) -> None:
    expected = load_cifar100(write_cifar(tmp_path / "py2"))

    def dump(content: dict[str, Any]) -> bytes:
        return pickle.dumps(content, protocol=protocol)

    bundle = load_cifar100(write_cifar(tmp_path / "py3", dump=dump))
    assert bundle.classes == expected.classes
    assert torch.equal(bundle.train.tensor, expected.train.tensor)
    assert torch.equal(bundle.test.labels, expected.test.labels)
    assert bundle.fingerprint == expected.fingerprint


def test_root_may_be_the_folder_itself(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path)
    assert load_cifar100(folder).train.labels.tolist() == TRAIN_LABELS


def test_missing_folder_says_where_and_where_to_download(tmp_path: Path) -> None:
    with pytest.raises(InstilError) as error:
        load_cifar100(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert "\n" not in message


def test_missing_meta_names_the_file(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path, skip=("meta",))
    with pytest.raises(InstilError, match="meta: missing"):
        load_cifar100(tmp_path)
    assert not (folder / "meta").exists()


def test_truncated_train_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    train = write_cifar(tmp_path) / "train"
    blob = train.read_bytes()
    train.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InstilError, match="truncated or corrupt") as error:
        load_cifar100(tmp_path)
    assert str(train) in str(error.value)


def test_label_outside_range_names_value_and_index(tmp_path: Path) -> None:
    labels = [3, 0, 99, 107, 7]
    write_cifar(tmp_path, train=split_dict(images(N_TRAIN, 0), labels, "training"))
    with pytest.raises(InstilError, match="label 107 at index 3") as error:
        load_cifar100(tmp_path)
    assert "train" in str(error.value)


@pytest.mark.parametrize(
    ("data", "labels", "expected"),
    [
        (np.zeros((N_TRAIN, 3000), dtype=np.uint8), TRAIN_LABELS, "3000 values instead of 3072"),
        (np.zeros((N_TRAIN, 3072), dtype=np.uint8), TRAIN_LABELS[:4], "5 images but 4"),
        (np.zeros(N_TRAIN * 3072, dtype=np.uint8), TRAIN_LABELS, "uint8 array N×3072"),
        (np.zeros((N_TRAIN, 3072), dtype=np.float32), TRAIN_LABELS, "float32"),
    ],
)
def test_malformed_data_is_refused(
    tmp_path: Path, data: np.ndarray, labels: list[int], expected: str
) -> None:
    write_cifar(tmp_path, train=split_dict(data, labels, "training"))
    with pytest.raises(InstilError, match=expected) as error:
        load_cifar100(tmp_path)
    assert str(tmp_path / "cifar-100-python" / "train") in str(error.value)


class _RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (self.command,)


def test_pickle_with_a_foreign_global_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = write_cifar(tmp_path)
    payload = {"fine_label_names": _RunsACommand(f"touch {marker}")}
    (folder / "meta").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(InstilError, match="refusing to load") as error:
        load_cifar100(tmp_path)
    assert str(folder / "meta") in str(error.value)
    assert "system" in str(error.value)
    assert not marker.exists()
