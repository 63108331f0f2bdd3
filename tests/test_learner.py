"""`instil.Learner`: a stream of parts learnt one phase each, as `instil run` learns them, and
resumed after a restart from a state of tensors and plain data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import instil
from instil.checkpoint import build_model, load_checkpoint
from instil.cli import main
from instil.config import load_config
from instil.data import load_dataset
from instil.data.split import load_manifest
from instil.engine.epochs import read_epochs
from tests.conftest import TOY_SETS, weights_hash

# One order seed of the toy protocol (tests.conftest), with DBD's freezing period inside the
# toy's two-epoch phases and a seed other than the default, so that a seed ignored shows.
RUN_SETS = [*TOY_SETS, "order_seeds=[0]", "methods=[dbd, lwf]", "seed=4", "phase.epochs=3",
            "phase.lr=0.1", "method_options={dbd: {freeze_epochs: 1}}"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`instil run` on the toy set: its results, M(0), the manifest and the data."""
    root = tmp_path_factory.mktemp("learner")
    sets = [*RUN_SETS, f"cache_dir={root / 'cache'}"]
    args = [arg for item in sets for arg in ("--set", item)]
    out = root / "run"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *args]) == 0
    config = load_config(Path("configs/toy2d.yaml"), sets)
    m0 = load_checkpoint(out / "models" / "m0-0.pt")
    return {"results": json.loads((out / "results.json").read_text()), "config": config,
            "models": out / "models", "epochs": read_epochs(out),
            "m0": build_model(m0, "m0"), "split": load_manifest(out / "manifest-0.json"),
            "data": load_dataset(config.data)}


