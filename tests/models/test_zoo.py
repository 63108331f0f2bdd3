"""Any torchvision classifier through the model registry ("torchvision", option arch)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from instil.errors import InstilError
from instil.models import create_model
from instil.models.zoo import torchvision_names

# RegNets size their stages from tensor values, which the meta device does not hold.
NEEDS_DATA = ("regnet_",)


def test_every_torchvision_classifier_is_accepted() -> None:
    """Every name torchvision lists builds with `num_classes` outputs (on the meta device:
    the layers without memory); RegNets, whose builders read tensor values, are checked on
    their smallest member for real."""
    names = torchvision.models.list_models(module=torchvision.models)
    assert list(torchvision_names()) == names
    for name in names:
        if name.startswith(NEEDS_DATA):
            continue
        size = 299 if name == "inception_v3" else 224
        with torch.device("meta"):
            model = create_model("torchvision", (3, size, size), 7, arch=name)
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear,
                                                             torch.nn.Conv2d))][-1]
        assert last.out_features == 7 if isinstance(last, torch.nn.Linear) \
            else last.out_channels == 7, name
    model = create_model("torchvision", (3, 32, 32), 7, arch="regnet_x_400mf")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_vision_transformers_take_the_checkpoints_image_size() -> None:
    model = create_model("torchvision", (3, 32, 32), 3, arch="vit_b_32")
    assert model.image_size == 32


def test_unknown_names_and_other_channel_counts_are_refused() -> None:
    with pytest.raises(InstilError, match="known: alexnet, convnext_base"):
        create_model("torchvision", (3, 32, 32), 3, arch="resnet19")
    with pytest.raises(InstilError, match="3 channels"):
        create_model("torchvision", (1, 32, 32), 3, arch="resnet18")
