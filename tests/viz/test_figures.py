from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from instil.cli import main
from instil.viz.dust import one_per_class
from tests.conftest import write_fmnist


def test_boundary_figure(tmp_path: Path, toy_args: list[str],
                         capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "fig" / "boundary.png"
    assert main(["boundary", "configs/toy2d.yaml", "--out", str(png), "--no-progress",
                 *toy_args, "--set", "method_options.dbd={freeze_epochs: 1}",
                 "--set", "methods=[finetune, dbd, joint]"]) == 0
    printed = capsys.readouterr().out
    for panel in ("M(0)", "finetune", "dbd", "joint"):
        assert f"{panel}: " in printed
    with Image.open(png) as image:
        assert image.width > 3 * image.height  # four panels side by side


def test_dust_figure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_fmnist(tmp_path / "fm", n_train=200, n_test=100)
    png = tmp_path / "dust.png"
    assert main(["dust", "configs/fmnist-quick.yaml", "--out", str(png), "--no-progress",
                 "--sigmas", "0,1,3", "--images", "4", "--set", f"data.root={root}",
                 "--set", f"cache_dir={tmp_path / 'c'}", "--set", "device=cpu",
                 "--set", "base.epochs=1", "--set", "base.batch_size=32"]) == 0, \
        capsys.readouterr().err
    with Image.open(png) as image:
        assert image.height > image.width  # 4 rows of images, 3 columns of sigma


def test_dust_refuses_the_toy_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dust", "configs/toy2d.yaml", "--out", str(tmp_path / "d.png")]) == 2
    assert "image data set" in capsys.readouterr().err


def test_one_image_per_class() -> None:
    labels = torch.tensor([3, 3, 1, 0, 1, 2, 0])
    idx = one_per_class(labels, 3)
    assert labels[idx].tolist() == [0, 1, 2]
    assert idx.tolist() == [3, 2, 5]
