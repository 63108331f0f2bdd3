from __future__ import annotations

import pytest
import torch

from instil.errors import InstilError
from instil.models import Classifier, create_model


@pytest.mark.parametrize("name,shape", [
    ("resnet_small", (1, 28, 28)),
    ("resnet_small", (3, 32, 32)),
    ("resnet18_cifar", (3, 32, 32)),
    ("resnet18", (3, 64, 64)),
    ("resnet18", (1, 64, 64)),
    ("resnet50", (3, 64, 64)),
    ("mlp", (2,)),
])
def test_models_take_channels_and_classes_from_the_data(name: str, shape: tuple) -> None:
    model = create_model(name, shape, num_classes=7)
    assert isinstance(model, Classifier)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert model.head.in_features == model.num_features


def test_cifar_resnet18_keeps_resolution_in_the_stem() -> None:
    model = create_model("resnet18_cifar", (3, 32, 32), 10)
    stem = model.features[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_unknown_model_and_option() -> None:
    with pytest.raises(InstilError, match="unknown model 'resnet7'"):
        create_model("resnet7", (1, 28, 28), 10)
    with pytest.raises(InstilError, match="model.options for 'mlp'"):
        create_model("mlp", (2,), 3, depth=4)
