"""Fine-tuning with early stopping (FT-ES) on a held-out slice of the new data, METHOD.md §3.

The baseline the paper lists beside plain fine-tuning: "FT with early stopping (held-out part
of D(t))" (Nie et al., "Decision Boundary-aware Knowledge Consolidation Generates Better
Instance-Incremental Learner", arXiv 2406.03065, 2024); early stopping itself is the classic
regulariser (Prechelt, "Early Stopping - But When?", Neural Networks: Tricks of the Trade,
Springer, 1998).

Adapted to IIL (every class is an old class, no new heads; only D(t) may be used):
- a seeded random `holdout` fraction of D(t) is held out and never trained on; the phase
  trains with cross-entropy on the rest, from M(t-1), exactly as `finetune` does;
- the held-out score (eval mode, unaugmented) is taken for M(t-1) itself (epoch 0) and
  after every epoch; the best state is kept (ties keep the earlier one) and deployed at the
  end of the phase. Since M(t-1) is a candidate, a phase never makes the held-out score
  worse: when no epoch beats it, M(t) = M(t-1);
- `criterion`: the score is the held-out mean cross-entropy ("loss", lower is better) or
  accuracy ("accuracy"). The loss is the default: on a few hundred samples the accuracy
  moves in steps of a few tenths of a point and ties or flips on noise, while the loss is
  continuous and also sees how confident the right and wrong answers are;
- `patience`: once that many scored epochs in a row fail to beat the best, the kept state is
  frozen and no later epoch is scored. The engine runs every epoch of the budget whatever a
  method says, so "stopping" means only that: the training goes on, unseen, and its result
  is discarded. 0 means no patience limit: the best of all epochs is kept.
The held-out slice is random, not class-balanced, like the parts themselves (METHOD.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instil.data.split import IILSplit
from instil.errors import InstilError
from instil.methods import register_method
from instil.methods.base import PhaseContext, PhaseData, numpy_generator
from instil.methods.finetune import Finetune

CRITERIA = ("loss", "accuracy")


@dataclass(frozen=True)
class FinetuneESOptions:
    # Tuned on fmnist-iil10's validation slice (docs/tuning.md, sweep 3; the paper's values
    # are unknown): of 10 points (criterion × holdout 0.1-0.3 × patience 0 or 3), the held-out
    # loss on 30% of D(t) (~900 Fashion-MNIST images) with patience 3 ended highest (pp
    # -0.47 against -0.58 to -0.88); it mostly keeps M(t-1) itself.
    holdout: float = 0.3  # fraction of D(t) held out for scoring, never trained on
    patience: int = 3  # epochs without improvement before the kept state freezes; 0: never
    criterion: str = "loss"  # the score: held-out mean cross-entropy ("loss") or "accuracy"

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise InstilError(f"method_options.finetune-es.holdout={self.holdout}: must lie "
                              "strictly between 0 and 1")
        if self.patience < 0:
            raise InstilError(f"method_options.finetune-es.patience={self.patience}: must be "
                              ">= 0 (0: keep the best of all epochs)")
        if self.criterion not in CRITERIA:
            raise InstilError(f"method_options.finetune-es.criterion={self.criterion!r}: "
                              f"must be one of {', '.join(CRITERIA)}")


def split_holdout(indices: np.ndarray, fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): a random `fraction` of `indices` (at least one, and at least one
    left to train on) held out; both keep the order of `indices`."""
    n = len(indices)
    if n < 2:
        raise InstilError(f"finetune-es: a part of {n} sample(s) cannot be split into a "
                          "training and a held-out slice; use more data per phase")
    n_held = min(n - 1, max(1, int(round(fraction * n))))
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[:n_held]] = True
    return indices[~held], indices[held]


@torch.no_grad()
def held_out_accuracy(model: nn.Module, data: PhaseData, indices: np.ndarray) -> float:
    """Accuracy of arg-max model(x) on `indices` (eval mode, unaugmented; mode restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in data.batches(indices, train=False).epoch(0):
        correct += (model(x).argmax(1) == y).sum()
    model.train(was_training)
    return float(correct) / len(indices)


@torch.no_grad()
def held_out_loss(model: nn.Module, data: PhaseData, indices: np.ndarray) -> float:
    """Mean cross-entropy of model(x) on `indices` (eval mode, unaugmented; mode restored),
    summed in float64 on the device and read back once."""
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in data.batches(indices, train=False).epoch(0):
        total += F.cross_entropy(model(x).double(), y, reduction="sum")
    model.train(was_training)
    return float(total) / len(indices)


def copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer, on the model's device."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class BestKeeper:
    """Keeps the state with the best score offered so far (the highest, or the lowest when
    `lower_is_better`); a tie keeps the earlier state. After `patience` offers in a row
    without improvement it stops (0: never stops)."""

    def __init__(self, patience: int, lower_is_better: bool = False) -> None:
        self.patience, self.lower_is_better = patience, lower_is_better
        self.score = float("inf") if lower_is_better else -float("inf")
        self.epoch = -1
        self.state: dict[str, torch.Tensor] = {}
        self.since_best = 0

    @property
    def stopped(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def offer(self, epoch: int, score: float, model: nn.Module) -> bool:
        """Records `model` at `epoch` with `score`; True when it became the kept state."""
        if (score < self.score) if self.lower_is_better else (score > self.score):
            self.score, self.epoch, self.state = score, epoch, copy_state(model)
            self.since_best = 0
            return True
        self.since_best += 1
        return False


@register_method
class FinetuneES(Finetune):
    name = "finetune-es"
    description = "cross-entropy on D(t), deploying the epoch best on a held-out slice of D(t)"
    options_type = FinetuneESOptions

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        super().begin_phase(previous, ctx)
        ctx.require_data(self.label, "hold out a slice of D(t)")
        self.data, self.phase = ctx.data, ctx.phase
        # Drawn from torch's RNG, which the engine seeds before every phase.
        rng = numpy_generator()
        self.train_part, self.held_out = split_holdout(ctx.split.part(ctx.phase),
                                                       self.options.holdout, rng)
        self.keeper = BestKeeper(self.options.patience, self.options.criterion == "loss")
        self.keeper.offer(0, self.held_out_score(), self.model)

    def held_out_score(self) -> float:
        # Looked up at each call, so that tests can stand in for either score.
        score = held_out_loss if self.options.criterion == "loss" else held_out_accuracy
        return score(self.model, self.data, self.held_out)

    def train_indices(self, split: IILSplit, phase: int) -> np.ndarray:
        if phase != self.phase:
            raise RuntimeError(f"train_indices for phase {phase} after begin_phase of "
                               f"phase {self.phase}")
        return self.train_part

    def end_epoch(self, epoch: int) -> None:
        if not self.keeper.stopped:  # after it stops, later epochs are neither scored nor kept
            self.keeper.offer(epoch + 1, self.held_out_score(), self.model)

    def end_phase(self) -> None:
        self.model.load_state_dict(self.keeper.state)

    def phase_facts(self) -> dict[str, float]:
        # Which epoch was deployed (0: M(t-1) itself) and its held-out score: on
        # fmnist-iil10 the kept epoch is often an early one, still at a high learning rate.
        if self.options.criterion == "loss":
            return {"kept_epoch": self.keeper.epoch, "held_out_loss": self.keeper.score}
        return {"kept_epoch": self.keeper.epoch, "held_out_acc": 100 * self.keeper.score}