def parts(run: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train = run["data"].train
    return [(train.tensor[torch.as_tensor(p)], train.labels[torch.as_tensor(p)])
            for p in run["split"].phases]


def toy_learner(run: dict, method: str, holdout: bool = True) -> instil.Learner:
    config, test = run["config"], run["data"].test
    budget = config.phase
    return instil.Learner(run["m0"], method, epochs=budget.epochs, lr=budget.lr,
                          batch_size=budget.batch_size,
                          options=config.method_options.get(method), device="cpu",
                          seed=config.seed,
                          holdout=(test.tensor, test.labels) if holdout else None)


@pytest.mark.parametrize("method", ["dbd", "lwf"])
def test_a_learner_fed_a_runs_parts_reproduces_its_accuracies(toy_run: dict,
                                                              method: str) -> None:
    run = next(r for r in toy_run["results"]["runs"] if r["method"] == method)
    expected = [p["acc_test"] for p in run["phases"]]
    learner = toy_learner(toy_run, method)
    got = []
    untimed = ("method", "seconds", "images_per_s")
    for t, part in enumerate(parts(toy_run), start=1):
        report = learner.learn(part)
        assert report.phase == t == learner.phase and report.images == len(part[1])
        got.append(report.acc_after)
        # The phase's per-epoch record is the run's (loss terms and facts; the clock aside).
        logged = sorted((r for r in toy_run["epochs"]
                         if r["method"] == method and r["phase"] == t),
                        key=lambda r: r["epoch"])
        assert len(report.epochs) == len(logged) > 0
        assert {r["method"] for r in report.epochs} == {method}
        for mine, theirs in zip(report.epochs, logged):
            assert {k: v for k, v in mine.items() if k not in untimed} == pytest.approx(
                {k: v for k, v in theirs.items() if k not in untimed}, rel=1e-5)
    # metrics.accuracy takes a float32 mean: equal up to its rounding, far below one sample.
    assert got == pytest.approx(expected, abs=1e-4)
    assert len(set(got)) > 1  # the phases changed the model
    if method == "dbd":
        assert report.facts == {"ema_steps": run["phases"][-1]["ema_steps"]}
    # The very weights the run deployed after its last phase.
    final = load_checkpoint(toy_run["models"] / f"{method}-0.pt").state
    mine = learner.model.state_dict()
    assert set(mine) == set(final) and all(torch.equal(mine[k], final[k]) for k in final)
    # The deployed model is the one scored.
    test = toy_run["data"].test
    with torch.no_grad():
        predicted = learner.model.eval()(test.tensor).argmax(1)
    assert 100.0 * (predicted == test.labels).sum().item() / len(test.labels) == got[-1]


def test_the_input_model_is_never_changed(toy_run: dict) -> None:
    m0 = toy_run["m0"]
    before = weights_hash(m0)
    learner = toy_learner(toy_run, "dbd", holdout=False)
    report = learner.learn(parts(toy_run)[0])
    assert report.acc_after is None and report.nfr is None
    assert weights_hash(m0) == before and weights_hash(learner.model) != before


def reloaded(state: dict) -> dict:
    """`state` through torch.save and a tensors-only torch.load, as after a restart."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("method", ["dbd", "ewc"])
def test_learning_resumes_after_a_restart_as_if_never_stopped(toy_run: dict,
                                                              method: str) -> None:
    """A learner restarted after phase 1 from its state ends where one that never stopped
    does: the state carries the model, the phase (which seeds the next) and what the method
    keeps between phases (EWC's Fisher matrix)."""
    stream = parts(toy_run)
    through = toy_learner(toy_run, method, holdout=False)
    for part in stream:
        through.learn(part)
    first = toy_learner(toy_run, method, holdout=False)
    first.learn(stream[0])
    state = reloaded(first.state_dict())
    assert state["phase"] == 1 and ("fisher" in state["carried"]) == (method == "ewc")
    restarted = toy_learner(toy_run, method, holdout=False)
    restarted.load_state_dict(state)
    assert restarted.phase == 1
    for part in stream[1:]:
        restarted.learn(part)
    assert weights_hash(restarted.model) == weights_hash(through.model)
    # Without the state it would not: the second phase would start from M(0).
    fresh = toy_learner(toy_run, method, holdout=False)
    for part in stream[1:]:
        fresh.learn(part)
    assert weights_hash(fresh.model) != weights_hash(through.model)


def test_a_state_of_another_method_or_architecture_is_refused(toy_run: dict) -> None:
    learner = toy_learner(toy_run, "dbd", holdout=False)
    learner.learn(parts(toy_run)[0])
    state = learner.state_dict()
    with pytest.raises(instil.MethodError, match="a state of dbd"):
        toy_learner(toy_run, "lwf", holdout=False).load_state_dict(state)
    other = instil.Learner(nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 3)), "dbd",
                           options={"freeze_epochs": 1}, epochs=2, device="cpu")
    with pytest.raises(instil.ModelError, match="not those of a Sequential"):
        other.load_state_dict(state)
    with pytest.raises(instil.InstilError, match="not a Learner state"):
        other.load_state_dict({"model": {}})


def test_a_bad_part_leaves_the_learner_as_it_was(toy_run: dict) -> None:
    learner = toy_learner(toy_run, "dbd")
    x, y = parts(toy_run)[0]
    learner.learn((x, y))
    before = weights_hash(learner.model)
    bad = y.clone()
    bad[3] = 9
    with pytest.raises(instil.DataError, match=r"part\[3\]: label 9 is out of range"):
        learner.learn((x, bad))
    with pytest.raises(instil.DataError, match="part is empty"):
        learner.learn((x[:0], y[:0]))
    with pytest.raises(instil.ModelError, match="cannot take"):
        learner.learn((torch.zeros(4, 5), torch.zeros(4, dtype=torch.int64)))
    assert learner.phase == 1 and weights_hash(learner.model) == before


def test_methods_that_need_old_data_are_refused_at_once() -> None:
    with pytest.raises(instil.MethodError, match="trains on old data"):
        instil.Learner(nn.Linear(2, 3), "icarl")
