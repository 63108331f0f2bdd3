"""Online prototype learning (OnPro), adapted to instance-incremental learning.

Wei, Ye, Huang, Zhang and Shan, "Online Prototype Learning for Online Continual Learning",
ICCV 2023 (arXiv 2308.00301). An online continual learner: it sees each sample of the stream
once, replays a reservoir-sampled buffer, and trains a projection head beside the classifier:

- online prototype equilibrium (OPE): in every batch, the class means ("online prototypes")
  of the projections of two views are contrasted, each prototype against the other view's
  prototype of its class (positive) and every other prototype of both views (negatives).
  As in the authors' code it is applied twice, to the incoming batch and to the replayed one;
- adaptive prototypical feedback (APF): the replayed batch is mixed up before the
  cross-entropy. Most of it (`mixup_base_rate`) is mixed with random partners; the rest are
  mixtures of class pairs drawn with probability softmax(1 / distance) between the last
  step's replay prototypes, so that the classes the model confuses get their boundary
  enhanced;
- the instance-wise contrastive loss OnPro takes from OCM (Guo et al., ICML 2022), and the
  cross-entropy on the classifier. All terms weigh 1, as in the authors' code.

IIL adaptation (METHOD.md §3: "single pass with a replay buffer"). Every class is old, so
there are no new heads and the classifier keeps its classes:
- one pass over each D(t) at the authors' batch size, optimiser and learning rate: `budget()`
  is the phase budget with epochs = 1, batch_size = `batch_size` (10) incoming samples per
  step, lr = `lr` (5e-4), weight_decay = `weight_decay` (1e-4), a constant rate and no
  warm-up, and `optimizer()` is the authors' Adam(betas=(0.9, 0.99)). So a phase takes
  |D(t)| / batch_size steps, the authors' single pass over a task (fmnist-iil10: a phase of
  3000 samples is 300 steps). The authors keep one Adam over all tasks; here each phase's
  network is a new copy of M(t-1), so the method keeps Adam's state (moments and step
  count) at a phase's end and loads it into the next phase's Adam, a plain state dict that
  pickles with the method for --resume. `optimizer: sgd` instead trains with the engine's
  SGD and the phase budget's batch size, learning rate and schedule (one pass), as before;
- the buffer (`buffer_per_class` × classes samples) starts as what a reservoir over D(0)
  would hold: a uniform random subset of D(0), with D(0)'s size counted as seen. It then
  runs on across every phase: each step replays `replay_batch_size` (64, the authors'
  buffer batch) buffer samples, or all when it holds fewer, then reservoir-updates the
  buffer with the incoming batch;
- the cross-entropy covers the incoming batch and the mixed replay batch. In the class-
  incremental paper the incoming batch gets no cross-entropy after the first task (against
  the bias towards new classes); IIL has no new classes, and D(t) is what must be learnt;
- the incoming batch, the replayed one, both their second views and the mixed replay go
  through the network in one forward pass, as all views do in the authors' code: BatchNorm
  normalises with, and updates its running statistics from, that concatenated batch;
- the projection head (an MLP on the classifier's features) is created at phase 1 and kept
  across phases; it is trained with the classifier and never deployed.

Simplifications, each for size or because the stream is not the paper's:
- the buffer holds device tensors of normalised samples: D(0)'s unaugmented, an incoming
  batch's as the engine augmented it (the authors store unaugmented images; the engine hands
  `loss()` augmented batches only);
- the second view of images is the authors' random resized crop (area scale in
  [`view_scale_min`, 1], aspect ratio in [3/4, 4/3], the box always inside the image, so no
  padding), horizontal flip and random grey (`view_grey`), done on the whole normalised
  batch on the device with one bilinear grid sample. The grey is the 0.299/0.587/0.114
  weighted mean of the normalised channels, not the luminance of the raw image (the batch is
  already normalised); a 1-channel image stays as it is. Feature vectors get Gaussian
  jitter (`view_noise`);
- OCM's instance loss is the plain supervised contrastive loss over the two views of the
  incoming and the (unmixed) replay batch; OCM's 16-fold rotation augmentation and its
  projection-to-feature-slice similarity are left out;
- APF draws the class pairs independently from their distribution (the authors round the
  expected counts) and applies each feedback mixture with probability `mixup_p` per sample
  (the authors: per pair); the first step of a run, with no prototypes yet, replays unmixed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instil.config import TrainConfig
from instil.errors import InstilError
from instil.methods import register_method
from instil.methods.base import Method, PhaseContext

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OnProOptions:
    buffer_per_class: int = 20  # the usual 20 per class of CIFAR-100 work (METHOD.md §3)
    proj_dim: int = 128  # authors' code: a 128-d projection
    proto_tau: float = 0.5  # authors' code: OPE temperature
    ins_tau: float = 0.07  # authors' code (from OCM): instance-loss temperature
    ope_weight: float = 1.0  # authors' code: all terms weigh 1
    ins_weight: float = 1.0
    apf: bool = True  # off: the replay batch is not mixed
    # APF, authors' code for 10-class sets (CIFAR-100: base rate 0.9, p 0.2).
    mixup_base_rate: float = 0.75  # share of the replay batch mixed with random partners
    mixup_p: float = 0.6  # probability that a replayed sample is mixed at all
    mixup_lower: float = 0.0  # random mixing weight ~ U(lower, upper)
    mixup_upper: float = 0.6
    mixup_alpha: float = 0.4  # feedback mixing weight ~ Beta(alpha, alpha)
    # Second view of images, authors' code: a random resized crop of at least this share of
    # the area, a random horizontal flip and random grey with this probability.
    view_scale_min: float = 0.3
    view_flip: bool = True
    view_grey: float = 0.25
    view_noise: float = 0.1  # second view of feature vectors: Gaussian jitter
    # Authors' code: Adam(lr 5e-4, betas (0.9, 0.99), weight decay 1e-4), constant rate,
    # 10 incoming and 64 replayed samples a step. "sgd": the engine's SGD and phase budget.
    optimizer: str = "adam"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 10
    replay_batch_size: int = 64

    def __post_init__(self) -> None:
        where = "method_options.onpro"
        if self.buffer_per_class < 1 or self.proj_dim < 1:
            raise InstilError(f"{where}.buffer_per_class and proj_dim must be at least 1")
        if self.proto_tau <= 0 or self.ins_tau <= 0:
            raise InstilError(f"{where}.proto_tau and ins_tau must be positive")
        if self.ope_weight < 0 or self.ins_weight < 0:
            raise InstilError(f"{where}.ope_weight and ins_weight must be >= 0")
        if not (0 <= self.mixup_base_rate <= 1 and 0 <= self.mixup_p <= 1):
            raise InstilError(f"{where}.mixup_base_rate and mixup_p must lie in [0, 1]")
        if not 0 <= self.mixup_lower <= self.mixup_upper <= 1:
            raise InstilError(f"{where}.mixup_lower <= mixup_upper must both lie in [0, 1]")
        if self.mixup_alpha <= 0:
            raise InstilError(f"{where}.mixup_alpha={self.mixup_alpha}: must be positive")
        if not 0 < self.view_scale_min <= 1:
            raise InstilError(f"{where}.view_scale_min={self.view_scale_min}: must lie in (0, 1]")
        if not 0 <= self.view_grey <= 1:
            raise InstilError(f"{where}.view_grey={self.view_grey}: must lie in [0, 1]")
        if self.view_noise < 0:
            raise InstilError(f"{where}.view_noise={self.view_noise}: must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise InstilError(f"{where}.optimizer={self.optimizer!r}: choose one of "
                              f"{', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise InstilError(f"{where}.lr={self.lr}: must be positive")
        if self.weight_decay < 0:
            raise InstilError(f"{where}.weight_decay={self.weight_decay}: must be >= 0")
        for key in ("batch_size", "replay_batch_size"):
            if getattr(self, key) < 1:
                raise InstilError(f"{where}.{key}={getattr(self, key)}: must be at least 1")


# --- the replay buffer -----------------------------------------------------------------------

class ReservoirBuffer:
    """At most `budget` samples of a stream, each seen sample kept with probability
    budget / seen (Vitter's algorithm R), held as device tensors. Random numbers come from a
    numpy generator on the host, so a run repeats on any device."""

    def __init__(self, budget: int, rng: np.random.Generator) -> None:
        if budget < 1:
            raise InstilError(f"replay buffer budget = {budget}: must be at least 1")
        self.budget = budget
        self.rng = rng
        self.seen = 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    def start(self, x: torch.Tensor, y: torch.Tensor, seen: int) -> None:
        """Content a reservoir holds after `seen` samples: a uniform subset of them (see
        `reservoir_subset`), so a long stream need not be replayed through `add`."""
        if len(y) > min(self.budget, seen):
            raise InstilError(f"{len(y)} samples cannot start a buffer of budget "
                              f"{self.budget} after {seen} seen")
        self.x, self.y, self.seen = x.detach().clone(), y.detach().clone(), seen

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Reservoir update with a batch, sample by sample in batch order."""
        x, y = x.detach(), y.detach()
        free = self.budget - len(self)
        if free > 0:
            take = min(free, len(y))
            self.x = x[:take].clone() if self.x is None else torch.cat([self.x, x[:take]])
            self.y = y[:take].clone() if self.y is None else torch.cat([self.y, y[:take]])
            self.seen += take
            x, y = x[take:], y[take:]
        if len(y) == 0:
            return
        # The i-th of these is the (seen + i + 1)-th sample: it replaces a uniform slot of
        # [0, seen + i + 1) when that slot lies in the buffer.
        counts = self.seen + 1 + np.arange(len(y))
        slots = np.floor(self.rng.random(len(y)) * counts).astype(np.int64)
        self.seen += len(y)
        kept = np.flatnonzero(slots < self.budget)
        # Two samples drawing one slot: the later one wins, as when adding one by one.
        _, last = np.unique(slots[kept][::-1], return_index=True)
        kept = kept[::-1][last]
        if len(kept):
            src = torch.as_tensor(kept, device=y.device)
            dst = torch.as_tensor(slots[kept], device=y.device)
            self.x[dst] = x[src]
            self.y[dst] = y[src]

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """min(n, len) distinct buffer samples, uniformly."""
        pick = self.rng.choice(len(self), size=min(n, len(self)), replace=False)
        pick = torch.as_tensor(pick, device=self.y.device)
        return self.x[pick], self.y[pick]


def reservoir_subset(indices: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """What a reservoir of `budget` holds after the stream `indices`: each kept with
    probability budget / len, i.e. a uniform subset of min(budget, len) of them."""
    return rng.choice(indices, size=min(budget, len(indices)), replace=False)


# --- online prototype equilibrium ------------------------------------------------------------

def class_prototypes(z: torch.Tensor, y: torch.Tensor, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of `z` per class (zero for a class absent from the batch), and which classes
    are present. Masks instead of boolean indexing keep shapes fixed (no device sync)."""
    sums = z.new_zeros(num_classes, z.shape[1]).index_add(0, y, z)
    counts = torch.bincount(y, minlength=num_classes)
    return sums / counts.clamp_min(1)[:, None].to(z.dtype), counts > 0


def prototype_contrast(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, num_classes: int,
                       tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OPE's loss on one batch: two views' projections z1, z2 (rows L2-normalised).

    The prototypes of both views (2k vectors for the k classes present) are normalised; each
    one's positive is its class's prototype in the other view, its negatives every other
    prototype; the loss is the mean InfoNCE over the 2k. Returns the loss, the prototypes
    averaged over the views (for APF) and the present classes."""
    p1, present = class_prototypes(z1, y, num_classes)
    p2, _ = class_prototypes(z2, y, num_classes)
    p = F.normalize(torch.cat([p1, p2]), dim=1)
    valid = torch.cat([present, present])
    k2 = 2 * num_classes
    allowed = valid[None, :] & ~torch.eye(k2, dtype=torch.bool, device=p.device)
    logits = (p @ p.T / tau).masked_fill(~allowed, float("-inf"))
    positive = (torch.arange(k2, device=p.device) + num_classes) % k2
    nll = -logits.log_softmax(1).gather(1, positive[:, None]).squeeze(1)
    nll = nll.masked_fill(~valid, 0.0)  # an absent class's row is no prototype
    loss = nll.sum() / valid.sum().clamp_min(1)
    return loss, ((p1 + p2) / 2).detach(), present


def supervised_contrast(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) over L2-normalised rows `z`: every
    other row of the same label is a positive. The instance-wise term OnPro takes from OCM,
    without OCM's rotations."""
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = (z @ z.T / tau).masked_fill(eye, float("-inf")).log_softmax(1)
    positive = (y[:, None] == y[None, :]) & ~eye
    per_row = -log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp_min(1)
    has = positive.any(1)
    return (per_row * has).sum() / has.sum().clamp_min(1)


# --- adaptive prototypical feedback ----------------------------------------------------------

def pair_distribution(prototypes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Probabilities of the class pairs (i < j), flattened over K × K: softmax(1 / distance)
    between the prototypes of present classes, so close (confused) pairs come first. With
    fewer than two classes present, uniform over all pairs."""
    k = len(prototypes)
    upper = torch.ones(k, k, dtype=torch.bool, device=prototypes.device).triu(1)
    valid = upper & present[:, None] & present[None, :]
    closeness = 1.0 / torch.cdist(prototypes, prototypes).clamp_min(1e-6)
    logits = torch.where(valid.any(), closeness.masked_fill(~valid, float("-inf")),
                         torch.zeros_like(closeness).masked_fill(~upper, float("-inf")))
    return logits.flatten().softmax(0)


def draw_pairs(probs: torch.Tensor, u: torch.Tensor, num_classes: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class pairs (a, b) by inverse transform of the uniforms `u` through `probs`."""
    cdf = probs.cumsum(0)
    k = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_max(len(probs) - 1)
    return k // num_classes, k % num_classes


def draw_of_class(labels: torch.Tensor, classes: torch.Tensor, u: torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    """For each entry of `classes`, a uniformly drawn position in `labels` holding that class
    (any position when none does)."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = counts.cumsum(0) - counts
    c = counts[classes]
    within = (u * c).long().clamp_max((c - 1).clamp_min(0))
    anywhere = (u * len(labels)).long().clamp_max(len(labels) - 1)
    return order[torch.where(c > 0, starts[classes] + within, anywhere)]


def expand(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample weights shaped to broadcast over samples like `like`."""
    return w.view(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: x = (1 - lam)·x_a + lam·x_b, of labels y_a and y_b."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor


def random_mixup(x: torch.Tensor, y: torch.Tensor, o: OnProOptions,
                 rng: np.random.Generator) -> Mixed:
    """Each sample mixed, with probability mixup_p, with a random partner of the batch,
    lam ~ U(mixup_lower, mixup_upper)."""
    n = len(y)
    lam = rng.uniform(o.mixup_lower, o.mixup_upper, n) * (rng.random(n) < o.mixup_p)
    lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    partner = torch.as_tensor(rng.permutation(n), device=x.device)
    mixed = (1 - expand(lam_t, x)) * x + expand(lam_t, x) * x[partner]
    return Mixed(mixed, y, y[partner], lam_t)


def feedback_mixup(n: int, buffer: ReservoirBuffer, prototypes: torch.Tensor,
                   present: torch.Tensor, o: OnProOptions, rng: np.random.Generator) -> Mixed:
    """n mixtures of buffer samples of class pairs drawn from `pair_distribution`, each mixed
    with probability mixup_p, lam ~ Beta(mixup_alpha, mixup_alpha)."""
    k = len(prototypes)
    device = buffer.y.device
    probs = pair_distribution(prototypes, present)
    a, b = draw_pairs(probs, torch.as_tensor(rng.random(n), device=device), k)
    ia = draw_of_class(buffer.y, a, torch.as_tensor(rng.random(n), device=device), k)
    ib = draw_of_class(buffer.y, b, torch.as_tensor(rng.random(n), device=device), k)
    x_a, x_b = buffer.x[ia], buffer.x[ib]
    lam = rng.beta(o.mixup_alpha, o.mixup_alpha, n) * (rng.random(n) < o.mixup_p)
    lam_t = torch.as_tensor(lam, dtype=x_a.dtype, device=device)
    mixed = (1 - expand(lam_t, x_a)) * x_a + expand(lam_t, x_a) * x_b
    return Mixed(mixed, buffer.y[ia], buffer.y[ib], lam_t)


def mixed_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                        lam: torch.Tensor) -> torch.Tensor:
    """(1 - lam)·CE(y_a) + lam·CE(y_b), averaged over the batch."""
    ce_a = F.cross_entropy(logits, y_a, reduction="none")
    ce_b = F.cross_entropy(logits, y_b, reduction="none")
    return ((1 - lam) * ce_a + lam * ce_b).mean()


# --- the second view ------------------------------------------------------------------------

# torchvision's RandomResizedCrop: aspect ratios, log-uniform, and tries per sample before
# falling back to the whole image.
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def resized_crop_boxes(n: int, height: int, width: int, scale_min: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, a box inside the image as RandomResizedCrop draws it: area share in
    [scale_min, 1], aspect ratio log-uniform in CROP_RATIO, position uniform; the first of
    CROP_TRIES draws that fits, else the whole image. Returns the boxes' sizes and centres as
    fractions of the image side, each n × 2 in (x, y) order; sizes are not rounded to pixels,
    as the crop is resampled anyway."""
    area = scale_min + (1 - scale_min) * torch.rand(n, CROP_TRIES, generator=generator)
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, CROP_TRIES, generator=generator))
    # In pixels w = sqrt(A·r), h = sqrt(A / r) with A = area·H·W; as fractions of the sides:
    w = torch.sqrt(area * ratio * height / width)
    h = torch.sqrt(area / ratio * width / height)
    fits = (w <= 1) & (h <= 1)
    first = fits.int().argmax(1, keepdim=True)  # 0 when none fits; masked below
    found = fits.any(1)
    size = torch.stack([w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]], 1)
    size = torch.where(found[:, None], size, torch.ones_like(size))
    # The box's left (top) edge is uniform in [0, 1 - size]: its centre in [size/2, 1 - size/2].
    centre = size / 2 + (1 - size) * torch.rand(n, 2, generator=generator)
    return size, centre


def resized_crop_and_flip(x: torch.Tensor, size: torch.Tensor, centre: torch.Tensor,
                          flip: torch.Tensor) -> torch.Tensor:
    """Each image's box (fractions of the sides, see `resized_crop_boxes`) resampled to the
    full size with bilinear interpolation, mirrored where `flip`: one affine grid sample for
    the whole batch. Boxes lie inside the image, so nothing is padded; "border" only keeps the
    outermost half pixel of a zoomed box from blending with zeros."""
    n = x.shape[0]
    theta = x.new_zeros(n, 2, 3)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1].
    theta[:, 0, 0] = torch.where(flip, -size[:, 0], size[:, 0])
    theta[:, 1, 1] = size[:, 1]
    theta[:, :, 2] = 2 * centre - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_grey(x: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """The 3-channel images where `grey` with every channel replaced by the weighted mean of
    the channels; images of another channel count stay as they are."""
    if x.shape[1] != len(GREY_WEIGHTS):
        return x
    weights = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device)
    luma = (x * weights[:, None, None]).sum(1, keepdim=True)
    return torch.where(grey[:, None, None, None], luma.expand_as(x), x)


def second_view(x: torch.Tensor, o: OnProOptions, generator: torch.Generator) -> torch.Tensor:
    """Another augmentation of a normalised batch, for the contrastive terms: for images the
    authors' resized crop, flip and random grey; for feature vectors Gaussian jitter. Random
    numbers come from `generator` on the host, so a run repeats on any device."""
    if x.dim() == 4:
        n, _, height, width = x.shape
        size, centre = resized_crop_boxes(n, height, width, o.view_scale_min, generator)
        flip = torch.rand(n, generator=generator) < (0.5 if o.view_flip else 0.0)
        grey = torch.rand(n, generator=generator) < o.view_grey
        view = resized_crop_and_flip(x, size.to(x.device, x.dtype), centre.to(x.device, x.dtype),
                                     flip.to(x.device))
        view = random_grey(view, grey.to(x.device)).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            view = view.contiguous(memory_format=torch.channels_last)
        return view
    if o.view_noise == 0:
        return x
    return x + o.view_noise * torch.randn(x.shape, generator=generator).to(x.device)


# --- the method ------------------------------------------------------------------------------

class OnProNet(nn.Module):
    """The classifier and its projection head: what is trained. Only the classifier is
    deployed."""

    def __init__(self, classifier: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and L2-normalised projections, from one pass through the features."""
        f = self.classifier.features(x)
        return self.classifier.head(f), F.normalize(self.projector(f), dim=1)


def projection_head(num_features: int, proj_dim: int, device: torch.device) -> nn.Module:
    return nn.Sequential(nn.Linear(num_features, num_features, device=device),
                         nn.ReLU(inplace=True),
                         nn.Linear(num_features, proj_dim, device=device))


@register_method
class OnPro(Method):
    name = "onpro"
    description = "online prototype learning: one pass, reservoir replay, OPE + APF (uses old data)"
    uses_old_data = True
    options_type = OnProOptions

    def __init__(self, options: OnProOptions | None = None) -> None:
        super().__init__(options)
        self.buffer: ReservoirBuffer | None = None
        self.projector: nn.Module | None = None
        # The last replay batch's prototypes, for APF (carried on across phases like the
        # buffer: they come from the same network).
        self.prototypes: tuple[torch.Tensor, torch.Tensor] | None = None
        # The authors' one Adam over all tasks: this phase's, and its state carried on.
        self.adam: torch.optim.Optimizer | None = None
        self.adam_state: dict | None = None

    def budget(self, base: TrainConfig, phase: TrainConfig) -> TrainConfig:
        # OnPro's protocol is a single pass over the stream, not a cheaper budget.
        one_pass = dataclasses.replace(phase, epochs=1)
        if self.options.optimizer == "sgd":
            return one_pass
        o = self.options
        return dataclasses.replace(one_pass, batch_size=o.batch_size, lr=o.lr,
                                   weight_decay=o.weight_decay, schedule="constant",
                                   warmup_epochs=0)

    def optimizer(self, module: nn.Module, budget: TrainConfig) -> torch.optim.Optimizer | None:
        if self.options.optimizer == "sgd":
            return None
        adam = torch.optim.Adam(module.parameters(), lr=budget.lr, betas=(0.9, 0.99),
                                weight_decay=budget.weight_decay)
        if self.adam_state is not None:
            # The moments and step counts go on; the settings are this budget's.
            adam.load_state_dict({"state": self.adam_state["state"],
                                  "param_groups": adam.state_dict()["param_groups"]})
        self.adam = adam
        return adam

    def end_phase(self) -> None:
        # A state dict, not the optimiser: it pickles with the method, and the next phase's
        # parameters (a new copy of the classifier, the same projector) come in the same order.
        if self.adam is not None:
            self.adam_state = self.adam.state_dict()
            self.adam = None

    def begin_phase(self, previous: nn.Module, ctx: PhaseContext) -> None:
        ctx.require_data(self.label, "fill its buffer")
        # Seeded from the generator the engine seeded for this phase: never from the clock.
        seed = int(torch.randint(0, 2**62, (1,)))
        self.rng = np.random.default_rng(seed)
        self.view_generator = torch.Generator().manual_seed(seed)
        self.num_classes = ctx.data.num_classes
        device = next(previous.parameters()).device
        if self.projector is None:
            self.projector = projection_head(previous.num_features, self.options.proj_dim,
                                             device)
        self.net = OnProNet(copy.deepcopy(previous).requires_grad_(True), self.projector)
        if self.buffer is None:
            self.buffer = self.start_buffer(ctx)
        self.buffer.rng = self.rng

    def start_buffer(self, ctx: PhaseContext) -> ReservoirBuffer:
        """The buffer as a reservoir over D(0) leaves it."""
        buffer = ReservoirBuffer(self.options.buffer_per_class * self.num_classes, self.rng)
        base = ctx.split.part(0)
        chosen = np.sort(reservoir_subset(base, buffer.budget, self.rng))
        xs, ys = zip(*ctx.data.batches(chosen).epoch(0))
        buffer.start(torch.cat(xs), torch.cat(ys), seen=len(base))
        return buffer

    def trainable(self) -> nn.Module:
        return self.net

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return second_view(x, self.options, self.view_generator)

    def replay_batch(self, bx: torch.Tensor, by: torch.Tensor) -> Mixed:
        """The replayed samples as the cross-entropy sees them: mixed by APF once there are
        prototypes to feed back."""
        o = self.options
        if not o.apf or self.prototypes is None or self.num_classes < 2:
            return Mixed(bx, by, by, torch.zeros(len(by), dtype=bx.dtype, device=bx.device))
        n_base = int(len(by) * o.mixup_base_rate)
        base = random_mixup(bx[:n_base], by[:n_base], o, self.rng)
        fed = feedback_mixup(len(by) - n_base, self.buffer, *self.prototypes, o, self.rng)
        return Mixed(torch.cat([base.x, fed.x]), torch.cat([base.y_a, fed.y_a]),
                     torch.cat([base.y_b, fed.y_b]), torch.cat([base.lam, fed.lam]))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        o, k, n = self.options, self.num_classes, len(y)
        bx, by = self.buffer.sample(o.replay_batch_size)
        replay = self.replay_batch(bx, by)
        # One pass through the network for every term: BatchNorm sees one batch per step.
        parts = [x, self.view(x), bx, self.view(bx), self.view(replay.x)]
        logits, z = self.net(torch.cat(parts))
        sizes = [len(p) for p in parts]
        logits_x, _, _, _, logits_r = logits.split(sizes)
        z_x, z_x2, z_b, z_b2, _ = z.split(sizes)

        # The incoming samples enter the cross-entropy unmixed (lam = 0).
        lam = torch.cat([torch.zeros(n, dtype=logits.dtype, device=y.device),
                         replay.lam.to(logits.dtype)])
        loss = mixed_cross_entropy(torch.cat([logits_x, logits_r]), torch.cat([y, replay.y_a]),
                                   torch.cat([y, replay.y_b]), lam)
        ope_new, _, _ = prototype_contrast(z_x, z_x2, y, k, o.proto_tau)
        # The unmixed replay batch's prototypes are the ones APF feeds back next step.
        ope_seen, prototypes, present = prototype_contrast(z_b, z_b2, by, k, o.proto_tau)
        self.prototypes = (prototypes, present)
        if o.ope_weight > 0:
            loss = loss + o.ope_weight * (ope_new + ope_seen)
        if o.ins_weight > 0:
            loss = loss + o.ins_weight * supervised_contrast(
                torch.cat([z_x, z_b, z_x2, z_b2]), torch.cat([y, by, y, by]), o.ins_tau)
        # After drawing the replay batch, as OnPro does: a sample is not replayed in the step
        # that brings it.
        self.buffer.add(x, y)
        return loss

    def deployed(self) -> nn.Module:
        return self.net.classifier
