"""The interface through which a learning method plugs into the engine.

A method says what its loss is on a batch and what happens around steps, epochs and phases.
The engine owns everything else: the device, batches, backward, the optimiser, the learning
rate schedule, mixed precision and evaluation. So a method never calls `backward()` or
`optimizer.step()`, and never moves tensors between devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from instil.config import TrainConfig
from instil.data.loaders import Batches
from instil.data.split import IILSplit
from instil.errors import InstilError


@dataclass(frozen=True)
class NoOptions:
    """For methods without options of their own."""


class PhaseData(Protocol):
    """The training set as a method may read it outside the engine's loop: to pick exemplars,
    estimate a Fisher matrix or score an early-stopping slice. Indices are training-set
    indices, as in IILSplit; batches are on the device and normalised."""

    num_classes: int

    def batches(self, indices: np.ndarray, train: bool = False, batch_size: int | None = None,
                seed: int = 0) -> Batches:
        """Batches of `indices`: in order and unaugmented, or (train=True) shuffled and
        augmented as the engine's training batches are, of `batch_size` (default: the
        phase's) and with their order and augmentation drawn from `seed` (mixed with the
        phase's own seed, so two streams of one phase differ)."""
        ...

    def labels(self, indices: np.ndarray) -> torch.Tensor:
        """The labels of `indices`, on the CPU."""
        ...


@dataclass(frozen=True)
class PhaseContext:
    phase: int  # 0 is base training, 1..n_phases the incremental phases
    n_phases: int
    new_model: Callable[[], nn.Module]  # a freshly initialised model, already on the device
    split: IILSplit | None = None  # the run's split: D(0) is split.part(0), D(t) split.part(t)
    data: PhaseData | None = None  # read access to the training set, see PhaseData
    budget: TrainConfig | None = None  # the phase's epochs and optimiser settings

    def require_data(self, who: str, why: str) -> tuple[IILSplit, PhaseData]:
        """The split and the data, for a method that cannot work without them."""
        if self.split is None or self.data is None:
            raise InstilError(f"{who}: needs the phase's split and training data to {why}")
        return self.split, self.data


def numpy_generator() -> np.random.Generator:
    """A numpy generator drawn from torch's RNG, which the engine seeds before every phase
    (alike on every rank): a method's random choices are as reproducible as the run."""
    return np.random.default_rng(int(torch.randint(2**31, (1,))))


class Method:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    uses_old_data: ClassVar[bool] = False
    # Under torchrun: whether a step may leave trainable parameters unused (DDP then looks).
    unused_parameters: ClassVar[bool] = False
    options_type: ClassVar[type] = NoOptions
    # Attributes that go on from one phase to the next (begin_phase does not rebuild them),
    # tensors or dicts of tensors: what a Learner's state_dict must carry besides the
    # deployed model (EWC's running Fisher matrix).
    carried: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.options_type()
        self.label = self.name  # the registered name it was created under (a variant's)

    def check_budget(self, budget: TrainConfig) -> None:
        """Refuses, before any training, a budget the method cannot work with."""

    # What the engine asks before the first phase.
    def base_trainer(self) -> BaseTraining | None:
        """This method's own training of M(0) on D(0), when the method assumes a base model
        of its own (PODNet's cosine classifier); None: the run's shared M(0)."""
        return None

    def reference_model(self, m0: nn.Module, ctx: PhaseContext) -> tuple[nn.Module, str]:
        """The model (and its name) that pp, f and nfr measure this method against: M(0)
        itself, or M(0) in the classifier the method deploys (iCaRL's nearest mean of
        exemplars), so that a metric measures learning, not a switch of classifier. `ctx`
        is phase 0's (D(0) and the training data)."""
        return m0, "M(0)"

    # What the engine asks before a phase.
    def runs_phase(self, phase: int, n_phases: int) -> bool:
        return True

    def train_indices(self, split: IILSplit, phase: int) -> np.ndarray:
        """The samples this phase may train on: by default only the new data D(t)."""
        return split.part(phase)

    def budget(self, base: TrainConfig, phase: TrainConfig) -> TrainConfig:
        return phase

    def optimizer(self, module: nn.Module, budget: TrainConfig) -> torch.optim.Optimizer | None:
        """The optimiser of the phase's training, or None for the engine's SGD with the
        budget's settings. A method overrides it only to follow its authors' optimiser."""
        return None

    # The phase itself.
    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        raise NotImplementedError

    def trainable(self) -> nn.Module:
        """The module whose parameters the engine optimises (and puts in train mode)."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # The per-epoch record (epochs.jsonl): the engine sums each step's terms on the device
    # and reads them once an epoch, so a term costs no device sync of its own.
    def term_names(self) -> tuple[str, ...]:
        """The names of the loss terms `terms()` returns, the same every step (the engine
        records the total loss as "loss" beside them)."""
        return ()

    def note_terms(self, **terms: torch.Tensor) -> None:
        """For loss(): this step's terms, as it computed them (no extra pass, no .item())."""
        self._terms = {name: value.detach() for name, value in terms.items()}

    def terms(self) -> dict[str, torch.Tensor]:
        """The terms the last loss() noted, as 0-dim tensors on the device, handed over once
        (so that none travels into a saved resume state); {} when the method notes none."""
        return self.__dict__.pop("_terms", {})

    def epoch_facts(self) -> dict[str, float]:
        """Numbers of the epoch just ended that are no average over its steps (DBD's EMA
        steps and teacher-student distance), read after end_epoch; recorded beside the
        terms."""
        return {}

    def after_step(self, step: int) -> None:
        """Called after each optimiser step (`step` counts from 0 within the phase)."""

    def compiles(self) -> bool:
        """Whether the loss can go through torch.compile (config `compile`)."""
        return True

    def reads_buffers_each_step(self) -> bool:
        """Whether after_step reads the trainable module's buffers (then, under torchrun,
        the engine gives every rank rank 0's before each call)."""
        return False

    def end_epoch(self, epoch: int) -> None:
        """Called after each epoch (`epoch` counts from 0 within the phase)."""

    def end_phase(self) -> None:
        """Called once the last epoch has ended, before evaluation."""

    def deployed(self) -> nn.Module:
        """The model M(t) that the phase yields and that is evaluated."""
        raise NotImplementedError

    def also_evaluated(self) -> dict[str, nn.Module]:
        """Other models whose accuracy is reported beside the deployed one's, by name."""
        return {}

    def phase_facts(self) -> dict[str, float]:
        """Numbers the method measured during the phase (e.g. the epoch early stopping
        kept), recorded beside the phase's metrics in results.json."""
        return {}


class BaseTraining(Method):
    """A method's own base training on D(0) (see Method.base_trainer): it gives M(0) its
    architecture, then trains it as a phase; its label names the cache entry."""

    def architecture(self, model: nn.Module, ctx: PhaseContext) -> nn.Module:
        """`model`, freshly initialised with the config's architecture, turned into this
        base model's (e.g. another head); called before training and before loading a cached
        M(0), so it must not depend on D(0)'s content beyond its classes."""
        return model
