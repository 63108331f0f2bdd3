"""The baselines without old data: finetune-es, lwf and ewc, part by part and end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instil.cli import main
from instil.config import TrainConfig
from instil.data.split import IILSplit
from instil.errors import InstilError
from instil.methods import create_method, finetune_es
from instil.methods.base import PhaseContext
from instil.methods.ewc import (
    accumulate,
    check_stable,
    ewc_penalty,
    fisher_diagonal,
    momentum_bound,
    penalised,
)
from instil.methods.finetune_es import (
    BestKeeper,
    held_out_accuracy,
    held_out_loss,
    split_holdout,
)
from instil.methods.lwf import distillation
from instil.models import create_model
from tests.methods.phase_data import TensorData


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", (2,), 3, hidden=(8,))


def toy_data(n: int = 100) -> TensorData:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorData(x, y, num_classes=3, batch_size=16)


def toy_split() -> IILSplit:
    return IILSplit(0, 0.2, 2, "test", np.arange(20), (np.arange(20, 60), np.arange(60, 100)))


def context(phase: int = 1) -> PhaseContext:
    return PhaseContext(phase, 2, lambda: None, toy_split(), toy_data(), TrainConfig(lr=0.01))


def shift(model: nn.Module, amount: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_options_are_checked_with_their_key() -> None:
    for name, options, key in (("finetune-es", {"holdout": 1.0}, "holdout"),
                               ("finetune-es", {"patience": -1}, "patience"),
                               ("finetune-es", {"criterion": "acc"}, "criterion"),
                               ("lwf", {"temperature": 0.0}, "temperature"),
                               ("ewc", {"gamma": 1.5}, "gamma"),
                               ("ewc", {"fisher": "exact"}, "fisher")):
        with pytest.raises(InstilError, match=f"method_options.{name}.{key}"):
            create_method(name, options)


# ---- EWC -------------------------------------------------------------------------------

def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_away_from_it() -> None:
    model = tiny_mlp()
    anchor = {n: p.detach().clone() for n, p in penalised(model).items()}
    fisher = {n: torch.rand_like(p) + 0.1 for n, p in anchor.items()}
    assert ewc_penalty(penalised(model), fisher, anchor).item() == 0.0
    direction = {n: torch.randn_like(p) for n, p in anchor.items()}

    def at(s: float) -> float:
        moved = {n: anchor[n] + s * direction[n] for n in anchor}
        return ewc_penalty(moved, fisher, anchor).item()

    values = [at(s) for s in (0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values == pytest.approx([0.25 * values[1], values[1], 4 * values[1], 9 * values[1]])


def test_online_accumulation() -> None:
    old, new = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 0.0])}
    assert accumulate(None, new, 0.3) is new
    assert torch.equal(accumulate(old, new, 0.5)["w"], torch.tensor([1.0, 1.0]))


def test_fisher_is_the_mean_squared_per_sample_gradient_and_non_negative() -> None:
    model = tiny_mlp()
    model.unused = nn.Linear(2, 2)  # does not affect the output: its Fisher must be 0
    data = toy_data(12)
    model.eval()  # the reference below must normalise as the Fisher pass does
    fisher = fisher_diagonal(model, data.batches(np.arange(12)).epoch(0), chunk=5)
    assert not model.training
    expected = {n: torch.zeros_like(p) for n, p in penalised(model).items()}
    for i in range(12):  # one sample at a time, the slow and obvious way
        model.zero_grad()
        F.cross_entropy(model(data.x[i:i + 1]), data.y[i:i + 1]).backward()
        for n, p in penalised(model).items():
            expected[n] += (p.grad if p.grad is not None else 0) ** 2 / 12
    for n in expected:
        assert torch.allclose(fisher[n], expected[n], atol=1e-6), n
        assert (fisher[n] >= 0).all()
    assert fisher["unused.weight"].abs().sum() == 0 and fisher["unused.bias"].abs().sum() == 0
    assert fisher["head.weight"].sum() > 0


def test_fisher_pass_keeps_batchnorm_statistics_and_the_mode() -> None:
    model = tiny_mlp().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    fisher = fisher_diagonal(model, toy_data(20).batches(np.arange(20)).epoch(0), sampled=True)
    assert model.training
    assert same_state(before, model.state_dict())
    assert all((f >= 0).all() for f in fisher.values())
    assert not any("running" in n for n in fisher)


def test_ewc_is_plain_cross_entropy_at_phase_start_and_accumulates_online() -> None:
    method = create_method("ewc", {"gamma": 0.5, "fisher": "empirical", "fisher_samples": 0})
    data = toy_data()
    method.begin_phase(tiny_mlp(), context(1))
    on_d0 = fisher_diagonal(method.model, data.batches(np.arange(20)).epoch(0))
    assert all(torch.allclose(method.fisher[n], on_d0[n]) for n in on_d0)
    x, y = data.x[:16], data.y[:16]
    method.model.train()
    assert torch.equal(method.loss(x, y), F.cross_entropy(method.model(x), y))
    shift(method.model, 0.01)
    assert method.loss(x, y) > F.cross_entropy(method.model(x), y)
    method.end_phase()  # phase 1 of 2: the Fisher of D(1) with the new model joins in
    on_d1 = fisher_diagonal(method.model, data.batches(np.arange(20, 60)).epoch(0))
    # D(1) holds 40 samples against D(0)'s 20: its per-sample Fisher counts twice.
    assert all(torch.allclose(method.fisher[n], 0.5 * on_d0[n] + 2 * on_d1[n]) for n in on_d0)
    deployed = method.deployed()
    method.begin_phase(deployed, context(2))  # the anchor moves to M(1)
    assert all(torch.equal(method.anchor[n], p) for n, p in deployed.named_parameters())


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_bound_separates_converging_from_diverging_sgd(nesterov: bool) -> None:
    # SGD with momentum on ½·h·x² (torch's update rule), just inside and just outside
    # the bound on lr·h that the EWC check uses.
    bound = momentum_bound(0.9, nesterov)
    for factor, grows in ((0.95, False), (1.05, True)):
        x = torch.tensor([1.0], requires_grad=True)
        opt = torch.optim.SGD([x], lr=factor * bound, momentum=0.9, nesterov=nesterov)
        for _ in range(500):
            opt.zero_grad()
            (0.5 * x.pow(2)).sum().backward()
            opt.step()
        assert (not abs(x.item()) < 1.0) == grows  # an overflow to nan counts as growth


def test_ewc_refuses_a_penalty_sgd_cannot_descend_and_names_the_largest_weight() -> None:
    fisher = {"w": torch.tensor([0.5, 7.0]), "b": torch.tensor([1.0])}
    budget = TrainConfig(lr=0.01, momentum=0.9, weight_decay=0.0)
    check_stable(fisher, 10.0, budget, phase=1)  # 10·7·0.01 = 0.7 < 3.8
    with pytest.raises(InstilError, match=r"lambda_ewc below 54\.3"):
        check_stable(fisher, 100.0, budget, phase=1)  # 100·7·0.01 = 7 > 3.8
    with pytest.raises(InstilError, match="not finite"):
        check_stable({"w": torch.tensor([float("nan")])}, 10.0, budget, phase=2)


def test_ewc_checks_stability_before_training_a_phase() -> None:
    method = create_method("ewc", {"lambda_ewc": 1e9, "fisher_samples": 0})
    with pytest.raises(InstilError, match="stability bound"):
        method.begin_phase(tiny_mlp(), context(1))


# ---- LwF -------------------------------------------------------------------------------

def test_lwf_distillation_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(8, 5) * 3
    assert distillation(logits, logits, 2.0).item() == 0.0
    assert distillation(logits, logits.flip(1), 2.0).item() > 0
    method = create_method("lwf", {"lambda_kd": 3.0})
    method.begin_phase(tiny_mlp(), context())
    assert not method.old.training
    assert not any(p.requires_grad for p in method.old.parameters())
    method.model.eval()  # same normalisation as the teacher: the student is its copy
    x, y = toy_data().x[:16], toy_data().y[:16]
    assert torch.allclose(method.loss(x, y), F.cross_entropy(method.model(x), y))
    shift(method.model, 0.1)
    assert method.loss(x, y) > F.cross_entropy(method.model(x), y)


# ---- finetune-es -----------------------------------------------------------------------

def test_holdout_is_a_seeded_disjoint_slice_and_never_trained_on() -> None:
    part = np.arange(20, 60)
    kept, held = split_holdout(part, 0.1, np.random.default_rng(0))
    assert len(held) == 4 and len(kept) == 36
    assert not set(kept) & set(held) and set(kept) | set(held) == set(part)
    again = split_holdout(part, 0.1, np.random.default_rng(0))
    assert np.array_equal(again[1], held)
    assert len(split_holdout(np.arange(2), 0.01, np.random.default_rng(0))[1]) == 1
    method = create_method("finetune-es")
    torch.manual_seed(0)
    method.begin_phase(tiny_mlp(), context())
    train = method.train_indices(toy_split(), 1)
    assert set(train) | set(method.held_out) == set(toy_split().part(1))
    assert not set(train) & set(method.held_out)


def test_held_out_accuracy_counts_argmax_hits_in_eval_mode() -> None:
    model, data = tiny_mlp().train(), toy_data()
    indices = np.arange(30, 50)
    with torch.no_grad():
        expected = (model.eval()(data.x[indices]).argmax(1) == data.y[indices]).float().mean()
    model.train()
    assert held_out_accuracy(model, data, indices) == pytest.approx(expected.item())
    assert model.training


def test_held_out_loss_is_the_mean_cross_entropy_in_eval_mode() -> None:
    model, data = tiny_mlp().train(), toy_data()
    indices = np.arange(30, 50)  # two batches of 16 and 4: a mean of batch means is wrong
    with torch.no_grad():
        z = model.eval()(data.x[indices]).numpy().astype(np.float64)
    model.train()
    y = data.y[indices].numpy()
    top = z.max(1)
    log_sum_exp = top + np.log(np.exp(z - top[:, None]).sum(1))
    expected = np.mean(log_sum_exp - z[np.arange(len(y)), y])
    assert held_out_loss(model, data, indices) == pytest.approx(expected, rel=1e-9)
    assert model.training


def drive(monkeypatch: pytest.MonkeyPatch, accuracies: list[float] | None = None,
          losses: list[float] | None = None, **options
          ) -> tuple[object, list[dict[str, torch.Tensor]], dict[str, list[float]]]:
    """One phase by hand: the held-out accuracies and losses are `accuracies` and `losses`
    in turn (M(t-1) first; a score not given must not be asked for), and the model moves
    between epochs; returns the method, the state after each epoch and the scores unasked."""
    unasked = {}
    for name, scores in (("held_out_accuracy", accuracies), ("held_out_loss", losses)):
        unasked[name] = asked = list(scores or [])
        monkeypatch.setattr(finetune_es, name, lambda *_, asked=asked: asked.pop(0))
    method = create_method("finetune-es", options)
    method.begin_phase(tiny_mlp(), context())
    states = [{k: v.clone() for k, v in method.model.state_dict().items()}]
    for epoch in range(len(accuracies or losses) - 1):
        shift(method.model, 0.1)
        states.append({k: v.clone() for k, v in method.model.state_dict().items()})
        method.end_epoch(epoch)
    method.end_phase()
    return method, states, unasked


def test_finetune_es_deploys_the_best_epoch_and_the_earlier_of_a_tie(monkeypatch) -> None:
    method, states, _ = drive(monkeypatch, [0.5, 0.7, 0.9, 0.6, 0.9], criterion="accuracy")
    assert method.keeper.epoch == 2
    assert same_state(method.deployed().state_dict(), states[2])
    assert method.phase_facts() == {"kept_epoch": 2, "held_out_acc": 90.0}


def test_finetune_es_by_loss_keeps_the_lowest_loss_not_the_best_accuracy(monkeypatch) -> None:
    accuracies, losses = [0.5, 0.9, 0.6, 0.7, 0.8], [1.0, 0.8, 0.5, 0.9, 0.5]
    method, states, unasked = drive(monkeypatch, accuracies, losses)  # the default: loss
    assert unasked["held_out_accuracy"] == accuracies  # never scored by accuracy
    assert method.keeper.epoch == 2  # the lowest loss, the earlier of a tie
    assert same_state(method.deployed().state_dict(), states[2])
    assert method.phase_facts() == {"kept_epoch": 2, "held_out_loss": 0.5}
    method, states, _ = drive(monkeypatch, accuracies, losses, criterion="accuracy")
    assert method.keeper.epoch == 1 and same_state(method.deployed().state_dict(), states[1])


@pytest.mark.parametrize("criterion, scores", [("accuracy", [0.8, 0.5, 0.8, 0.7]),
                                               ("loss", [0.4, 0.6, 0.4, 0.5])])
def test_finetune_es_keeps_the_previous_model_when_no_epoch_beats_it(
        monkeypatch, criterion: str, scores: list[float]) -> None:
    given = {"accuracies" if criterion == "accuracy" else "losses": scores}
    method, states, _ = drive(monkeypatch, **given, criterion=criterion)
    assert method.keeper.epoch == 0
    assert same_state(method.deployed().state_dict(), states[0])


def test_finetune_es_stops_scoring_after_patience(monkeypatch) -> None:
    method, states, unasked = drive(monkeypatch, [0.5, 0.7, 0.6, 0.6, 0.95, 0.99],
                                    patience=2, criterion="accuracy")
    # Epochs after the stop are neither scored nor kept.
    assert unasked["held_out_accuracy"] == [0.95, 0.99]
    assert same_state(method.deployed().state_dict(), states[1])
    method, states, unasked = drive(monkeypatch, losses=[0.9, 0.5, 0.6, 0.5, 0.1],
                                    patience=2)
    assert unasked["held_out_loss"] == [0.1]
    assert same_state(method.deployed().state_dict(), states[1])


def test_best_keeper_counts_epochs_without_improvement() -> None:
    keeper, model = BestKeeper(patience=0), tiny_mlp()
    for epoch, score in enumerate([0.3, 0.2, 0.2, 0.1, 0.1]):
        keeper.offer(epoch, score, model)
    assert (keeper.epoch, keeper.since_best, keeper.stopped) == (0, 4, False)
    lowest = BestKeeper(patience=0, lower_is_better=True)
    for epoch, score in enumerate([0.3, 0.2, 0.2, 0.4]):
        lowest.offer(epoch, score, model)
    assert (lowest.epoch, lowest.score, lowest.since_best) == (1, 0.2, 2)


# ---- end to end ------------------------------------------------------------------------

METHODS = ["finetune-es", "lwf", "ewc"]


def test_each_baseline_runs_two_phases_through_the_cli(tmp_path: Path,
                                                       toy_args: list[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "n_phases=2", "--set", "order_seeds=[0]",
                 "--set", f"methods=[{', '.join(METHODS)}]"]) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert sorted(runs) == sorted(METHODS)
    for run in runs.values():
        assert [p["phase"] for p in run["phases"]] == [1, 2]
        assert run["uses_old_data"] is False
        assert all(np.isfinite(p["acc_test"]) for p in run["phases"])
    part = runs["ewc"]["phases"][0]["n_train"]  # all of D(1)
    assert runs["finetune-es"]["phases"][0]["n_train"] == part - round(0.3 * part)
    # The kept epoch and its held-out loss land in results.json: 0 (M(t-1) itself) up to
    # the phase's epochs (toy_args: phase.epochs=2).
    assert all(p["kept_epoch"] in (0, 1, 2) and p["held_out_loss"] > 0
               for p in runs["finetune-es"]["phases"])
