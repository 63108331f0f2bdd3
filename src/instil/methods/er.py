"""Experience replay (ER) with a fixed exemplar budget: the common replay reference.

Chaudhry, Rohrbach, Elhoseiny, Ajanthan, Dokania, Torr and Ranzato, "On Tiny Episodic
Memories in Continual Learning", arXiv 1902.10486 (2019); also Rolnick, Ahuja, Schwarz,
Lillicrap and Wayne, "Experience Replay for Continual Learning", NeurIPS 2019.

Adapted to IIL (every class is an old class, no new heads):
- the memory holds `per_class` exemplars of every class (budget = per_class × classes), filled
  at phase 1 from D(0) and, at the end of every phase, re-selected class by class from the old
  exemplars and D(t) at random, each old exemplar weighted by the samples it stands for
  (memory.random_selector: close to reservoir sampling over everything seen);
- each phase trains from M(t-1) with plain cross-entropy; the trained model is deployed;
- `replay`: "batch" (the paper's, and Mammoth's ER) trains on D(t), and beside every batch of
  it draws a batch of exemplars; both go through one forward (so BatchNorm sees them
  together) and one mean cross-entropy. The memory batches cycle through the memory epoch
  after epoch, each reshuffled and augmented as training batches are. "mixed" shuffles the
  exemplars into the phase's training set instead, so replay is only as frequent as their
  share of D(t) ∪ memory (~6% at 200 exemplars): kept to compare with earlier results.
Simplification: the weighted draw without replacement approximates a reservoir rather than
being one.
Uses old data: every table marks it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instil.data.loaders import Batch, Batches
from instil.data.split import IILSplit
from instil.errors import InstilError
from instil.methods import register_method
from instil.methods.base import PhaseContext, PhaseData, numpy_generator
from instil.methods.finetune import Finetune
from instil.methods.memory import ExemplarMemory, random_selector

REPLAYS = ("batch", "mixed")
# The memory stream's own seed (0 is the engine's stream): its order and augmentation then
# differ from those of the new data's batches.
MEMORY_SEED = 1


@dataclass(frozen=True)
class EROptions:
    per_class: int = 20  # the usual 20 exemplars per class of CIFAR-100 replay work
    replay: str = "batch"  # "batch": a memory batch beside every new batch (paper); "mixed"
    replay_batch_size: int = 0  # exemplars per memory batch; 0: the phase's batch size (paper)

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise InstilError(f"method_options.er.per_class={self.per_class}: must be at least 1")
        if self.replay not in REPLAYS:
            raise InstilError(f"method_options.er.replay={self.replay!r}: must be one of "
                              f"{', '.join(REPLAYS)}")
        if self.replay_batch_size < 0:
            raise InstilError(f"method_options.er.replay_batch_size={self.replay_batch_size}: "
                              "must be >= 0 (0: the phase's batch size)")


class MemoryStream:
    """Endless training batches of the exemplars, epoch after epoch. Where it stands is two
    ints (the epoch and the batches already drawn from it), so that it pickles without its
    iterator and, unpickled, goes on with exactly the batch the original would draw next."""

    def __init__(self, data: PhaseData, indices: np.ndarray, batch_size: int | None) -> None:
        self.data, self.indices, self.batch_size = data, indices, batch_size
        self.epoch, self.position = 0, 0
        self._batches: Batches | None = None
        self._live: Iterator[Batch] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A generator cannot be pickled, and the batches hold the device's data set (or a
        # DataLoader's workers): both are rebuilt from the cursor when next needed.
        return {**self.__dict__, "_batches": None, "_live": None}

    @torch.compiler.disable  # Python iteration with side effects: a graph break, not a trace
    def draw(self) -> Batch:
        for _ in range(2):  # at most one change of epoch: a training epoch has a batch
            if self._live is None:
                if self._batches is None:  # the memory is fixed until the phase ends
                    self._batches = self.data.batches(self.indices, train=True,
                                                      batch_size=self.batch_size,
                                                      seed=MEMORY_SEED)
                self._live = itertools.islice(self._batches.epoch(self.epoch),
                                              self.position, None)
            batch = next(self._live, None)
            if batch is not None:
                self.position += 1
                return batch
            self.epoch, self.position, self._live = self.epoch + 1, 0, None
        raise InstilError(f"er: the memory of {len(self.indices)} exemplars gives no batch")


@register_method
class ER(Finetune):
    name = "er"
    description = "experience replay: CE on every D(t) batch plus a batch of random exemplars " \
                  "(uses old data)"
    uses_old_data = True
    options_type = EROptions

    def __init__(self, options: EROptions | None = None) -> None:
        super().__init__(options)
        self.memory: ExemplarMemory | None = None
        self.stream: MemoryStream | None = None

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        super().begin_phase(previous, ctx)
        _, self.data = ctx.require_data(self.label, "keep exemplars")
        self.split, self.phase = ctx.split, ctx.phase
        self.rng = numpy_generator()
        if self.memory is None:  # phase 1: the memory starts as a sample of D(0)
            self.memory = ExemplarMemory(self.options.per_class, self.data.num_classes)
            base = ctx.split.part(0)
            self.memory.update(base, self.data.labels(base), random_selector(self.rng))
        if self.options.replay == "batch":
            self.stream = MemoryStream(self.data, self.memory.indices(),
                                       self.options.replay_batch_size or None)

    def train_indices(self, split: IILSplit, phase: int) -> np.ndarray:
        if self.options.replay == "mixed":
            return self.memory.with_part(split.part(phase))
        return split.part(phase)

    def term_names(self) -> tuple[str, ...]:
        """The cross-entropy; the share of exemplars among the samples trained on is a term
        with memory batches (exact per step), an epoch fact with replay=mixed (their share
        of the phase's training set)."""
        return ("ce", "memory_share") if self.options.replay == "batch" else ("ce",)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.stream is None:
            return super().loss(x, y)
        mx, my = self.stream.draw()
        loss = F.cross_entropy(self.model(torch.cat([x, mx])), torch.cat([y, my]))
        # A fill on the device, not a copy from the host: no sync.
        share = torch.full((), len(my) / (len(y) + len(my)), device=y.device)
        self.note_terms(ce=loss, memory_share=share)
        return loss

    def epoch_facts(self) -> dict[str, float]:
        if self.stream is not None:
            return {}  # memory_share is a term: each step's own
        # Mixed: the exemplars are shuffled into the phase's training set.
        return {"memory_share": self.memory.share_of(self.split.part(self.phase))}

    def end_phase(self) -> None:
        new = self.split.part(self.phase)
        self.memory.update(new, self.data.labels(new), random_selector(self.rng))
        self.stream = None  # its memory is the old one; the next phase builds its own
