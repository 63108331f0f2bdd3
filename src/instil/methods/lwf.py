"""Learning without Forgetting (LwF), METHOD.md §3.

Li and Hoiem, "Learning without Forgetting", ECCV 2016; extended in IEEE TPAMI 40(12), 2018
(online 2017). The new model learns the new data's labels while its outputs stay close to
the recorded outputs of the old model on the same new images (knowledge distillation,
Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", NIPS workshop 2014).

Adapted to IIL (every class is an old class, no new heads), the paper's "minimum revision":
- one head, shared by the old and the new task: the cross-entropy on D(t) and the
  distillation both act on all logits of the same model;
- loss = CE(S(x), y) + lambda_kd · T² · KL(σ(M(t-1)(x)/T) ‖ σ(S(x)/T)), with M(t-1) frozen
  in eval mode and S initialised from it; S is deployed.
Differences from the paper: LwF records the old model's responses once, before training, on
unaugmented images; here the old model answers on the fly, on the same augmented batch as
the student (as PyCIL's reproduction does), so both see the same input. The paper's
distillation is a cross-entropy to the softened old outputs: it differs from the KL only by
the old outputs' entropy, a constant, so the gradients are the same; the T² factor (Hinton
et al.) keeps the term's gradient scale independent of T and is not in the paper. LwF's
warm-up of a new head alone has no counterpart here, as there is no new head.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instil.errors import InstilError
from instil.methods import register_method
from instil.methods.base import PhaseContext
from instil.methods.finetune import Finetune


@dataclass(frozen=True)
class LwFOptions:
    # The paper's λ_o = 1 weighs its soft cross-entropy without T²; with Hinton's T² (here)
    # the distillation pulls T² = 4 times harder at T = 2. 1 is this project's choice.
    lambda_kd: float = 1.0
    temperature: float = 2.0  # paper: T = 2

    def __post_init__(self) -> None:
        if self.lambda_kd < 0:
            raise InstilError(f"method_options.lwf.lambda_kd={self.lambda_kd}: must be >= 0")
        if self.temperature <= 0:
            raise InstilError(f"method_options.lwf.temperature={self.temperature}: must be "
                              "positive")


def distillation(old_logits: torch.Tensor, new_logits: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """T² · KL(σ(old/T) ‖ σ(new/T)), averaged over the batch."""
    log_p = F.log_softmax(old_logits / temperature, dim=1)
    log_q = F.log_softmax(new_logits / temperature, dim=1)
    return temperature ** 2 * (log_p.exp() * (log_p - log_q)).sum(1).mean()


@register_method
class LwF(Finetune):
    name = "lwf"
    description = "cross-entropy on D(t) + distillation of all logits to M(t-1)"
    options_type = LwFOptions

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        super().begin_phase(previous, ctx)
        self.old = copy.deepcopy(previous).eval().requires_grad_(False)

    def term_names(self) -> tuple[str, ...]:
        """The cross-entropy and the distillation term (before its weight lambda_kd)."""
        return ("ce", "kd") if self.options.lambda_kd > 0 else ("ce",)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        if self.options.lambda_kd <= 0:
            self.note_terms(ce=ce)
            return ce
        with torch.no_grad():
            old_logits = self.old(x)
        kd = distillation(old_logits, logits, self.options.temperature)
        self.note_terms(ce=ce, kd=kd)
        return ce + self.options.lambda_kd * kd
