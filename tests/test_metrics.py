from __future__ import annotations

import math

import pytest
import torch

from instil.metrics import mean_ci95, phase_metrics, reference, t_quantile


def test_phase_metrics_against_hand_computed_values() -> None:
    test_labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    m0_test = torch.tensor([0, 1, 2, 0, 1, 2, 1, 2, 0, 1])  # 6 of 10 right
    base_labels = torch.tensor([0, 1, 2, 0])
    m0_base = torch.tensor([0, 1, 2, 1])  # 3 of 4 right
    ref = reference(m0_test, test_labels, m0_base, base_labels)
    assert ref.acc_test == pytest.approx(60.0) and ref.acc_base == pytest.approx(75.0)

    # M(t) fixes samples 6, 7, 8 and 9 but breaks sample 0 (a negative flip): 9 of 10 right.
    mt_test = torch.tensor([1, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    mt_base = torch.tensor([0, 1, 0, 1])  # 2 of 4 right
    m = phase_metrics(ref, mt_test, test_labels, mt_base, base_labels)
    assert m["acc_test"] == pytest.approx(90.0)
    assert m["pp"] == pytest.approx(30.0)
    assert m["acc_base"] == pytest.approx(50.0)
    assert m["f"] == pytest.approx(25.0)
    assert m["f_rel"] == pytest.approx(100 * 25 / 75)
    assert m["nfr"] == pytest.approx(10.0)


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764),
                                         (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_confidence_interval() -> None:
    mean, ci = mean_ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    # s = 1, n = 3: t(0.975, 2) · 1 / √3
    assert ci == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    mean, ci = mean_ci95([5.0])
    assert mean == 5.0 and math.isnan(ci)
