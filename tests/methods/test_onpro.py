"""OnPro's parts alone (reservoir buffer, prototype loss, feedback draws), a phase driven by
hand, and the method end to end through the command line."""

from __future__ import annotations

import dataclasses
import json
import pickle
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
    OnProNet,
    OnProOptions,
    ReservoirBuffer,
    class_prototypes,
    draw_of_class,
    draw_pairs,
    pair_distribution,
    prototype_contrast,
    reservoir_subset,
    second_view,
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


def test_budget_is_one_pass_at_the_authors_batch_size_and_learning_rate() -> None:
    phase = TrainConfig(epochs=12, lr=0.01, batch_size=32, warmup_epochs=2)
    budget = create_method("onpro").budget(TrainConfig(epochs=30), phase)
    assert budget == TrainConfig(epochs=1, lr=5e-4, batch_size=10, weight_decay=1e-4,
                                 schedule="constant", warmup_epochs=0)
    mine = create_method("onpro", {"lr": 1e-3, "batch_size": 7, "weight_decay": 0.0})
    assert mine.budget(TrainConfig(), phase) == TrainConfig(
        epochs=1, lr=1e-3, batch_size=7, weight_decay=0.0, schedule="constant")


def test_sgd_is_one_pass_of_the_phase_budget_with_the_engines_optimiser() -> None:
    phase = TrainConfig(epochs=12, lr=0.01, batch_size=32, warmup_epochs=2)
    method = create_method("onpro", {"optimizer": "sgd"})
    assert method.budget(TrainConfig(epochs=30), phase) == dataclasses.replace(phase, epochs=1)
    assert method.optimizer(torch.nn.Linear(2, 2), phase) is None


def test_optimizer_is_the_authors_adam() -> None:
    budget = TrainConfig(lr=5e-4, weight_decay=1e-4)
    module = torch.nn.Linear(2, 2)
    adam = create_method("onpro").optimizer(module, budget)
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (5e-4, (0.9, 0.99), 1e-4)
    assert [id(p) for p in group["params"]] == [id(p) for p in module.parameters()]


def test_options_are_validated() -> None:
    with pytest.raises(InstilError, match="method_options.onpro.buffer_per_class"):
        create_method("onpro", {"buffer_per_class": 0})
    with pytest.raises(InstilError, match="method_options.onpro.mixup_lower"):
        create_method("onpro", {"mixup_lower": 0.7, "mixup_upper": 0.6})
    for key, value in [("view_scale_min", 0.0), ("view_scale_min", 1.5), ("view_grey", 1.1),
                       ("optimizer", "rmsprop"), ("lr", 0.0), ("weight_decay", -1.0),
                       ("batch_size", 0), ("replay_batch_size", 0)]:
        with pytest.raises(InstilError, match=rf"^method_options\.onpro\.{key}="):
            create_method("onpro", {key: value})


# --- the second view -------------------------------------------------------------------------

def view_of(x: torch.Tensor, seed: int = 0, **options) -> torch.Tensor:
    return second_view(x, OnProOptions(**options), torch.Generator().manual_seed(seed))


