"""`instil.Learner`: a deployed model that learns a stream of parts, one phase per part.

For a service that learns a part a day: each `learn(part)` is one phase of the method from
the model the previous phase deployed, exactly as phase t of `instil run` (the same seeds:
the config's seed, order seed 0, the method's name and t), and `state_dict()` holds what the
next phase needs, tensors and plain data only, so that learning resumes after a restart.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from instil.checkpoint import load_weights
from instil.config import Config
from instil.engine.device import resolve_device
from instil.engine.precision import check_precision
from instil.engine.protocol import options_of
from instil.errors import DataError, InstilError, MethodError
from instil.methods.base import Method
from instil.promotion.folders import ImageFormat
from instil.promotion.gate import percent
from instil.promotion.labelled import Labelled
from instil.promotion.phase import (
    Augment,
    phase_config,
    phase_method,
    resolve_augment,
    run_phase,
    with_phases,
)
from instil.promotion.sources import (
    Data,
    check_labels,
    check_same_shape,
    class_names,
    known_classes,
    output_width,
    read_data,
)

STATE_FORMAT = "instil-learner"
STATE_VERSION = 1


@dataclass(frozen=True)
class PhaseReport:
    """One phase of a Learner: its number (1, 2, ...), the samples it trained on, its
    training seconds, what the method measured (DBD's ema_steps, finetune-es's kept
    epoch), and with a holdout its accuracy (%) before and after the phase and the
    negative-flip rate (% of the holdout right before and wrong after); `epochs`: the
    phase's per-epoch record (lr, seconds, the loss terms' means, the method's epoch facts),
    as a run folder's epochs.jsonl has it."""

    phase: int
    images: int
    train_seconds: float
    facts: dict[str, float]
    acc_before: float | None = None
    acc_after: float | None = None
    nfr: float | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)


