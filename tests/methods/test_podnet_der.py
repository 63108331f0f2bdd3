"""PODNet's and DER's parts, each checked alone, and both methods end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instil.cli import main
from instil.data.split import make_split
from instil.errors import InstilError
from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.methods.der import ConcatFeatures
from instil.methods.podnet import (
    LocalSimilarityClassifier,
    collect_stages,
    nca_loss,
    pod_flat,
    pod_pooled,
    pod_spatial,
    spherical_kmeans,
    stage_modules,
)
from instil.models import create_model
from instil.models.resnet import BasicBlock
from tests.methods.phase_data import TensorData

CLASSES = 3


def tiny_cnn(**options) -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_small", (1, 8, 8), CLASSES, **{"widths": (4, 4, 4), **options})


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", (2,), CLASSES, hidden=(8, 8))


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def phase_context(phase: int, shape: tuple[int, ...] = (1, 8, 8), n: int = 90,
                  n_phases: int = 3) -> PhaseContext:
    """A run over n samples of `shape` whose class shifts the mean, cut into D(0..n_phases)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % CLASSES
    x = torch.randn(n, *shape, generator=g) + y.view(-1, *[1] * len(shape)).float()
    split = make_split(n, 0, 0.5, n_phases, "test")
    new_model = tiny_cnn if len(shape) == 3 else tiny_mlp
    return PhaseContext(phase, n_phases, new_model, split, TensorData(x, y, CLASSES))


def batch(ctx: PhaseContext) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(ctx.data.batches(ctx.split.part(ctx.phase)).epoch(0)))


# --- POD ---------------------------------------------------------------------------------

def test_pod_pooling_by_hand() -> None:
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # squares 1 4 / 9 16
    expected = torch.tensor([5.0, 25.0, 10.0, 20.0])  # rows summed (width), then columns
    assert torch.allclose(pod_pooled(a)[0], expected / expected.norm())


def test_pod_spatial_is_zero_for_identical_maps_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    maps = [torch.randn(4, 3, 5, 6), torch.randn(4, 2, 3, 3), torch.randn(4, 7)]
    assert pod_spatial(maps, [m.clone() for m in maps]).item() == 0.0
    moved = [m + 0.3 * torch.randn_like(m) for m in maps]
    assert pod_spatial(maps, moved).item() > 0
    # Pooled outputs are normalised: a stage that only grows in scale is not penalised.
    assert pod_spatial(maps, [2 * m for m in maps]).item() == pytest.approx(0.0, abs=1e-6)


def test_pod_flat_is_zero_for_identical_embeddings_and_positive_otherwise() -> None:
    torch.manual_seed(1)
    h = torch.randn(5, 16)
    for distance in ("cosine", "l2"):
        assert pod_flat(h, h.clone(), distance).item() == 0.0
        assert pod_flat(h, h + torch.randn_like(h), distance).item() > 0
    other = torch.randn(5, 16)
    assert pod_flat(h, other).item() == pytest.approx(
        (1 - F.cosine_similarity(h, other)).mean().item(), abs=1e-6)
    assert pod_flat(h, 3 * h, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert pod_flat(h, 3 * h, "l2").item() == pytest.approx(2 * h.norm(dim=1).mean().item())


def test_pod_gradients_are_finite_at_identical_features() -> None:
    h = torch.randn(4, 3, 4, 4, requires_grad=True)
    loss = pod_spatial([h.detach()], [h]) + pod_flat(h.detach(), h, "l2")
    loss.backward()
    assert torch.isfinite(h.grad).all()


# --- stage outputs -------------------------------------------------------------------------

def test_stages_of_each_backbone_and_no_hook_left_behind() -> None:
    cnn = tiny_cnn()
    with collect_stages(cnn.features) as stages:
        cnn.features(torch.randn(2, 1, 8, 8))
    assert [tuple(s.shape) for s in stages] == [(2, 4, 8, 8), (2, 4, 4, 4), (2, 4, 2, 2)]
    deeper = tiny_cnn(widths=(4, 8), blocks=(2, 2))  # the last block of each stage only
    with collect_stages(deeper.features) as stages:
        deeper.features(torch.randn(2, 1, 8, 8))
    assert [tuple(s.shape) for s in stages] == [(2, 4, 8, 8), (2, 8, 4, 4)]
    mlp = tiny_mlp().eval()
    with collect_stages(mlp.features) as stages:
        mlp.features(torch.randn(2, 2))
    assert [tuple(s.shape) for s in stages] == [(2, 8), (2, 8)]
    for model in (cnn, deeper, mlp):
        assert not any(m._forward_hooks for m in model.modules())
    # torchvision's ResNet is found by its layer1..layer4 (a stand-in: importing it is slow)
    torchvision_like = nn.Module()
    for i in range(1, 5):
        torchvision_like.add_module(f"layer{i}", nn.Sequential(BasicBlock(4, 4, 1)))
    expected = [getattr(torchvision_like, f"layer{i}") for i in range(1, 5)]
    assert all(a is b for a, b in zip(stage_modules(torchvision_like), expected, strict=True))


# --- local-similarity classifier -------------------------------------------------------------

def test_lsc_gives_the_class_of_the_nearest_proxy() -> None:
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0],  # class 0: east, north
                            [-1.0, 0.0], [0.0, -1.0],  # class 1: west, south
                            [0.7, -0.7], [0.7, -0.7]])  # class 2: south-east, twice
    lsc = LocalSimilarityClassifier(proxies, 3, eta_init=5.0)
    x = torch.tensor([[0.2, 3.0], [-2.0, 0.1], [1.0, -1.2], [-0.1, -1.0], [2.0, 0.3]])
    assert lsc(x).argmax(1).tolist() == [0, 1, 2, 1, 0]
    # A class's similarity is the softmax-weighted mean of its proxies' cosines.
    cos = torch.tensor([0.0, 1.0])
    expected = (F.softmax(cos, 0) * cos).sum()
    assert torch.allclose(lsc.similarities(torch.tensor([[0.0, 1.0]]))[0, 0], expected)
    assert torch.allclose(lsc(x), 5.0 * lsc.similarities(x))


