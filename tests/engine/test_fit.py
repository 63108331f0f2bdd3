from __future__ import annotations

import numpy as np
import pytest
import torch

from instil.config import DataConfig, TrainConfig
from instil.data.base import DataBundle, Samples
from instil.data.loaders import BatchPlan, DataSource
from instil.engine.evaluate import predict
from instil.engine.fit import fit, lr_factor
from instil.errors import InstilError
from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.models import create_model


def toy_source() -> DataSource:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 2, generator=g) + 3 * y[:, None].float()
    bundle = DataBundle("t", ["a", "b"], Samples(labels=y, tensor=x),
                        Samples(labels=y, tensor=x), (2,))
    return DataSource(bundle, DataConfig(name="t"), torch.device("cpu"), channels_last=False)


def started_finetune():
    torch.manual_seed(0)
    method = create_method("finetune")
    method.begin_phase(create_model("mlp", (2,), 2), PhaseContext(1, 1, lambda: None))
    return method


def test_fit_learns_a_separable_problem() -> None:
    source = toy_source()
    method = started_finetune()
    batches = source.batches("train", np.arange(200), BatchPlan(32, train=True, seed=1))
    result = fit(method, batches, TrainConfig(epochs=5, lr=0.1), "test")
    assert result.steps == 5 * (200 // 32)
    preds = predict(method.deployed(), source.batches("test", None, BatchPlan(64, False)))
    assert (preds == source.labels("test")).float().mean() > 0.95


def test_nan_loss_stops_with_a_clear_error() -> None:
    source = toy_source()
    method = started_finetune()
    original = method.loss
    method.loss = lambda x, y: original(x, y) * float("nan")
    batches = source.batches("train", np.arange(200), BatchPlan(32, train=True))
    with pytest.raises(InstilError, match="loss became nan.*lower the learning rate"):
        fit(method, batches, TrainConfig(epochs=1, lr=0.1), "phase 3")


def test_training_batches_cover_the_part_once_per_epoch() -> None:
    source = toy_source()
    idx = np.arange(10, 110)
    seen = torch.cat([x[:, 0] for x, _ in source.batches(
        "train", idx, BatchPlan(25, train=True, seed=3)).epoch(0)])
    assert torch.equal(seen.sort().values, source.bundle.train.tensor[idx, 0].sort().values)


def test_a_part_smaller_than_a_batch_is_still_one_batch() -> None:
    batches = toy_source().batches("train", np.arange(5), BatchPlan(64, train=True))
    assert len(batches) == 1
    assert [len(y) for _, y in batches.epoch(0)] == [5]


def test_cosine_schedule_with_warmup() -> None:
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0


def test_a_method_must_note_the_terms_it_declares() -> None:
    source = toy_source()
    batches = source.batches("train", np.arange(200), BatchPlan(32, train=True))
    method = started_finetune()  # declares ("ce",)
    original = method.loss

    def undeclared(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = original(x, y)
        method.note_terms(ce=loss, extra=loss)
        return loss

    method.loss = undeclared
    with pytest.raises(ValueError, match=r"\['ce', 'extra'\] noted, \['ce'\] declared"):
        fit(method, batches, TrainConfig(epochs=1, lr=0.1), "phase 1")
    silent = started_finetune()
    silent.note_terms = lambda **terms: None
    with pytest.raises(ValueError, match=r"\[\] noted, \['ce'\] declared"):
        fit(silent, batches, TrainConfig(epochs=1, lr=0.1), "phase 1")
