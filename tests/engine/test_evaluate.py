"""predict: arg-max predictions in data order, the model's mode restored, under the run's
precision (autocast on the model's own device)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from instil.config import DataConfig
from instil.data.base import DataBundle, Samples
from instil.data.loaders import BatchPlan, DataSource
from instil.engine.evaluate import predict


class Seen(nn.Module):
    """Scores class k as the input's k-th column, and keeps the dtype of what it computed."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(3))
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.dtypes.append(out.dtype)
        return out


def source() -> DataSource:
    labels = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    x = 5 * nn.functional.one_hot(labels, 3).float()  # far apart: bf16 cannot flip them
    bundle = DataBundle("t", ["a", "b", "c"], Samples(labels=labels, tensor=x),
                        Samples(labels=labels, tensor=x), (3,))
    return DataSource(bundle, DataConfig(name="t"), torch.device("cpu"), channels_last=False)


def test_predictions_come_in_data_order_and_the_mode_is_restored() -> None:
    data, model = source(), Seen().train()
    preds = predict(model, data.batches("test", None, BatchPlan(3, False)))
    assert torch.equal(preds, data.labels("test"))
    assert model.training
    assert model.dtypes == [torch.float32] * 3  # 7 samples in batches of 3


def test_a_lower_precision_autocasts_on_the_models_device() -> None:
    data, model = source(), Seen().eval()
    idx = np.array([5, 0, 3])
    preds = predict(model, data.batches("test", idx, BatchPlan(2, False)), "bf16")
    assert preds.tolist() == [2, 2, 1]
    assert not model.training
    assert model.dtypes == [torch.bfloat16, torch.bfloat16]
