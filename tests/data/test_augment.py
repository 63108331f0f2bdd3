from __future__ import annotations

import torch

from instil.data.augment import random_crop, random_flip


def test_crop_keeps_shape_and_only_shifts_content() -> None:
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3, 3] = 200
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    positions = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    # The single bright pixel moved by at most 2 in each direction, and did move somewhere.
    assert all(abs(r - 3) <= 2 and abs(c - 3) <= 2 for r, c in positions)
    assert len(positions) > 5
    assert (out.flatten(1).sum(1) == 200).all()


def test_crop_without_padding_is_identity() -> None:
    x = torch.randint(0, 255, (4, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0, torch.Generator()), x)


def test_flip_mirrors_about_half_of_the_batch() -> None:
    x = torch.arange(4).repeat(200, 1, 4, 1).to(torch.uint8)  # each row reads 0 1 2 3
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = (out[:, 0, 0, 0] == 3)
    assert torch.equal(out[flipped], x[flipped].flip(3))
    assert torch.equal(out[~flipped], x[~flipped])
    assert 70 < int(flipped.sum()) < 130
