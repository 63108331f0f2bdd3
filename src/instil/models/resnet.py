"""Residual networks: CIFAR-style and small ones written here, ImageNet ones from torchvision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from instil.models import register_model
from instil.models.classifier import Classifier


class BasicBlock(nn.Module):
    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def small_image_resnet(channels: int, widths: tuple[int, ...], blocks: tuple[int, ...]
                       ) -> nn.Sequential:
    """A 3x3 stem without max-pool (small images keep their resolution), then stages that
    halve the resolution after the first, then global average pooling."""
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False),
                               nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
    inp = widths[0]
    for i, (width, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(BasicBlock(inp, width, 2 if i > 0 and j == 0 else 1))
            inp = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


@register_model("resnet_small", "3-stage ResNet (16-32-64) for 28x28 images, fast on a CPU")
def resnet_small(input_shape: tuple[int, ...], num_classes: int,
                 widths: tuple[int, ...] | list[int] = (16, 32, 64),
                 blocks: tuple[int, ...] | list[int] = (1, 1, 1)) -> Classifier:
    # Sized for 2 CPU cores: fmnist-iil10 trains M(0) in 200-240 s (docs/results-fmnist.md).
    widths, blocks = tuple(widths), tuple(blocks)
    return Classifier(small_image_resnet(input_shape[0], widths, blocks), widths[-1],
                      num_classes)


@register_model("resnet18_cifar", "ResNet-18 with a 3x3 stem and no max-pool, for 32x32 images")
def resnet18_cifar(input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    features = small_image_resnet(input_shape[0], (64, 128, 256, 512), (2, 2, 2, 2))
    return Classifier(features, 512, num_classes)


def torchvision_resnet(arch: str, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """torchvision's ResNet, randomly initialised, its fc replaced by our head."""
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if input_shape[0] != 3:
        net.conv1 = nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False)
    num_features = net.fc.in_features
    net.fc = nn.Identity()
    return Classifier(net, num_features, num_classes)


for _arch in ("resnet18", "resnet34", "resnet50"):
    register_model(_arch, f"torchvision's {_arch} for ImageNet-size images")(
        lambda input_shape, num_classes, _arch=_arch: torchvision_resnet(
            _arch, input_shape, num_classes))
