"""channels_last is refused on the CPU for the layers oneDNN's kernel gets wrong."""

from __future__ import annotations

import torch
from torch import nn

from instil.engine.memory_format import (
    broken_convs,
    channels_last_choice,
    channels_last_safe,
    meta_model,
)
from instil.models import create_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_narrow_strided_1x1_shortcuts_are_found_and_nothing_else() -> None:
    narrow = create_model("resnet_small", (3, 16, 16), 2, widths=(4, 8, 8))
    assert broken_convs(narrow) == ["features.4.shortcut.0", "features.5.shortcut.0"]
    assert broken_convs(create_model("resnet_small", (1, 28, 28), 10)) == []
    others = nn.Sequential(nn.Conv2d(4, 8, 1, 1), nn.Conv2d(8, 8, 3, 2, 1),
                           nn.Conv2d(16, 32, 1, 2))
    assert broken_convs(others) == []


def test_only_the_cpu_loses_channels_last_and_the_reason_names_the_layer() -> None:
    narrow = create_model("resnet_small", (3, 16, 16), 2, widths=(4, 8, 8))
    ok, why = channels_last_safe(narrow, CPU)
    assert not ok and "features.4.shortcut.0 (4 input channels)" in why
    assert channels_last_safe(narrow, CUDA) == (True, "")


def test_the_config_check_builds_no_weights_and_keeps_torchs_random_state() -> None:
    before = torch.random.get_rng_state()
    narrow = meta_model("resnet_small", {"widths": [4, 8, 8]}, (3, 16, 16), 2)
    assert next(narrow.parameters()).is_meta
    assert channels_last_choice(True, (3, 16, 16), lambda: narrow, CPU)[0] is False
    wide = meta_model("resnet_small", {}, (1, 28, 28), 10)
    assert channels_last_choice(True, (1, 28, 28), lambda: wide, CPU) == (True, "")
    assert torch.equal(before, torch.random.get_rng_state())


def test_no_wish_or_no_image_means_contiguous_without_building_the_model() -> None:
    def unbuildable() -> nn.Module:
        raise AssertionError("the model must not be built")
    assert channels_last_choice(False, (3, 16, 16), unbuildable, CPU) == (False, "")
    assert channels_last_choice(True, (2,), unbuildable, CPU) == (False, "")
