"""The phase of a promotion: its config and method, and one training phase of that method
from the deployed model on labelled tensors.

The phase runs through the protocol's own `train_phase` (seeding, PhaseContext, SourceData,
the engine's `fit`), as phase t of a stream whose part D(t) is the new data. There is no
D(0): a method that reads the split's base set (EWC's Fisher information at phase 1) gets
the new data in its place, i.e. the Fisher information of the deployed model on it. Seeds
follow the protocol's (the config's seed, order seed 0, the method's name, the phase), so
that a phase here trains exactly as the same phase of `instil run` does on the same part.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from instil.config import Config, apply_override, from_dict
from instil.data.base import DataBundle, Samples
from instil.data.loaders import DataSource
from instil.data.split import IILSplit
from instil.engine.memory_format import channels_last_choice
from instil.engine.protocol import Session, budget_of, method_for, train_phase
from instil.errors import InstilError, MethodError
from instil.methods import METHODS
from instil.methods.base import Method
from instil.promotion.folders import ImageFormat
from instil.promotion.labelled import Labelled

# Augmentation when none is given: a 4-pixel crop padding and flips for RGB (the CIFAR
# presets), 2 for grayscale (fmnist-quick: 28-pixel images).
DEFAULT_CROP_PADDING = {1: 2, 3: 4}


@dataclass(frozen=True)
class Augment:
    """How training batches of images are augmented on the device: a random crop of the
    image's own size after zero padding by `crop_padding` pixels (0: none), and a random
    horizontal flip of half the batch. Only images (N×C×H×W batches) are augmented; zero is
    black for images read from folders and the mean for normalised tensors."""

    crop_padding: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise InstilError(f"Augment(crop_padding={self.crop_padding}): must be >= 0")

    @classmethod
    def default_for(cls, sample_shape: tuple[int, ...]) -> Augment:
        """instil's default for samples of this shape: see DEFAULT_CROP_PADDING."""
        channels = sample_shape[0] if len(sample_shape) == 3 else 3
        return cls(DEFAULT_CROP_PADDING.get(channels, 4), True)


def resolve_augment(augment: Augment | bool | None, sample_shape: tuple[int, ...]) -> Augment:
    """None or True: the default for the samples' shape; False: none; an Augment: itself."""
    if isinstance(augment, Augment):
        return augment
    if augment is False:
        return Augment(0, False)
    if augment is None or augment is True:
        return Augment.default_for(sample_shape)
    raise InstilError(f"augment={augment!r}: give an instil.Augment, True, False or None")


def methods_without_old_data() -> list[str]:
    return sorted(name for name, (cls, _) in METHODS.items() if not cls.uses_old_data)


def phase_config(method: str, epochs: int, lr: float, batch_size: int,
                 options: Mapping[str, Any] | None, augment: Augment, device: str, seed: int,
                 settings: Sequence[str] = ()) -> Config:
    """A run config of one phase: the keywords, then `settings` (KEY=VALUE, as `instil
    promote --set` takes them, any key of the run config)."""
    raw: dict[str, Any] = {
        "name": "promote", "methods": [method], "n_phases": 1, "seed": seed,
        "device": device, "save_models": False,
        "data": {"name": "imagefolder", "crop_padding": augment.crop_padding,
                 "flip": augment.flip},
        "phase": {"epochs": epochs, "lr": lr, "batch_size": batch_size},
    }
    if options:
        raw["method_options"] = {method: dict(options)}
    for item in settings:
        apply_override(raw, item)
    config = from_dict(Config, raw, "")
    if config.methods != [method]:
        raise InstilError("--set methods=...: a promotion runs one method; use --method "
                          "(method= from Python)")
    return config


def phase_method(config: Config) -> Method:
    """The config's one method, refused when unknown, when it needs old data, or when it
    cannot work with the budget."""
    name = config.methods[0]
    if name not in METHODS:
        raise MethodError(f"unknown method '{name}'; methods without old data: "
                          f"{', '.join(methods_without_old_data())}")
    if METHODS[name][0].uses_old_data:
        raise MethodError(f"method {name} trains on old data (exemplars or the full set), which "
                          "a promotion does not have; use one of "
                          f"{', '.join(methods_without_old_data())}")
    try:
        method = method_for(config, name)
        method.check_budget(budget_of(config, method))
    except MethodError:
        raise
    except InstilError as e:  # the protocol's key phase.epochs is --epochs (epochs=) here
        raise MethodError(str(e).replace("phase.epochs", "--epochs")) from None
    return method


