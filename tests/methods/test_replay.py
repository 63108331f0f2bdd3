"""The replay baselines: herding, the exemplar memory, ER and iCaRL, each part alone and both
methods end to end."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from instil.cli import main
from instil.data.split import make_split
from instil.errors import InstilError
from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.methods.icarl import NearestMeanClassifier, class_means, distillation_bce, unwrap
from instil.methods.memory import ExemplarMemory, herding, random_selector
from instil.models import create_model
from instil.models.classifier import Classifier

from .phase_data import TensorData


def brute_force_herding(vectors: np.ndarray, m: int) -> list[int]:
    """Tries every remaining vector at every step and keeps the one whose addition leaves the
    running mean closest to the mean of all."""
    target = vectors.mean(0)
    chosen: list[int] = []
    for _ in range(m):
        best, best_gap = -1, np.inf
        for i in range(len(vectors)):
            if i in chosen:
                continue
            gap = np.linalg.norm(target - vectors[chosen + [i]].mean(0))
            if gap < best_gap:
                best, best_gap = i, gap
        chosen.append(best)
    return chosen


def test_herding_matches_brute_force_and_starts_closest_to_the_mean() -> None:
    torch.manual_seed(0)
    for trial in range(5):
        vectors = torch.randn(15, 4, dtype=torch.float64)
        picks = herding(vectors, 6).tolist()
        assert picks == brute_force_herding(vectors.numpy(), 6), trial
        closest = int((vectors - vectors.mean(0)).norm(dim=1).argmin())
        assert picks[0] == closest
    assert len(herding(torch.randn(3, 2), 10)) == 3  # never more than there are


def toy_data(n: int = 120, num_classes: int = 3, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.randn(n, 2, generator=g) + 3 * nn.functional.one_hot(y, num_classes)[:, :2]
    return TensorData(x, y, num_classes)


def test_memory_stays_within_budget_and_per_class_over_updates() -> None:
    data = toy_data(n=150)
    memory = ExemplarMemory(per_class=4, num_classes=3)
    select = random_selector(np.random.default_rng(0))
    seen: set[int] = set()
    for part in np.array_split(np.random.default_rng(1).permutation(150), 5):
        memory.update(part, data.labels(part), select)
        seen |= set(part.tolist())
        kept = memory.indices()
        assert len(kept) <= memory.budget == 12
        assert len(set(kept.tolist())) == len(kept) and set(kept.tolist()) <= seen
        for c, indices in memory.by_class.items():
            assert len(indices) == 4
            assert (data.labels(indices) == c).all()


def test_memory_keeps_every_sample_of_a_class_below_its_quota() -> None:
    memory = ExemplarMemory(per_class=5, num_classes=2)
    memory.update(np.array([7, 8, 9]), torch.tensor([0, 0, 1]),
                  random_selector(np.random.default_rng(0)))
    assert memory.by_class[0].tolist() == [7, 8] and memory.by_class[1].tolist() == [9]


def started(name: str, previous: nn.Module, data: TensorData, phase: int = 1, **options):
    split = make_split(len(data.x), 0, 0.5, 2, "toy")
    method = create_method(name, options)
    method.begin_phase(previous, PhaseContext(phase, 2, lambda: None, split, data))
    return method, split


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", (2,), 3, hidden=(8,))


def test_er_trains_on_the_new_part_and_the_memory() -> None:
    data = toy_data()
    torch.manual_seed(5)
    er, split = started("er", mlp(), data, per_class=3)
    memory = er.memory.indices()
    assert len(memory) == 9 and set(memory.tolist()) <= set(split.part(0).tolist())
    # Batch replay draws the memory beside the new data; mixed replay shuffles it in.
    assert np.array_equal(er.train_indices(split, 1), split.part(1))
    mixed, _ = started("er", mlp(), data, per_class=3, replay="mixed")
    indices = mixed.train_indices(split, 1)
    assert sorted(indices.tolist()) == \
        sorted([*split.part(1).tolist(), *mixed.memory.indices().tolist()])
    assert mixed.stream is None
    er.end_phase()
    after = set(er.memory.indices().tolist())
    assert len(after) == 9 and after <= set(split.part(0).tolist()) | set(split.part(1).tolist())
    torch.manual_seed(5)  # the engine's seed decides the random picks
    again, _ = started("er", mlp(), data, per_class=3)
    assert np.array_equal(again.memory.indices(), memory)


class Recorder(nn.Module):
    """The toy MLP, recording every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.inputs = mlp(), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def indexed_data(n: int = 120, num_classes: int = 3) -> TensorData:
    """Samples whose first feature is their own index, so a batch tells which samples it
    holds."""
    y = torch.arange(n) % num_classes
    x = torch.stack([torch.arange(n, dtype=torch.float32), y.float()], 1)
    return TensorData(x, y, num_classes)


