from __future__ import annotations

import math

import pytest
import torch

from instil.metrics import mean_ci95, phase_metrics, reference, t_cdf, t_pdf, t_quantile


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


def test_t_cdf_and_pdf_at_known_points() -> None:
    # The Cauchy distribution (df 1): pdf(0) = 1/π, cdf(±1) = 0.5 ± 0.25.
    assert t_pdf(0.0, 1) == pytest.approx(1 / math.pi, rel=1e-12)
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-9)
    assert t_cdf(-1.0, 1) == pytest.approx(0.25, abs=1e-9)
    assert t_cdf(0.0, 7) == pytest.approx(0.5, abs=1e-12)
    # df 2 has a closed form: pdf(x) = (2 + x²)^(-3/2), cdf(x) = 1/2 + x / (2·√(2 + x²)).
    for x in (0.5, 1.0, -2.5):
        assert t_pdf(x, 2) == pytest.approx((2 + x * x) ** -1.5, rel=1e-12)
        assert t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)), abs=1e-9)


def test_t_quantile_is_computed_not_remembered() -> None:
    # The quantile is cached; cleared, it must be computed again from the CDF and agree.
    t_quantile.cache_clear()
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.75, 1) == pytest.approx(1.0, abs=1e-9)  # Cauchy: cdf(1) = 0.75


def test_confidence_interval_of_two_values_scales_with_their_spread() -> None:
    mean, ci = mean_ci95([1.0, 4.0])
    # s = √4.5 = 2.1213, n = 2: t(0.975, 1) · s / √2 = 12.7062 · 1.5
    assert mean == pytest.approx(2.5)
    assert ci == pytest.approx(12.706205 * 1.5, rel=1e-5)


def test_relative_forgetting_on_a_small_and_on_a_zero_base_accuracy() -> None:
    labels = torch.zeros(200, dtype=torch.long)
    one_right = torch.ones(200, dtype=torch.long)
    one_right[0] = 0  # 1 of 200 right: acc_base 0.5%
    ref = reference(one_right, labels, one_right, labels)
    m = phase_metrics(ref, torch.ones(200, dtype=torch.long), labels,
                      torch.ones(200, dtype=torch.long), labels)
    assert ref.acc_base == pytest.approx(0.5)
    assert m["f"] == pytest.approx(0.5) and m["f_rel"] == pytest.approx(100.0)
    none_right = torch.ones(200, dtype=torch.long)
    ref0 = reference(none_right, labels, none_right, labels)
    m0 = phase_metrics(ref0, none_right, labels, none_right, labels)
    assert m0["f"] == 0.0 and math.isnan(m0["f_rel"])
