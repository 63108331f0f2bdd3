"""channels_last is refused on the CPU for the layers oneDNN's kernel gets wrong."""

from __future__ import annotations

import torch
from torch import nn

from instil.engine.memory_format import broken_convs, channels_last_for, channels_last_safe
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
    assert channels_last_for("resnet_small", {"widths": [4, 8, 8]}, (3, 16, 16), 2,
                             CPU)[0] is False
    assert channels_last_for("resnet_small", {}, (1, 28, 28), 10, CPU) == (True, "")
    assert torch.equal(before, torch.random.get_rng_state())