def rows(x: torch.Tensor) -> list[int]:
    return x[:, 0].long().tolist()


@pytest.mark.parametrize("replay_batch_size, expected", [(3, 3), (0, 9)])
def test_er_trains_every_batch_with_a_memory_batch_in_one_forward(
        replay_batch_size: int, expected: int) -> None:
    """Beside each new batch, `replay_batch_size` exemplars (0: the phase's batch size of 16,
    more than the 9 exemplars: all of them), in the same forward and mean."""
    data = indexed_data()
    er, split = started("er", Recorder(), data, per_class=3,
                        replay_batch_size=replay_batch_size)
    memory = set(er.memory.indices().tolist())
    er.trainable().train()
    new = split.part(1)[:5]
    x, y = data.x[new], data.y[new]
    for _ in range(4):
        loss = er.loss(x, y)
        seen = er.model.inputs[-1]
        assert len(er.model.inputs) == 1  # one forward for both
        er.model.inputs.clear()
        assert rows(seen[:5]) == new.tolist()
        replayed = rows(seen[5:])
        assert len(replayed) == expected and set(replayed) <= memory
        assert len(set(replayed)) == expected  # a batch, not a draw with replacement
        # The mean over new and replayed together, on one batch (BatchNorm sees both).
        labels = torch.cat([y, data.y[replayed]])
        by_hand = -torch.log_softmax(er.model.inner(seen), 1)[torch.arange(5 + expected),
                                                               labels].mean()
        assert torch.allclose(loss, by_hand)


def test_er_memory_batches_cycle_through_the_memory_epoch_after_epoch() -> None:
    data = indexed_data()
    er, _ = started("er", mlp(), data, per_class=3, replay_batch_size=4)
    memory = er.memory.indices().tolist()
    draws = [rows(er.stream.draw()[0]) for _ in range(12)]
    enough = math.ceil(len(memory) / 4) + 1
    assert set(sum(draws[:enough], [])) == set(memory)
    # The test data keeps an epoch's last partial batch: 4 + 4 + 1 exemplars.
    first, second = sum(draws[:3], []), sum(draws[3:6], [])
    assert sorted(first) == sorted(second) == sorted(memory)
    assert first != second  # every epoch is reshuffled
    assert (er.stream.epoch, er.stream.position) == (3, 3)


@pytest.mark.parametrize("drawn", [2, 3])  # mid-epoch, and at the end of an epoch
def test_er_pickled_mid_phase_draws_the_memory_batch_the_original_would(drawn: int) -> None:
    data = indexed_data()
    er, _ = started("er", mlp(), data, per_class=3, replay_batch_size=4)
    x, y = data.x[:5], data.y[:5]
    er.trainable().train()
    for _ in range(drawn):
        er.loss(x, y)
    copy = pickle.loads(pickle.dumps(er))
    for _ in range(4):
        original, restored = er.stream.draw(), copy.stream.draw()
        assert torch.equal(original[0], restored[0]) and torch.equal(original[1], restored[1])


def test_options_are_checked() -> None:
    with pytest.raises(InstilError, match="method_options.er.per_class"):
        create_method("er", {"per_class": 0})
    with pytest.raises(InstilError, match="method_options.er.replay="):
        create_method("er", {"replay": "reservoir"})
    with pytest.raises(InstilError, match="method_options.er.replay_batch_size"):
        create_method("er", {"replay_batch_size": -1})
    with pytest.raises(InstilError, match="method_options.icarl.kd_weight"):
        create_method("icarl", {"kd_weight": -1.0})


def test_nme_predicts_the_class_of_the_nearest_mean() -> None:
    model = Classifier(nn.Flatten(), 2, 3)  # the features are the input itself
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    nme = NearestMeanClassifier(model, means, torch.tensor([True, True, True]))
    x = torch.tensor([[2.0, 0.1], [0.1, 3.0], [-1.0, -0.2], [5.0, 4.0]])
    assert nme(x).argmax(1).tolist() == [0, 1, 2, 0]
    # The distance is that of the normalised features: scale does not matter.
    assert torch.allclose(nme(x * 10), nme(x))
    absent = NearestMeanClassifier(model, means, torch.tensor([True, True, False]))
    assert absent(x).argmax(1).tolist() == [0, 1, 1, 0]
    assert sum(p.numel() for p in nme.parameters()) == sum(p.numel() for p in model.parameters())
    assert unwrap(nme) is model and unwrap(model) is model


