"""Checkpoints: round trip, refusal of code and of other architectures, runs that write them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from instil.checkpoint import (
    build_model,
    from_torchvision,
    load_checkpoint,
    of_model,
    read_class_names,
    save_checkpoint,
)
from instil.cli import main
from instil.errors import InstilError
from instil.models import create_model


def small(classes: int = 3):
    torch.manual_seed(0)
    return create_model("resnet_small", (1, 8, 8), classes, widths=(4, 4, 4))


def checkpoint_of(model, classes: int = 3):
    return of_model(model, "resnet_small", {"widths": [4, 4, 4]}, (1, 8, 8),
                    [f"c{i}" for i in range(classes)], (0.5,), (0.25,),
                    history=[{"phase": 1, "acc_test": 90.0}])


def test_round_trip_gives_the_same_model(tmp_path: Path) -> None:
    model = small().eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, checkpoint_of(model))
    ckpt = load_checkpoint(path)
    again = build_model(ckpt, path).eval()
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    assert ckpt.classes == ["c0", "c1", "c2"] and ckpt.history[0]["acc_test"] == 90.0
    assert ckpt.input_shape == (1, 8, 8) and ckpt.mean == (0.5,)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_a_pickle_that_carries_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "instil-checkpoint", "x": Payload()}))
    with pytest.raises(InstilError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(InstilError, match="refused"):
        from_torchvision(path, "resnet18", ["a", "b"])


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, checkpoint_of(small(classes=4), classes=4))
    ckpt = load_checkpoint(path)
    wrong = type(ckpt)(**{**ckpt.__dict__, "classes": ["a", "b", "c"]})
    with pytest.raises(InstilError, match="not those of a resnet_small"):
        build_model(wrong, path)
    state = {k: v for k, v in ckpt.state.items() if not k.startswith("head")}
    with pytest.raises(InstilError, match="missing"):
        build_model(type(ckpt)(**{**ckpt.__dict__, "state": state}), path)


def test_torchvision_state_dict_is_adopted(tmp_path: Path) -> None:
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=2)
    path = tmp_path / "tv.pt"
    torch.save(net.state_dict(), path)
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    ckpt = from_torchvision(path, "resnet18", read_class_names(names))
    model = build_model(ckpt, path).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(model(x), net.eval()(x), atol=1e-5)
    with pytest.raises(InstilError, match="resnet34"):
        from_torchvision(path, "resnet34", ["cat", "dog"])


def test_not_a_checkpoint_and_truncated_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(InstilError, match="not an instil checkpoint"):
        load_checkpoint(plain)
    good = tmp_path / "good.pt"
    save_checkpoint(good, checkpoint_of(small()))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InstilError, match="unreadable"):
        load_checkpoint(cut)


def test_a_run_writes_checkpoints_that_rebuild_its_models(tmp_path: Path,
                                                          toy_args: list[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress",
                 *toy_args, "--set", "methods=[finetune]"]) == 0
    for name in ("m0-0", "m0-1", "finetune-0", "finetune-1"):
        ckpt = load_checkpoint(out / "models" / f"{name}.pt")
        model = build_model(ckpt, name)
        assert ckpt.model == "mlp" and len(ckpt.classes) == 3 and model is not None
    assert [p["phase"] for p in load_checkpoint(out / "models" / "finetune-0.pt").history] == \
        [1, 2, 3]
