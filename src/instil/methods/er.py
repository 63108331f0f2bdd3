"""Experience replay (ER) with a fixed exemplar budget: the common replay reference.

Chaudhry, Rohrbach, Elhoseiny, Ajanthan, Dokania, Torr and Ranzato, "On Tiny Episodic
Memories in Continual Learning", arXiv 1902.10486 (2019); also Rolnick, Ahuja, Schwarz,
Lillicrap and Wayne, "Experience Replay for Continual Learning", NeurIPS 2019.

Adapted to IIL (every class is an old class, no new heads):
- the memory holds `per_class` exemplars of every class (budget = per_class × classes), filled
  at phase 1 from D(0) and, at the end of every phase, re-selected class by class from the old
  exemplars and D(t) at random, each old exemplar weighted by the samples it stands for
  (memory.random_selector: close to reservoir sampling over everything seen);
- each phase trains with plain cross-entropy on D(t) ∪ memory, from M(t-1); the trained model
  is deployed.
Simplifications: the exemplars are shuffled into the phase's training set instead of a
memory batch of its own at every step (the engine owns the batches), so replay is as frequent
as the exemplars' share of D(t) ∪ memory; and the weighted draw without replacement
approximates a reservoir rather than being one.
Uses old data: every table marks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from instil.data.split import IILSplit
from instil.errors import InstilError
from instil.methods import register_method
from instil.methods.base import PhaseContext, numpy_generator
from instil.methods.finetune import Finetune
from instil.methods.memory import ExemplarMemory, random_selector


@dataclass(frozen=True)
class EROptions:
    per_class: int = 20  # the usual 20 exemplars per class of CIFAR-100 replay work

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise InstilError(f"method_options.er.per_class={self.per_class}: must be at least 1")


@register_method
class ER(Finetune):
    name = "er"
    description = "experience replay: CE on D(t) ∪ random exemplars (uses old data)"
    uses_old_data = True
    options_type = EROptions

    def __init__(self, options: EROptions | None = None) -> None:
        super().__init__(options)
        self.memory: ExemplarMemory | None = None

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        super().begin_phase(previous, ctx)
        _, self.data = ctx.require_data(self.label, "keep exemplars")
        self.split, self.phase = ctx.split, ctx.phase
        self.rng = numpy_generator()
        if self.memory is None:  # phase 1: the memory starts as a sample of D(0)
            self.memory = ExemplarMemory(self.options.per_class, self.data.num_classes)
            base = ctx.split.part(0)
            self.memory.update(base, self.data.labels(base), random_selector(self.rng))

    def train_indices(self, split: IILSplit, phase: int) -> np.ndarray:
        return self.memory.with_part(split.part(phase))

    def end_phase(self) -> None:
        new = self.split.part(self.phase)
        self.memory.update(new, self.data.labels(new), random_selector(self.rng))