@dataclass(frozen=True)
class PhaseResult:
    model: nn.Module  # the deployed model the phase yields (the method's own)
    seconds: float  # training time, the method's set-up included
    fingerprint: str  # of the samples trained on
    before: torch.Tensor | None  # holdout predictions of the model the phase started from
    after: torch.Tensor | None  # ... and of the deployed model; None without a holdout
    # The phase's per-epoch record, as `instil run` writes it to epochs.jsonl: epoch, lr,
    # seconds, images/s, the loss terms' means and the method's epoch facts.
    epochs: list[dict[str, Any]]


def phase_split(n: int, fingerprint: str, phase: int) -> IILSplit:
    """Phase `phase` of a stream whose part D(phase) is all `n` samples, in their order;
    D(0), which a promotion does not have, is the same part (see the module's docstring)."""
    indices = np.arange(n)
    empty = np.zeros(0, dtype=np.int64)
    return IILSplit(order_seed=0, base_fraction=0.0, n_phases=phase, fingerprint=fingerprint,
                    base=indices, phases=(empty,) * (phase - 1) + (indices,))


def phase_bundle(new: Labelled, holdout: Labelled | None, classes: list[str],
                 image_format: ImageFormat) -> DataBundle:
    """The new data as the training set, the holdout (or nothing) as the test set."""
    uint8 = new.tensor.dtype == torch.uint8 or (
        holdout is not None and holdout.tensor.dtype == torch.uint8)
    mean, std = (image_format.mean, image_format.std) if uint8 else ((), ())
    test = holdout.samples() if holdout is not None else Samples(
        labels=torch.zeros(0, dtype=torch.int64), tensor=new.tensor[:0])
    return DataBundle("promote", list(classes), new.samples(), test, new.sample_shape,
                      tuple(mean), tuple(std))


def run_phase(previous: nn.Module, method: Method, config: Config, new: Labelled,
              holdout: Labelled | None, classes: list[str], image_format: ImageFormat,
              device: torch.device, phase: int = 1, show_progress: bool = False
              ) -> PhaseResult:
    """Phase `phase` of `method` from `previous` (a model on `device` that the caller owns:
    it may be changed to channels_last) on `new`, scoring `holdout` before and after."""
    bundle = phase_bundle(new, holdout, classes, image_format)
    channels_last, why = channels_last_choice(config.channels_last, bundle.input_shape,
                                              lambda: previous, device)
    if why:
        print(f"instil: {why}", file=sys.stderr)
    source = DataSource(bundle, config.data, device, channels_last)
    # A caller's model in channels_last goes contiguous when the format is refused.
    previous = previous.to(memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format)
    split = phase_split(len(new), bundle.fingerprint, phase)
    budget = budget_of(config, method)
    with tqdm(total=budget.epochs, unit="epoch", dynamic_ncols=True,
              disable=None if show_progress else True) as bar:
        # The session's folder is never written: the methods a promotion runs keep no
        # files, and the per-epoch record stays in memory for the caller.
        session = Session(config, source, device, Path("."), bar,
                          channels_last=channels_last, records=[])
        scored = holdout is not None
        before = session.predict(previous, "test", None) if scored else None
        seconds, _ = train_phase(session, method, split, phase, previous, method.label, budget,
                                 frozen=frozen_names(previous))
        deployed = method.deployed()
        after = session.predict(deployed, "test", None) if scored else None
    return PhaseResult(deployed, seconds, bundle.fingerprint, before, after,
                       session.records or [])


def frozen_names(model: nn.Module) -> frozenset[str]:
    """The parameters the caller froze (requires_grad False), which a promotion leaves as
    they are; none when every parameter is frozen: a model frozen whole (for serving, with
    `model.requires_grad_(False)`) trains whole."""
    flags = dict((name, p.requires_grad) for name, p in model.named_parameters())
    if not any(flags.values()):
        return frozenset()
    return frozenset(name for name, trains in flags.items() if not trains)


def with_phases(config: Config, n_phases: int) -> Config:
    return dataclasses.replace(config, n_phases=n_phases)
