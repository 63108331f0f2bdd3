"""PODNet: pooled outputs distillation with a local-similarity classifier and exemplars.

Douillard, Cord, Ollion, Robert, Valle, "PODNet: Pooled Outputs Distillation for
Small-Tasks Incremental Learning", ECCV 2020. The student M(t) is trained on D(t) ∪ the
exemplars with
- the NCA loss of its local-similarity classifier (LSC): K proxies per class, each class's
  similarity a softmax-weighted mean of its proxies' cosines, a learned scale η and a margin
  δ on the true class, hinged at zero (paper eqs. for the LSC and L_LSC; defaults K = 10
  and δ = 0.6 as the paper's CIFAR-100 setting; the proxy softmax has no temperature, as
  in the paper; the authors' code uses 2·cos - 2 in place of cos: the constant cancels in
  the softmax and the factor 2 is in η's starting value). The margin is subtracted from
  the scaled logit, η·ŷ_y - δ, as the authors' code does, not inside the scale as the
  paper's text writes η(ŷ_y - δ). Measured on fmnist-iil10 (order seed 0): with the text's
  form, cosines between ReLU embeddings sit near 0.9 with class gaps near 0.15 < δ, so the
  loss falls by shrinking η, which crossed zero in the fourth epoch of phase 1 and turned
  every prediction into the least similar class (acc_test 0.00). In the code's form a
  correctly ranked sample raises η;
- POD-spatial: every stage output of M(t-1) (frozen, eval mode) and M(t), squared, summed
  over the width and over the height, the two poolings concatenated, L2-normalised, and
  compared by the Euclidean (Frobenius) distance; averaged over stages and the batch;
- POD-flat: the final embeddings compared, by default as the authors' released code does
  (1 - cosine, computed as ½‖ĥ' - ĥ‖² so that it is exactly zero at M(t) = M(t-1)); the
  paper's text writes an L2 distance, kept as flat_distance="l2".

Adapted to IIL (every class is old, no new heads):
- PODNet weighs POD by sqrt(#seen classes / #new classes); with no new classes that ratio
  has no meaning, so lambda_spatial and lambda_flat are fixed (paper: 3 and 1 on CIFAR-100).
- M(0): `podnet` starts from the run's shared M(0), which has a linear head; `podnet-lsc`
  (base="lsc") from an M(0) of its own, the base model PODNet assumes: the config's network
  with the LSC head (proxies drawn as a linear layer's weights, η = eta_init) trained on D(0)
  with the NCA loss alone under the base budget, as the authors train their first task;
  cached like the shared M(0) (its key names this base training and its options). Its
  metrics are measured against that M(0). For `podnet`, at phase 1 the head is replaced by an LSC
  imprinted from class features, as PODNet creates the weights of every class it adds: the
  normalised M(0) embeddings of D(1) ∪ the exemplars, per class clustered into K proxies
  by spherical k-means (the authors' "imprinted + k-means" setting). Initialising from the
  old linear head instead was rejected: K copies of one row never separate under the
  symmetric proxy softmax, and a cosine classifier has no place for the linear head's bias
  or the feature norms, so it would not keep M(0)'s decisions anyway. A class without any
  sample takes the old head's (normalised) row in all its proxies. η starts at 2.0, the
  authors' starting scale in cosine units. Later phases keep the LSC head.
- The exemplar memory (per_class per class, herding) is filled at phase 1 from D(0) with
  M(0)'s features, as base training would have left it, and re-selected from old
  exemplars ∪ D(t) with M(t)'s features at the end of every phase.
- Every proxy stays trainable: the authors' CIFAR configuration freezes the old classes'
  weights, which in IIL would freeze the whole classifier.

Simplifications: no class-balanced finetuning at the end of a phase and no NME
evaluation (the deployed model is the CNN with its LSC); the backbone keeps its last ReLU
(PODNet removes it), so the embeddings live in the positive orthant; the engine's phase
budget and optimiser are used. For an MLP the stages are its hidden ReLU outputs; a vector
is pooled as a 1x1 map, so POD-spatial becomes the distance of its L2-normalised squares.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instil.data.split import IILSplit
from instil.errors import InstilError
from instil.methods import register_method, register_variant
from instil.methods.base import BaseTraining, Method, PhaseContext, PhaseData
from instil.methods.memory import ExemplarMemory, embed, herding_selector
from instil.models.resnet import BasicBlock

FLAT_DISTANCES = ("cosine", "l2")
BASES = ("shared", "lsc")
# Lloyd iterations of the proxy imprinting; k-means on a few hundred vectors settles fast.
KMEANS_ITERATIONS = 20


@dataclass(frozen=True)
class PODNetOptions:
    lambda_spatial: float = 3.0  # paper (CIFAR-100), without the sqrt(seen/new) schedule
    lambda_flat: float = 1.0  # paper, idem
    proxies: int = 10  # K proxies per class, paper
    margin: float = 0.6  # δ of the NCA loss, paper
    # Learned scale η: the authors' code starts η = 1 on 2·cos − 2, i.e. 2 on the cosine.
    eta_init: float = 2.0
    flat_distance: str = "cosine"  # the authors' code; "l2" as the paper writes it
    per_class: int = 20  # exemplars per class (the usual 20 of CIFAR-100 work)
    # shared: the run's M(0) (linear head, imprinted LSC at phase 1); lsc: its own M(0).
    base: str = "shared"

    def __post_init__(self) -> None:
        if self.lambda_spatial < 0 or self.lambda_flat < 0:
            raise InstilError("method_options.podnet.lambda_spatial/lambda_flat: must be >= 0")
        if self.proxies < 1:
            raise InstilError(f"method_options.podnet.proxies={self.proxies}: must be >= 1")
        if self.margin < 0:
            raise InstilError(f"method_options.podnet.margin={self.margin}: must be >= 0")
        if self.eta_init <= 0:
            raise InstilError(f"method_options.podnet.eta_init={self.eta_init}: must be > 0")
        if self.flat_distance not in FLAT_DISTANCES:
            raise InstilError(f"method_options.podnet.flat_distance={self.flat_distance!r}: "
                              f"one of {', '.join(FLAT_DISTANCES)}")
        if self.per_class < 1:
            raise InstilError(f"method_options.podnet.per_class={self.per_class}: must be >= 1")
        if self.base not in BASES:
            raise InstilError(f"method_options.podnet.base={self.base!r}: one of "
                              f"{', '.join(BASES)}")


# --- stage outputs -----------------------------------------------------------------------

def stage_modules(features: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the stages POD distils: torchvision's layer1..layer4;
    the last BasicBlock of every stage of our small-image ResNets (a block with a projection
    shortcut opens a new stage); the hidden ReLUs of an MLP."""
    layers = [getattr(features, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Module) for layer in layers):
        return layers
    blocks = [m for m in features.modules() if isinstance(m, BasicBlock)]
    if blocks:
        following = blocks[1:] + [None]
        return [b for b, nxt in zip(blocks, following)
                if nxt is None or not isinstance(nxt.shortcut, nn.Identity)]
    relus = [m for m in features.modules() if isinstance(m, nn.ReLU)]
    if relus:
        return relus
    raise InstilError(f"podnet: cannot find the stages of {type(features).__name__} "
                      "(no ResNet layers, BasicBlocks or ReLUs)")


