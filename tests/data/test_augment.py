from __future__ import annotations

import torch

from instil.data.augment import random_crop, random_flip
from instil.data.base import DataBundle, Samples
from instil.data.loaders import Normaliser, in_memory_format


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


def test_batches_take_the_sessions_memory_format_whatever_the_crop_returns() -> None:
    """The crop's gather returns channels_last strides; a session that keeps its model
    contiguous (engine.memory_format: oneDNN's faulty kernel) must get contiguous batches,
    since a convolution follows its input's format."""
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    samples = Samples(labels=torch.arange(4) % 3, tensor=x)
    bundle = DataBundle("t", ["a", "b", "c"], samples, samples, (3, 8, 8), (0.5,) * 3,
                        (0.2,) * 3)
    cropped = random_crop(x, 2, torch.Generator().manual_seed(0))
    kept = Normaliser(bundle, torch.device("cpu"), channels_last=False)(cropped)
    assert kept.is_contiguous()
    # One channel: the crop's strides pass is_contiguous() yet convolutions read them as
    # channels_last; the batch must have the contiguous format's exact strides.
    gray = random_crop(x[:, :1], 2, torch.Generator().manual_seed(0)).float()
    assert gray.is_contiguous() and gray.stride() != (64, 64, 8, 1)
    assert in_memory_format(gray, torch.contiguous_format).stride() == (64, 64, 8, 1)
    last = Normaliser(bundle, torch.device("cpu"), channels_last=True)(x)
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
