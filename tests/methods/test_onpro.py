"""OnPro's parts alone (reservoir buffer, prototype loss, feedback draws), a phase driven by
hand, and the method end to end through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instil.cli import main
from instil.config import TrainConfig
from instil.data.split import IILSplit
from instil.errors import InstilError
from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.methods.onpro import (
    ReservoirBuffer,
    class_prototypes,
    draw_of_class,
    draw_pairs,
    pair_distribution,
    prototype_contrast,
    reservoir_subset,
    supervised_contrast,
)
from instil.models import create_model
from tests.methods.phase_data import TensorData


def stream(buffer: ReservoirBuffer, ids: np.ndarray, batch: int) -> None:
    for i in range(0, len(ids), batch):
        chunk = torch.as_tensor(ids[i:i + batch])
        buffer.add(chunk[:, None].float(), chunk)


def test_buffer_never_exceeds_its_budget() -> None:
    rng = np.random.default_rng(0)
    buffer = ReservoirBuffer(10, rng)
    seen = 0
    for _ in range(40):
        n = int(rng.integers(1, 17))
        buffer.add(torch.randn(n, 3), torch.zeros(n, dtype=torch.long))
        seen += n
        assert len(buffer) == min(10, seen) and buffer.seen == seen
        assert len(buffer.x) == len(buffer.y) == len(buffer)


def inclusion(trials: int, run) -> np.ndarray:
    counts = np.zeros(120)
    for t in range(trials):
        buffer = run(np.random.default_rng(t))
        counts[buffer.y.numpy()] += 1
        assert len(np.unique(buffer.y.numpy())) == len(buffer)  # no sample kept twice
    return counts / trials


@pytest.mark.parametrize("start", [False, True])
def test_reservoir_keeps_every_sample_with_probability_budget_over_seen(start: bool) -> None:
    ids = np.arange(120)

    def run(rng: np.random.Generator) -> ReservoirBuffer:
        buffer = ReservoirBuffer(12, rng)
        if start:  # as the method starts: a reservoir's content after the first 60
            first = reservoir_subset(ids[:60], 12, rng)
            buffer.start(torch.as_tensor(first)[:, None].float(), torch.as_tensor(first), 60)
            stream(buffer, ids[60:], batch=8)
        else:
            stream(buffer, ids, batch=8)
        return buffer

    freq = inclusion(400, run)  # expected 12 / 120 = 0.1 each, sd 0.015
    assert np.abs(freq - 0.1).max() < 0.07
    assert abs(freq[:30].mean() - 0.1) < 0.02 and abs(freq[-30:].mean() - 0.1) < 0.02


def test_prototype_loss_is_lower_when_samples_sit_on_their_own_prototype() -> None:
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=1)
    y = torch.arange(64) % 4
    z1 = F.normalize(centres[y] + 0.05 * torch.randn(64, 16), dim=1)
    z2 = F.normalize(centres[y] + 0.05 * torch.randn(64, 16), dim=1)
    own, _, _ = prototype_contrast(z1, z2, y, 4, tau=0.5)
    shuffled = y[torch.randperm(64)]
    other, _, _ = prototype_contrast(z1, z2, shuffled, 4, tau=0.5)
    assert own < other - 0.5
    # Classes absent from the batch are no prototypes: more classes, same loss.
    wider, _, present = prototype_contrast(z1, z2, y, 10, tau=0.5)
    assert torch.allclose(own, wider) and present.tolist() == [True] * 4 + [False] * 6


def test_prototypes_are_class_means() -> None:
    z = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    protos, present = class_prototypes(z, torch.tensor([0, 0, 2]), 3)
    assert torch.allclose(protos, torch.tensor([[2.0, 1.0], [0.0, 0.0], [0.0, 5.0]]))
    assert present.tolist() == [True, False, True]


def test_supervised_contrast_prefers_same_label_neighbours() -> None:
    torch.manual_seed(1)
    centres = F.normalize(torch.randn(3, 8), dim=1)
    y = torch.arange(30) % 3
    z = F.normalize(centres[y] + 0.05 * torch.randn(30, 8), dim=1)
    assert supervised_contrast(z, y, 0.1) < supervised_contrast(z, y[torch.randperm(30)], 0.1)


def test_feedback_pairs_favour_close_prototypes_and_skip_absent_classes() -> None:
    protos = torch.tensor([[0.0, 0.0], [0.1, 0.0], [2.0, 0.0], [0.05, 0.0]])
    present = torch.tensor([True, True, True, False])
    probs = pair_distribution(protos, present).view(4, 4)
    assert probs[0, 1] == probs.max() and probs.sum().item() == pytest.approx(1.0)
    assert probs[:, 3].sum() == 0 and probs[3].sum() == 0 and probs.tril().sum() == 0
    a, b = draw_pairs(probs.flatten(), torch.rand(2000), 4)
    assert (a < b).all() and (b != 3).all()
    assert ((a == 0) & (b == 1)).float().mean() > 0.5
    # A single present class: uniform over all pairs, never NaN.
    lone = pair_distribution(protos, torch.tensor([True, False, False, False]))
    assert torch.allclose(lone.view(4, 4).triu(1).sum(), torch.tensor(1.0))


def test_draw_of_class_returns_samples_of_that_class() -> None:
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    classes = torch.tensor([0, 1, 2, 2, 0, 1] * 50)
    picked = draw_of_class(labels, classes, torch.rand(300), 4)
    assert torch.equal(labels[picked], classes)
    assert set(picked[classes == 2].tolist()) == {0, 2, 5}
    # A class not in the buffer falls back to any sample rather than failing.
    assert len(draw_of_class(labels, torch.tensor([3, 3]), torch.rand(2), 4)) == 2


def test_budget_is_one_pass_of_the_phase_budget() -> None:
    phase = TrainConfig(epochs=12, lr=0.01, batch_size=32)
    budget = create_method("onpro").budget(TrainConfig(epochs=30), phase)
    assert budget == TrainConfig(epochs=1, lr=0.01, batch_size=32)


def test_options_are_validated() -> None:
    with pytest.raises(InstilError, match="method_options.onpro.buffer_per_class"):
        create_method("onpro", {"buffer_per_class": 0})
    with pytest.raises(InstilError, match="method_options.onpro.mixup_lower"):
        create_method("onpro", {"mixup_lower": 0.7, "mixup_upper": 0.6})


def drive_phase(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **options):
    """A phase of onpro by hand, one pass as the engine would: D(0) = the first 40
    samples, D(1) the rest."""
    data = TensorData(x, y, num_classes=int(y.max()) + 1, batch_size=16)
    split = IILSplit(0, 0.5, 1, "test", np.arange(40), (np.arange(40, len(y)),))
    method = create_method("onpro", {"buffer_per_class": 4, **options})
    torch.manual_seed(0)
    method.begin_phase(model, PhaseContext(1, 1, lambda: None, split, data))
    assert method.buffer.seen == 40 and len(method.buffer) == 4 * data.num_classes
    module = method.trainable()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    for xb, yb in data.batches(split.part(1), train=True).epoch(0):
        loss = method.loss(xb, yb)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert len(method.buffer) <= method.buffer.budget
    return method


def test_a_phase_on_images_trains_classifier_and_projector_and_deploys_the_classifier() -> None:
    torch.manual_seed(2)
    model = create_model("resnet_small", (1, 8, 8), 3, widths=(4, 4, 4))
    y = torch.arange(100) % 3
    x = torch.randn(100, 1, 8, 8) + y[:, None, None, None].float()
    before = [p.clone() for p in model.parameters()]
    method = drive_phase(model, x, y)
    assert method.buffer.seen == len(y)  # D(0), then each step of D(1) once
    assert method.prototypes is not None
    deployed = method.deployed()
    assert deployed is method.net.classifier and deployed is not model
    assert not any(p is q for p in method.projector.parameters() for q in deployed.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # M(t-1) kept
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in method.projector.parameters())


def test_a_phase_on_vectors_with_feedback_off() -> None:
    torch.manual_seed(3)
    y = torch.arange(100) % 3
    x = torch.randn(100, 2) + 3 * F.one_hot(y, 3)[:, :2].float()
    method = drive_phase(create_model("mlp", (2,), 3), x, y, apf=False, ins_weight=0.0)
    assert method.buffer.seen == len(y)  # D(0), then each step of D(1) once


def test_onpro_runs_two_phases_through_the_cli(tmp_path: Path, toy_args: list[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "n_phases=2", "--set", "order_seeds=[0]",
                 "--set", "methods=[onpro]"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["onpro"]
    assert runs[0]["uses_old_data"] is True
    assert [p["phase"] for p in runs[0]["phases"]] == [1, 2]
    assert all(np.isfinite(p["acc_test"]) for p in runs[0]["phases"])
