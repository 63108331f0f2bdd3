"""`instil.promote`: one gated instance-incremental phase on any PyTorch classifier.

The command line's promotion as a function: the new data and the holdout are read and
checked against the model (promotion.sources, promotion.folders), one phase of the method
trains a copy of the model (promotion.phase), and the holdout decides through the gate
(promotion.report). `instil promote` is this function between reading a checkpoint and
writing one (promotion.files).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from instil.config import Config
from instil.engine.device import resolve_device
from instil.engine.precision import check_precision
from instil.engine.protocol import budget_of, options_of
from instil.errors import DataError
from instil.methods.base import Method
from instil.promotion.folders import ImageFormat
from instil.promotion.gate import compare
from instil.promotion.labelled import Labelled, split_holdout
from instil.promotion.phase import (
    Augment,
    phase_config,
    phase_method,
    resolve_augment,
    run_phase,
)
from instil.promotion.report import build_report, report_markdown
from instil.promotion.sources import (
    Data,
    check_labels,
    check_same_shape,
    class_names,
    known_classes,
    output_width,
    read_data,
)

HOLDOUT_FRACTION = 0.2  # of the new data, per class, when no holdout is given


@dataclass(frozen=True)
class Promotion:
    """What `promote` returns: the promoted model (a new module, whatever the gate said),
    whether the gate passed and why, and the report (the dict `instil promote` writes as
    NEW_CKPT.report.json)."""

    model: nn.Module
    passed: bool
    report: dict[str, Any]
    reason: str

    @property
    def markdown(self) -> str:
        """The report as `instil promote` prints it."""
        return report_markdown(self.report)


def promote(model: nn.Module, new_data: Data, *, holdout: Data | None = None,
            method: str = "dbd", epochs: int = 12, lr: float = 0.01, batch_size: int = 64,
            options: Mapping[str, Any] | None = None, augment: Augment | bool | None = None,
            min_gain: float = 0.0, max_nfr: float = 2.0, device: str = "auto", seed: int = 0,
            classes: Sequence[str] | None = None, image_format: ImageFormat | None = None,
            settings: Sequence[str] = (), show_progress: bool = False) -> Promotion:
    """Promotes `model` with `new_data` by one phase of `method`, gated on a holdout.

    Args:
        model: any torch.nn.Module that maps a batch of images (N×C×H×W, or any N×...
            samples) to logits N×K; K, its output width, is the number of classes. It is
            never modified: the phase trains a copy.
        new_data: labelled samples of the model's own classes: a torch Dataset of (image
            tensor, int label), a DataLoader of (images, labels) batches, a pair (images,
            labels) of tensors, or a folder with one sub-folder of images per class (the
            layout of `instil promote --new-data`). Tensors are taken as the model takes
            them (floating point, normalised); all data is read once into memory.
        holdout: the same kinds of data, scored before and after. None: a seeded 20% of every
            class of `new_data` is held out and never trained on.
        method: an instance-incremental method that needs no old data: dbd (the default),
            dbd-nofl, dbd-nodis, dbd-nokc, dbd-dis-only, finetune, finetune-es, lwf or ewc.
        epochs, lr, batch_size: the phase's budget (SGD, momentum 0.9, cosine schedule).
            DBD consolidates after `freeze_epochs` (10) only: epochs must reach it, or set
            options={"freeze_epochs": N}.
        options: the method's options (README, "Methods"), e.g. {"sigma": 0.5} for dbd.
        augment: training augmentation of images: None or True for instil's default (crop
            padding 2 for one channel, 4 otherwise, and flips), False for none, or an
            Augment. Flips are wrong for data whose mirror image is another class.
        min_gain, max_nfr: the gate: holdout accuracy gain at least `min_gain` points and
            negative flips (right before, wrong after) at most `max_nfr` % of the holdout.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        seed: seeds the training and the holdout split; equal seeds give equal models.
        classes: the class names in output order, for the report and for folders (whose
            sub-folders are named by class); None: folders' sorted names (torchvision
            ImageFolder's order), else "0", "1", ...
        image_format: how folders' images are read (channels, size, mean, std); default
            RGB at 224 pixels with ImageNet statistics.
        settings: further keys of instil's run config as `instil promote --set` takes them,
            e.g. ["precision=bf16", "phase.momentum=0.0"].
        show_progress: a progress bar on stderr.

    Returns:
        A Promotion: `.model` (on the input model's device, in eval mode), `.passed`,
        `.reason` (the gate's verdict in one line) and `.report`.

    Raises:
        DataError, ModelError, MethodError (all InstilError and ValueError): bad data, a
        model that does not fit it, a method that cannot run; each before any training,
        with one line saying what to do. The input model is untouched.
    """
    image_format = image_format or ImageFormat()
    # The keywords and the method first: a typo fails before any data is read.
    checked = phase_config(method, epochs, lr, batch_size, options, Augment(), device, seed,
                           settings)
    phase_method(checked)
    target = resolve_device(checked.device)  # `settings` may name it too
    working = copy.deepcopy(model).to(target)
    data = inputs(working, new_data, holdout, classes, image_format, seed)
    config = phase_config(method, epochs, lr, batch_size, options,
                          resolve_augment(augment, data.new.sample_shape), device, seed,
                          settings)
    chosen = phase_method(config)
    check_precision(config.precision, target)
    phase = run_phase(working, chosen, config, data.new, data.holdout, data.classes,
                      image_format, target, show_progress=show_progress)
    report = build_report(
        model=type(model).__name__, method=chosen.label, options=options_of(chosen),
        train=training_record(config, chosen, target, settings), new=data.new,
        fingerprint=phase.fingerprint, holdout=data.holdout, holdout_source=data.held_out,
        scores=compare(phase.before, phase.after, data.holdout, data.classes),
        min_gain=min_gain, max_nfr=max_nfr, seconds=phase.seconds, epochs=phase.epochs)
    gate = report["gate"]
    return Promotion(like(phase.model, model), gate["passed"], report, gate["reason"])


@dataclass(frozen=True)
class Inputs:
    """The data of a promotion, read and checked against the model."""

    new: Labelled  # trained on
    holdout: Labelled  # scored before and after
    classes: list[str]  # the names of the model's outputs
    held_out: str  # where the holdout came from, in words


def inputs(model: nn.Module, new_data: Data, holdout: Data | None,
           classes: Sequence[str] | None, image_format: ImageFormat, seed: int) -> Inputs:
    """Reads the data and checks it against `model` (which it runs on two samples): the
    class names, labels and shapes; without a holdout, splits one off `new_data`."""
    names, named_by = known_classes(classes, (new_data, holdout))
    new = read_data(new_data, "new_data", names, image_format)
    held = read_data(holdout, "holdout", names, image_format) if holdout is not None else None
    width = output_width(model, new, image_format)
    names = class_names(names, width, named_by)
    check_labels(new, width)
    if held is not None:
        check_same_shape(new, held)
        check_labels(held, width)
        held_out = held.source
    else:
        train, kept = split_holdout(new.labels, HOLDOUT_FRACTION, seed)
        new, held = new.subset(train), new.subset(kept)
        held_out = (f"{HOLDOUT_FRACTION:.0%} of {new.source} held out per class "
                    f"(seed {seed}), never trained on")
    check_sizes(new, held)
    return Inputs(new, held, names, held_out)


def training_record(config: Config, method: Method, device: torch.device,
                    settings: Sequence[str]) -> dict[str, Any]:
    """How the phase trained, as the report records it."""
    budget = budget_of(config, method)
    return {"epochs": budget.epochs, "lr": budget.lr, "batch_size": budget.batch_size,
            "crop_padding": config.data.crop_padding, "flip": config.data.flip,
            "seed": config.seed, "device": str(device), "overrides": list(settings)}


def check_sizes(new: Labelled, holdout: Labelled) -> None:
    if len(new) < 2 or len(holdout) < 1:
        raise DataError(f"{new.source}: {len(new)} samples to train on and {len(holdout)} to "
                        "score; a promotion needs at least 2 and 1 (add samples, or give a "
                        "holdout)")


def like(trained: nn.Module, original: nn.Module) -> nn.Module:
    """`trained` as the caller had `original`: on its device, in the contiguous memory
    format, each parameter's requires_grad as it was (methods freeze their teacher), in
    eval mode (a deployed model)."""
    reference = next(original.parameters())
    trained = trained.to(reference.device, memory_format=torch.contiguous_format)
    for mine, theirs in zip(trained.parameters(), original.parameters()):
        mine.requires_grad_(theirs.requires_grad)
    return trained.eval()
