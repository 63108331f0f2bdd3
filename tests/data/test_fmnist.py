from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from instil.data.fmnist import load_fmnist
from instil.errors import InstilError
from tests.conftest import write_fmnist


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    root = write_fmnist(tmp_path, n_train=50, n_test=20, gz=gz)
    bundle = load_fmnist(root)
    assert bundle.train.tensor.shape == (50, 1, 28, 28)
    assert bundle.train.tensor.dtype == torch.uint8
    assert bundle.test.labels.shape == (20,)
    # The bright bar of class k sits at rows 2k+4..2k+6, as the fixture drew it.
    k = int(bundle.train.labels[0])
    assert bundle.train.tensor[0, 0, 2 * k + 5, 10] == 250
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)


def test_found_through_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fmnist(tmp_path / "fashion-mnist", n_train=20, n_test=10)
    monkeypatch.setenv("INSTIL_DATA", str(tmp_path))
    monkeypatch.setattr("instil.data.fmnist.SYSTEM_DIR", tmp_path / "nowhere")
    assert len(load_fmnist(None).train) == 20


def test_missing_folder_names_where_it_looked(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INSTIL_DATA", raising=False)
    monkeypatch.setattr("instil.data.fmnist.SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(InstilError, match="nowhere.*apt-get install"):
        load_fmnist(tmp_path / "missing")


def test_truncated_idx_is_refused(tmp_path: Path) -> None:
    root = write_fmnist(tmp_path, n_train=30, n_test=10)
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InstilError, match="train-images-idx3-ubyte.gz: truncated"):
        load_fmnist(root)


def test_cut_gzip_stream_is_refused(tmp_path: Path) -> None:
    root = write_fmnist(tmp_path, n_train=30, n_test=10)
    path = root / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InstilError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        load_fmnist(root)