def test_nca_loss_by_hand_margin_and_hinge() -> None:
    sims = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.4]])
    loss = nca_loss(sims, torch.tensor(2.0), torch.tensor([0, 2]), margin=0.6)
    first = max(0.0, math.log(math.exp(0.2) + 1.0) - (2 * 0.9 - 0.6))
    second = max(0.0, math.log(math.exp(0.4) + math.exp(1.0)) - (2 * 0.4 - 0.6))
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-5)
    far = nca_loss(torch.tensor([[1.0, -1.0]]), torch.tensor(10.0), torch.tensor([0]), 0.6)
    assert far.item() == 0.0  # separated beyond the margin: the hinge keeps it at zero


def test_nca_loss_raises_the_scale_when_the_true_class_ranks_first() -> None:
    # Cosines of ReLU embeddings: all high, the true class ahead by less than the margin.
    # The loss must then grow η; with the margin inside the scale it shrank η through zero,
    # which ranked every sample's class last (measured on fmnist-iil10).
    sims = torch.tensor([[0.95, 0.80, 0.78], [0.70, 0.90, 0.85]])
    eta = torch.tensor(2.0, requires_grad=True)
    nca_loss(sims, eta, torch.tensor([0, 1]), margin=0.6).backward()
    assert eta.grad is not None and eta.grad.item() < 0


def test_spherical_kmeans_finds_separated_clusters() -> None:
    torch.manual_seed(2)
    a = F.normalize(torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(20, 2), dim=1)
    b = F.normalize(torch.tensor([0.0, 1.0]) + 0.05 * torch.randn(20, 2), dim=1)
    centres = spherical_kmeans(torch.cat([a, b]), 2)
    assert torch.allclose(centres.norm(dim=1), torch.ones(2))
    assert sorted(centres.argmax(1).tolist()) == [0, 1]
    assert spherical_kmeans(a[:2], 5).shape == (5, 2)  # fewer vectors than proxies


# --- PODNet's phases ---------------------------------------------------------------------------

def test_podnet_phase_one_swaps_in_an_imprinted_lsc_and_later_phases_keep_it() -> None:
    method = create_method("podnet", {"proxies": 4, "per_class": 5})
    ctx = phase_context(1)
    m0 = tiny_cnn()
    method.begin_phase(m0, ctx)
    head = method.student.head
    assert isinstance(head, LocalSimilarityClassifier) and head.proxies.shape == (12, 4)
    assert isinstance(method.teacher.head, nn.Linear)  # M(0) itself is left as it was
    assert isinstance(m0.head, nn.Linear)
    x, y = batch(ctx)
    method.student.eval()  # a train-mode pass would move its BatchNorm away from M(0)'s
    assert method.deployed()(x).shape == (len(x), CLASSES)
    indices = method.train_indices(ctx.split, 1)
    assert len(indices) == len(ctx.split.part(1)) + len(method.memory)
    assert np.isin(method.memory.indices(), ctx.split.part(0)).all()
    # In eval mode the student has the teacher's features: only the NCA loss remains.
    full = method.loss(x, y)
    assert torch.isfinite(full)
    expected = nca_loss(head.similarities(method.student.features(x)), head.eta, y, 0.6)
    assert full.item() == pytest.approx(expected.item(), rel=1e-6)
    method.end_phase()
    assert method.phase_facts() == {"eta": pytest.approx(2.0)}  # untrained: eta_init
    deployed = method.deployed()
    method.begin_phase(deployed, phase_context(2))
    assert torch.equal(method.student.head.proxies, deployed.head.proxies)