def test_class_means_are_normalised_means_of_normalised_exemplars() -> None:
    data = TensorData(torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, -5.0], [1.0, 1.0]]),
                      torch.tensor([0, 0, 1, 1]), 3)
    memory = ExemplarMemory(per_class=2, num_classes=3)
    memory.update(np.arange(4), data.y, random_selector(np.random.default_rng(0)))
    means, present = class_means(nn.Flatten(), data, memory, 2, torch.device("cpu"))
    assert torch.allclose(means[0], torch.tensor([1.0, 1.0]) / 2**0.5)
    b = torch.tensor([0.0, -1.0]) + torch.tensor([1.0, 1.0]) / 2**0.5
    assert torch.allclose(means[1], b / b.norm())
    assert present.tolist() == [True, True, False]


def test_distillation_has_no_pull_where_the_student_is_the_teacher() -> None:
    teacher = torch.randn(4, 5)
    student = teacher.clone().requires_grad_(True)
    distillation_bce(student, teacher).backward()
    assert student.grad.abs().max() < 1e-6


def test_icarl_phase_herds_the_memory_and_deploys_the_nme() -> None:
    data = toy_data()
    icarl, split = started("icarl", mlp(), data, per_class=3)
    assert len(icarl.memory) == 9
    assert len(icarl.train_indices(split, 1)) == len(split.part(1)) + 9
    icarl.trainable().train()
    x, y = data.x[:16], data.y[:16]
    assert torch.isfinite(icarl.loss(x, y))
    icarl.end_phase()
    nme = icarl.deployed()
    assert isinstance(nme, NearestMeanClassifier) and nme.model is icarl.model
    assert sum(p.numel() for p in nme.parameters()) == \
        sum(p.numel() for p in icarl.model.parameters())
    assert nme.eval()(x).shape == (16, 3)
    # The next phase starts from the trained classifier inside the wrapper.
    icarl.begin_phase(nme, PhaseContext(2, 2, lambda: None, split, data))
    assert isinstance(icarl.teacher, Classifier) and len(icarl.memory) == 9


def test_er_and_icarl_run_two_phases_through_the_cli(tmp_path: Path,
                                                     toy_args: list[str]) -> None:
    out = tmp_path / "out"
    methods = ["finetune", "er", "icarl"]
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "n_phases=2", "--set", "order_seeds=[0]",
                 "--set", f"methods={methods}",
                 "--set", "method_options.icarl={per_class: 5}"]) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    finetune = runs["finetune"]
    for name, per_class in (("er", 20), ("icarl", 5)):
        run = runs[name]
        assert run["uses_old_data"] is True
        assert [p["phase"] for p in run["phases"]] == [1, 2]
        for p, ft in zip(run["phases"], finetune["phases"]):
            if name == "er":  # the memory is replayed beside D(t), not in it
                assert p["n_train"] == ft["n_train"]
            else:
                assert ft["n_train"] < p["n_train"] <= ft["n_train"] + 3 * per_class
        assert run["parameters"] == finetune["parameters"]
    assert "head_acc_test" in runs["icarl"]["phases"][0]


def test_old_exemplars_stand_for_every_sample_seen() -> None:
    """After 1000 old samples and 100 new ones, about 1/11 of a random memory is new (a
    reservoir's share), not 100/110 as a uniform draw over old exemplars + new would give."""
    new_share = []
    for trial in range(200):
        memory = ExemplarMemory(per_class=10, num_classes=1)
        select = random_selector(np.random.default_rng(trial))
        memory.update(np.arange(1000), torch.zeros(1000, dtype=torch.long), select)
        memory.update(np.arange(1000, 1100), torch.zeros(100, dtype=torch.long), select)
        new_share.append(np.mean(memory.indices() >= 1000))
    assert 0.05 < np.mean(new_share) < 0.14
    # Herding aims at the weighted mean: one heavy old exemplar at 0 and light new ones at 10
    # pull the first pick to the old one.
    vectors = torch.tensor([[0.0], [10.0], [10.0]])
    assert herding(vectors, 1, torch.tensor([100.0, 1.0, 1.0])).tolist() == [0]
    assert herding(vectors, 1).tolist() == [1]
