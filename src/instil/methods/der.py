"""DER: a dynamically expandable representation, one new feature extractor per phase.

Yan, Xie, He, "DER: Dynamically Expandable Representation for Class Incremental Learning",
CVPR 2021. At every phase a new feature extractor is added; the old ones are frozen (no
gradient, BatchNorm in eval mode); their features and the new one's are concatenated and
read by a new linear head over the concatenation. An auxiliary head on the new extractor's
features alone pushes it to learn features of its own: L = CE(main) + λ_aux · CE(aux)
(paper: λ_a = 1). DER replays exemplars in its paper, so this does too.

Adapted to IIL (every class is old, no new heads):
- The new extractor starts as a copy of the newest extractor, as PyCIL does (init="fresh":
  from ctx.new_model() instead, as the paper describes). Same classes, same distribution:
  the newest extractor is already a good representation, and one D(t) plus the exemplars
  (a few percent of the data) is too little to learn a fresh one from scratch.
- The main head starts from M(t-1)'s head on the old extractors' columns and zero on the
  new extractor's, with M(t-1)'s bias: each phase starts from M(t-1)'s function exactly
  (in eval mode). The zero columns still get gradients, and the auxiliary loss trains the
  new extractor from the first step.
- The auxiliary head is over all classes, since there is no new class for DER's
  "new classes + 1 old bucket" head. With the copied extractor it starts as the previous
  phase's auxiliary head (at phase 1: M(0)'s head), which reads exactly the extractor it
  was copied from; with init="fresh" it starts fresh. It is not deployed.
- The exemplar memory (per_class per class, herding or random) is filled at phase 1 from
  D(0) with M(0)'s features, as base training would have left it, and re-selected from old
  exemplars ∪ D(t) with the concatenated features at the end of every phase; every phase
  trains on D(t) ∪ exemplars.

Simplifications: no channel pruning (DER's learned masks and sparsity loss) and no
class-balanced classifier re-training at the end of a phase (it corrects the new-class bias
that IIL does not have). So the deployed model grows by one whole extractor plus
classes × extractor width head weights per phase; the engine records its parameter count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instil.data.split import IILSplit
from instil.errors import InstilError
from instil.methods import register_method
from instil.methods.base import Method, PhaseContext, numpy_generator
from instil.methods.memory import ExemplarMemory, Selector, herding_selector, random_selector
from instil.models.classifier import Classifier

INITS = ("previous", "fresh")
SELECTORS = ("herding", "random")


@dataclass(frozen=True)
class DEROptions:
    lambda_aux: float = 1.0  # paper
    init: str = "previous"  # new extractor: copy of the newest (PyCIL), or "fresh"
    per_class: int = 20  # exemplars per class (the usual 20 of CIFAR-100 work)
    selector: str = "herding"  # how exemplars are chosen: "herding" or "random"

    def __post_init__(self) -> None:
        if self.lambda_aux < 0:
            raise InstilError(f"method_options.der.lambda_aux={self.lambda_aux}: must be >= 0")
        if self.init not in INITS:
            raise InstilError(f"method_options.der.init={self.init!r}: one of "
                              f"{', '.join(INITS)}")
        if self.per_class < 1:
            raise InstilError(f"method_options.der.per_class={self.per_class}: must be >= 1")
        if self.selector not in SELECTORS:
            raise InstilError(f"method_options.der.selector={self.selector!r}: one of "
                              f"{', '.join(SELECTORS)}")


class ConcatFeatures(nn.Module):
    """The extractors' flattened features side by side. The first `frozen` extractors stay in
    eval mode whatever train() is asked, so that no pass updates their BatchNorm."""

    def __init__(self, extractors: list[nn.Module], dims: list[int], frozen: int) -> None:
        super().__init__()
        self.extractors = nn.ModuleList(extractors)
        self.dims = list(dims)
        self.frozen = frozen
        self.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([e(x).flatten(1) for e in self.extractors], dim=1)

    def train(self, mode: bool = True) -> ConcatFeatures:
        super().train(mode)
        for extractor in self.extractors[:self.frozen]:
            extractor.eval()
        return self


def extractors_of(model: nn.Module) -> tuple[list[nn.Module], list[int]]:
    """The extractors of M(t-1) and their widths: DER's own, or a plain Classifier's one."""
    if not isinstance(model, Classifier):
        raise InstilError(f"der: expects a Classifier, got {type(model).__name__}")
    if isinstance(model.features, ConcatFeatures):
        return list(model.features.extractors), list(model.features.dims)
    return [model.features], [model.num_features]


def expanded_head(old: nn.Linear, new_width: int) -> nn.Linear:
    """A head over [old features, new features]: the old head's weights and bias, zeros on
    the new extractor's columns, so it computes what `old` computed."""
    head = nn.Linear(old.in_features + new_width, old.out_features,
                     device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :old.in_features].copy_(old.weight)
        head.bias.copy_(old.bias)
    return head


