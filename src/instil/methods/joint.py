"""Joint training: the upper bound that sees old data.

Retrains a fresh model on D(0) ∪ … ∪ D(t) with the base-training budget. It breaks the IIL
rule (the old data is gone), so every table marks it; it is a reference, not a contender.
By default it runs only after the last phase, its most expensive and most telling point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from instil.config import TrainConfig
from instil.data.split import IILSplit
from instil.methods import register_method
from instil.methods.base import PhaseContext
from instil.methods.finetune import Finetune


@dataclass(frozen=True)
class JointOptions:
    every_phase: bool = False


@register_method
class Joint(Finetune):
    name = "joint"
    description = "retrain from scratch on D(0..t) (uses old data; upper bound)"
    uses_old_data = True
    options_type = JointOptions

    def runs_phase(self, phase: int, n_phases: int) -> bool:
        return self.options.every_phase or phase == n_phases

    def train_indices(self, split: IILSplit, phase: int) -> np.ndarray:
        return split.union(phase)

    def budget(self, base: TrainConfig, phase: TrainConfig) -> TrainConfig:
        return base

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        self.model = ctx.new_model()
