"""The protocol's wiring, checked by behaviour (METHOD.md §1): every phase starts from the
model the previous phase deployed (for dbd the teacher, not the student); the M(t) that
results.json scores is that deployed model; acc_base is the accuracy on exactly D(0); pp,
f, f_rel and nfr are what predictions computed here give.

The toy's classes overlap (spread 1.0) and its phases move the model (lr 0.2), so that
forgetting and negative flips are not zero, a teacher and its student score differently,
and M(0) scores differently on D(0), on the test set and on the whole training set (D(0)
holds none of the drifted samples the test set and the later parts hold).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import instil.engine.protocol as protocol
from instil.checkpoint import build_model, load_checkpoint
from instil.cli import main
from instil.data.toy import load_toy2d
from instil.methods import METHODS
from tests.conftest import TOY_SETS

# Percentages are float32 means in the engine: equal to far below one sample (1/300).
TOL = 1e-4
TOY_OPTIONS = {"n_train": 600, "n_test": 300, "spread": 1.0}
WIRING_SETS = ["--set", "order_seeds=[0]", "--set", "phase.epochs=3",
               "--set", "method_options.dbd.freeze_epochs=1", "--set", "phase.lr=0.2",
               "--set", "data.options={n_train: 600, n_test: 300, spread: 1.0}"]


@dataclass
class Trained:
    """One call of the protocol's train_phase, seen from outside."""

    tag: str  # "base", "base-<method>" or the method
    phase: int
    start: dict[str, torch.Tensor] | None  # the weights of the model it was given
    deployed: nn.Module  # a copy of method.deployed() once the phase has ended
    trainable: nn.Module  # a copy of method.trainable() (dbd's student)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def spy_on_phases(monkeypatch: pytest.MonkeyPatch) -> list[Trained]:
    calls: list[Trained] = []
    real = protocol.train_phase

    def spy(session, method, split, phase, previous, tag, *args, **kwargs):
        start = None if previous is None else weights(previous)
        result = real(session, method, split, phase, previous, tag, *args, **kwargs)
        calls.append(Trained(tag, phase, start, copy.deepcopy(method.deployed()),
                             copy.deepcopy(method.trainable())))
        return result

    monkeypatch.setattr(protocol, "train_phase", spy)
    return calls


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x).argmax(1)


def percent(hits: torch.Tensor) -> float:
    return 100.0 * hits.sum().item() / len(hits)


class Scorer:
    """Accuracy on the toy's test set, on D(0) and on the whole training set, from the
    data as the test loads it and D(0)'s indices as the run's manifest lists them."""

    def __init__(self, out: Path) -> None:
        data = load_toy2d(**TOY_OPTIONS)
        self.test_x, self.test_y = data.test.tensor, data.test.labels
        self.train_x, self.train_y = data.train.tensor, data.train.labels
        base = json.loads((out / "manifest-0.json").read_text())["base"]
        self.base = torch.as_tensor(base)
        assert len(self.base) == 300 and len(set(base)) == 300

    def test_right(self, model: nn.Module) -> torch.Tensor:
        return predictions(model, self.test_x) == self.test_y

    def acc_test(self, model: nn.Module) -> float:
        return percent(self.test_right(model))

    def acc_base(self, model: nn.Module) -> float:
        return percent(predictions(model, self.train_x[self.base]) == self.train_y[self.base])

    def acc_train(self, model: nn.Module) -> float:
        return percent(predictions(model, self.train_x) == self.train_y)


def run_toy(out: Path, toy_args: list[str], methods: str) -> dict:
    assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *WIRING_SETS,
                 "--set", f"methods=[{methods}]", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def saved_model(path: Path) -> nn.Module:
    return build_model(load_checkpoint(path), path)