def expand(previous: nn.Module, new_extractor: nn.Module, new_width: int) -> Classifier:
    """M(t-1) with its extractors frozen plus `new_extractor`, behind an expanded head."""
    extractors, dims = extractors_of(previous)
    for extractor in extractors:
        extractor.eval().requires_grad_(False)
    features = ConcatFeatures([*extractors, new_extractor], [*dims, new_width], len(extractors))
    device = previous.head.weight.device
    with torch.device(device):  # the placeholder head is built where the model lives
        model = Classifier(features, sum(features.dims), previous.head.out_features)
    model.head = expanded_head(previous.head, new_width)
    return model


@register_method
class DER(Method):
    name = "der"
    description = "dynamically expandable representation: one extractor per phase, exemplars"
    uses_old_data = True
    options_type = DEROptions
    unused_parameters = True  # the auxiliary head sits idle when lambda_aux is 0

    def __init__(self, options: DEROptions | None = None) -> None:
        super().__init__(options)
        self.memory: ExemplarMemory | None = None
        self.aux: nn.Linear | None = None  # the last phase's auxiliary head

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        ctx.require_data(self.label, "keep exemplars")
        previous = copy.deepcopy(previous)
        extractors, dims = extractors_of(previous)
        self.data, self.new = ctx.data, ctx.split.part(ctx.phase)
        # Random draws come from a generator seeded by torch's RNG (which the engine seeds).
        self.generator = numpy_generator()
        if self.memory is None:
            self.memory = ExemplarMemory(self.options.per_class, ctx.data.num_classes)
        if not len(self.memory):  # what base training on D(0) would have left behind
            base = ctx.split.part(0)
            self.memory.update(base, ctx.data.labels(base), self.selector(previous.features))
        if self.options.init == "previous":
            extractor, width = copy.deepcopy(extractors[-1]), dims[-1]
            aux = copy.deepcopy(self.aux if self.aux is not None else previous.head)
            if aux.in_features != width:  # started mid-run without the last phase's head
                aux = nn.Linear(width, ctx.data.num_classes, device=previous.head.weight.device)
        else:
            fresh = ctx.new_model()
            extractor, width = fresh.features, fresh.num_features
            aux = fresh.head
        extractor.requires_grad_(True).train()
        self.aux = aux.requires_grad_(True)
        self.model = expand(previous, extractor, width)
        self.parts = nn.ModuleDict({"extractor": extractor, "head": self.model.head,
                                    "aux": self.aux})

    def selector(self, features: nn.Module) -> Selector:
        """The exemplar selector of the options, herding on `features` or random. Built on
        demand rather than kept, so that the method holds no closure (--resume pickles it)."""
        if self.options.selector == "random":
            return random_selector(self.generator)
        return herding_selector(features, self.data)

    def train_indices(self, split: IILSplit, phase: int) -> np.ndarray:
        return self.memory.with_part(split.part(phase))

    def trainable(self) -> nn.Module:
        # Only the new parts: the engine's train() and optimiser never reach the old ones.
        return self.parts

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = self.model.features
        with torch.no_grad():
            old = [e(x).flatten(1) for e in features.extractors[:features.frozen]]
        new = features.extractors[-1](x).flatten(1)
        ce = F.cross_entropy(self.model.head(torch.cat([*old, new], dim=1)), y)
        if self.options.lambda_aux <= 0:
            self.note_terms(ce=ce)
            return ce
        aux = F.cross_entropy(self.aux(new), y)
        self.note_terms(ce=ce, aux=aux)
        return ce + self.options.lambda_aux * aux

    def term_names(self) -> tuple[str, ...]:
        """The cross-entropy and the auxiliary head's (before lambda_aux); the exemplars'
        share of the training set is an epoch fact."""
        return ("ce", "aux") if self.options.lambda_aux > 0 else ("ce",)

    def epoch_facts(self) -> dict[str, float]:
        return {"memory_share": self.memory.share_of(self.new)}

    def end_phase(self) -> None:
        select: Selector = self.selector(self.model.features)
        self.memory.update(self.new, self.data.labels(self.new), select)

    def deployed(self) -> nn.Module:
        return self.model

