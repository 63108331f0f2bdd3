"""Any torchvision classifier by name, as it comes: the model a user deploys, not a wrapper.

`instil promote --arch NAME` reads a torchvision state dict of any name that
`torchvision.models.list_models(module=torchvision.models)` lists. The model is built with
torchvision's own builder (randomly initialised, `num_classes` outputs), so the user's
state dict loads with its own keys, and the checkpoint records the registry name
"torchvision" with the option `arch`, from which `build_model` rebuilds it. ResNet-18/34/50
keep their older registry entries (models.resnet), whose checkpoints already exist.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from instil.errors import InstilError
from instil.models import register_model

# Heads that only training uses (GoogLeNet's and Inception-v3's auxiliary classifiers): the
# model is built without them, because a method's loss needs logits, not their namedtuple,
# and a state dict that has them loses them on reading (`drop_auxiliary`).
AUXILIARY = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
# Builders whose input size is fixed at construction (the position embedding, the window
# grid): the keyword that sets it.
SIZE_ARGUMENT = {"vit_": "image_size", "maxvit_": "input_size"}


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Every classification model of torchvision, by the names its registry gives them."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    if arch not in torchvision_names():
        raise InstilError(f"--arch {arch}: not a torchvision classification model; known: "
                          f"{', '.join(torchvision_names())}")


def drop_auxiliary(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the training-only auxiliary heads of `arch`."""
    prefixes = AUXILIARY.get(arch, ())
    return {k: v for k, v in state.items() if not k.startswith(prefixes)} if prefixes else state


@register_model("torchvision", "any torchvision classifier, by its name (option arch)")
def torchvision_classifier(input_shape: tuple[int, ...], num_classes: int,
                           arch: str = "") -> nn.Module:
    import torchvision

    check_arch(arch)
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise InstilError(f"{arch} takes RGB images (3 channels), not input shape "
                          f"{tuple(input_shape)}")
    extra: dict[str, object] = {}
    if arch in AUXILIARY:
        extra.update(aux_logits=False, init_weights=True)
    for prefix, keyword in SIZE_ARGUMENT.items():
        if arch.startswith(prefix):
            size = (input_shape[1], input_shape[2])
            extra[keyword] = size[0] if keyword == "image_size" else size
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