# Methods whose deployed model is not the config's architecture, so not saved under models/.
NOT_SAVED = {"der", "icarl", "podnet", "podnet-lsc"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_phase_starts_from_the_model_the_last_one_deployed(
        method: str, tmp_path: Path, toy_args: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_on_phases(monkeypatch)
    out = tmp_path / "out"
    record = run_toy(out, toy_args, method)["runs"][0]
    scorer = Scorer(out)
    phases = [c for c in calls if c.tag == method]
    assert [c.phase for c in phases] == [p["phase"] for p in record["phases"]]
    own_base = [c for c in calls if c.tag == f"base-{method}"]
    shared_base = [c for c in calls if c.tag == "base"]
    m0 = own_base[-1] if own_base else shared_base[-1]
    if not own_base:  # the shared M(0), as saved for `instil promote`
        assert same_weights(weights(saved_model(out / "models" / "m0-0.pt")),
                            weights(m0.deployed))
    if method != "joint":  # joint retrains from scratch and ignores what it is given
        starts = [weights(m0.deployed)] + [weights(c.deployed) for c in phases[:-1]]
        for call, start in zip(phases, starts):
            assert same_weights(call.start, start), f"phase {call.phase} started elsewhere"
    for call, scores in zip(phases, record["phases"]):
        # M(t) in results.json is the model the method deployed, scored here.
        assert scores["acc_test"] == pytest.approx(scorer.acc_test(call.deployed), abs=TOL)
        assert scores["acc_base"] == pytest.approx(scorer.acc_base(call.deployed), abs=TOL)
    last = out / "models" / f"{method}-0.pt"
    assert last.exists() == (method not in NOT_SAVED)
    if last.exists():  # the last model saved is the last one deployed
        assert same_weights(weights(saved_model(last)), weights(phases[-1].deployed))


def test_dbd_deploys_and_goes_on_from_the_teacher(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The case the parametrised test must be able to tell apart: dbd's teacher and student
    differ after every phase, in weights and in what they score."""
    calls = spy_on_phases(monkeypatch)
    out = tmp_path / "out"
    record = run_toy(out, toy_args, "dbd")["runs"][0]
    scorer = Scorer(out)
    phases = [c for c in calls if c.tag == "dbd"]
    assert len(phases) == 3
    for call, nxt in zip(phases, phases[1:]):
        assert not same_weights(weights(call.deployed), weights(call.trainable))
        assert same_weights(nxt.start, weights(call.deployed))
        assert not same_weights(nxt.start, weights(call.trainable))
    teacher = [f(c.deployed) for c in phases for f in (scorer.acc_test, scorer.acc_base)]
    student = [f(c.trainable) for c in phases for f in (scorer.acc_test, scorer.acc_base)]
    assert teacher != student  # else a student scored as M(t) would pass unseen
    recorded = [p[k] for p in record["phases"] for k in ("acc_test", "acc_base")]
    assert recorded == pytest.approx(teacher, abs=TOL)
    recorded = [p[k] for p in record["phases"] for k in ("student_acc_test", "student_acc_base")]
    assert recorded == pytest.approx(student, abs=TOL)


def test_the_student_may_be_scored_after_the_last_phase_only(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """also_evaluate_every_phase=false (fmnist-quick, to save evaluation) drops the student's
    scores of the earlier phases and keeps the last phase's, which the reports read."""
    calls = spy_on_phases(monkeypatch)
    out = tmp_path / "out"
    record = run_toy(out, [*toy_args, "--set", "also_evaluate_every_phase=false"],
                     "dbd")["runs"][0]
    *early, last = record["phases"]
    assert len(early) == 2
    assert not any(k.startswith("student_") for p in early for k in p)
    scorer = Scorer(out)
    student = [c.trainable for c in calls if c.tag == "dbd"][-1]
    assert last["student_acc_test"] == pytest.approx(scorer.acc_test(student), abs=TOL)
    assert last["student_acc_base"] == pytest.approx(scorer.acc_base(student), abs=TOL)


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[Trained]]:
    """One toy run of finetune and dbd, with every phase's deployed model captured."""
    tmp = tmp_path_factory.mktemp("wiring")
    toy_args = [a for item in [*TOY_SETS, f"cache_dir={tmp / 'cache'}"]
                for a in ("--set", item)]
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = spy_on_phases(monkeypatch)
        results = run_toy(tmp / "out", toy_args, "finetune, dbd")
    return tmp / "out", results, calls


def test_acc_base_is_the_accuracy_on_exactly_d0(
        finetune_run: tuple[Path, dict, list[Trained]]) -> None:
    out, results, calls = finetune_run
    scorer = Scorer(out)
    m0 = saved_model(out / "models" / "m0-0.pt")
    # By construction D(0) lacks the drifted samples: M(0) scores far better on it than on
    # the test set or the whole training set, so neither can stand in for D(0) unseen.
    assert scorer.acc_base(m0) > scorer.acc_test(m0) + 5
    assert scorer.acc_base(m0) > scorer.acc_train(m0) + 2
    for record in results["runs"]:
        assert record["base"]["acc_base"] == pytest.approx(scorer.acc_base(m0), abs=TOL)
        assert record["base"]["acc_test"] == pytest.approx(scorer.acc_test(m0), abs=TOL)
        phases = [c for c in calls if c.tag == record["method"]]
        for call, scores in zip(phases, record["phases"], strict=True):
            model = call.deployed
            assert scores["acc_base"] == pytest.approx(scorer.acc_base(model), abs=TOL)
            assert scorer.acc_base(model) not in (scorer.acc_test(model),
                                                  scorer.acc_train(model))


def test_pp_f_and_nfr_match_predictions_computed_here(
        finetune_run: tuple[Path, dict, list[Trained]]) -> None:
    out, results, calls = finetune_run
    scorer = Scorer(out)
    m0 = saved_model(out / "models" / "m0-0.pt")
    m0_right, m0_base = scorer.test_right(m0), scorer.acc_base(m0)
    flips_seen = forgetting_seen = 0
    for record in results["runs"]:
        phases = [c for c in calls if c.tag == record["method"]]
        for call, scores in zip(phases, record["phases"], strict=True):
            right = scorer.test_right(call.deployed)
            acc_test, acc_base = percent(right), scorer.acc_base(call.deployed)
            nfr = percent(m0_right & ~right)
            expected = {"acc_test": acc_test, "pp": acc_test - percent(m0_right),
                        "acc_base": acc_base, "f": m0_base - acc_base,
                        "f_rel": 100 * (m0_base - acc_base) / m0_base, "nfr": nfr}
            assert {k: scores[k] for k in expected} == pytest.approx(expected, abs=TOL)
            flips_seen += nfr > 0
            forgetting_seen += m0_base != acc_base
        # The last M(t) is also the model saved under models/, scored here from the file.
        final = saved_model(out / "models" / f"{record['method']}-0.pt")
        assert record["phases"][-1]["acc_test"] == pytest.approx(scorer.acc_test(final),
                                                                 abs=TOL)
        assert record["phases"][-1]["nfr"] == pytest.approx(
            percent(m0_right & ~scorer.test_right(final)), abs=TOL)
    # Numbers that are all zero would check nothing.
    assert flips_seen >= 3 and forgetting_seen >= 3


def test_the_m0_cache_key_follows_the_model_and_the_base_budget(tmp_path: Path) -> None:
    from instil.config import Config, from_dict
    from instil.data.split import IILSplit

    base = np.arange(10)
    split = IILSplit(order_seed=0, base_fraction=0.5, n_phases=1, fingerprint="f", base=base,
                     phases=(np.arange(10, 20),))

    def key(**changes: object) -> str:
        raw = {"name": "k", "data": {"name": "toy2d"}, "model": {"name": "mlp"},
               "base": {"epochs": 3, "lr": 0.05, "batch_size": 64},
               "phase": {"epochs": 2}, "methods": ["finetune"]}
        for path, value in changes.items():
            section, _, field = path.partition("__")
            raw[section] = {**raw[section], field: value} if field else value
        return protocol.base_cache_key(from_dict(Config, raw, ""), split)

    reference = key()
    assert key() == reference
    # What M(0) does not depend on leaves the key alone ...
    assert key(phase__epochs=5) == reference and key(methods=["dbd"]) == reference
    # ... what it depends on changes it: the model, its options, every part of the budget.
    for changed in (key(model__name="resnet_small"), key(model__options={"hidden": [32, 32]}),
                    key(base__epochs=4), key(base__lr=0.1), key(base__batch_size=32)):
        assert changed != reference


def test_a_changed_model_or_base_budget_trains_a_new_m0(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    def run(name: str, *sets: str) -> str:
        extra = [a for item in sets for a in ("--set", item)]
        assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args,
                     "--set", "methods=[finetune]", "--set", "order_seeds=[0]", *extra,
                     "--out", str(tmp_path / name)]) == 0
        return capsys.readouterr().err

    assert "M(0) of order seed 0 trained" in run("first")
    assert "M(0) of order seed 0 from the cache" in run("same", "phase.lr=0.02")
    for name, change in (("budget", "base.epochs=4"), ("lr", "base.lr=0.1"),
                         ("model", "model.options={hidden: [32, 32]}")):
        err = run(name, change)
        assert "M(0) of order seed 0 trained" in err, change
        # Not found under the old key and then refused for its shapes: never looked up.
        assert "from the cache" not in err and "unreadable" not in err, change