class Learner:
    """A model that learns one part after another with an instance-incremental method.

    Args:
        model: any torch.nn.Module that maps a batch to logits (see `instil.promote`); it is
            copied, never modified.
        method: a method without old data (dbd, its variants, finetune, finetune-es, lwf,
            ewc). EWC's first Fisher matrix is estimated on the first part (there is no
            D(0) here), and every later part weighs as much as the first.
        holdout: data scored before and after every phase (PhaseReport's accuracies), or
            None.
        epochs, lr, batch_size, options, augment, device, seed, classes, image_format,
        settings, show_progress: as for `instil.promote`, for every phase.

    `learner.model` is the deployed model (the live module, on the training device);
    `learner.phase` the number of parts learnt.
    """

    def __init__(self, model: nn.Module, method: str = "dbd", *, holdout: Data | None = None,
                 epochs: int = 12, lr: float = 0.01, batch_size: int = 64,
                 options: Mapping[str, Any] | None = None,
                 augment: Augment | bool | None = None, device: str = "auto", seed: int = 0,
                 classes: Sequence[str] | None = None,
                 image_format: ImageFormat | None = None, settings: Sequence[str] = (),
                 show_progress: bool = False) -> None:
        # Every phase's config: these keywords, with the augmentation of its part's shape.
        self._config: Callable[..., Config] = functools.partial(
            phase_config, method, epochs, lr, batch_size, dict(options or {}), device=device,
            seed=seed, settings=tuple(settings))
        self._augment = augment
        config = self._config(augment=Augment())
        self._method: Method = phase_method(config)
        self._device = resolve_device(config.device)
        check_precision(config.precision, self._device)
        self._format = image_format or ImageFormat()
        self._show_progress = show_progress
        self._classes, self._named_by = known_classes(classes, (holdout,))
        self._holdout: Labelled | None = None
        self._model = copy.deepcopy(model).to(self._device)
        self._requires_grad = [p.requires_grad for p in model.parameters()]
        self._phase = 0
        if holdout is not None:
            self._holdout = read_data(holdout, "holdout", self._classes, self._format)
            self._check(self._holdout, self._classes, self._named_by)

    @property
    def model(self) -> nn.Module:
        """The deployed model: the input's copy before the first phase, then what the last
        phase deployed; the live module, on the training device (the next phase starts
        from it)."""
        return self._model

    @property
    def phase(self) -> int:
        """The number of parts learnt (a restored state's included)."""
        return self._phase

    def _check(self, data: Labelled, classes: list[str] | None, named_by: str) -> list[str]:
        """The class names, after checking `data` against the model and the holdout."""
        width = output_width(self._model, data, self._format)
        names = class_names(classes, width, named_by)
        check_labels(data, width)
        if self._holdout is not None and data is not self._holdout:
            check_same_shape(data, self._holdout)
        return names

    def learn(self, part: Data) -> PhaseReport:
        """One phase on `part` (any data `instil.promote` takes) from the deployed model,
        which the phase's deployed model then replaces. A part that fails a check leaves the
        learner as it was."""
        classes, named_by = self._classes, self._named_by
        if classes is None:  # a folder part names its classes; all must be there
            classes, named_by = known_classes(None, (part,))
        data = read_data(part, "part", classes, self._format)
        names = self._check(data, classes, named_by)
        if len(data) < 2:
            raise DataError(f"{data.source}: {len(data)} sample; a phase trains on at least 2")
        t = self._phase + 1
        # n_phases beyond t: a stream has no last phase (EWC estimates its Fisher after
        # every phase, for the next).
        config = with_phases(
            self._config(augment=resolve_augment(self._augment, data.sample_shape)), t + 1)
        result = run_phase(self._model, self._method, config, data, self._holdout, names,
                           self._format, self._device, phase=t,
                           show_progress=self._show_progress)
        self._model, self._phase = result.model, t
        # Methods freeze their teacher, which they deploy: the caller's flags come back.
        for p, flag in zip(self._model.parameters(), self._requires_grad):
            p.requires_grad_(flag)
        report = PhaseReport(t, len(data), result.seconds, dict(self._method.phase_facts()),
                             epochs=result.epochs)
        if result.before is None or self._holdout is None:
            return report
        labels = self._holdout.labels
        right_before, right_after = result.before == labels, result.after == labels
        return dataclasses.replace(report, acc_before=percent(right_before),
                                   acc_after=percent(right_after),
                                   nfr=percent(right_before & ~right_after))

    def state_dict(self) -> dict[str, Any]:
        """What learning needs to go on after a restart: the deployed model's weights, the
        phases learnt, the method and its options, and what the method carries from phase
        to phase (EWC's Fisher matrix). Tensors (on the CPU) and plain data only: it loads
        with torch.load(weights_only=True)."""
        method = self._method
        carried = {name: on_device(getattr(method, name, None), torch.device("cpu"))
                   for name in method.carried}
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "method": method.label,
                "options": options_of(method), "phase": self._phase,
                "model": {k: v.detach().cpu().clone()
                          for k, v in self._model.state_dict().items()},
                "carried": {k: v for k, v in carried.items() if v is not None}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Goes on from `state` (a `state_dict()`, of a Learner of the same method and
        options on the same architecture)."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InstilError("not a Learner state: give what Learner.state_dict() returned")
        if state.get("version") != STATE_VERSION:
            raise InstilError(f"a Learner state of version {state.get('version')}, this "
                              f"instil reads version {STATE_VERSION}")
        method = self._method
        if state["method"] != method.label or state["options"] != options_of(method):
            raise MethodError(f"a state of {state['method']} with options {state['options']}; "
                              f"this Learner runs {method.label} with {options_of(method)}")
        load_weights(self._model, dict(state["model"]), "Learner state",
                     type(self._model).__name__)
        for name in method.carried:
            setattr(method, name, on_device(state["carried"].get(name), self._device))
        self._phase = int(state["phase"])


def on_device(value: Any, device: torch.device) -> Any:
    """Tensors, and dicts of them, on `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device).clone()
    if isinstance(value, Mapping):
        return {k: on_device(v, device) for k, v in value.items()}
    return value