def test_podnet_options_are_validated() -> None:
    with pytest.raises(InstilError, match="method_options.podnet.flat_distance"):
        create_method("podnet", {"flat_distance": "l1"})
    with pytest.raises(InstilError, match="method_options.podnet.proxies"):
        create_method("podnet", {"proxies": 0})


# --- DER ---------------------------------------------------------------------------------------

def extractor_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_der_grows_by_one_extractor_per_phase_and_starts_from_the_previous_function() -> None:
    method = create_method("der", {"per_class": 5})
    m0 = tiny_cnn()
    extractor, width = count(m0.features), m0.num_features
    previous = m0
    for t in (1, 2, 3):
        ctx = phase_context(t)
        method.begin_phase(previous, ctx)
        model = method.deployed()
        assert isinstance(model.features, ConcatFeatures)
        assert len(model.features.extractors) == t + 1
        assert count(model) - count(previous) == extractor + CLASSES * width
        x, _ = batch(ctx)
        with torch.no_grad():
            assert torch.allclose(model.eval()(x), previous.eval()(x), atol=1e-6)
        method.end_phase()
        previous = model
    assert count(previous) == 4 * extractor + CLASSES * 4 * width + CLASSES


def test_der_old_extractors_do_not_change_during_a_phase() -> None:
    method = create_method("der", {"per_class": 5})
    method.begin_phase(tiny_cnn(), phase_context(1))
    method.end_phase()
    ctx = phase_context(2)
    method.begin_phase(method.deployed(), ctx)
    extractors = method.deployed().features.extractors
    old = [extractor_state(e) for e in extractors[:-1]]
    new = extractor_state(extractors[-1])
    parts = method.trainable()
    assert not any(p is q for p in parts.parameters() for e in extractors[:-1]
                   for q in e.parameters())
    optimizer = torch.optim.SGD(parts.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    method.deployed().train()  # even asked to, the frozen extractors stay in eval mode
    parts.train()
    assert not any(e.training for e in extractors[:-1]) and extractors[-1].training
    steps = ctx.data.batches(method.train_indices(ctx.split, 2), train=True).epoch(0)
    for _, (x, y) in zip(range(2), steps):
        optimizer.zero_grad()
        method.loss(x, y).backward()
        optimizer.step()
    for before, extractor in zip(old, extractors[:-1]):
        after = extractor.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    after = extractors[-1].state_dict()
    assert not all(torch.equal(new[k], after[k]) for k in new)


def test_der_with_an_mlp_fresh_extractors_and_random_exemplars() -> None:
    method = create_method("der", {"init": "fresh", "selector": "random", "per_class": 4})
    ctx = phase_context(1, shape=(2,))
    method.begin_phase(tiny_mlp(), ctx)
    method.trainable().train()
    x, y = batch(ctx)
    loss = method.loss(x, y)
    assert torch.isfinite(loss) and loss.requires_grad
    method.end_phase()
    assert len(method.memory) <= method.memory.budget


@pytest.mark.parametrize("name", ["podnet", "der"])
def test_exemplar_memory_never_exceeds_its_budget(name: str) -> None:
    method = create_method(name, {"per_class": 4})
    previous = tiny_mlp()
    for t in (1, 2, 3):
        ctx = phase_context(t, shape=(2,))
        method.begin_phase(previous, ctx)
        assert len(method.memory) <= method.memory.budget == 4 * CLASSES
        method.end_phase()
        memory = method.memory
        assert len(memory) <= memory.budget
        assert all(len(v) <= 4 for v in memory.by_class.values())
        labels = ctx.data.labels(memory.indices()).numpy()
        assert all((labels[memory.indices() == i] == c).all()
                   for c, v in memory.by_class.items() for i in v)
        assert np.isin(memory.indices(), ctx.split.union(t)).all()
        previous = method.deployed()


def test_podnet_and_der_run_two_phases_through_the_cli(tmp_path: Path,
                                                       toy_args: list[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "n_phases=2", "--set", "order_seeds=[0]",
                 "--set", "methods=[podnet, der]"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["podnet", "der"]
    m0 = create_model("mlp", (2,), CLASSES)
    extractor, width = count(m0.features), m0.num_features
    for run in runs:
        assert run["uses_old_data"] is True
        assert [p["phase"] for p in run["phases"]] == [1, 2]
        # 600 samples: D(0) = 300, two parts of 150, plus 20 exemplars of each of 3 classes
        assert [p["n_train"] for p in run["phases"]] == [150 + 60, 150 + 60]
    podnet, der = runs
    assert podnet["parameters"] == extractor + CLASSES * 10 * width + 1
    assert der["parameters"] == 3 * extractor + CLASSES * 3 * width + CLASSES
