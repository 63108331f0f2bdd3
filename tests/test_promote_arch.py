"""`instil promote --arch NAME`: a state dict of any torchvision classifier, promoted from
class folders, written as a checkpoint that reloads and promotes again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from instil.checkpoint import build_model, from_torchvision, load_checkpoint
from instil.cli import main
from instil.errors import InstilError

QUICK = ["--device", "cpu", "--no-progress", "--epochs", "2", "--batch-size", "8",
         "--set", "method_options.dbd.freeze_epochs=1", "--min-gain=-100", "--max-nfr=100"]


def write_rgb_folders(root: Path, per_class: int, size: int = 32) -> Path:
    """Noisy RGB images of two classes, `cat` brighter in red and `dog` in green."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            pixels[..., k] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def state_dict_file(tmp_path: Path, arch: str, **kwargs: object) -> tuple[Path, Path]:
    torch.manual_seed(0)
    path = tmp_path / f"{arch}.pt"
    torch.save(torchvision.models.get_model(arch, weights=None, num_classes=2,
                                            **kwargs).state_dict(), path)
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    return path, names


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_mobilenet_state_dict_promotes_reloads_and_promotes_again(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, names = state_dict_file(tmp_path, "mobilenet_v3_small")
    new = write_rgb_folders(tmp_path / "new", 8)
    holdout = write_rgb_folders(tmp_path / "holdout", 3)
    first = tmp_path / "promoted.pt"
    assert main(["promote", "--model", str(path), "--arch", "mobilenet_v3_small", "--classes",
                 str(names), "--image-size", "32", "--new-data", str(new), "--holdout",
                 str(holdout), "--out", str(first), *QUICK]) == 0, capsys.readouterr().err
    ckpt = load_checkpoint(first)
    assert (ckpt.model, ckpt.model_options) == ("torchvision", {"arch": "mobilenet_v3_small"})
    assert ckpt.classes == ["cat", "dog"] and ckpt.input_shape == (3, 32, 32)
    assert ckpt.history[-1]["train"]["crop_padding"] == 4  # RGB default: no config
    # The weights are torchvision's own: the user's model class takes them back.
    theirs = torchvision.models.mobilenet_v3_small(num_classes=2)
    theirs.load_state_dict(ckpt.state)
    ours = build_model(ckpt, first).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs.eval()(x))
    assert not torch.equal(ckpt.state["classifier.3.weight"],
                           torch.load(path, weights_only=True)["classifier.3.weight"])
    # Promoted again from the checkpoint alone: it records what it is.
    second = tmp_path / "again.pt"
    assert main(["promote", "--model", str(first), "--new-data", str(new), "--holdout",
                 str(holdout), "--out", str(second), *QUICK]) == 0, capsys.readouterr().err
    again = load_checkpoint(second)
    assert again.model_options == {"arch": "mobilenet_v3_small"} and len(again.history) == 2
    assert again.history[-1]["from"] == str(first)


def test_an_unknown_arch_is_refused_with_the_list(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    path, names = state_dict_file(tmp_path, "mobilenet_v3_small")
    new = write_rgb_folders(tmp_path / "new", 2)
    code = main(["promote", "--model", str(path), "--arch", "mobilenet_v9", "--classes",
                 str(names), "--new-data", str(new), "--out", str(tmp_path / "p.pt")])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--arch mobilenet_v9: not a torchvision classification model; known:" in line
    assert all(name in line for name in torchvision.models.list_models(
        module=torchvision.models))


def test_a_state_dict_of_another_classifier_is_refused(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    path, names = state_dict_file(tmp_path, "mobilenet_v3_small")
    new = write_rgb_folders(tmp_path / "new", 2)
    code = main(["promote", "--model", str(path), "--arch", "mobilenet_v3_large", "--classes",
                 str(names), "--new-data", str(new), "--out", str(tmp_path / "p.pt")])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not those of a mobilenet_v3_large with 2 classes" in line


def test_auxiliary_heads_are_left_out(tmp_path: Path) -> None:
    """GoogLeNet trained with its auxiliary classifiers: only the deployed part is read."""
    path, names = state_dict_file(tmp_path, "googlenet", aux_logits=True, init_weights=True)
    assert any(k.startswith("aux1.") for k in torch.load(path, weights_only=True))
    ckpt = from_torchvision(path, "googlenet", ["cat", "dog"], image_size=64)
    assert not any(k.startswith(("aux1.", "aux2.")) for k in ckpt.state)
    model = build_model(ckpt, path).train()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2)  # logits, even in train mode


def test_unknown_arch_is_refused_before_the_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(InstilError, match="not a torchvision classification model"):
        from_torchvision(tmp_path / "missing.pt", "resnet19", ["a", "b"])
