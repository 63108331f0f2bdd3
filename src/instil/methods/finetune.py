"""Fine-tuning (FT): cross-entropy on the new data D(t), starting from M(t-1).

The plain baseline of METHOD.md §3; base training is this method on D(0) from a fresh model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from instil.methods import register_method
from instil.methods.base import Method, PhaseContext


@register_method
class Finetune(Method):
    name = "finetune"
    description = "cross-entropy on D(t) from M(t-1)"

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        self.model = copy.deepcopy(previous).requires_grad_(True)

    def trainable(self) -> nn.Module:
        return self.model

    def term_names(self) -> tuple[str, ...]:
        return ("ce",)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.model(x), y)
        self.note_terms(ce=loss)
        return loss

    def deployed(self) -> nn.Module:
        return self.model
