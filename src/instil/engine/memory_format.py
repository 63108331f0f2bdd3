"""Whether a model may train in channels_last on its device.

channels_last is on by default (it speeds convolutions up on GPUs and on most CPUs), but
oneDNN's CPU kernel for the weight gradient of a 1x1 convolution with stride > 1 writes past
its workspace when the input has fewer channels than the kernel's channel block
(oneDNN issue 6035): the process then hangs, crashes with a heap error, or silently gets
wrong gradients. On this project's 2-core AVX-512 machine (torch 2.14.1) 2 to 7 input
channels failed (a ResNet shortcut of width 4 -> 8) and 1, 8, 9, 12 and 16 passed; the
block can be 16 on other CPUs, so such layers with < 16 input channels keep the model in the
contiguous format on the CPU (little is lost: layers that narrow gain little from
channels_last). The batches must then be contiguous too (data.loaders.Normaliser): a
convolution follows its input's format, and augmentation's crop returns channels_last strides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from instil.models import create_model

CHANNEL_BLOCK = 16  # oneDNN's widest CPU channel block (AVX-512); AVX2 uses 8


def broken_convs(model: nn.Module) -> list[str]:
    """Names of the convolutions that oneDNN's channels_last CPU kernel gets wrong."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
            and max(m.stride) > 1 and m.in_channels // m.groups < CHANNEL_BLOCK]


def channels_last_safe(model: nn.Module, device: torch.device) -> tuple[bool, str]:
    """(True, "") when channels_last is safe for `model` on `device`, else (False, why)."""
    if device.type != "cpu":
        return True, ""
    broken = broken_convs(model)
    if not broken:
        return True, ""
    first = dict(model.named_modules())[broken[0]]
    return False, (f"channels_last is off: {len(broken)} strided 1x1 convolution(s) such as "
                   f"{broken[0]} ({first.in_channels} input channels) train wrongly in "
                   f"oneDNN's channels_last CPU kernel (oneDNN issue 6035)")


def channels_last_choice(wanted: bool, input_shape: tuple[int, ...],
                         model: Callable[[], nn.Module], device: torch.device
                         ) -> tuple[bool, str]:
    """Whether a model and its images go channels_last: the wish, for images only, unless
    `model()` cannot train in it on `device`; with the one-line reason when refused."""
    if not wanted or len(input_shape) != 3:
        return False, ""
    return channels_last_safe(model(), device)


def meta_model(name: str, options: dict[str, Any], input_shape: tuple[int, ...],
               num_classes: int) -> nn.Module:
    """The registry's model on the meta device: its layers without memory, and torch's
    random state (the weights' seed) untouched."""
    with torch.device("meta"):
        return create_model(name, input_shape, num_classes, **options)