def test_view_of_images_has_no_padded_border() -> None:
    # Every pixel far from 0, the normalised mean grey that zero padding would bring in.
    x = 2 + torch.rand(64, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    for grey in (0.0, 1.0):
        view = view_of(x, view_scale_min=0.1, view_grey=grey)
        assert view.shape == x.shape and view.dtype == x.dtype
        assert view.min() >= 2 and view.max() <= 3


def test_view_is_reproducible_from_its_seed_and_keeps_channels_last() -> None:
    x = torch.randn(16, 3, 10, 10)
    assert torch.equal(view_of(x, seed=1), view_of(x, seed=1))
    assert not torch.allclose(view_of(x, seed=1), view_of(x, seed=2))
    last = x.contiguous(memory_format=torch.channels_last)
    view = view_of(last, seed=1)
    assert view.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(view, view_of(x, seed=1), atol=1e-6)


def test_view_at_full_scale_without_flip_or_grey_is_the_input() -> None:
    x = torch.randn(16, 3, 9, 7)
    view = view_of(x, view_scale_min=1.0, view_flip=False, view_grey=0.0)
    assert torch.allclose(view, x, atol=1e-5)


def test_view_zooms_into_a_box_and_flips_about_half() -> None:
    # A ramp across the columns: a crop narrows each row's range, a flip reverses it.
    ramp = torch.linspace(0, 1, 16).expand(400, 1, 16, 16).contiguous()
    view = view_of(ramp, view_grey=0.0)
    step = view[:, 0, :, -1] - view[:, 0, :, 0]
    assert (step.abs() <= 1 + 1e-6).all() and step.abs().mean() < 0.85
    flipped = (step < 0).all(1).float().mean()
    assert 0.4 < flipped < 0.6 and ((step < 0).all(1) | (step > 0).all(1)).all()
    whole = view_of(ramp, view_scale_min=1.0, view_grey=0.0)[:, 0]
    assert torch.allclose((whole[:, :, -1] - whole[:, :, 0]).abs(), torch.ones(400, 16),
                          atol=1e-5)


def test_view_grey_replaces_the_channels_by_their_weighted_mean() -> None:
    x = torch.randn(8, 3, 6, 6)
    same = dict(view_scale_min=1.0, view_flip=False)
    grey = view_of(x, view_grey=1.0, **same)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(grey, luma[:, None].expand_as(x), atol=1e-5)
    assert torch.allclose(view_of(x, view_grey=0.0, **same), x, atol=1e-5)
    one = x[:, :1]
    assert torch.allclose(view_of(one, view_grey=1.0, **same), one, atol=1e-5)


def drive_phase(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **options):
    """A phase of onpro by hand, one pass as the engine would: D(0) = the first 40
    samples, D(1) the rest."""
    data = TensorData(x, y, num_classes=int(y.max()) + 1, batch_size=16)
    split = IILSplit(0, 0.5, 1, "test", np.arange(40), (np.arange(40, len(y)),))
    method = create_method("onpro", {"buffer_per_class": 4, **options})
    torch.manual_seed(0)
    method.begin_phase(model, PhaseContext(1, 1, lambda: None, split, data))
    per_class = method.options.buffer_per_class
    assert method.buffer.seen == 40 and len(method.buffer) == per_class * data.num_classes
    module = method.trainable()
    optimizer = method.optimizer(module, method.budget(TrainConfig(), TrainConfig())) or \
        torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    for xb, yb in data.batches(split.part(1), train=True).epoch(0):
        loss = method.loss(xb, yb)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert len(method.buffer) <= method.buffer.budget
    method.end_phase()
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


def test_each_step_replays_replay_batch_size_buffer_samples() -> None:
    torch.manual_seed(4)
    y = torch.arange(100) % 3
    x = torch.randn(100, 2) + 3 * F.one_hot(y, 3)[:, :2].float()
    rows: list[int] = []
    original = OnProNet.forward

    def counting(self, xs: torch.Tensor):
        rows.append(len(xs))
        return original(self, xs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OnProNet, "forward", counting)
        drive_phase(create_model("mlp", (2,), 3), x, y, buffer_per_class=10,
                    replay_batch_size=7)
    # Incoming 16 (the last 12) and its view, then 7 replayed, their view and their mixture.
    assert rows == [2 * 16 + 3 * 7] * 3 + [2 * 12 + 3 * 7]


def test_adam_state_goes_on_into_the_next_phase_and_pickles() -> None:
    torch.manual_seed(5)
    model = create_model("mlp", (2,), 3)
    y = torch.arange(100) % 3
    x = torch.randn(100, 2) + 3 * F.one_hot(y, 3)[:, :2].float()
    method = drive_phase(model, x, y)
    steps = -(-60 // 16)
    saved = method.adam_state["state"]
    assert {int(s["step"]) for s in saved.values()} == {steps}
    method = pickle.loads(pickle.dumps(method))
    data = TensorData(x, y, num_classes=3, batch_size=16)
    split = IILSplit(0, 0.5, 1, "test", np.arange(40), (np.arange(40, len(y)),))
    method.begin_phase(method.deployed(), PhaseContext(2, 2, lambda: None, split, data))
    adam = method.optimizer(method.trainable(), method.budget(TrainConfig(), TrainConfig()))
    params = list(method.trainable().parameters())
    assert len(adam.state) == len(params) == len(saved)
    for i, p in enumerate(params):
        assert int(adam.state[p]["step"]) == steps
        assert torch.equal(adam.state[p]["exp_avg"], saved[i]["exp_avg"])
    assert adam.param_groups[0]["betas"] == (0.9, 0.99)


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