@contextlib.contextmanager
def collect_stages(features: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of `features` appends its stage outputs, in call
    order, to the yielded list. The hooks live only as long as the block, so that no hook is
    deep-copied into the next phase's models."""
    outputs: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        outputs.append(output)

    handles = [m.register_forward_hook(keep) for m in stage_modules(features)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


# --- POD losses ----------------------------------------------------------------------------

def pod_pooled(stage: torch.Tensor) -> torch.Tensor:
    """A stage output (B, C, H, W) squared, summed over the width and over the height,
    concatenated and L2-normalised per sample. A vector (B, C) counts as a 1x1 map."""
    a = stage.pow(2)
    if a.dim() == 2:
        a = a[:, :, None, None]
    width_pooled = a.sum(dim=3).flatten(1)  # (B, C·H)
    height_pooled = a.sum(dim=2).flatten(1)  # (B, C·W)
    return F.normalize(torch.cat([width_pooled, height_pooled], dim=1), dim=1)


def pod_spatial(old: list[torch.Tensor], new: list[torch.Tensor]) -> torch.Tensor:
    """Mean over stages of the batch-mean distance between pooled old and new outputs."""
    if len(old) != len(new) or not old:
        raise InstilError(f"podnet: {len(old)} old and {len(new)} new stage outputs")
    distances = [torch.linalg.vector_norm(pod_pooled(a) - pod_pooled(b), dim=1).mean()
                 for a, b in zip(old, new)]
    return torch.stack(distances).mean()


def pod_flat(old: torch.Tensor, new: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Distance of the final embeddings, batch mean: 1 - cos (as ½‖ĥ' - ĥ‖², exact zero for
    equal inputs) or the L2 distance."""
    old, new = old.flatten(1), new.flatten(1)
    if distance == "cosine":
        gap = F.normalize(old, dim=1) - F.normalize(new, dim=1)
        return 0.5 * gap.pow(2).sum(1).mean()
    if distance == "l2":
        return torch.linalg.vector_norm(old - new, dim=1).mean()
    raise InstilError(f"podnet: unknown flat distance {distance!r}")


# --- local-similarity classifier ---------------------------------------------------------

class LocalSimilarityClassifier(nn.Module):
    """K proxies per class; a class's similarity is the softmax-weighted mean of the cosines
    of its proxies with the embedding; the class scores are η · similarity. Proxies of class
    c are rows c·K .. c·K + K - 1."""

    def __init__(self, proxies: torch.Tensor, num_classes: int, eta_init: float) -> None:
        super().__init__()
        if proxies.shape[0] % num_classes:
            raise InstilError(f"podnet: {proxies.shape[0]} proxies for {num_classes} classes")
        self.num_classes = num_classes
        self.proxies_per_class = proxies.shape[0] // num_classes
        self.proxies = nn.Parameter(proxies.detach().clone())
        self.eta = nn.Parameter(torch.tensor(float(eta_init), device=proxies.device))

    def similarities(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, classes) class similarities in [-1, 1], before the scale η."""
        cos = F.normalize(embedding.flatten(1), dim=1) @ F.normalize(self.proxies, dim=1).T
        cos = cos.view(len(cos), self.num_classes, self.proxies_per_class)
        return (F.softmax(cos, dim=2) * cos).sum(2)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.eta * self.similarities(embedding)


def nca_loss(similarities: torch.Tensor, eta: torch.Tensor, labels: torch.Tensor,
             margin: float) -> torch.Tensor:
    """[-log(exp(η ŷ_y - δ) / Σ_{c≠y} exp(η ŷ_c))]_+, batch mean: the true class is left
    out of the denominator, so the hinge keeps an already separated sample at zero. δ is in
    logit units (see the module docstring for why it is not scaled by η)."""
    true = F.one_hot(labels, similarities.shape[1]).bool()
    logits = eta * similarities - margin * true.to(similarities.dtype)
    positive = logits.gather(1, labels[:, None]).squeeze(1)
    negatives = logits.masked_fill(true, float("-inf")).logsumexp(dim=1)
    return F.relu(negatives - positive).mean()


def spherical_kmeans(vectors: torch.Tensor, k: int,
                     iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """k unit centres of unit `vectors` (cosine assignment); starts from k distinct random
    vectors drawn from torch's seeded generator. With fewer than k vectors, the vectors
    themselves, repeated (repeated proxies act as one)."""
    n = len(vectors)
    if n <= k:
        return vectors[torch.arange(k, device=vectors.device) % n].clone()
    centres = vectors[torch.randperm(n, device=vectors.device)[:k]].clone()
    for _ in range(iterations):
        assign = (vectors @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, vectors)
        filled = torch.bincount(assign, minlength=k) > 0  # an empty cluster keeps its centre
        centres = torch.where(filled[:, None], F.normalize(sums, dim=1), centres)
    return centres


def imprint_proxies(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int,
                    fallback: torch.Tensor) -> torch.Tensor:
    """(classes·K, D) proxies: per class, k-means centres of its unit embeddings; a class
    with no embedding repeats its `fallback` row (e.g. the old linear head's)."""
    labels = labels.to(embeddings.device)
    rows = []
    for c in range(num_classes):
        own = embeddings[labels == c]
        if len(own):
            rows.append(spherical_kmeans(own, k))
        else:
            rows.append(F.normalize(fallback[c], dim=0).expand(k, -1))
    return torch.cat(rows)


def lsc_from_linear(model: nn.Module, data: PhaseData, indices: np.ndarray,
                    options: PODNetOptions) -> LocalSimilarityClassifier:
    """The LSC that replaces `model`'s linear head, imprinted from its own features."""
    head = model.head
    if not isinstance(head, nn.Linear):
        raise InstilError(f"podnet: expects a model with a linear head, got "
                          f"{type(head).__name__}")
    vectors = embed(model.features, data, indices)
    labels = data.labels(indices)
    proxies = imprint_proxies(vectors, labels, data.num_classes, options.proxies,
                              head.weight.detach())
    return LocalSimilarityClassifier(proxies, data.num_classes, options.eta_init)


def random_lsc(num_features: int, num_classes: int, options: LSCBaseOptions,
               device: torch.device) -> LocalSimilarityClassifier:
    """An LSC with proxies drawn as a linear layer's weights (std 1/sqrt(features), as the
    authors' Kaiming init with a linear gain), from torch's seeded generator."""
    proxies = torch.randn(num_classes * options.proxies, num_features, device=device)
    return LocalSimilarityClassifier(proxies / num_features ** 0.5, num_classes,
                                     options.eta_init)


@dataclass(frozen=True)
class LSCBaseOptions:
    """The options of PODNet that its base training depends on (and its cache key)."""

    proxies: int = 10
    margin: float = 0.6
    eta_init: float = 2.0


class LSCBaseTraining(BaseTraining):
    """PODNet's own M(0): the network with an LSC head, trained on D(0) with the NCA loss."""

    name = "podnet-lsc-base"
    options_type = LSCBaseOptions

    def architecture(self, model: nn.Module, ctx: PhaseContext) -> nn.Module:
        if not isinstance(getattr(model, "head", None), nn.Linear):
            raise InstilError(f"podnet: expects a model with a linear head, got "
                              f"{type(model).__name__}")
        model.head = random_lsc(model.num_features, model.head.out_features, self.options,
                                next(model.parameters()).device)
        return model

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        self.model = previous.requires_grad_(True)

    def trainable(self) -> nn.Module:
        return self.model

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        head = self.model.head
        return nca_loss(head.similarities(self.model.features(x)), head.eta, y,
                        self.options.margin)

    def deployed(self) -> nn.Module:
        return self.model


@register_method
class PODNet(Method):
    name = "podnet"
    description = "pooled outputs distillation, local-similarity classifier, exemplars"
    uses_old_data = True
    options_type = PODNetOptions

    def __init__(self, options: PODNetOptions | None = None) -> None:
        super().__init__(options)
        self.memory: ExemplarMemory | None = None

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        ctx.require_data(self.label, "keep exemplars")
        if not hasattr(previous, "features") or not hasattr(previous, "head"):
            raise InstilError(f"podnet: expects a Classifier, got {type(previous).__name__}")
        self.data, self.new = ctx.data, ctx.split.part(ctx.phase)
        if self.memory is None:
            self.memory = ExemplarMemory(self.options.per_class, ctx.data.num_classes)
        if not len(self.memory):  # what base training on D(0) would have left behind
            base = ctx.split.part(0)
            self.memory.update(base, ctx.data.labels(base),
                               herding_selector(previous.features, ctx.data))
        self.teacher = copy.deepcopy(previous).eval().requires_grad_(False)
        self.student = copy.deepcopy(previous).requires_grad_(True)
        if not isinstance(self.student.head, LocalSimilarityClassifier):
            seen = np.concatenate([self.new, self.memory.indices()])
            self.student.head = lsc_from_linear(self.student, ctx.data, seen, self.options)

    def base_trainer(self) -> BaseTraining | None:
        if self.options.base != "lsc":
            return None
        o = self.options
        trainer = LSCBaseTraining(LSCBaseOptions(o.proxies, o.margin, o.eta_init))
        trainer.label = self.label  # the cache entry and logs name the variant
        return trainer

    def reference_model(self, m0: nn.Module, ctx: PhaseContext) -> tuple[nn.Module, str]:
        if self.options.base == "lsc":
            return m0, "its own M(0) (LSC head, NCA loss on D(0))"
        return m0, "M(0)"

    def train_indices(self, split: IILSplit, phase: int) -> np.ndarray:
        return self.memory.with_part(split.part(phase))

    def trainable(self) -> nn.Module:
        return self.student

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        o = self.options
        with torch.no_grad(), collect_stages(self.teacher.features) as old_stages:
            old_embedding = self.teacher.features(x)
        with collect_stages(self.student.features) as new_stages:
            embedding = self.student.features(x)
        head = self.student.head
        nca = nca_loss(head.similarities(embedding), head.eta, y, o.margin)
        loss, terms = nca, {"nca": nca}
        if o.lambda_spatial > 0:
            terms["pod_spatial"] = pod_spatial(old_stages, new_stages)
            loss = loss + o.lambda_spatial * terms["pod_spatial"]
        if o.lambda_flat > 0:
            terms["pod_flat"] = pod_flat(old_embedding, embedding, o.flat_distance)
            loss = loss + o.lambda_flat * terms["pod_flat"]
        self.note_terms(**terms)
        return loss

    def term_names(self) -> tuple[str, ...]:
        """The NCA loss and the POD terms (before their lambdas); the exemplars' share of
        the training set is an epoch fact."""
        o = self.options
        return (("nca",) + (("pod_spatial",) if o.lambda_spatial > 0 else ())
                + (("pod_flat",) if o.lambda_flat > 0 else ()))

    def epoch_facts(self) -> dict[str, float]:
        return {"memory_share": self.memory.share_of(self.new)}

    def end_phase(self) -> None:
        self.memory.update(self.new, self.data.labels(self.new),
                           herding_selector(self.student.features, self.data))

    def deployed(self) -> nn.Module:
        return self.student

    def phase_facts(self) -> dict[str, float]:
        # The learned scale: it must stay positive (see the NCA margin above).
        return {"eta": self.student.head.eta.item()}


register_variant("podnet-lsc", PODNet, base="lsc")
